package camera

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// readCount returns how many reads o has served.
func (o *fakeOpener) readCount() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.reads
}

func (o *fakeOpener) setFailAt(n int) {
	o.mu.Lock()
	o.failAt = n
	o.mu.Unlock()
}

// TestProbeFindsCameraFailedBetweenBursts: a device that fails while no
// burst reads it is found by the idle probe, closed and reopened with
// backoff (StateDown) within the probe interval, and is ok again once it
// reads; no burst is needed for either. Before, the camera said ok until
// the next burst failed.
func TestProbeFindsCameraFailedBetweenBursts(t *testing.T) {
	fo := &fakeOpener{}
	const every = 200 * time.Millisecond
	c, err := New(Config{Source: "/dev/video0", ProbeInterval: every, MaxReadFailures: 3,
		ReopenMin: 20 * time.Millisecond, ReopenMax: 40 * time.Millisecond}, fo.open, nil)
	if err != nil {
		t.Fatal(err)
	}
	startCamera(t, c)
	waitFor(t, "open", time.Second, func() bool { return c.Health().State == StateOK })
	// Healthy and idle: one read per interval, no more.
	n0 := fo.readCount()
	time.Sleep(5*every + every/2)
	if n := fo.readCount() - n0; n < 4 || n > 6 {
		t.Errorf("%d probe reads in 5.5 intervals, want 5 (4..6)", n)
	}
	if f := c.Health().LastFrame; time.Since(f) > every+100*time.Millisecond {
		t.Errorf("last frame %s old, want at most the probe interval", time.Since(f))
	}

	fo.setFailAt(fo.readCount() + 1)
	failed := time.Now()
	waitFor(t, "down", every+time.Second, func() bool { return c.Health().State == StateDown })
	took := time.Since(failed)
	t.Logf("failure seen %s after the device failed (probe interval %s)", took.Round(time.Millisecond), every)
	if took > every+300*time.Millisecond {
		t.Errorf("failure seen after %s, want within the %s interval (plus the reads)", took, every)
	}
	h := c.Health()
	if h.ConsecutiveFailures < 3 || h.LastError == "" {
		t.Errorf("health after failed probes %+v", h)
	}
	fo.mu.Lock()
	closed := fo.devs[0].closed.Load()
	fo.mu.Unlock()
	if !closed {
		t.Error("the failed device was not closed")
	}

	fo.setFailAt(0)
	waitFor(t, "recovery", 2*time.Second, func() bool { return c.Health().State == StateOK })
	fo.mu.Lock()
	opens := fo.opens
	fo.mu.Unlock()
	if opens < 2 {
		t.Errorf("opens %d, want a reopen", opens)
	}
}

// TestNoProbeWhenOffOrFiniteReplay: probe_interval 0 reads nothing
// between bursts, and neither does a replay that does not loop (its frames
// belong to its bursts).
func TestNoProbeWhenOffOrFiniteReplay(t *testing.T) {
	for _, cfg := range []Config{
		{Source: "/dev/video0", ProbeInterval: 0},
		{Source: "clip.avi", Kind: KindFile, ProbeInterval: MinProbeInterval},
		{Source: "frames", Kind: KindImages, ProbeInterval: MinProbeInterval},
	} {
		fo := &fakeOpener{}
		c, err := New(cfg, fo.open, nil)
		if err != nil {
			t.Fatal(err)
		}
		stop := startCamera(t, c)
		waitFor(t, "open", time.Second, func() bool { return c.Health().State == StateOK })
		time.Sleep(5 * MinProbeInterval)
		if n := fo.readCount(); n != 1 {
			t.Errorf("%+v: %d reads while idle, want 1 (the read after the open)", cfg, n)
		}
		stop()
	}
}

// slowOpener serves frames that each take delay to read; once failing is
// set the reads fail (after the delay). It notes when each Grab starts:
// only a burst grabs (its flush), so that is when the burst got the device.
type slowOpener struct {
	delay   time.Duration
	fail    bool // set failing once the device is open
	failing atomic.Bool
	mu      sync.Mutex
	grabs   []time.Time
}

