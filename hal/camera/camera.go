// Package camera grabs bursts of frames from a Device (a V4L2 device, a
// stream, a video file or an image directory; the gocv driver is
// hal/camera/cvcam) behind a stall watchdog. It is pure Go: the
// supervisor builds and tests without cgo, with fake devices.
//
// Lifecycle: New validates the config; Run(ctx) owns the device and serves
// Burst calls until ctx is cancelled. Run starts one device goroutine per
// opened device ("session"): it opens the device, performs the reads Run asks
// for one at a time, and closes the device when Run closes its request
// channel. Run bounds every open and read with a timer; a read that outlives
// ReadTimeout is a stall: the session is abandoned (its goroutine exits, and
// closes the device, whenever the blocked OpenCV call returns) and a new one is
// opened with exponential backoff. Failed reads do the same after
// MaxReadFailures in a row. Run returns after its sessions have exited, or
// after CloseTimeout if one is stuck in OpenCV (Health.Abandoned counts them).
//
// Between bursts, Run probes the open device: when no read has succeeded
// for ProbeInterval it reads one frame and drops it, under the same
// watchdog and with the same accounting as a burst's read, so a camera that
// fails at night is down (and being reopened) before the first customer's
// card. The device stays open between reads, as it does between bursts. A
// burst waits for at most the one probe read in progress: Run serves a
// waiting burst before it starts the next probe read.
//
// At most one open is outstanding: an open that outlived OpenTimeout is
// abandoned too, but no other open starts until it has returned
// (Health.OpenBlocked says so meanwhile). OpenCV's FFmpeg backend opens
// streams one at a time, each blocked for its own timeout (~30 s), so a
// new open every reopen_max piled up OS threads, one per waiting open,
// without limit.
//
// No gocv.Mat leaves the driver: frames are copied into Frame.
package camera

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/clip"
	"github.com/periocular/atm-agent/internal/redact"
)

// Frame is one captured image: interleaved 8-bit BGR, stride 3*W. It is
// the shared visit.Frame, so bursts go to perception without a copy.
type Frame = visit.Frame

// Device is one opened capture source. A Device is used by a single
// goroutine; Read and Grab may block (the caller guards them with a watchdog).
type Device interface {
	// Read returns the next frame.
	Read() (Frame, error)
	// Grab takes and discards one frame (flushes driver buffers).
	Grab() error
	Close() error
}

// Skipper is implemented by a device that passes over inputs it cannot
// use and serves the others (cvcam's image folders: a file that does not
// decode). Skipped returns the errors of the inputs skipped since its
// last call; the device's goroutine calls it after every operation, and
// the camera logs each one once and counts it (Health.Skipped).
type Skipper interface {
	Skipped() []error
}

// OpenFunc opens a device for cfg. It may block; the caller bounds it with
// Config.OpenTimeout. cvcam.Open opens the gocv backends.
type OpenFunc func(cfg Config) (Device, error)

// Errors reported by Burst and Health.
var (
	ErrDown        = errors.New("camera down")
	ErrStall       = errors.New("camera read stalled")
	ErrEndOfStream = errors.New("end of replay stream")
	ErrNotRunning  = errors.New("camera not running")
	// ErrFrozen: a V4L2 device returned the same image, byte for byte,
	// for every frame of a burst (or a one-frame burst the same image as
	// the last burst). A live sensor never does (its noise alone changes
	// the bytes); a wedged driver or a camera that lost its sensor does.
	ErrFrozen = errors.New("frames frozen (the same image, byte for byte)")
	// ErrBlank: every frame of a burst from a device or stream is one flat
	// colour (a dead sensor, a "no signal" picture). A lens covered by
	// hand or tape still shows sensor noise and is not blank: that visit
	// is perceived (and is faceless).
	ErrBlank = errors.New("frames blank (one flat colour)")
)

// blankRange is the largest spread of byte values (over every pixel and
// channel) that still makes a frame one flat colour.
const blankRange = 3

// State is the camera's health state.
type State uint8

const (
	// StateDown: no usable device; a reopen is pending.
	StateDown State = iota
	// StateDegraded: the device is open but its last read failed.
	StateDegraded
	// StateOK: the device is open and its last read succeeded.
	StateOK
)

func (s State) String() string {
	switch s {
	case StateOK:
		return "ok"
	case StateDegraded:
		return "degraded"
	default:
		return "down"
	}
}

