package batch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"

	"gocv.io/x/gocv"
)

// Video input. A file whose header is a common video container's (or whose
// extension is a video's) is opened with OpenCV's VideoCapture and sampled
// at Options.VideoFPS frames per second; each sampled frame is an item of
// its own, with the path "VIDEO#t=SECONDS" (the time of the frame in the
// video, one decimal, three above 10 frames per second) and the key
// "sha256:HEX@fN" (the video file's content hash and the frame's index in the
// video), so the cache and corrections follow the frame, not the file name.
// The frame is written as a JPEG (quality 95) into OUT's folders.

// VideoExtensions name video files (compared case-insensitively): a file
// with one of them is opened as a video even when its header is not a known
// container's, so that a damaged video is listed as unreadable with the
// reason, not skipped.
var VideoExtensions = []string{".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".ts", ".mts", ".m2ts"}

// DefaultVideoFPS is the default sampling rate of video input (frames per
// second of video); DefaultVideoMaxFrames bounds the frames taken from one
// video.
const (
	DefaultVideoFPS       = 1.0
	DefaultVideoMaxFrames = 600
)

func isVideoName(name string) bool {
	ext := strings.ToLower(filepath.Ext(name))
	for _, e := range VideoExtensions {
		if ext == e {
			return true
		}
	}
	return false
}

// SniffVideo names the container of a file by its first bytes: "mp4"
// (ISO BMFF, MP4/MOV/3GP: "ftyp" at offset 4), "avi" (RIFF....AVI ),
// "matroska" (Matroska/WebM EBML magic 1A 45 DF A3), "mpegts" (0x47 sync
// bytes every 188 bytes), or "" when none.
func SniffVideo(head []byte) string {
	switch {
	case len(head) >= 12 && string(head[4:8]) == "ftyp":
		return "mp4"
	case len(head) >= 12 && string(head[:4]) == "RIFF" && string(head[8:12]) == "AVI ":
		return "avi"
	case len(head) >= 4 && bytes.Equal(head[:4], []byte{0x1A, 0x45, 0xDF, 0xA3}):
		return "matroska"
	case len(head) > 2*188 && head[0] == 0x47 && head[188] == 0x47 && head[2*188] == 0x47:
		return "mpegts"
	}
	return ""
}

// videoFrame is one sampled frame, written to a temporary JPEG file.
type videoFrame struct {
	file  string   // the JPEG, absolute
	video string   // the video, relative slash path
	sum   [32]byte // sha256 of the video file
	index int      // frame index in the video (0-based)
	t     float64  // its time in the video, seconds
}

// frameSum is what stands for a frame's content in keys: the video's
// sha256 and the frame's index.
func (f videoFrame) frameSum() string {
	return fmt.Sprintf("%x@f%d", f.sum, f.index)
}

// frameItem names a sampled frame in the report: "VIDEO#t=SECONDS".
func frameItem(video string, t, fps float64) string {
	prec := 1
	if fps > 10 {
		prec = 3
	}
	return fmt.Sprintf("%s#t=%.*f", video, prec, t)
}

// expandVideos samples every video of lst into frame items, written as
// JPEGs under tmp; the items join lst.Images (in path order, frames in time
// order after their video's name) and a video that cannot be opened or
// decoded is listed as unreadable with the reason.
func expandVideos(ctx context.Context, root, tmp string, lst *Listing, o Options) (map[string]videoFrame, error) {
	frames := map[string]videoFrame{}
	for vi, v := range lst.Videos {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		items, fs, note, err := sampleVideo(ctx, filepath.Join(root, filepath.FromSlash(v)), v, filepath.Join(tmp, fmt.Sprintf("v%06d", vi)), o)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			lst.Unreadable = append(lst.Unreadable, Problem{Path: v, Reason: err.Error()})
			continue
		}
		if note != "" {
			lst.Skipped = append(lst.Skipped, Problem{Path: v, Reason: note})
		}
		o.Log.Info("cluster: video sampled", "video", v, "frames", len(items))
		for k, it := range items {
			frames[it] = fs[k]
			lst.Images = append(lst.Images, it)
		}
	}
	return frames, nil
}

