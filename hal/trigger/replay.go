package trigger

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"strings"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
)

// ReplayConfig configures the replay source: either a fixed Interval or a
// File of schedule lines (see ParseSchedule).
type ReplayConfig struct {
	Interval time.Duration `yaml:"interval"`
	// Count stops an interval replay after Count events (0: until cancelled).
	Count int    `yaml:"count"`
	File  string `yaml:"file"`
	// Speed divides every wait: 1 is real time, 1440 replays a day in a minute.
	Speed float64 `yaml:"speed"`
	// Start is the simulated time of offset 0 (RFC 3339); default: the
	// clock's time when Run starts. Ignored for absolute-time schedules.
	Start string `yaml:"start"`
}

// Validate reports configuration mistakes.
func (c ReplayConfig) Validate() error {
	var errs []error
	if (c.Interval > 0) == (c.File != "") {
		errs = append(errs, errors.New("trigger.replay: set exactly one of interval and file"))
	}
	if c.Interval < 0 || c.Count < 0 {
		errs = append(errs, errors.New("trigger.replay: interval and count must not be negative"))
	}
	if math.IsNaN(c.Speed) || c.Speed < 0 || c.Speed > 1e6 {
		errs = append(errs, fmt.Errorf("trigger.replay.speed %g: want 0 (real time) up to 1e6", c.Speed))
	}
	if c.Interval > 24*time.Hour {
		errs = append(errs, fmt.Errorf("trigger.replay.interval %s: want at most 24h", c.Interval))
	}
	if c.Start != "" {
		if t, err := time.Parse(time.RFC3339, c.Start); err != nil {
			errs = append(errs, fmt.Errorf("trigger.replay.start: %w", err))
		} else if err := storable(t); err != nil {
			errs = append(errs, fmt.Errorf("trigger.replay.start: %w", err))
		}
	}
	return errors.Join(errs...)
}

// The store keeps visit times as nanoseconds since 1970 in an int64.
var (
	minStorable = time.Unix(0, 0)
	maxStorable = time.Unix(0, math.MaxInt64)
)

// storable refuses a time a visit cannot be stored at (every visit would
// be lost with "time not set").
func storable(t time.Time) error {
	if !t.After(minStorable) || !t.Before(maxStorable) {
		return fmt.Errorf("%s is outside the times a visit can be stored at (after %s, before %s)",
			t.Format(time.RFC3339), minStorable.UTC().Format(time.RFC3339), maxStorable.UTC().Format(time.RFC3339))
	}
	return nil
}

// Entry is one scheduled trigger.
type Entry struct {
	// Offset from the start of the replay.
	Offset time.Duration
	// At is the absolute time when the schedule gave one (zero for offsets).
	At      time.Time
	Context visit.Context
}

// ParseSchedule reads one entry per line:
//
//	<when> [card_hash=<hash>] [txn_id=<id>]
//
// where <when> is an offset from the start ("0s", "8h15m30s") or an RFC 3339
// time (offsets are then relative to the first line). A schedule uses one
// form throughout and never goes back in time. Blank lines and lines
// starting with # are ignored. Context is validated and its card_hash
// canonicalised as for the endpoint (CanonicalContext).
func ParseSchedule(r io.Reader) ([]Entry, error) {
	var (
		out  []Entry
		abs  *bool
		t0   time.Time
		line int
	)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		var e Entry
		isAbs := false
		if t, err := time.Parse(time.RFC3339Nano, fields[0]); err == nil {
			if err := storable(t); err != nil {
				return nil, fmt.Errorf("schedule line %d: %w", line, err)
			}
			isAbs = true
			if t0.IsZero() {
				t0 = t
			}
			e.At, e.Offset = t, t.Sub(t0)
		} else if d, derr := time.ParseDuration(fields[0]); derr == nil && d >= 0 {
			e.Offset = d
		} else {
			return nil, fmt.Errorf("schedule line %d: %q is neither an offset (90s) nor an RFC 3339 time", line, fields[0])
		}
		if abs == nil {
			abs = &isAbs
		} else if *abs != isAbs {
			return nil, fmt.Errorf("schedule line %d: mixes offsets and absolute times", line)
		}
		for _, f := range fields[1:] {
			k, v, ok := strings.Cut(f, "=")
			switch {
			case ok && k == "card_hash":
				e.Context.CardHash = v
			case ok && k == "txn_id":
				e.Context.TxnID = v
			default:
				return nil, fmt.Errorf("schedule line %d: unknown field %q (want card_hash=... or txn_id=...)", line, k)
			}
		}
		c, err := CanonicalContext(e.Context)
		if err != nil {
			return nil, fmt.Errorf("schedule line %d: %w", line, err)
		}
		e.Context = c
		if n := len(out); n > 0 && e.Offset < out[n-1].Offset {
			return nil, fmt.Errorf("schedule line %d: goes back in time", line)
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read schedule: %w", err)
	}
	return out, nil
}