// MarshalText makes State readable in JSON status payloads.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Health is a snapshot for metrics and status.
type Health struct {
	State               State     `json:"state"`
	Kind                string    `json:"kind"`
	ConsecutiveFailures int       `json:"consecutive_failures"` // failed opens and reads since the last good frame
	Reopens             uint64    `json:"reopens"`              // open attempts after the first
	Stalls              uint64    `json:"stalls"`               // reads or opens that outlived their timeout
	Abandoned           int       `json:"abandoned"`            // device goroutines still stuck in OpenCV
	Frames              uint64    `json:"frames"`               // frames read (bursts, the read after an open, idle probes)
	Skipped             uint64    `json:"skipped,omitempty"`    // inputs a device passed over (Skipper), each counted once
	LastFrame           time.Time `json:"last_frame,omitzero"`
	LastError           string    `json:"last_error,omitempty"`
	// FrameFault says why the last burst's frames were refused (ErrFrozen,
	// ErrBlank); "" once a burst is good again. The daemon's /healthz
	// lists it: such frames would otherwise become noface visits (or, a
	// frozen face, the same identity on every card) without a word.
	FrameFault string    `json:"frame_fault,omitempty"`
	NextOpen   time.Time `json:"next_open,omitzero"` // when down: next reopen attempt
	// OpenBlocked: an open that outlived OpenTimeout has not returned
	// yet (it is stuck in OpenCV since OpenBlockedSince); no new open
	// starts until it does.
	OpenBlocked      bool      `json:"open_blocked,omitempty"`
	OpenBlockedSince time.Time `json:"open_blocked_since,omitzero"`
}

// Camera is a burst-capable camera. Create with New, drive with Run.
type Camera struct {
	cfg  Config
	log  *slog.Logger
	open OpenFunc

	reqs    chan burstReq
	running chan struct{} // closed when Run starts
	opened1 chan struct{} // closed when Run's first open attempt has ended
	stopped chan struct{} // closed when Run returns
	runOnce sync.Once

	mu sync.Mutex
	h  Health

	// Owned by the Run goroutine.
	sess        *session
	abandoned   []*session
	openingLate *session // abandoned while its open was still running; nil once it returned
	sessFails   int
	backoff     time.Duration
	nextOpen    time.Time
	lastAttempt time.Time
	nextProbe   time.Time // when the idle device is read next (probing)
	attempts    uint64
	eos         bool
	seed        maphash.Seed
	lastHash    uint64 // of the last frame of the last accepted burst (devices)
	skipSeen    map[string]bool
}

type burstReq struct {
	ctx   context.Context
	n     int
	over  time.Duration
	reply chan burstResp // buffered 1
}

type burstResp struct {
	frames []Frame
	err    error
}

// New returns a camera for cfg (zero fields take defaults) whose devices
// open draws (cvcam.Open for real hardware, fakes in tests). It does not
// open the device; Run does.
func New(cfg Config, open OpenFunc, log *slog.Logger) (*Camera, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("camera config: %w", err)
	}
	if open == nil {
		return nil, errors.New("camera: no device opener")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Camera{
		cfg:     cfg,
		log:     log,
		open:    open,
		reqs:    make(chan burstReq),
		running: make(chan struct{}),
		opened1: make(chan struct{}),
		stopped: make(chan struct{}),
		backoff: cfg.ReopenMin,
		seed:    maphash.MakeSeed(),
	}
	c.h.Kind = ResolveKind(cfg)
	c.h.LastError = "not opened yet"
	return c, nil
}

// Config returns the effective configuration (defaults applied).
func (c *Camera) Config() Config { return c.cfg }

// FirstOpenDone is closed when Run's first open attempt has ended: the
// device opened and gave a frame, or the open or that first read failed
// or timed out (within OpenTimeout plus ReadTimeout). Until then the
// camera is starting: Health says StateDown, "not opened yet", but
// nothing has failed.
func (c *Camera) FirstOpenDone() <-chan struct{} { return c.opened1 }

// Health returns a snapshot of the camera's health. Safe for concurrent use.
func (c *Camera) Health() Health {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.h
}

