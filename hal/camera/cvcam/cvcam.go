// Package cvcam is the camera's gocv driver: V4L2 devices, streams, video
// files and image directories opened through OpenCV. The supervisor
// (reopen, backoff, stall watchdog, bursts) is hal/camera, pure Go; the
// daemon passes Open to it with camera.WithOpener.
package cvcam

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/hal/camera"
	"github.com/periocular/atm-agent/internal/imagecheck"
	"github.com/periocular/atm-agent/internal/redact"
)

// Open opens cfg's source with gocv: V4L2 for devices (path or index, with
// the driver buffer reduced to one frame where supported), OpenCV's default
// backend for streams and files, and vision.DecodeImage for image
// directories.
func Open(cfg camera.Config) (camera.Device, error) {
	switch kind := camera.ResolveKind(cfg); kind {
	case camera.KindImages:
		return openImages(cfg)
	case camera.KindDevice, camera.KindStream, camera.KindFile:
		return openCapture(cfg, kind)
	default:
		return nil, fmt.Errorf("open camera %q: unknown kind %q", redact.URL(cfg.Source), kind)
	}
}

type captureDevice struct {
	vc   *gocv.VideoCapture
	mat  gocv.Mat // reused per read; closed in Close
	conv gocv.Mat // colour conversion target; closed in Close
	kind string
	loop bool
}

func openCapture(cfg camera.Config, kind string) (camera.Device, error) {
	var (
		vc  *gocv.VideoCapture
		err error
	)
	switch kind {
	case camera.KindDevice:
		if idx, aerr := strconv.Atoi(cfg.Source); aerr == nil {
			vc, err = gocv.VideoCaptureDeviceWithAPI(idx, gocv.VideoCaptureV4L2)
		} else {
			if _, serr := os.Stat(cfg.Source); serr != nil {
				return nil, fmt.Errorf("open camera %q: %w", cfg.Source, serr)
			}
			vc, err = gocv.VideoCaptureFileWithAPI(cfg.Source, gocv.VideoCaptureV4L2)
		}
	case camera.KindFile:
		if _, serr := os.Stat(cfg.Source); serr != nil {
			return nil, fmt.Errorf("open camera %q: %w", cfg.Source, serr)
		}
		vc, err = gocv.VideoCaptureFile(cfg.Source)
	default:
		vc, err = gocv.VideoCaptureFile(cfg.Source)
	}
	if err == nil && !vc.IsOpened() {
		err = errors.New("not opened")
	}
	if err != nil {
		if vc != nil {
			vc.Close()
		}
		return nil, redact.Error(fmt.Errorf("open camera %q (%s): %w", redact.URL(cfg.Source), kind, err), cfg.Source)
	}
	if kind == camera.KindDevice || kind == camera.KindStream {
		if cfg.Width > 0 && cfg.Height > 0 {
			vc.Set(gocv.VideoCaptureFrameWidth, float64(cfg.Width))
			vc.Set(gocv.VideoCaptureFrameHeight, float64(cfg.Height))
		}
		if cfg.FPS > 0 {
			vc.Set(gocv.VideoCaptureFPS, cfg.FPS)
		}
		// Keep at most one stale frame in the driver (V4L2 honours this).
		vc.Set(gocv.VideoCaptureBufferSize, 1)
	}
	return &captureDevice{vc: vc, mat: gocv.NewMat(), conv: gocv.NewMat(), kind: kind, loop: cfg.Loop}, nil
}

func (d *captureDevice) Read() (camera.Frame, error) {
	ok := d.vc.Read(&d.mat)
	if (!ok || d.mat.Empty()) && d.kind == camera.KindFile {
		if !d.loop {
			return camera.Frame{}, camera.ErrEndOfStream
		}
		d.vc.Set(gocv.VideoCapturePosFrames, 0)
		ok = d.vc.Read(&d.mat)
	}
	if !ok || d.mat.Empty() {
		return camera.Frame{}, errors.New("read frame: no frame from device")
	}
	return toFrame(d.mat, &d.conv)
}

func (d *captureDevice) Grab() error {
	d.vc.Grab(1)
	return nil
}

func (d *captureDevice) Close() error {
	d.mat.Close()
	d.conv.Close()
	return d.vc.Close()
}

