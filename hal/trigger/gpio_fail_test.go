package trigger

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpiotest"
)

// waitErr waits until g.Err mentions want.
func waitErr(t *testing.T, g *GPIO, want string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		err := g.Err()
		if err != nil && strings.Contains(err.Error(), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Err() = %v, want one containing %q", err, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A chip missing at start: Run does not return (the agent and its HTTP
// trigger stay up), Err says why, and once the lookup succeeds the line is
// armed and card inserts are triggers again.
func TestGPIOChipMissingAtStartIsRetried(t *testing.T) {
	pin := &gpiotest.Pin{N: "GPIO17", EdgesChan: make(chan gpio.Level)}
	var present atomic.Bool
	var lookups atomic.Int32
	g, err := NewGPIO(GPIOConfig{Chip: "gpiochip7", Line: 3, Pull: "down", Debounce: 5 * time.Millisecond, WaitTimeout: 20 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	g.retryMin, g.retryMax = 10*time.Millisecond, 40*time.Millisecond
	g.lookup = func() (gpio.PinIn, error) {
		lookups.Add(1)
		if !present.Load() {
			return nil, errors.New(`gpio: chip "gpiochip7" not found`)
		}
		return pin, nil
	}
	out := make(chan visit.Trigger, 4)
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- g.Run(ctx, out) }()
	waitErr(t, g, `chip "gpiochip7" not found`)
	select {
	case err := <-done:
		t.Fatalf("Run returned %v on a missing chip; it must keep running", err)
	case <-time.After(200 * time.Millisecond):
	}
	if n := lookups.Load(); n < 2 || n > 20 {
		t.Errorf("%d lookups in 200ms with 10-40ms backoff", n)
	}
	present.Store(true)
	waitArmed(t, pin, gpio.PullDown)
	if err := g.Err(); err != nil {
		t.Errorf("Err() = %v after the line was armed", err)
	}
	pin.EdgesChan <- gpio.High
	if evs := collect(out, 100*time.Millisecond); len(evs) != 1 {
		t.Fatalf("%d triggers after the chip came back, want 1", len(evs))
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not stop")
	}
}

// goneLine is a pin whose chip was removed while armed: every wait for an
// edge fails at once (periph's WaitForEdge returns false on ENODEV without
// waiting), and re-arming it fails.
type goneLine struct {
	*gpiotest.Pin
	mu    sync.Mutex
	gone  bool
	waits atomic.Int64
}

func (p *goneLine) In(pull gpio.Pull, e gpio.Edge) error {
	p.mu.Lock()
	gone := p.gone
	p.mu.Unlock()
	if gone && e != gpio.NoEdge {
		return errors.New("no such device")
	}
	return p.Pin.In(pull, e)
}

func (p *goneLine) WaitForEdge(d time.Duration) bool {
	p.waits.Add(1)
	p.mu.Lock()
	gone := p.gone
	p.mu.Unlock()
	if gone {
		return false
	}
	return p.Pin.WaitForEdge(d)
}

// A chip removed under the running agent: the edge loop must not spin on
// a core (before: about a million WaitForEdge calls a second), and Err
// must say the line is gone.
func TestGPIOLineGoneDoesNotSpin(t *testing.T) {
	pin := &goneLine{Pin: &gpiotest.Pin{N: "GPIO17", EdgesChan: make(chan gpio.Level)}}
	g, err := NewGPIO(GPIOConfig{Pull: "down", Debounce: 0, WaitTimeout: 40 * time.Millisecond}, nil, WithPin(pin))
	if err != nil {
		t.Fatal(err)
	}
	g.retryMin, g.retryMax = 20*time.Millisecond, 50*time.Millisecond
	stop := runGPIO(t, g, make(chan visit.Trigger, 4))
	waitArmed(t, pin.Pin, gpio.PullDown)
	pin.mu.Lock()
	pin.gone = true
	pin.mu.Unlock()
	before := pin.waits.Load()
	time.Sleep(time.Second)
	if n := pin.waits.Load() - before; n > 200 {
		t.Errorf("%d waits for an edge in 1s on a removed chip: the loop spins", n)
	}
	waitErr(t, g, "no such device")
	if d := stop(); d > time.Second {
		t.Errorf("Run took %s to stop", d)
	}
}
