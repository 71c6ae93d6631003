package trigger

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpioreg"
	"periph.io/x/host/v3"
	"periph.io/x/host/v3/gpioioctl"
)

// GPIOConfig selects the card-insert line and how it is read.
type GPIOConfig struct {
	// Pin is a periph pin name (gpioreg.ByName), e.g. "GPIO17".
	// Alternatively Chip ("gpiochip0" or "/dev/gpiochip0") and Line (offset).
	Pin  string `yaml:"pin"`
	Chip string `yaml:"chip"`
	Line int    `yaml:"line"`
	// Edge is the logical edge that means "card inserted": rising (the line
	// becomes active), falling (becomes inactive) or both. Default rising.
	Edge string `yaml:"edge"`
	// ActiveLow inverts the line: low means active.
	ActiveLow bool `yaml:"active_low"`
	// Pull is up, down, float or none (leave as configured). Default none.
	Pull string `yaml:"pull"`
	// Debounce is the quiet time the line must hold before a level counts.
	Debounce time.Duration `yaml:"debounce"`
	// WaitTimeout bounds each WaitForEdge so cancellation is noticed.
	WaitTimeout time.Duration `yaml:"wait_timeout"`
}

// DefaultGPIOConfig returns the defaults (no pin selected).
func DefaultGPIOConfig() GPIOConfig {
	return GPIOConfig{Edge: "rising", Pull: "none", Debounce: 30 * time.Millisecond, WaitTimeout: 200 * time.Millisecond}
}

func (c GPIOConfig) withDefaults() GPIOConfig {
	d := DefaultGPIOConfig()
	if c.Edge == "" {
		c.Edge = d.Edge
	}
	if c.Pull == "" {
		c.Pull = d.Pull
	}
	if c.WaitTimeout == 0 {
		c.WaitTimeout = d.WaitTimeout
	}
	return c
}

// Validate reports configuration mistakes.
func (c GPIOConfig) Validate() error {
	var errs []error
	switch {
	case c.Pin == "" && c.Chip == "":
		errs = append(errs, errors.New("trigger.gpio: set pin (e.g. GPIO17) or chip and line"))
	case c.Pin != "" && c.Chip != "":
		errs = append(errs, errors.New("trigger.gpio: set either pin or chip/line, not both"))
	}
	if c.Chip != "" && c.Line < 0 {
		errs = append(errs, fmt.Errorf("trigger.gpio.line %d must not be negative", c.Line))
	}
	if _, err := parseEdge(c.Edge); err != nil {
		errs = append(errs, err)
	}
	if _, err := parsePull(c.Pull); err != nil {
		errs = append(errs, err)
	}
	if c.Debounce < 0 || c.Debounce > 5*time.Second {
		errs = append(errs, fmt.Errorf("trigger.gpio.debounce %s: want 0..5s", c.Debounce))
	}
	if c.WaitTimeout <= 0 || c.WaitTimeout > 10*time.Second {
		errs = append(errs, fmt.Errorf("trigger.gpio.wait_timeout %s: want a bounded wait in (0, 10s]", c.WaitTimeout))
	}
	return errors.Join(errs...)
}

func parseEdge(s string) (gpio.Edge, error) {
	switch strings.ToLower(s) {
	case "", "rising":
		return gpio.RisingEdge, nil
	case "falling":
		return gpio.FallingEdge, nil
	case "both":
		return gpio.BothEdges, nil
	}
	return gpio.NoEdge, fmt.Errorf("trigger.gpio.edge %q: want rising, falling or both", s)
}

func parsePull(s string) (gpio.Pull, error) {
	switch strings.ToLower(s) {
	case "", "none":
		return gpio.PullNoChange, nil
	case "up":
		return gpio.PullUp, nil
	case "down":
		return gpio.PullDown, nil
	case "float":
		return gpio.Float, nil
	}
	return gpio.PullNoChange, fmt.Errorf("trigger.gpio.pull %q: want up, down, float or none", s)
}

