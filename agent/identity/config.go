package identity

import (
	"fmt"
	"math"

	"github.com/periocular/atm-agent/agent/visit"
)

// Thresholds are the engine's cuts: the same type the model manifest's
// calibration carries (visit.Thresholds).
type Thresholds = visit.Thresholds

// Config tunes the engine. Thresholds have no defaults: they must be set from
// the model manifest.
type Config struct {
	Thresholds Thresholds `yaml:"thresholds"`
	// ConfirmVisits is how many mutually consistent visits confirm a pending
	// identity (every member within threshold of at least one other).
	ConfirmVisits int `yaml:"confirm_visits"`
	// Exact disables the sketch prefilter: every pair is compared exactly.
	// Quadratic; meant for evaluation on small sets.
	Exact bool `yaml:"exact"`
	// Workers bounds the goroutines used by consolidation and batch
	// clustering; 0 means GOMAXPROCS.
	Workers int `yaml:"workers"`
}

// DefaultConfig returns the defaults; the thresholds still have to be set.
func DefaultConfig() Config {
	return Config{ConfirmVisits: 2}
}

// MaxWorkers bounds Config.Workers: each worker is a goroutine with its own
// buffers, and 100,000,000 of them exhaust memory before any work is done.
const MaxWorkers = 1024

// Validate reports the first invalid setting.
func (c Config) Validate() error {
	if !(c.Thresholds.UU > 0 && c.Thresholds.UU <= 2) {
		return fmt.Errorf("identity config: thresholds.uu %v: want a cosine distance in (0,2] from the model manifest", c.Thresholds.UU)
	}
	if !(c.Thresholds.MM > 0 && c.Thresholds.MM <= 2) {
		return fmt.Errorf("identity config: thresholds.mm %v: want a cosine distance in (0,2] from the model manifest", c.Thresholds.MM)
	}
	if mu := c.Thresholds.MU; !math.IsNaN(mu) && (mu < 0 || mu > 2) {
		return fmt.Errorf("identity config: thresholds.mu %v: want 0 (disabled) or a cosine distance in (0,2]", mu)
	}
	if c.ConfirmVisits < 1 || c.ConfirmVisits > 1000 {
		return fmt.Errorf("identity config: confirm_visits %d: want 1..1000", c.ConfirmVisits)
	}
	if c.Workers < 0 || c.Workers > MaxWorkers {
		return fmt.Errorf("identity config: workers %d: want 0 (GOMAXPROCS) to %d", c.Workers, MaxWorkers)
	}
	return nil
}

func thresholdArray(t Thresholds) [3]float64 {
	mu := t.MU
	if !t.MUEnabled() {
		mu = 0
	}
	return [3]float64{ptUU: t.UU, ptMM: t.MM, ptMU: mu}
}
