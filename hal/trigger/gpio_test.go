package trigger

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpiotest"
)

// runGPIO starts g and returns a stop func that cancels and waits for Run.
func runGPIO(t *testing.T, g *GPIO, out chan visit.Trigger) (stop func() time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx, out) }()
	stopped := false
	stop = func() time.Duration {
		if stopped {
			return 0
		}
		stopped = true
		start := time.Now()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("GPIO Run did not return after cancel")
		}
		return time.Since(start)
	}
	t.Cleanup(func() { stop() })
	return stop
}

// waitArmed waits until Run has configured the pin: gpiotest.Pin.In sets the
// pull and flushes pending edges under the pin's lock, so an edge sent before
// that would be discarded.
func waitArmed(t *testing.T, pin *gpiotest.Pin, pull gpio.Pull) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		pin.Lock()
		p := pin.P
		pin.Unlock()
		if p == pull {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("pin never configured")
		}
		time.Sleep(time.Millisecond)
	}
}

func collect(out chan visit.Trigger, wait time.Duration) []visit.Trigger {
	var evs []visit.Trigger
	deadline := time.After(wait)
	for {
		select {
		case ev := <-out:
			evs = append(evs, ev)
		case <-deadline:
			return evs
		}
	}
}

func TestGPIOEdges(t *testing.T) {
	tests := []struct {
		name      string
		cfg       GPIOConfig
		edges     []gpio.Level // physical levels, each followed by a quiet period
		wantCount int
	}{
		{"rising", GPIOConfig{Pull: "down"}, []gpio.Level{gpio.High, gpio.Low, gpio.High, gpio.Low}, 2},
		{"falling", GPIOConfig{Pull: "down", Edge: "falling"}, []gpio.Level{gpio.High, gpio.Low, gpio.High, gpio.Low}, 2},
		{"both", GPIOConfig{Pull: "down", Edge: "both"}, []gpio.Level{gpio.High, gpio.Low, gpio.High}, 3},
		// Active low with pull-up: idle high; the card pulls the line low.
		{"active low", GPIOConfig{Pull: "up", ActiveLow: true}, []gpio.Level{gpio.Low, gpio.High, gpio.Low}, 2},
		// Repeated same level is no new edge.
		{"no change", GPIOConfig{Pull: "down"}, []gpio.Level{gpio.High, gpio.High}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pin := &gpiotest.Pin{N: "GPIO17", EdgesChan: make(chan gpio.Level)}
			cfg := tt.cfg
			cfg.Debounce = 10 * time.Millisecond
			cfg.WaitTimeout = 20 * time.Millisecond
			g, err := NewGPIO(cfg, nil, WithPin(pin))
			if err != nil {
				t.Fatal(err)
			}
			out := make(chan visit.Trigger, 10)
			runGPIO(t, g, out)
			pull, _ := parsePull(cfg.Pull)
			waitArmed(t, pin, pull)
			for _, l := range tt.edges {
				pin.EdgesChan <- l // unbuffered: returns once Run took the edge
				time.Sleep(30 * time.Millisecond)
			}
			evs := collect(out, 50*time.Millisecond)
			if len(evs) != tt.wantCount {
				t.Fatalf("got %d events, want %d", len(evs), tt.wantCount)
			}
			for _, ev := range evs {
				if ev.Source != SourceGPIO || len(ev.ID) != 16 || ev.Time.IsZero() {
					t.Errorf("event %+v", ev)
				}
			}
		})
	}
}

func TestGPIODebounce(t *testing.T) {
	pin := &gpiotest.Pin{N: "GPIO5", EdgesChan: make(chan gpio.Level)}
	g, err := NewGPIO(GPIOConfig{Pull: "down", Debounce: 40 * time.Millisecond, WaitTimeout: 20 * time.Millisecond}, nil, WithPin(pin))
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan visit.Trigger, 10)
	runGPIO(t, g, out)
	waitArmed(t, pin, gpio.PullDown)
	// A contact bounce: five transitions within a few ms, settling high.
	for _, l := range []gpio.Level{gpio.High, gpio.Low, gpio.High, gpio.Low, gpio.High} {
		pin.EdgesChan <- l
		time.Sleep(2 * time.Millisecond)
	}
	// A glitch: high to low and back within the debounce time is no edge.
	time.Sleep(80 * time.Millisecond)
	pin.EdgesChan <- gpio.Low
	pin.EdgesChan <- gpio.High
	if evs := collect(out, 120*time.Millisecond); len(evs) != 1 {
		t.Fatalf("bouncing contact gave %d events, want 1", len(evs))
	}
}

func TestGPIONeverBlocksAndStopsPromptly(t *testing.T) {
	pin := &gpiotest.Pin{N: "GPIO6", EdgesChan: make(chan gpio.Level)}
	g, err := NewGPIO(GPIOConfig{Pull: "down", Debounce: 0, WaitTimeout: 50 * time.Millisecond}, nil, WithPin(pin))
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan visit.Trigger, 1) // nobody reads it
	stop := runGPIO(t, g, out)
	waitArmed(t, pin, gpio.PullDown)
	for i := 0; i < 3; i++ {
		pin.EdgesChan <- gpio.High
		pin.EdgesChan <- gpio.Low
	}
	time.Sleep(20 * time.Millisecond)
	if s := g.Stats(); s.Accepted != 1 || s.Dropped != 2 {
		t.Fatalf("stats %+v, want 1 accepted and 2 dropped", s)
	}
	if d := stop(); d > 200*time.Millisecond {
		t.Errorf("Run took %s to stop, want within about one 50ms wait", d)
	}
}

func TestGPIOConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  GPIOConfig
		want string
	}{
		{"pin", GPIOConfig{Pin: "GPIO17"}, ""},
		{"chip line", GPIOConfig{Chip: "gpiochip0", Line: 17, Edge: "falling", Pull: "up"}, ""},
		{"nothing", GPIOConfig{}, "set pin"},
		{"both", GPIOConfig{Pin: "GPIO1", Chip: "gpiochip0"}, "not both"},
		{"edge", GPIOConfig{Pin: "GPIO1", Edge: "up"}, "edge"},
		{"pull", GPIOConfig{Pin: "GPIO1", Pull: "strong"}, "pull"},
		{"unbounded wait", GPIOConfig{Pin: "GPIO1", WaitTimeout: -1}, "bounded wait"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewGPIO(tt.cfg, nil)
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

// A pin that does not exist (the real periph lookup) is not fatal: Run
// keeps going, says why through Err, and returns nil when stopped. Before,
// Run returned the error and the agent exited with it.
func TestGPIOMissingPin(t *testing.T) {
	g, err := NewGPIO(GPIOConfig{Pin: "NO_SUCH_PIN_42"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := runGPIO(t, g, make(chan visit.Trigger, 1))
	waitErr(t, g, "not found")
	stop()
}
