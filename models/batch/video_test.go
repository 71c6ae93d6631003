package batch

import (
	"context"
	"fmt"
	"image"
	"image/color"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/internal/testenv/mats"
)

// writeClip writes an MJPG AVI at fps from demo photos, each shown for
// secs[i] seconds on a 640x640 canvas (the photo scaled to fit). It returns
// the first canvas as a JPEG.
func writeClip(t *testing.T, path string, fps float64, photos []string, secs []int) []byte {
	t.Helper()
	const side = 640
	vw, err := gocv.VideoWriterFile(path, "MJPG", fps, side, side, true)
	if err != nil {
		t.Fatalf("video writer: %v", err)
	}
	defer vw.Close()
	var first []byte
	for k, name := range photos {
		img, err := gocv.IMDecode(demoPhoto(t, name), gocv.IMReadColor)
		if err != nil || img.Empty() {
			t.Fatalf("%s: %v", name, err)
		}
		s := float64(side) / float64(max(img.Cols(), img.Rows()))
		w, h := int(float64(img.Cols())*s), int(float64(img.Rows())*s)
		small := gocv.NewMat()
		gocv.Resize(img, &small, image.Pt(w, h), 0, 0, gocv.InterpolationArea)
		frame := gocv.NewMat()
		gocv.CopyMakeBorder(small, &frame, (side-h)/2, side-h-(side-h)/2, (side-w)/2, side-w-(side-w)/2, gocv.BorderConstant, color.RGBA{})
		if k == 0 {
			b, err := gocv.IMEncode(gocv.JPEGFileExt, frame)
			if err != nil {
				t.Fatal(err)
			}
			first = append(first, b.GetBytes()...)
			b.Close()
		}
		for range int(fps) * secs[k] {
			if err := vw.Write(frame); err != nil {
				t.Fatal(err)
			}
		}
		img.Close()
		small.Close()
		frame.Close()
	}
	if !vw.IsOpened() {
		t.Fatal("video writer closed")
	}
	return first
}