// toFrame copies m into a camera.Frame, converting grey and BGRA to BGR via conv.
func toFrame(m gocv.Mat, conv *gocv.Mat) (camera.Frame, error) {
	src := m
	switch m.Type() {
	case gocv.MatTypeCV8UC3:
	case gocv.MatTypeCV8UC1:
		gocv.CvtColor(m, conv, gocv.ColorGrayToBGR)
		src = *conv
	case gocv.MatTypeCV8UC4:
		gocv.CvtColor(m, conv, gocv.ColorBGRAToBGR)
		src = *conv
	default:
		return camera.Frame{}, fmt.Errorf("read frame: unsupported pixel type %v", m.Type())
	}
	w, h := src.Cols(), src.Rows()
	b := src.ToBytes() // a copy in Go memory
	if len(b) != w*h*3 {
		return camera.Frame{}, fmt.Errorf("read frame: %d bytes for %dx%d BGR", len(b), w, h)
	}
	return camera.Frame{W: w, H: h, BGR: b}, nil
}

type imageDevice struct {
	dir   string
	files []string // those not found undecodable yet
	next  int
	loop  bool
	conv  gocv.Mat
	// skipped holds the errors of the files dropped since the last
	// Skipped call; none is an error that ends the replay while another
	// file decodes.
	skipped []error
	nFiles  int
}

func openImages(cfg camera.Config) (camera.Device, error) {
	ents, err := os.ReadDir(cfg.Source)
	if err != nil {
		return nil, fmt.Errorf("open image directory %q: %w", cfg.Source, err)
	}
	var files []string
	for _, e := range ents {
		switch strings.ToLower(filepath.Ext(e.Name())) {
		case ".jpg", ".jpeg", ".png":
			if !e.IsDir() {
				files = append(files, filepath.Join(cfg.Source, e.Name()))
			}
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("open image directory %q: no .jpg or .png files", cfg.Source)
	}
	sort.Strings(files)
	return &imageDevice{dir: cfg.Source, files: files, nFiles: len(files), loop: cfg.Loop, conv: gocv.NewMat()}, nil
}

func (d *imageDevice) advance() error {
	if d.next >= len(d.files) {
		if !d.loop {
			return camera.ErrEndOfStream
		}
		d.next = 0
	}
	d.next++
	return nil
}

// Read returns the next file that decodes. A file that does not (a
// corrupt or truncated one, a header claiming 60000x60000) is dropped
// from the replay for this session and reported through Skipped: before,
// it failed every read that reached it, and since the probe read after an
// open reads the first file, one bad file first in name order kept the
// camera down for good beside good ones. Read fails only when no file
// decodes.
func (d *imageDevice) Read() (camera.Frame, error) {
	for len(d.files) > 0 {
		if err := d.advance(); err != nil {
			return camera.Frame{}, err
		}
		f, err := d.decode(d.files[d.next-1])
		if err == nil {
			return f, nil
		}
		d.files = slices.Delete(d.files, d.next-1, d.next)
		d.next--
		d.skipped = append(d.skipped, err)
		if len(d.files) == 0 {
			return camera.Frame{}, fmt.Errorf("image directory %q: none of its %d files decodes (the last: %w)", d.dir, d.nFiles, err)
		}
	}
	return camera.Frame{}, fmt.Errorf("image directory %q: none of its %d files decodes", d.dir, d.nFiles)
}

// Skipped implements camera.Skipper.
func (d *imageDevice) Skipped() []error {
	s := d.skipped
	d.skipped = nil
	return s
}

func (d *imageDevice) decode(name string) (camera.Frame, error) {
	// The same guards as the batch job: size and header checked before any
	// pixel is decoded, OpenCV exceptions caught (a hostile file in a replay
	// folder costs one failed read, not the daemon).
	data, _, err := imagecheck.ReadFile(name, imagecheck.Limits{})
	if err != nil {
		return camera.Frame{}, fmt.Errorf("read image %q: %w", name, err)
	}
	m, err := vision.DecodeImage(data, imagecheck.Limits{})
	if err != nil {
		return camera.Frame{}, fmt.Errorf("read image %q: %w", name, err)
	}
	defer m.Close()
	f, err := toFrame(m, &d.conv)
	if err != nil {
		return camera.Frame{}, fmt.Errorf("read image %q: %w", name, err)
	}
	return f, nil
}

func (d *imageDevice) Grab() error { return d.advance() }

func (d *imageDevice) Close() error {
	d.conv.Close()
	return nil
}