// Replay emits scheduled events. Trigger.Time is simulated time (start plus
// offset, or the schedule's absolute time), so a day replayed at high speed
// still spreads over a day for counters and rules.
type Replay struct {
	cfg     ReplayConfig
	log     *slog.Logger
	clock   Clock
	entries []Entry
	counters
}

// ReplayOption customises a Replay.
type ReplayOption func(*Replay)

// WithReplayClock sets the clock used for waiting and for the default start.
func WithReplayClock(c Clock) ReplayOption { return func(r *Replay) { r.clock = c } }

// WithSchedule replays entries instead of cfg.File or cfg.Interval.
func WithSchedule(entries []Entry) ReplayOption { return func(r *Replay) { r.entries = entries } }

// NewReplay validates cfg and loads the schedule file.
func NewReplay(cfg ReplayConfig, log *slog.Logger, opts ...ReplayOption) (*Replay, error) {
	if cfg.Speed == 0 {
		cfg.Speed = 1
	}
	r := &Replay{cfg: cfg, log: log, clock: RealClock}
	for _, o := range opts {
		o(r)
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.entries != nil {
		return r, nil
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.File != "" {
		f, err := os.Open(cfg.File)
		if err != nil {
			return nil, fmt.Errorf("trigger.replay: %w", err)
		}
		defer f.Close()
		if r.entries, err = ParseSchedule(f); err != nil {
			return nil, fmt.Errorf("trigger.replay %s: %w", cfg.File, err)
		}
	}
	return r, nil
}

// Entries returns the loaded schedule (nil for an interval replay): the
// ground truth of what Run will emit.
func (r *Replay) Entries() []Entry { return r.entries }

// Stats returns the number of events emitted (Dropped is always 0).
func (r *Replay) Stats() Stats { return r.stats() }

// Run emits the schedule, waiting (offset difference / speed) between
// events and blocking on out (with ctx) so no event is lost. It returns nil
// when the schedule is done or ctx is cancelled.
func (r *Replay) Run(ctx context.Context, out chan<- visit.Trigger) error {
	start := r.clock.Now()
	if r.cfg.Start != "" {
		start, _ = time.Parse(time.RFC3339, r.cfg.Start)
	}
	var prev time.Duration
	emit := func(off time.Duration, at time.Time, c visit.Context) bool {
		if wait := time.Duration(float64(off-prev) / r.cfg.Speed); wait > 0 {
			select {
			case <-r.clock.After(wait):
			case <-ctx.Done():
				return false
			}
		}
		prev = off
		if at.IsZero() {
			at = start.Add(off)
		}
		select {
		case out <- visit.Trigger{ID: NewID(), Time: at, Source: SourceReplay, Context: c}:
			r.accepted.Add(1)
			return true
		case <-ctx.Done():
			return false
		}
	}
	if r.entries != nil || r.cfg.File != "" {
		for _, e := range r.entries {
			if !emit(e.Offset, e.At, e.Context) {
				return nil
			}
		}
		r.log.Info("replay schedule done", "events", len(r.entries))
		return nil
	}
	for i := 1; r.cfg.Count == 0 || i <= r.cfg.Count; i++ {
		if !emit(time.Duration(i)*r.cfg.Interval, time.Time{}, visit.Context{}) {
			return nil
		}
	}
	return nil
}