// A video written here (10 fps, 3 s of sample1 then 3 s of sample2) is
// sampled at --video-fps 2: 12 frames, named by time, keyed by the video's
// content and the frame index; sample1's frames go with the sample1 still,
// sample2's to another person. A second run takes every frame from the
// cache; --video-max-frames cuts a video short with a note; video input off
// skips it; a damaged video is unreadable with the reason.
func TestRealVideo(t *testing.T) {
	finders := pipelines(t, 1)
	before := mats.Live()
	in := t.TempDir()
	still := writeClip(t, filepath.Join(in, "clip.avi"), 10, []string{"sample1.jpg", "sample2.jpg"}, []int{3, 3})
	if err := os.WriteFile(filepath.Join(in, "still.jpg"), still, 0o644); err != nil {
		t.Fatal(err)
	}
	// An MP4 header and nothing a decoder can use.
	bad := append([]byte{0, 0, 0, 0x18, 'f', 't', 'y', 'p', 'i', 's', 'o', 'm'}, make([]byte, 4000)...)
	if err := os.WriteFile(filepath.Join(in, "broken.mp4"), bad, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(in, "cut.webm"), []byte("not a video at all"), 0o644); err != nil {
		t.Fatal(err)
	}
	cacheDir := t.TempDir()
	cache, err := OpenCache(cacheDir, "test", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := identity.DefaultConfig()
	cfg.Thresholds = identity.Thresholds{UU: 0.5, MM: 0.5, MU: 0.5}
	o := Options{Cluster: identity.ClusterOptions{Algorithm: identity.Average, Config: cfg}, Thumb: 48, VideoFPS: 2, Cache: cache}
	out := filepath.Join(t.TempDir(), "out")
	rep, err := Run(context.Background(), in, out, finders, o)
	if err != nil {
		t.Fatal(err)
	}
	var frames []ImageEntry
	folder := map[string]string{}
	for _, e := range rep.Images {
		folder[e.Path] = e.Folder
		if e.Video != nil {
			frames = append(frames, e)
		}
	}
	if len(frames) != 12 {
		t.Fatalf("%d frames sampled, want 12 (6 s at 2 per second): %+v", len(frames), frames)
	}
	for k, e := range frames {
		tm := 0.5 * float64(k)
		if want := fmt.Sprintf("clip.avi#t=%.1f", tm); e.Path != want || e.Video.Frame != 5*k || e.Video.Time != tm || e.Video.Path != "clip.avi" {
			t.Errorf("frame %d: %s %+v, want %s, frame %d", k, e.Path, e.Video, want, 5*k)
		}
		if e.Face == nil {
			t.Errorf("%s: no face (%s)", e.Path, e.Note)
			continue
		}
		if !strings.HasPrefix(e.Key, "sha256:") || !strings.HasSuffix(e.Key, fmt.Sprintf("@f%d", 5*k)) {
			t.Errorf("%s: key %s", e.Path, e.Key)
		}
		if _, err := os.Stat(filepath.Join(out, e.Folder, e.File)); err != nil || e.File != flatName(e.Path)+".jpg" {
			t.Errorf("%s: placed as %s: %v", e.Path, e.File, err)
		}
	}
	p1, p2 := folder["clip.avi#t=0.0"], folder["clip.avi#t=3.0"]
	if p1 == "" || p1 == "singletons" || p2 == "" || p2 == "singletons" || p1 == p2 || folder["still.jpg"] != p1 {
		t.Errorf("sample1 frames in %s (still in %s), sample2 frames in %s", p1, folder["still.jpg"], p2)
	}
	for _, e := range frames {
		if want := map[bool]string{true: p1, false: p2}[e.Video.Time < 3]; e.Folder != want {
			t.Errorf("%s in %s, want %s", e.Path, e.Folder, want)
		}
	}
	un := map[string]string{}
	for _, p := range rep.Unreadable {
		un[p.Path] = p.Reason
	}
	for _, v := range []string{"broken.mp4", "cut.webm"} {
		if !strings.HasPrefix(un[v], "video: ") {
			t.Errorf("%s: unreadable reason %q", v, un[v])
		}
	}
	if rep.Counts.Videos != 1 || rep.Counts.Images != 13 {
		t.Errorf("counts %+v, want 1 video, 13 items", rep.Counts)
	}

	// Again: every frame and the still from the cache, the same report.
	if err := cache.Close(); err != nil {
		t.Fatal(err)
	}
	if cache, err = OpenCache(cacheDir, "test", 0, nil); err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	o.Cache = cache
	o.Force = true
	rep2, err := Run(context.Background(), in, out, finders, o)
	if err != nil {
		t.Fatal(err)
	}
	if h, m := cache.Stats(); h != 13 || m != 0 {
		t.Errorf("second run: %d hits, %d misses, want 13 hits, 0 misses", h, m)
	}
	if rep2.Counts != rep.Counts {
		t.Errorf("second run counts %+v, first %+v", rep2.Counts, rep.Counts)
	}

	// Corrections by frame key: the frame at 3.0 s out on its own, the
	// first person named; the cache serves every frame.
	key := map[string]string{}
	for _, e := range rep2.Images {
		key[e.Path] = e.Key
	}
	o.Corrections = []*Corrections{{Schema: 1, Move: []Move{{Face: key["clip.avi#t=3.0"]}},
		Name: []Name{{Faces: []string{key["clip.avi#t=0.0"]}, Name: "sample one"}}}}
	repC, err := Run(context.Background(), in, out, finders, o)
	if err != nil {
		t.Fatal(err)
	}
	o.Corrections = nil
	fc := map[string]string{}
	for _, e := range repC.Images {
		fc[e.Path] = e.Folder
	}
	named := ""
	for _, id := range repC.Identities {
		if id.Name == "sample one" {
			named = id.Folder
		}
	}
	if st := repC.Meta.Corrections; st == nil || st.Moved != 1 || st.Named != 1 || fc["clip.avi#t=3.0"] == fc["clip.avi#t=3.5"] || named != fc["clip.avi#t=0.0"] {
		t.Errorf("corrections: %+v; t=3.0 in %s, t=3.5 in %s; named %q, t=0.0 in %s", repC.Meta.Corrections, fc["clip.avi#t=3.0"], fc["clip.avi#t=3.5"], named, fc["clip.avi#t=0.0"])
	}

	// At most 4 frames: the rest is noted as skipped.
	o.VideoMaxFrames = 4
	rep3, err := Run(context.Background(), in, out, finders, o)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range rep3.Images {
		if e.Video != nil {
			n++
		}
	}
	note := ""
	for _, p := range rep3.Skipped {
		if p.Path == "clip.avi" {
			note = p.Reason
		}
	}
	if n != 4 || !strings.Contains(note, "first 4 frames") {
		t.Errorf("max 4 frames: %d sampled, note %q", n, note)
	}

	// Video input off: the video is skipped, with the reason.
	o.VideoFPS, o.VideoMaxFrames = -1, 0
	rep4, err := Run(context.Background(), in, out, finders, o)
	if err != nil {
		t.Fatal(err)
	}
	off := ""
	for _, p := range rep4.Skipped {
		if p.Path == "clip.avi" {
			off = p.Reason
		}
	}
	if rep4.Counts.Images != 1 || !strings.Contains(off, "--video-fps 0") {
		t.Errorf("video off: %d items, clip.avi skipped as %q", rep4.Counts.Images, off)
	}

	// Frames over the pixel limit: the video is unreadable, with the sizes.
	o.VideoFPS, o.Limits.MaxPixels = 2, 640*640-1
	rep5, err := Run(context.Background(), in, out, finders, o)
	if err != nil {
		t.Fatal(err)
	}
	un = map[string]string{}
	for _, p := range rep5.Unreadable {
		un[p.Path] = p.Reason
	}
	if r := un["clip.avi"]; !strings.Contains(r, "640x640 = 409600 pixels is over the limit of 409599") || rep5.Counts.Videos != 0 {
		t.Errorf("pixel limit: clip.avi %q, %d videos sampled", r, rep5.Counts.Videos)
	}
	if n := mats.Live() - before; mats.Profiled && n != 0 {
		t.Errorf("%d Mats leaked", n)
	}
}

// Container headers are recognised; images and text are not videos.
func TestSniffVideo(t *testing.T) {
	ts := make([]byte, 400)
	ts[0], ts[188], ts[376] = 0x47, 0x47, 0x47
	for want, head := range map[string][]byte{
		"mp4":      []byte("\x00\x00\x00\x20ftypisom\x00\x00\x02\x00"),
		"avi":      []byte("RIFF\x10\x00\x00\x00AVI LIST"),
		"matroska": {0x1A, 0x45, 0xDF, 0xA3, 0x9F},
		"mpegts":   ts,
		"":         []byte("RIFF\x10\x00\x00\x00WEBPVP8 "),
	} {
		if got := SniffVideo(head); got != want {
			t.Errorf("%q: %q, want %q", head[:min(len(head), 12)], got, want)
		}
	}
	if SniffVideo([]byte("\x89PNG\r\n\x1a\n")) != "" || SniffVideo(nil) != "" {
		t.Error("an image or nothing sniffed as video")
	}
}
