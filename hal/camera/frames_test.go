package camera

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
)

// scriptedDevice returns frames made by next (n counts reads from 1).
type scriptedDevice struct {
	n    *atomic.Int64
	next func(n int64) Frame
}

func (d scriptedDevice) Read() (Frame, error) { return d.next(d.n.Add(1)), nil }
func (d scriptedDevice) Grab() error          { return nil }
func (d scriptedDevice) Close() error         { return nil }

func live(n int64) Frame { return Frame{W: 2, H: 1, BGR: []byte{byte(n), 7, 200, 10, 90, 30}} }
func black(int64) Frame  { return Frame{W: 2, H: 1, BGR: make([]byte, 6)} }
func frozen(int64) Frame { return Frame{W: 2, H: 1, BGR: []byte{1, 7, 200, 10, 90, 30}} }
func noisyDark(n int64) Frame {
	return Frame{W: 2, H: 1, BGR: []byte{byte(n % 9), 3, 12, 0, 5, 8}} // covered lens: dark, noisy
}

// Frozen or blank bursts from a device are refused (no frames, ErrFrozen /
// ErrBlank, Health.FrameFault), a frozen device is reopened, and the next
// good burst clears the fault. A covered lens (dark but noisy) and replays
// that repeat an image are not refused.
func TestFrozenAndBlankFramesRefused(t *testing.T) {
	for _, tc := range []struct {
		name, source, kind string
		frames             func(int64) Frame
		n                  int
		want               error
		reopen             bool
	}{
		{"live device", "/dev/video0", KindDevice, live, 5, nil, false},
		{"frozen device", "/dev/video0", KindDevice, frozen, 5, ErrFrozen, true},
		{"frozen device, one-frame bursts", "/dev/video0", KindDevice, frozen, 1, ErrFrozen, true},
		{"blank device", "/dev/video0", KindDevice, black, 5, ErrBlank, false},
		{"blank stream", "rtsp://cam/1", KindStream, black, 5, ErrBlank, false},
		{"repeating stream", "rtsp://cam/1", KindStream, frozen, 5, nil, false},
		{"covered lens", "/dev/video0", KindDevice, noisyDark, 5, nil, false},
		{"replayed image directory", t.TempDir(), KindImages, frozen, 5, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var reads, opens atomic.Int64
			var bad atomic.Bool
			bad.Store(true)
			open := func(Config) (Device, error) {
				opens.Add(1)
				return scriptedDevice{&reads, func(n int64) Frame {
					if bad.Load() {
						return tc.frames(n)
					}
					return live(n)
				}}, nil
			}
			c, err := New(Config{Source: tc.source, Kind: tc.kind, ReopenMin: 1e6, ReopenMax: 1e6}, open, nil)
			if err != nil {
				t.Fatal(err)
			}
			startCamera(t, c)
			frames, err := c.Burst(context.Background(), tc.n, 0)
			if tc.n == 1 { // a one-frame burst is compared with the one before
				frames, err = c.Burst(context.Background(), tc.n, 0)
			}
			if !errors.Is(err, tc.want) || (tc.want != nil && len(frames) != 0) || (tc.want == nil && len(frames) != tc.n) {
				t.Fatalf("%d frames, err %v: want %d frames and %v", len(frames), err, tc.n, tc.want)
			}
			h := c.Health()
			if (h.FrameFault != "") != (tc.want != nil) {
				t.Errorf("FrameFault %q with err %v", h.FrameFault, tc.want)
			}
			if tc.reopen {
				waitFor(t, "the frozen device reopened", 2e9, func() bool { return opens.Load() > 1 })
			} else if opens.Load() != 1 {
				t.Errorf("%d opens, want 1", opens.Load())
			}
			bad.Store(false)
			waitFor(t, "the device open again", 2e9, func() bool { return c.Health().State != StateDown })
			if frames, err := c.Burst(context.Background(), tc.n, 0); err != nil || len(frames) != tc.n {
				t.Fatalf("good burst after: %d frames, %v", len(frames), err)
			}
			if h := c.Health(); h.FrameFault != "" {
				t.Errorf("FrameFault %q after a good burst", h.FrameFault)
			}
		})
	}
}
