package camera

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// hangingOpener's opens block until release is closed, counting how many
// are in flight at once (each one an OS thread stuck in OpenCV).
type hangingOpener struct {
	release chan struct{}
	fail    bool // released opens fail (else they succeed)

	mu       sync.Mutex
	opens    int
	inFlight int
	maxIn    int
	fo       fakeOpener // devices of opens that succeed
}

func (o *hangingOpener) open(cfg Config) (Device, error) {
	o.mu.Lock()
	o.opens++
	o.inFlight++
	o.maxIn = max(o.maxIn, o.inFlight)
	release, fail := o.release, o.fail
	o.mu.Unlock()
	defer func() {
		o.mu.Lock()
		o.inFlight--
		o.mu.Unlock()
	}()
	if release != nil {
		<-release
	}
	if fail {
		return nil, errors.New("open stream: connection timed out")
	}
	return o.fo.open(cfg)
}

func (o *hangingOpener) counts() (opens, inFlight, maxIn int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.opens, o.inFlight, o.maxIn
}

// A stream whose open hangs (a black-hole RTSP server: OpenCV's FFmpeg
// backend waits ~30 s per open): the supervisor abandons it after
// open_timeout, but starts no other open until it has returned. Before,
// a new open started every reopen_max, each stuck in its own OS thread,
// and threads grew without limit (10 -> 53 in 4 minutes with open_timeout
// 2s, reopen_max 2s). Bursts meanwhile fail at once, saying why, and
// Health says an open is blocked. Once the stuck open returns, opens
// resume and the camera recovers.
func TestHangingOpenNeverPilesUp(t *testing.T) {
	for _, fail := range []bool{true, false} {
		name := map[bool]string{true: "stuck open fails", false: "stuck open succeeds late"}[fail]
		t.Run(name, func(t *testing.T) {
			o := &hangingOpener{release: make(chan struct{}), fail: fail}
			c, err := New(Config{Source: "rtsp://user:secret@127.0.0.1:9/x", Kind: KindStream, OpenTimeout: 20 * time.Millisecond,
				ReopenMin: 5 * time.Millisecond, ReopenMax: 10 * time.Millisecond, CloseTimeout: 50 * time.Millisecond}, o.open, nil)
			if err != nil {
				t.Fatal(err)
			}
			startCamera(t, c)
			waitFor(t, "the first open abandoned", time.Second, func() bool { return c.Health().OpenBlocked })
			// 30 open timeouts' worth of retries and bursts (each of which
			// used to try an open of its own).
			deadline := time.Now().Add(600 * time.Millisecond)
			for time.Now().Before(deadline) {
				ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
				_, err := c.Burst(ctx, 1, 0)
				cancel()
				if !errors.Is(err, ErrDown) {
					t.Fatalf("burst while the open hangs: %v, want ErrDown", err)
				}
				if !strings.Contains(err.Error(), "no other open starts until it returns") || strings.Contains(err.Error(), "secret") {
					t.Fatalf("burst error %q: want the blocked open named, credentials masked", err)
				}
				time.Sleep(20 * time.Millisecond)
			}
			opens, inFlight, maxIn := o.counts()
			if opens != 1 || maxIn != 1 || inFlight != 1 {
				t.Fatalf("opens %d, in flight %d, at most %d at once; want 1, 1, 1", opens, inFlight, maxIn)
			}
			h := c.Health()
			if !h.OpenBlocked || h.OpenBlockedSince.IsZero() || h.Abandoned != 1 || h.State != StateDown || h.Stalls != 1 {
				t.Fatalf("health while the open hangs: %+v", h)
			}
			// The stuck open returns (FFmpeg's own timeout, or late): the
			// next open starts, and this time answers.
			o.mu.Lock()
			release := o.release
			o.release, o.fail = nil, false // later opens answer at once
			o.mu.Unlock()
			close(release)
			waitFor(t, "recovery", 2*time.Second, func() bool { return c.Health().State == StateOK })
			h = c.Health()
			if h.OpenBlocked || !h.OpenBlockedSince.IsZero() {
				t.Errorf("health after recovery: %+v", h)
			}
			if _, _, maxIn := o.counts(); maxIn != 1 {
				t.Errorf("%d opens at once, want 1", maxIn)
			}
			if frames, err := c.Burst(context.Background(), 2, 0); err != nil || len(frames) != 2 {
				t.Fatalf("after recovery: %d frames, %v", len(frames), err)
			}
			if !fail {
				// The late device was closed, not leaked.
				o.fo.mu.Lock()
				first := o.fo.devs[0]
				o.fo.mu.Unlock()
				waitFor(t, "the late device closed", time.Second, first.closed.Load)
			}
		})
	}
}

// Shutdown is not held up by an open that hangs: Run returns within its
// CloseTimeout.
func TestHangingOpenShutdown(t *testing.T) {
	o := &hangingOpener{release: make(chan struct{}), fail: true}
	defer close(o.release)
	c, err := New(Config{Source: "rtsp://127.0.0.1:9/x", Kind: KindStream, OpenTimeout: 20 * time.Millisecond,
		ReopenMin: 5 * time.Millisecond, ReopenMax: 10 * time.Millisecond, CloseTimeout: 50 * time.Millisecond}, o.open, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := startCamera(t, c)
	waitFor(t, "the open abandoned", time.Second, func() bool { return c.Health().OpenBlocked })
	start := time.Now()
	stop()
	if d := time.Since(start); d > time.Second {
		t.Errorf("Run took %v to return after cancel, want about the 50ms close timeout", d)
	}
}
