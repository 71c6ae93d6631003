package camera

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gocv.io/x/gocv"
	"gopkg.in/yaml.v3"
)

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
			assertNoMats(t)
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
	c, err := New(Config{Source: dir, Loop: true}, nil)
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
	c, err := New(Config{Source: dir}, nil)
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
	c, err := New(Config{Source: path, Loop: true, BurstFrames: 5, BurstDuration: 50 * time.Millisecond}, nil)
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
	c, err := New(cfg, nil)
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

func TestMissingDeviceIsDown(t *testing.T) {
	c, err := New(Config{Source: "/dev/video-does-not-exist", ReopenMin: 10 * time.Millisecond, ReopenMax: 20 * time.Millisecond}, nil)
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

// fakeDevice serves solid frames; a read blocks while stall is set.
type fakeDevice struct {
	f      *fakeOpener
	closed atomic.Bool
}

type fakeOpener struct {
	mu     sync.Mutex
	opens  int
	grabs  int
	reads  int
	stall  chan struct{} // reads block until it is closed, when non-nil
	devs   []*fakeDevice
	failAt int // reads numbered failAt.. fail (0: never)
}

func (o *fakeOpener) open(Config) (Device, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.opens++
	d := &fakeDevice{f: o}
	o.devs = append(o.devs, d)
	return d, nil
}

func (d *fakeDevice) Read() (Frame, error) {
	d.f.mu.Lock()
	d.f.reads++
	stall, n, failAt := d.f.stall, d.f.reads, d.f.failAt
	d.f.mu.Unlock()
	if stall != nil {
		<-stall
	}
	if failAt > 0 && n >= failAt {
		return Frame{}, errors.New("read frame: no frame from device")
	}
	return Frame{W: 2, H: 1, BGR: make([]byte, 6)}, nil
}

func (d *fakeDevice) Grab() error {
	d.f.mu.Lock()
	d.f.grabs++
	d.f.mu.Unlock()
	return nil
}

func (d *fakeDevice) Close() error { d.closed.Store(true); return nil }

func TestFlushBeforeBurst(t *testing.T) {
	fo := &fakeOpener{}
	c, err := New(Config{Source: "/dev/video0", FlushFrames: 3}, nil, WithOpener(fo.open))
	if err != nil {
		t.Fatal(err)
	}
	startCamera(t, c)
	frames, err := c.Burst(context.Background(), 2, 0)
	if err != nil || len(frames) != 2 {
		t.Fatalf("%d frames, %v", len(frames), err)
	}
	fo.mu.Lock()
	defer fo.mu.Unlock()
	if fo.grabs != 3 || fo.reads != 3 { // 3 flushed, probe + 2 reads
		t.Errorf("grabs %d reads %d, want 3 and 3", fo.grabs, fo.reads)
	}
}

func TestStallTripsWatchdog(t *testing.T) {
	fo := &fakeOpener{}
	c, err := New(Config{Source: "fake", Kind: KindStream, ReadTimeout: 50 * time.Millisecond,
		ReopenMin: 10 * time.Millisecond, ReopenMax: 40 * time.Millisecond}, nil, WithOpener(fo.open))
	if err != nil {
		t.Fatal(err)
	}
	startCamera(t, c)
	waitFor(t, "open", time.Second, func() bool { return c.Health().State == StateOK })

	release := make(chan struct{})
	fo.mu.Lock()
	fo.stall = release
	fo.mu.Unlock()
	start := time.Now()
	frames, err := c.Burst(context.Background(), 3, 0)
	if !errors.Is(err, ErrStall) || len(frames) != 0 {
		t.Fatalf("burst during stall: %d frames, %v", len(frames), err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("stalled burst took %s, want about the 50ms read timeout", d)
	}
	h := c.Health()
	if h.Stalls == 0 || h.State != StateDown || h.Abandoned == 0 {
		t.Fatalf("health after stall %+v", h)
	}
	// Reopen attempts keep stalling on their probe read while the fake hangs;
	// once it is released, abandoned goroutines exit and the camera recovers.
	fo.mu.Lock()
	fo.stall = nil
	fo.mu.Unlock()
	close(release)
	waitFor(t, "recovery", 2*time.Second, func() bool { return c.Health().State == StateOK })
	frames, err = c.Burst(context.Background(), 2, 0)
	if err != nil || len(frames) != 2 {
		t.Fatalf("after recovery: %d frames, %v", len(frames), err)
	}
	waitFor(t, "abandoned sessions to exit", 2*time.Second, func() bool {
		_, _ = c.Burst(context.Background(), 1, 0) // Run prunes on each request
		return c.Health().Abandoned == 0
	})
	fo.mu.Lock()
	defer fo.mu.Unlock()
	for i, d := range fo.devs[:len(fo.devs)-1] {
		if !d.closed.Load() {
			t.Errorf("abandoned device %d not closed", i)
		}
	}
}

func TestFailingReadsReopen(t *testing.T) {
	fo := &fakeOpener{failAt: 3}
	c, err := New(Config{Source: "fake", Kind: KindFile, MaxReadFailures: 2, ReopenMin: 10 * time.Millisecond}, nil, WithOpener(fo.open))
	if err != nil {
		t.Fatal(err)
	}
	startCamera(t, c)
	frames, err := c.Burst(context.Background(), 4, 0)
	// probe + 1 good read; then 2 failures close the device.
	if err == nil || len(frames) != 1 {
		t.Fatalf("%d frames, %v", len(frames), err)
	}
	h := c.Health()
	if h.State != StateDown || h.ConsecutiveFailures < 2 {
		t.Errorf("health %+v", h)
	}
	fo.mu.Lock()
	fo.failAt = 0
	fo.mu.Unlock()
	waitFor(t, "reopen", 2*time.Second, func() bool { return c.Health().State == StateOK })
	fo.mu.Lock()
	defer fo.mu.Unlock()
	if fo.opens < 2 || !fo.devs[0].closed.Load() {
		t.Errorf("opens %d, first closed %v", fo.opens, fo.devs[0].closed.Load())
	}
}

func TestBurstBoundedByContext(t *testing.T) {
	fo := &fakeOpener{}
	c, err := New(Config{Source: "x", Kind: KindFile}, nil, WithOpener(fo.open))
	if err != nil {
		t.Fatal(err)
	}
	// Not running: the context bounds the call.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := c.Burst(ctx, 1, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("burst before Run: %v", err)
	}
	startCamera(t, c)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 60*time.Millisecond)
	defer cancel2()
	frames, err := c.Burst(ctx2, 10, time.Second)
	if !errors.Is(err, context.DeadlineExceeded) || len(frames) == 0 || len(frames) >= 10 {
		t.Fatalf("long burst under short ctx: %d frames, %v", len(frames), err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"ok", Config{Source: "/dev/video0"}, ""},
		{"empty source", Config{}, "camera.source is empty"},
		{"bad kind", Config{Source: "x", Kind: "webcam"}, `camera.kind "webcam"`},
		{"backoff order", Config{Source: "x", ReopenMin: time.Minute, ReopenMax: time.Second}, "reopen_min"},
		{"burst", Config{Source: "x", BurstFrames: 1000}, "burst_frames"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg, nil)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want containing %q", err, tt.want)
			}
		})
	}
}

func TestResolveKind(t *testing.T) {
	dir := t.TempDir()
	for src, want := range map[string]string{
		"0": KindDevice, "/dev/video2": KindDevice, "rtsp://cam/1": KindStream,
		dir: KindImages, filepath.Join(dir, "clip.avi"): KindFile,
	} {
		if got := ResolveKind(Config{Source: src}); got != want {
			t.Errorf("ResolveKind(%q) = %q, want %q", src, got, want)
		}
	}
}

func TestConfigDecodesStrictYAML(t *testing.T) {
	src := "source: /dev/video0\nwidth: 640\nheight: 480\nfps: 15\nburst_frames: 5\nburst_duration: 500ms\nflush_frames: 4\nread_timeout: 2s\nreopen_min: 500ms\nreopen_max: 30s\n"
	var cfg Config
	dec := yaml.NewDecoder(strings.NewReader(src))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.BurstDuration != 500*time.Millisecond || cfg.Width != 640 || cfg.ReopenMax != 30*time.Second {
		t.Fatalf("decoded %+v", cfg)
	}
	dec = yaml.NewDecoder(strings.NewReader("source: x\nburst_frame: 5\n"))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("misspelt key: %v", err)
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
	c, err := New(Config{Source: dir, Loop: true}, nil)
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