// Burst grabs n frames spread evenly over the duration over (frame i at
// start+i*over/n), after flushing stale frames from devices and streams.
// n <= 0 and over < 0 take the configured burst. It returns the frames it got
// and, if fewer than n, the error that stopped it. Bounded by ctx.
func (c *Camera) Burst(ctx context.Context, n int, over time.Duration) ([]Frame, error) {
	if n <= 0 {
		n = c.cfg.BurstFrames
	}
	if over < 0 {
		over = c.cfg.BurstDuration
	}
	req := burstReq{ctx: ctx, n: n, over: over, reply: make(chan burstResp, 1)}
	select {
	case c.reqs <- req:
	case <-ctx.Done():
		return nil, fmt.Errorf("camera burst: %w", ctx.Err())
	case <-c.stopped:
		return nil, fmt.Errorf("camera burst: %w", ErrNotRunning)
	}
	// Run watches req.ctx itself and answers promptly (every wait inside a
	// burst also selects on it), so the frames taken so far are not lost.
	r := <-req.reply
	return r.frames, redact.Error(r.err, c.cfg.Source)
}

// Run opens the device and serves Burst calls until ctx is done; it then
// closes the device and returns nil. It returns an error only if called twice.
// The device is (re)opened with backoff whenever it is down, also between
// bursts, so a camera that comes back is healthy before the next trigger.
func (c *Camera) Run(ctx context.Context) error {
	first := false
	c.runOnce.Do(func() { first = true })
	if !first {
		return errors.New("camera: Run called twice")
	}
	close(c.running)
	defer close(c.stopped)
	defer c.shutdown()

	c.tryOpen(ctx)
	close(c.opened1)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		c.prune()
		var retry, probe <-chan time.Time
		var lateOpen <-chan struct{}
		switch {
		case c.sess == nil && !c.eos:
			if s := c.blockedOpen(); s != nil {
				lateOpen = s.openDone // no new open until it returns
			} else {
				timer.Reset(time.Until(c.nextOpen))
				retry = timer.C
			}
		case c.sess != nil && c.probing():
			timer.Reset(time.Until(c.nextProbe))
			probe = timer.C
		}
		select {
		case <-ctx.Done():
			return nil
		case <-lateOpen:
			// The abandoned open returned: the next pass arms the retry.
		case <-retry:
			c.tryOpen(ctx)
		case <-probe:
			select {
			case req := <-c.reqs: // a waiting burst goes first: it reads the device too
				c.serve(ctx, req)
			default:
				c.probe(ctx)
			}
		case req := <-c.reqs:
			c.serve(ctx, req)
		}
	}
}

// serve answers one Burst request.
func (c *Camera) serve(ctx context.Context, req burstReq) {
	frames, err := c.burst(ctx, req)
	req.reply <- burstResp{frames, err}
}

// probing reports whether the idle device is probed: ProbeInterval is set
// and the source is live (a device or a stream) or a replay that loops. A
// replay that ends would lose to the probes frames its bursts should get.
func (c *Camera) probing() bool {
	if c.cfg.ProbeInterval <= 0 {
		return false
	}
	k := ResolveKind(c.cfg)
	return c.cfg.Loop || k == KindDevice || k == KindStream
}

// probe reads one frame from the idle device and drops it at once (no
// frame is kept, logged or stored). read accounts for the result as it
// does for a burst's read: a success makes the camera ok and sets the next
// probe ProbeInterval later; a failure leaves the next probe due, so the
// reads repeat (a waiting burst first) until MaxReadFailures in a row, or
// one stall, close the device and the reopen backoff starts (StateDown).
func (c *Camera) probe(ctx context.Context) {
	if _, err := c.read(ctx); err != nil && ctx.Err() == nil {
		c.log.Debug("camera probe failed", "source", c.name(), "err", redact.Error(err, c.cfg.Source))
	}
}

// shutdown closes the current session and waits, up to CloseTimeout, for all
// device goroutines to exit.
func (c *Camera) shutdown() {
	if c.sess != nil {
		close(c.sess.ops)
		c.abandoned = append(c.abandoned, c.sess)
		c.sess = nil
	}
	deadline := time.NewTimer(c.cfg.CloseTimeout)
	defer deadline.Stop()
	for _, s := range c.abandoned {
		select {
		case <-s.done:
		case <-deadline.C:
			c.prune()
			c.log.Warn("camera device goroutine still blocked in OpenCV at shutdown", "abandoned", len(c.abandoned))
			return
		}
	}
	c.prune()
}

// prune forgets abandoned sessions that have exited.
func (c *Camera) prune() {
	live := c.abandoned[:0]
	for _, s := range c.abandoned {
		select {
		case <-s.done:
		default:
			live = append(live, s)
		}
	}
	c.abandoned = live
	c.mu.Lock()
	c.h.Abandoned = len(live)
	c.mu.Unlock()
}