// sampleVideo reads the video at path and keeps a frame each 1/o.VideoFPS
// seconds, at most o.VideoMaxFrames; a frame over the pixel limit ends the
// video as unreadable. note, when set, says the video was cut short.
func sampleVideo(ctx context.Context, path, rel, prefix string, o Options) (items []string, frames []videoFrame, note string, err error) {
	sum, err := fileSum(path)
	if err != nil {
		return nil, nil, "", errors.New(reason(err))
	}
	// FFmpeg only: OpenCV's other file backends would take a name with %d
	// as an image sequence (CAP_IMAGES) or hand the path to GStreamer.
	vc, err := gocv.VideoCaptureFileWithAPI(path, gocv.VideoCaptureFFmpeg)
	if err != nil || !vc.IsOpened() {
		if vc != nil {
			vc.Close()
		}
		return nil, nil, "", errors.New("video: OpenCV cannot open it (unknown container or codec, or a damaged file)")
	}
	defer vc.Close()
	native := vc.Get(gocv.VideoCaptureFPS)
	if math.IsNaN(native) || math.IsInf(native, 0) || native <= 0 || native > 1000 {
		native = 0 // unknown: use the decoder's position
	}
	step := 1 / o.VideoFPS
	m := gocv.NewMat()
	defer m.Close()
	next := 0.0
	read := 0
	// A file that keeps yielding frames (a damaged index, an endless stream)
	// is bounded too: past this many frames read, stop.
	maxRead := o.VideoMaxFrames * 1000
	for i := 0; ; i++ {
		if i%64 == 0 && ctx.Err() != nil {
			return nil, nil, "", ctx.Err()
		}
		if !vc.Read(&m) || m.Empty() {
			break
		}
		read++
		t := float64(i) / native
		if native == 0 {
			t = vc.Get(gocv.VideoCapturePosMsec) / 1000
		}
		if t+1e-9 < next {
			if read >= maxRead {
				note = fmt.Sprintf("video: stopped after %d frames read", read)
				break
			}
			continue
		}
		if len(frames) >= o.VideoMaxFrames {
			note = fmt.Sprintf("video: sampled to its first %d frames (--video-max-frames); the rest was not used", o.VideoMaxFrames)
			break
		}
		if px := int64(m.Cols()) * int64(m.Rows()); px > o.Limits.MaxPixels {
			return nil, nil, "", fmt.Errorf("video: frame of %dx%d = %d pixels is over the limit of %d", m.Cols(), m.Rows(), px, o.Limits.MaxPixels)
		}
		buf, err := gocv.IMEncodeWithParams(gocv.JPEGFileExt, m, []int{gocv.IMWriteJpegQuality, 95})
		if err != nil {
			return nil, nil, "", fmt.Errorf("video: encode frame %d: %w", i, err)
		}
		file := fmt.Sprintf("%s-%08d.jpg", prefix, i)
		err = os.WriteFile(file, buf.GetBytes(), 0o600)
		buf.Close()
		if err != nil {
			return nil, nil, "", fmt.Errorf("video: write frame %d: %w", i, err)
		}
		items = append(items, frameItem(rel, t, o.VideoFPS))
		frames = append(frames, videoFrame{file: file, video: rel, sum: sum, index: i, t: t})
		for next <= t+1e-9 {
			next += step
		}
	}
	if len(frames) == 0 {
		return nil, nil, "", errors.New("video: no frame could be decoded")
	}
	return items, frames, note, nil
}

func fileSum(path string) ([32]byte, error) {
	var s [32]byte
	f, err := os.Open(path)
	if err != nil {
		return s, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return s, err
	}
	copy(s[:], h.Sum(nil))
	return s, nil
}