type slowDevice struct{ o *slowOpener }

func (o *slowOpener) open(Config) (Device, error) { return slowDevice{o}, nil }
func (d slowDevice) Read() (Frame, error) {
	time.Sleep(d.o.delay)
	if d.o.failing.Load() {
		return Frame{}, ErrDown
	}
	return Frame{W: 2, H: 1, BGR: []byte{byte(time.Now().UnixNano()), 7, 200, 10, 90, 30}}, nil
}
func (d slowDevice) Grab() error {
	d.o.mu.Lock()
	d.o.grabs = append(d.o.grabs, time.Now())
	d.o.mu.Unlock()
	return nil
}
func (d slowDevice) Close() error { return nil }

// burstWaits triggers n one-frame bursts (one flush grab each) at moments
// spread over the probe cycle and returns the worst time from a Burst
// call to its first operation on the device, and to its frame (0 when the
// reads fail).
func burstWaits(t *testing.T, o *slowOpener, probe time.Duration, n int) (toDevice, toFrame time.Duration) {
	t.Helper()
	c, err := New(Config{Source: "fake", Kind: KindStream, FlushFrames: 1, ProbeInterval: probe,
		ReadTimeout: time.Second, MaxReadFailures: 1000}, o.open, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := startCamera(t, c)
	defer stop()
	<-c.FirstOpenDone()
	o.failing.Store(o.fail)
	for i := range n {
		// Idle for a bit more than the interval, shifted each time, so
		// the call lands at every point of a probe read.
		time.Sleep(MinProbeInterval + time.Duration(i)*o.delay/time.Duration(n))
		ctx, cancel := context.WithTimeout(context.Background(), 3*o.delay+MinProbeInterval)
		start := time.Now()
		frames, err := c.Burst(ctx, 1, 0)
		cancel()
		if err != nil && !o.fail {
			t.Fatal(err)
		}
		o.mu.Lock()
		g := o.grabs[len(o.grabs)-1]
		o.mu.Unlock()
		if g.Before(start) {
			t.Fatalf("burst %d: no grab", i)
		}
		toDevice = max(toDevice, g.Sub(start))
		if len(frames) > 0 {
			toFrame = max(toFrame, frames[0].Time.Sub(start))
		}
	}
	return toDevice, toFrame
}

// TestProbeDelaysBurstByOneReadAtMost measures the worst time from a
// Burst call to its first operation on the device and to its first frame,
// with a device whose reads take 50ms (a slow USB camera; V4L2 at 15 fps
// takes about 67ms a frame), without probing and with a probe every 100ms
// (every burst lands on an idle device that is due for, or in, a probe).
// The probe adds at most the one read in progress; also when the probes
// fail and repeat at once (MaxReadFailures high): a waiting burst goes
// before the next probe read.
func TestProbeDelaysBurstByOneReadAtMost(t *testing.T) {
	if testing.Short() {
		t.Skip("timing measurement")
	}
	const delay = 50 * time.Millisecond
	const n = 12
	baseDev, baseFrame := burstWaits(t, &slowOpener{delay: delay}, 0, n)
	probedDev, probedFrame := burstWaits(t, &slowOpener{delay: delay}, MinProbeInterval, n)
	failingDev, _ := burstWaits(t, &slowOpener{delay: delay, fail: true}, MinProbeInterval, n)
	t.Logf("worst over %d bursts, %s reads: call to device / to first frame: no probe %s / %s; probe every %s %s / %s; failing probes %s / -",
		n, delay, baseDev.Round(time.Millisecond), baseFrame.Round(time.Millisecond), MinProbeInterval,
		probedDev.Round(time.Millisecond), probedFrame.Round(time.Millisecond), failingDev.Round(time.Millisecond))
	slack := 40 * time.Millisecond // scheduling on a loaded machine
	if probedDev > baseDev+delay+slack || failingDev > baseDev+delay+slack || probedFrame > baseFrame+delay+slack {
		t.Errorf("a probe delayed a burst by more than one read (%s)", delay)
	}
}