// GPIO emits an visit.Trigger on each debounced card-insert edge.
//
// A line that cannot be had (chip or pin not found, configuring it fails)
// or that stops working (every wait for an edge fails at once: the chip was
// removed) is not fatal: Run logs it, reports it through Err (the daemon's
// /healthz lists it), and tries again with backoff, so the agent and its
// other triggers (the ATM application's HTTP endpoint) keep running.
// Before, Run returned the error, the agent exited with it and systemd
// restarted it every 5 s for as long as the chip was missing, taking the
// HTTP trigger down with it; a chip removed under the running agent made
// the edge loop spin on a core.
type GPIO struct {
	cfg    GPIOConfig
	log    *slog.Logger
	pin    gpio.PinIn
	lookup func() (gpio.PinIn, error)
	clock  Clock
	counters

	// retryMin and retryMax bound the backoff between attempts to arm
	// the line after a failure.
	retryMin, retryMax time.Duration

	errMu sync.Mutex
	err   error // why the line is not armed; nil when it is
}

// GPIO backoff between attempts to arm a line that failed.
const (
	gpioRetryMin = time.Second
	gpioRetryMax = time.Minute
	// gpioFastFails waits for an edge in a row that fail at once (in under
	// a quarter of WaitTimeout, with no edge) mean the line is gone.
	gpioFastFails = 20
)

// GPIOOption customises a GPIO source.
type GPIOOption func(*GPIO)

// WithPin uses p instead of looking the pin up (tests: gpiotest.Pin).
func WithPin(p gpio.PinIn) GPIOOption { return func(g *GPIO) { g.pin = p } }

// WithGPIOClock sets the clock that stamps events.
func WithGPIOClock(c Clock) GPIOOption { return func(g *GPIO) { g.clock = c } }

// NewGPIO validates cfg (zero fields take defaults). The pin is looked up by
// Run unless given with WithPin.
func NewGPIO(cfg GPIOConfig, log *slog.Logger, opts ...GPIOOption) (*GPIO, error) {
	g := &GPIO{cfg: cfg.withDefaults(), log: log, clock: RealClock, retryMin: gpioRetryMin, retryMax: gpioRetryMax}
	g.lookup = g.lookupPin
	for _, o := range opts {
		o(g)
	}
	check := g.cfg
	if g.pin != nil && check.Pin == "" && check.Chip == "" {
		check.Pin = g.pin.Name() // injected: nothing to look up
	}
	if err := check.Validate(); err != nil {
		return nil, err
	}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	return g, nil
}

// Stats returns accepted and dropped event counts.
func (g *GPIO) Stats() Stats { return g.stats() }

// Err says why the line is not armed (not found, configuring it failed, it
// stopped answering), or nil once Run has armed it.
func (g *GPIO) Err() error {
	g.errMu.Lock()
	defer g.errMu.Unlock()
	return g.err
}

func (g *GPIO) setErr(err error) {
	g.errMu.Lock()
	g.err = err
	g.errMu.Unlock()
}

// lookupPin finds the configured pin through periph's host drivers.
func (g *GPIO) lookupPin() (gpio.PinIn, error) {
	if _, err := host.Init(); err != nil {
		return nil, fmt.Errorf("gpio: init periph host drivers: %w", err)
	}
	if g.cfg.Pin != "" {
		p := gpioreg.ByName(g.cfg.Pin)
		if p == nil {
			return nil, fmt.Errorf("gpio: pin %q not found", g.cfg.Pin)
		}
		return p, nil
	}
	for _, c := range gpioioctl.Chips {
		if c.Name() == g.cfg.Chip || c.Path() == g.cfg.Chip || c.Label() == g.cfg.Chip {
			if g.cfg.Line >= c.LineCount() {
				return nil, fmt.Errorf("gpio: %s has %d lines, no line %d", g.cfg.Chip, c.LineCount(), g.cfg.Line)
			}
			return c.ByNumber(g.cfg.Line), nil
		}
	}
	return nil, fmt.Errorf("gpio: chip %q not found", g.cfg.Chip)
}