// blockedOpen returns the abandoned session whose open has not returned
// yet, or nil (and clears Health.OpenBlocked) once it has.
func (c *Camera) blockedOpen() *session {
	s := c.openingLate
	if s == nil {
		return nil
	}
	select {
	case <-s.openDone:
		c.openingLate = nil
		var err error
		select {
		case err = <-s.opened: // sent before openDone closed
		default:
		}
		if err != nil {
			err = redact.Error(err, c.cfg.Source)
		} else {
			err = errors.New("it opened late and was closed")
		}
		c.log.Info("camera: the abandoned open returned; opens resume", "source", c.name(), "result", err)
		c.update(func(h *Health) { h.OpenBlocked, h.OpenBlockedSince = false, time.Time{} })
		return nil
	default:
		return s
	}
}

// tryOpen starts a session and probes it with one read. It starts none
// while an abandoned open is still running (blockedOpen).
func (c *Camera) tryOpen(ctx context.Context) {
	if c.blockedOpen() != nil {
		return
	}
	now := time.Now()
	c.lastAttempt = now
	c.attempts++
	if c.attempts > 1 {
		c.update(func(h *Health) { h.Reopens++ })
	}
	s := startSession(c.open, c.cfg)
	timer := time.NewTimer(c.cfg.OpenTimeout)
	defer timer.Stop()
	var err error
	late := false
	select {
	case err = <-s.opened:
	case <-timer.C:
		err = fmt.Errorf("open camera %q: no answer within %s (abandoned; no other open starts until it returns): %w", c.name(), c.cfg.OpenTimeout, ErrStall)
		c.update(func(h *Health) { h.Stalls++ })
		late = true
	case <-ctx.Done():
		err = ctx.Err()
		late = true
	}
	if err != nil {
		close(s.ops)
		c.abandoned = append(c.abandoned, s)
		if late {
			c.openingLate = s
			c.update(func(h *Health) { h.OpenBlocked, h.OpenBlockedSince = true, now })
		}
		if ctx.Err() == nil {
			c.openFailed(err)
		}
		return
	}
	c.sess, c.sessFails = s, 0
	// Probe: a device that opens but gives no frame is not up.
	if _, err := c.read(ctx); err != nil {
		if c.sess != nil && ctx.Err() == nil {
			c.closeSession()
			c.openFailed(err)
		}
		return
	}
	c.log.Info("camera open", "source", c.name(), "kind", ResolveKind(c.cfg), "attempt", c.attempts)
}

// name is the source as printed: credentials in a stream URL masked
// (redact.URL), for every log line, error and health field.
func (c *Camera) name() string { return redact.URL(c.cfg.Source) }

// Name is the camera's label in the status: camera.name, or
// DefaultName of the source.
func (c *Camera) Name() string {
	if c.cfg.Name != "" {
		return c.cfg.Name
	}
	return DefaultName(c.cfg.Source)
}

// DefaultName is the label of a camera without camera.name: its source
// with URL credentials masked (redact.URL), cut to MaxNameLen characters
// by keeping the end ("…" and the last 63), where a /dev/v4l/by-id path
// has its serial number and index.
func DefaultName(source string) string {
	return clip.Tail(redact.URL(source), MaxNameLen)
}

func (c *Camera) openFailed(err error) {
	err = redact.Error(err, c.cfg.Source)
	c.nextOpen = time.Now().Add(c.backoff)
	c.log.Warn("camera unavailable", "source", c.name(), "err", err, "retry_in", c.backoff)
	c.update(func(h *Health) {
		h.State = StateDown
		h.ConsecutiveFailures++
		h.LastError = err.Error()
		h.NextOpen = c.nextOpen
	})
	c.backoff = min(2*c.backoff, c.cfg.ReopenMax)
}

func (c *Camera) closeSession() {
	close(c.sess.ops)
	c.abandoned = append(c.abandoned, c.sess)
	c.sess = nil
}

func (c *Camera) update(f func(*Health)) {
	c.mu.Lock()
	f(&c.h)
	c.mu.Unlock()
}

// read performs one read on the current session under the watchdog and
// accounts for the result.
func (c *Camera) read(ctx context.Context) (Frame, error) {
	f, err := c.do(ctx, opRead)
	if err == nil {
		c.sessFails = 0
		c.backoff = c.cfg.ReopenMin
		c.nextProbe = time.Now().Add(c.cfg.ProbeInterval)
		c.update(func(h *Health) {
			h.State = StateOK
			h.ConsecutiveFailures = 0
			h.Frames++
			h.LastFrame = f.Time
			h.LastError = ""
			h.NextOpen = time.Time{}
		})
		return f, nil
	}
	if ctx.Err() != nil {
		return Frame{}, err
	}
	c.readFailed(err)
	return Frame{}, err
}

