package cvcam

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"gocv.io/x/gocv"

	. "github.com/periocular/atm-agent/hal/camera"
	"github.com/periocular/atm-agent/internal/testenv/mats"
)

// newCam is camera.New with this driver.
func newCam(cfg Config) (*Camera, error) { return New(cfg, Open, nil) }

// startCamera runs c in the background; the returned stop cancels Run, waits
// for it and checks that no Mat is left open.
func startCamera(t *testing.T, c *Camera) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Run did not return within 5s of cancel")
			}
			mats.AssertNone(t)
		})
	}
	t.Cleanup(stop)
	return stop
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// colour returns a distinct BGR colour for frame i.
func colour(i int) (b, g, r uint8) { return uint8(20 + 40*i), uint8(200 - 30*i), uint8(10 * i) }

func writeImages(t *testing.T, dir string, n, w, h int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		b, g, r := colour(i)
		m := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(float64(b), float64(g), float64(r), 0), h, w, gocv.MatTypeCV8UC3)
		ok := gocv.IMWrite(filepath.Join(dir, fmt.Sprintf("f%03d.png", i)), m)
		m.Close()
		if !ok {
			t.Fatalf("write image %d", i)
		}
	}
}

func writeVideo(t *testing.T, path string, n, w, h int) {
	t.Helper()
	vw, err := gocv.VideoWriterFile(path, "MJPG", 25, w, h, true)
	if err != nil {
		t.Fatalf("video writer: %v", err)
	}
	for i := 0; i < n; i++ {
		b, g, r := colour(i % 5)
		m := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(float64(b), float64(g), float64(r), 0), h, w, gocv.MatTypeCV8UC3)
		err := vw.Write(m)
		m.Close()
		if err != nil {
			t.Fatalf("write frame %d: %v", i, err)
		}
	}
	if err := vw.Close(); err != nil {
		t.Fatal(err)
	}
}

func checkBurst(t *testing.T, frames []Frame, n, w, h int) {
	t.Helper()
	if len(frames) != n {
		t.Fatalf("got %d frames, want %d", len(frames), n)
	}
	for i, f := range frames {
		if f.W != w || f.H != h || len(f.BGR) != 3*w*h {
			t.Fatalf("frame %d: %dx%d with %d bytes, want %dx%d with %d", i, f.W, f.H, len(f.BGR), w, h, 3*w*h)
		}
		if i > 0 && !f.Time.After(frames[i-1].Time) {
			t.Fatalf("frame %d time %v not after frame %d time %v", i, f.Time, i-1, frames[i-1].Time)
		}
	}
}

func TestReplayImageDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "frames")
	writeImages(t, dir, 3, 32, 24)
	c, err := newCam(Config{Source: dir, Loop: true})
	if err != nil {
		t.Fatal(err)
	}
	if c.Health().Kind != KindImages {
		t.Fatalf("kind %q, want images", c.Health().Kind)
	}
	stop := startCamera(t, c)
	// The probe read at open consumed image 0; the burst reads 1, 2, 0, 1 (loop).
	frames, err := c.Burst(context.Background(), 4, 40*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	checkBurst(t, frames, 4, 32, 24)
	for i, f := range frames {
		b, g, r := colour((i + 1) % 3)
		if f.BGR[0] != b || f.BGR[1] != g || f.BGR[2] != r {
			t.Errorf("frame %d pixel %v, want %v", i, f.BGR[:3], []uint8{b, g, r})
		}
	}
	if d := frames[3].Time.Sub(frames[0].Time); d < 25*time.Millisecond {
		t.Errorf("burst spread %s, want about 30ms (4 frames over 40ms)", d)
	}
	h := c.Health()
	if h.State != StateOK || h.Frames != 5 || h.ConsecutiveFailures != 0 {
		t.Errorf("health %+v", h)
	}
	stop()
}

func TestReplayNoLoopEnds(t *testing.T) {
	dir := t.TempDir()
	writeImages(t, dir, 3, 16, 16)
	c, err := newCam(Config{Source: dir})
	if err != nil {
		t.Fatal(err)
	}
	startCamera(t, c)
	frames, err := c.Burst(context.Background(), 5, 0)
	if !errors.Is(err, ErrEndOfStream) || len(frames) != 2 {
		t.Fatalf("got %d frames, err %v; want 2 and end of stream", len(frames), err)
	}
	if _, err := c.Burst(context.Background(), 1, 0); !errors.Is(err, ErrEndOfStream) {
		t.Fatalf("after end: %v", err)
	}
	if h := c.Health(); h.State != StateDown {
		t.Errorf("state %v, want down", h.State)
	}
}

func TestReplayVideoFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "clip.avi")
	writeVideo(t, path, 8, 64, 48)
	c, err := newCam(Config{Source: path, Loop: true, BurstFrames: 5, BurstDuration: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop := startCamera(t, c)
	for round := 0; round < 3; round++ { // 15 reads + probe > 8 frames: the loop rewinds
		frames, err := c.Burst(context.Background(), 0, -1)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		checkBurst(t, frames, 5, 64, 48)
	}
	if h := c.Health(); h.Kind != KindFile || h.State != StateOK || h.Frames != 16 {
		t.Errorf("health %+v", h)
	}
	stop()
}

func TestVanishedDirectoryRecovers(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "frames")
	writeImages(t, dir, 2, 16, 16)
	cfg := Config{Source: dir, Kind: KindImages, Loop: true, ReopenMin: 20 * time.Millisecond, ReopenMax: 80 * time.Millisecond}
	c, err := newCam(cfg)
	if err != nil {
		t.Fatal(err)
	}
	startCamera(t, c)
	if _, err := c.Burst(context.Background(), 2, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	frames, err := c.Burst(context.Background(), 3, 0)
	if err == nil || len(frames) != 0 {
		t.Fatalf("burst from removed directory: %d frames, err %v", len(frames), err)
	}
	if h := c.Health(); h.State != StateDown || h.ConsecutiveFailures < 3 {
		t.Fatalf("health after removal %+v", h)
	}
	time.Sleep(400 * time.Millisecond)
	h := c.Health()
	// Backoff 20, 40, 80, 80, ... ms: about 6 attempts in 400ms, never 20 (fixed 20ms).
	if h.Reopens < 3 || h.Reopens > 10 {
		t.Errorf("reopens after 400ms down: %d, want 3..10 with 20..80ms backoff", h.Reopens)
	}
	if !strings.Contains(h.LastError, "no such file") {
		t.Errorf("last error %q", h.LastError)
	}
	writeImages(t, dir, 2, 16, 16)
	waitFor(t, "recovery", 2*time.Second, func() bool { return c.Health().State == StateOK })
	frames, err = c.Burst(context.Background(), 2, 0)
	if err != nil || len(frames) != 2 {
		t.Fatalf("after recovery: %d frames, %v", len(frames), err)
	}
}

// TestIdleProbeFindsVanishedDirectory: an image folder moved away while
// no burst runs is found by the idle probe (camera.probe_interval): the
// camera is down within the interval, without a burst, and ok again once
// the folder is back. Before, it said ok until the next visit's burst
// failed (a camera_error visit).
func TestIdleProbeFindsVanishedDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "frames")
	writeImages(t, dir, 2, 16, 16)
	const every = 300 * time.Millisecond
	c, err := newCam(Config{Source: dir, Kind: KindImages, Loop: true, ProbeInterval: every,
		ReopenMin: 20 * time.Millisecond, ReopenMax: 80 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	startCamera(t, c)
	waitFor(t, "open", 2*time.Second, func() bool { return c.Health().State == StateOK })
	away := dir + ".away"
	if err := os.Rename(dir, away); err != nil {
		t.Fatal(err)
	}
	moved := time.Now()
	waitFor(t, "down", every+2*time.Second, func() bool { return c.Health().State == StateDown })
	t.Logf("down %s after the move (probe interval %s)", time.Since(moved).Round(time.Millisecond), every)
	if d := time.Since(moved); d > every+500*time.Millisecond {
		t.Errorf("down after %s, want within the %s interval", d, every)
	}
	if h := c.Health(); !strings.Contains(h.LastError, dir) {
		t.Errorf("last error %q, want naming the folder", h.LastError)
	}
	if err := os.Rename(away, dir); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "ok again", 2*time.Second, func() bool { return c.Health().State == StateOK })
	frames, err := c.Burst(context.Background(), 2, 0)
	if err != nil || len(frames) != 2 {
		t.Fatalf("after the folder is back: %d frames, %v", len(frames), err)
	}
}

func TestMissingDeviceIsDown(t *testing.T) {
	c, err := newCam(Config{Source: "/dev/video-does-not-exist", ReopenMin: 10 * time.Millisecond, ReopenMax: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if c.Health().Kind != KindDevice {
		t.Fatalf("kind %q", c.Health().Kind)
	}
	startCamera(t, c)
	waitFor(t, "two reopen attempts", 2*time.Second, func() bool { return c.Health().Reopens >= 2 })
	h := c.Health()
	if h.State != StateDown || !strings.Contains(h.LastError, "no such file") {
		t.Errorf("health %+v", h)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := c.Burst(ctx, 1, 0); !errors.Is(err, ErrDown) {
		t.Errorf("burst on missing device: %v, want ErrDown", err)
	}
}

// BenchmarkBurst640x480 measures a 5-frame back-to-back burst from an image
// directory (decode + copy to Frame), the camera's share of trigger latency.
func BenchmarkBurst640x480(b *testing.B) {
	dir := b.TempDir()
	for i := 0; i < 5; i++ {
		m := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(float64(40*i), 90, 200, 0), 480, 640, gocv.MatTypeCV8UC3)
		gocv.IMWrite(filepath.Join(dir, fmt.Sprintf("f%d.jpg", i)), m)
		m.Close()
	}
	c, err := newCam(Config{Source: dir, Loop: true})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if fr, err := c.Burst(context.Background(), 5, 0); err != nil || len(fr) != 5 {
			b.Fatal(len(fr), err)
		}
	}
}
