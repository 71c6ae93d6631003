package mqttsync

import (
	"sync"
	"time"
)

// The default budget of failed signature checks: a burst of
// forgedBurst, then forgedRate a second. An Ed25519 check costs about
// 85 µs on the machine the flood was measured on (docs/mqtt.md, "A flood
// of forged commands"), so the default spends at most about 9% of one
// core on forged commands however many arrive; a flood slower than that is
// checked in full.
const (
	forgedBurst = 1000
	forgedRate  = 1000
)

// verifyBudget is a token bucket on signature checks that fail. Every
// check takes a token first; one that verifies gives it back, so signed
// commands never use the budget up. Once forged commands have used it up,
// commands are dropped unchecked (counted and logged as throttled) until
// tokens come back at rate a second. Safe for paho's goroutines.
type verifyBudget struct {
	rate, burst float64

	mu     sync.Mutex
	tokens float64
	last   time.Time
}

func newVerifyBudget(rate, burst float64) *verifyBudget {
	return &verifyBudget{rate: rate, burst: burst, tokens: burst}
}

// take reports whether a check may run now, and takes a token for it.
func (b *verifyBudget) take(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() && now.After(b.last) {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	if b.last.IsZero() || now.After(b.last) {
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// refund gives back the token of a check that verified.
func (b *verifyBudget) refund() {
	b.mu.Lock()
	b.tokens = min(b.burst, b.tokens+1)
	b.mu.Unlock()
}