// Run configures the pin and emits events until ctx is done. Each
// WaitForEdge is bounded by WaitTimeout; events never block (see Stats).
// A line that cannot be armed, or that fails once armed, is retried with
// backoff (see GPIO); Run returns nil when ctx is done and never an error
// of the line.
func (g *GPIO) Run(ctx context.Context, out chan<- visit.Trigger) error {
	g.setErr(errors.New("gpio: not armed yet"))
	backoff := g.retryMin
	for {
		armed, err := g.runLine(ctx, out)
		if ctx.Err() != nil {
			return nil
		}
		if armed {
			backoff = g.retryMin
		}
		g.setErr(err)
		g.log.Error("gpio trigger unavailable; other triggers still work; retrying", "err", err, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, g.retryMax)
	}
}

// runLine looks the pin up, arms it and emits its events until ctx is done
// (nil) or the line fails (the error). armed says whether it got that far.
func (g *GPIO) runLine(ctx context.Context, out chan<- visit.Trigger) (armed bool, err error) {
	pin := g.pin
	if pin == nil {
		p, err := g.lookup()
		if err != nil {
			if strings.Contains(err.Error(), "not found") {
				// periph scans the chips once per process (host.Init).
				err = fmt.Errorf("%w (a chip that appears later is seen after a restart of the agent)", err)
			}
			return false, err
		}
		pin = p
	}
	want, _ := parseEdge(g.cfg.Edge)
	pull, _ := parsePull(g.cfg.Pull)
	// Logical edges map to physical ones through active_low; rising and
	// falling swap, both stays both.
	phys := want
	if g.cfg.ActiveLow && want != gpio.BothEdges {
		phys = gpio.RisingEdge + gpio.FallingEdge - want
	}
	if err := pin.In(pull, phys); err != nil {
		return false, fmt.Errorf("gpio: configure %s for %s edges: %w", pin, phys, err)
	}
	defer func() {
		if err := pin.In(pull, gpio.NoEdge); err != nil {
			g.log.Warn("gpio: disable edge detection", "pin", pin.String(), "err", err)
		}
	}()
	active := func() bool { return bool(pin.Read()) != g.cfg.ActiveLow }
	stable := active()
	g.setErr(nil)
	g.log.Info("gpio trigger armed", "pin", pin.String(), "edge", g.cfg.Edge, "active_low", g.cfg.ActiveLow)
	fastFails := 0
	for {
		if ctx.Err() != nil {
			return true, nil
		}
		t0 := time.Now()
		if !pin.WaitForEdge(g.cfg.WaitTimeout) {
			// A wait that times out took WaitTimeout; one that fails at
			// once is a read error (periph hides it): ENODEV after the
			// chip went away. Looping on it would spin on a core.
			if time.Since(t0) >= g.cfg.WaitTimeout/4 {
				fastFails = 0
				continue
			}
			if fastFails++; fastFails >= gpioFastFails {
				return true, fmt.Errorf("gpio: %s: waiting for an edge fails at once (%d times in a row): line or chip gone", pin, fastFails)
			}
			time.Sleep(g.cfg.WaitTimeout / 4)
			continue
		}
		fastFails = 0
		// Debounce: wait until the line has been quiet for Debounce. Each
		// wait is bounded; a chattering line still lets ctx through.
		if g.cfg.Debounce > 0 {
			for pin.WaitForEdge(g.cfg.Debounce) {
				if ctx.Err() != nil {
					return true, nil
				}
			}
		}
		level := active()
		if level == stable {
			continue // a glitch that came back
		}
		stable = level
		if want == gpio.RisingEdge && !level || want == gpio.FallingEdge && level {
			continue
		}
		ev := visit.Trigger{ID: NewID(), Time: g.clock.Now(), Source: SourceGPIO}
		if !g.offer(out, ev) {
			g.log.Warn("gpio trigger dropped: consumer busy", "dropped", g.dropped.Load())
		}
	}
}