// readFailed records a failed read and closes the session on a stall, at the
// end of a non-looping replay, or after MaxReadFailures failures in a row.
func (c *Camera) readFailed(err error) {
	err = redact.Error(err, c.cfg.Source)
	c.sessFails++
	stall := errors.Is(err, ErrStall)
	eos := errors.Is(err, ErrEndOfStream)
	c.update(func(h *Health) {
		h.ConsecutiveFailures++
		h.LastError = err.Error()
		h.State = StateDegraded
		if stall {
			h.Stalls++
		}
	})
	if !stall && !eos && c.sessFails < c.cfg.MaxReadFailures {
		return
	}
	if c.sess != nil {
		c.closeSession()
	}
	if eos {
		c.eos = true
		c.update(func(h *Health) { h.State = StateDown })
		c.log.Info("camera replay ended", "source", c.name())
		return
	}
	c.openFailed(err)
}

// do runs one operation on the session, bounded by ReadTimeout.
func (c *Camera) do(ctx context.Context, kind opKind) (Frame, error) {
	if c.sess == nil {
		return Frame{}, ErrDown
	}
	o := op{kind: kind, reply: make(chan opResult, 1)}
	timer := time.NewTimer(c.cfg.ReadTimeout)
	defer timer.Stop()
	select { // the session is idle between operations; the timer is a safety net
	case c.sess.ops <- o:
	case <-timer.C:
		return Frame{}, fmt.Errorf("camera %q: %w (device goroutine busy)", c.name(), ErrStall)
	case <-ctx.Done():
		return Frame{}, ctx.Err()
	}
	select {
	case r := <-o.reply:
		c.noteSkipped(r.skipped)
		return r.frame, r.err
	case <-timer.C:
		return Frame{}, fmt.Errorf("camera %q: no frame within %s: %w", c.name(), c.cfg.ReadTimeout, ErrStall)
	case <-ctx.Done():
		// Run is stopping: shutdown closes the session and waits for it.
		return Frame{}, ctx.Err()
	}
}

// noteSkipped logs and counts, once each, the inputs a Skipper device
// passed over (the same file skipped again after a reopen is not).
func (c *Camera) noteSkipped(errs []error) {
	for _, err := range errs {
		msg := redact.Error(err, c.cfg.Source).Error()
		if c.skipSeen[msg] {
			continue
		}
		if c.skipSeen == nil {
			c.skipSeen = map[string]bool{}
		}
		c.skipSeen[msg] = true
		c.log.Warn("camera input skipped; the others are served", "source", c.name(), "err", msg)
		c.update(func(h *Health) { h.Skipped++ })
	}
}

// burst serves one Burst request on the Run goroutine.
func (c *Camera) burst(runCtx context.Context, req burstReq) ([]Frame, error) {
	ctx, cancel := context.WithCancel(req.ctx)
	defer cancel()
	stop := context.AfterFunc(runCtx, cancel)
	defer stop()

	if c.eos {
		return nil, fmt.Errorf("camera burst: %w", ErrEndOfStream)
	}
	if c.sess == nil && time.Since(c.lastAttempt) >= c.cfg.ReopenMin {
		c.tryOpen(ctx) // a customer is waiting: do not sit out the whole backoff
	}
	if c.sess == nil {
		return nil, fmt.Errorf("camera burst: %w: %s", ErrDown, c.Health().LastError)
	}
	kind := ResolveKind(c.cfg)
	if kind == KindDevice || kind == KindStream {
		for i := 0; i < c.cfg.FlushFrames && c.sess != nil; i++ {
			if _, err := c.do(ctx, opGrab); err != nil {
				if ctx.Err() != nil {
					return nil, fmt.Errorf("camera burst: %w", ctx.Err())
				}
				c.readFailed(err)
			}
		}
	}
	frames := make([]Frame, 0, req.n)
	start := time.Now()
	var lastErr error
	for i := 0; len(frames) < req.n && i < 2*req.n+c.cfg.MaxReadFailures; i++ {
		if c.sess == nil {
			return frames, fmt.Errorf("camera burst: %d of %d frames: %w", len(frames), req.n, lastErr)
		}
		if i > 0 {
			at := start.Add(time.Duration(i) * req.over / time.Duration(req.n))
			if err := sleepUntil(ctx, at); err != nil {
				return frames, fmt.Errorf("camera burst: %d of %d frames: %w", len(frames), req.n, err)
			}
		}
		f, err := c.read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return frames, fmt.Errorf("camera burst: %d of %d frames: %w", len(frames), req.n, ctx.Err())
			}
			lastErr = err
			continue
		}
		frames = append(frames, f)
	}
	if err := c.checkFrames(kind, frames); err != nil {
		return nil, fmt.Errorf("camera burst: %d frames refused: %w", len(frames), err)
	}
	if len(frames) < req.n {
		return frames, fmt.Errorf("camera burst: %d of %d frames: %w", len(frames), req.n, lastErr)
	}
	return frames, nil
}

