package camera

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// startCamera runs c in the background; the returned stop cancels Run and
// waits for it.
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
	// A live sensor: every frame differs (noise) and is not one flat colour.
	return Frame{W: 2, H: 1, BGR: []byte{byte(n), byte(n >> 8), 200, 10, 90, 30}}, nil
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
	c, err := New(Config{Source: "/dev/video0", FlushFrames: 3}, fo.open, nil)
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
		ReopenMin: 10 * time.Millisecond, ReopenMax: 40 * time.Millisecond}, fo.open, nil)
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
	if h.Stalls == 0 || h.State != StateDown {
		t.Fatalf("health after stall %+v", h)
	}
	// Health.Abandoned is recounted when the supervisor prunes, on its
	// next request or reopen attempt: it may lag the failed burst.
	waitFor(t, "the stalled session counted as abandoned", time.Second, func() bool { return c.Health().Abandoned > 0 })
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
	c, err := New(Config{Source: "fake", Kind: KindFile, MaxReadFailures: 2, ReopenMin: 10 * time.Millisecond}, fo.open, nil)
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
	c, err := New(Config{Source: "x", Kind: KindFile}, fo.open, nil)
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
		{"probe off", Config{Source: "x", ProbeInterval: 0}, ""},
		{"probe too often", Config{Source: "x", ProbeInterval: 50 * time.Millisecond}, "camera.probe_interval 50ms: want 0 (off) or 100ms to 24h"},
		{"probe negative", Config{Source: "x", ProbeInterval: -time.Second}, "camera.probe_interval -1s"},
		{"probe too rare", Config{Source: "x", ProbeInterval: 25 * time.Hour}, "camera.probe_interval 25h0m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg, (&fakeOpener{}).open, nil)
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

// TestCameraName: the status names a camera by camera.name, or by its
// source cut to 64 characters keeping the end (a by-id path's serial and
// index); a camera.name over 64 characters is refused.
func TestCameraName(t *testing.T) {
	byID := "/dev/v4l/by-id/usb-Sonix_Technology_Co.__Ltd._USB_2.0_Camera_SN0001-video-index0"
	for _, c := range []struct{ name, source, want string }{
		{"", "/dev/video0", "/dev/video0"},
		{"", byID, "…" + byID[len(byID)-63:]},
		{"lobby", byID, "lobby"},
	} {
		cam, err := New(Config{Name: c.name, Source: c.source}, func(Config) (Device, error) { return nil, ErrDown }, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := cam.Name(); got != c.want || utf8.RuneCountInString(got) > MaxNameLen {
			t.Errorf("name %q source %q: Name() = %q, want %q", c.name, c.source, got, c.want)
		}
	}
	if err := (Config{Source: "0", Name: strings.Repeat("é", 65)}).Validate(); err == nil || !strings.Contains(err.Error(), "camera.name") {
		t.Errorf("a 65-character camera.name: %v, want refused", err)
	}
}