// checkFrames refuses a burst from a device or stream whose frames are all
// blank, or (devices only) all the same image: such a burst says nothing
// about who stood at the ATM, so the visit is a camera_error, not noface
// (and not a match of the frozen face). A frozen device is reopened.
// Replays (files, image directories) may repeat an image and are not
// checked; streams are not checked for frozen frames (an encoder may
// repeat a still scene exactly).
func (c *Camera) checkFrames(kind string, frames []Frame) error {
	if len(frames) == 0 || (kind != KindDevice && kind != KindStream) {
		return nil
	}
	var fault error
	blank := true
	for _, f := range frames {
		if !isBlank(f.BGR) {
			blank = false
			break
		}
	}
	if blank {
		fault = ErrBlank
	} else if kind == KindDevice {
		h0 := c.hash(frames[0])
		same := len(frames) > 1 || h0 == c.lastHash
		for _, f := range frames[1:] {
			if !same {
				break
			}
			same = c.hash(f) == h0
		}
		if same {
			fault = ErrFrozen
		}
		c.lastHash = c.hash(frames[len(frames)-1])
	}
	if fault == nil {
		c.update(func(h *Health) { h.FrameFault = "" })
		return nil
	}
	c.log.Warn("camera frames refused", "source", c.name(), "frames", len(frames), "err", fault)
	c.update(func(h *Health) {
		h.FrameFault = fault.Error()
		h.LastError = fault.Error()
		if h.State == StateOK {
			h.State = StateDegraded
		}
	})
	if errors.Is(fault, ErrFrozen) && c.sess != nil {
		c.closeSession()
		c.lastHash = 0
		c.openFailed(fault)
	}
	return fault
}

func (c *Camera) hash(f Frame) uint64 {
	var h maphash.Hash
	h.SetSeed(c.seed)
	fmt.Fprintf(&h, "%dx%d|", f.W, f.H)
	h.Write(f.BGR)
	return h.Sum64()
}

// isBlank reports whether every byte of b lies within blankRange of the
// others (it stops at the first byte that does not).
func isBlank(b []byte) bool {
	if len(b) == 0 {
		return true
	}
	lo, hi := b[0], b[0]
	for _, v := range b {
		lo, hi = min(lo, v), max(hi, v)
		if hi-lo > blankRange {
			return false
		}
	}
	return true
}

func sleepUntil(ctx context.Context, at time.Time) error {
	d := time.Until(at)
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

type opKind uint8

const (
	opRead opKind = iota
	opGrab
)

type op struct {
	kind  opKind
	reply chan opResult // buffered 1: the device goroutine never blocks on it
}

type opResult struct {
	frame   Frame
	err     error
	skipped []error // Skipper's, since the last operation
}

// session is one opened device and the goroutine that owns it. Run owns the
// session: it sends operations on ops and closes ops to end it. The goroutine
// exits, after closing the device, when ops is closed and the operation in
// progress (which may be stuck in OpenCV) has returned; done is closed then.
type session struct {
	ops      chan op
	opened   chan error    // buffered 1: result of the open
	openDone chan struct{} // closed when the open has returned
	done     chan struct{}
}

func startSession(open OpenFunc, cfg Config) *session {
	s := &session{ops: make(chan op), opened: make(chan error, 1), openDone: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		dev, err := open(cfg)
		s.opened <- err
		close(s.openDone)
		if err != nil {
			return
		}
		defer dev.Close()
		for o := range s.ops {
			var r opResult
			switch o.kind {
			case opRead:
				r.frame, r.err = dev.Read()
				if r.err == nil && r.frame.Time.IsZero() {
					r.frame.Time = time.Now()
				}
			case opGrab:
				r.err = dev.Grab()
			}
			if sk, ok := dev.(Skipper); ok {
				r.skipped = sk.Skipped()
			}
			o.reply <- r
		}
	}()
	return s
}
