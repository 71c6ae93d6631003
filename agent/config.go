package agent

import (
	"errors"
	"fmt"
	"time"
)

// Config tunes the work loop (the "agent" section of the configuration).
type Config struct {
	// SummaryInterval: how often a summary message is put into the outbox.
	SummaryInterval time.Duration `yaml:"summary_interval"`
	// SummaryMaxIdentities caps the identities listed in one summary (the
	// most active in the last 24 h are kept; the rest are counted).
	SummaryMaxIdentities int `yaml:"summary_max_identities"`
	// ConsolidateInterval: how often identities are re-clustered.
	ConsolidateInterval time.Duration `yaml:"consolidate_interval"`
	// PurgeInterval: how often the retention window is enforced (also at start).
	PurgeInterval time.Duration `yaml:"purge_interval"`
	// VisitTimeout bounds one visit from burst to commit.
	VisitTimeout time.Duration `yaml:"visit_timeout"`
	// CommitRetries: attempts to store a visit before it is given up.
	CommitRetries int `yaml:"commit_retries"`
	// HeartbeatInterval: the idle work loop reports liveness this often;
	// keep it well below the systemd WatchdogSec.
	HeartbeatInterval time.Duration `yaml:"heartbeat_interval"`
	// StopGrace: at shutdown, how long a visit in progress may take to
	// finish before it is cancelled.
	StopGrace time.Duration `yaml:"stop_grace"`
	// DegradedAfter: health reports degraded (and /healthz answers 503)
	// after this many store commits in a row failed, or this many visits
	// in a row whose alert rules could not be evaluated; one success
	// clears it.
	DegradedAfter int `yaml:"degraded_after"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		SummaryInterval:      5 * time.Minute,
		SummaryMaxIdentities: 200,
		ConsolidateInterval:  15 * time.Minute,
		PurgeInterval:        time.Hour,
		VisitTimeout:         10 * time.Second,
		CommitRetries:        3,
		HeartbeatInterval:    5 * time.Second,
		StopGrace:            3 * time.Second,
		DegradedAfter:        3,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	set := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	set(&c.SummaryInterval, d.SummaryInterval)
	set(&c.ConsolidateInterval, d.ConsolidateInterval)
	set(&c.PurgeInterval, d.PurgeInterval)
	set(&c.VisitTimeout, d.VisitTimeout)
	set(&c.HeartbeatInterval, d.HeartbeatInterval)
	set(&c.StopGrace, d.StopGrace)
	if c.SummaryMaxIdentities == 0 {
		c.SummaryMaxIdentities = d.SummaryMaxIdentities
	}
	if c.CommitRetries == 0 {
		c.CommitRetries = d.CommitRetries
	}
	if c.DegradedAfter == 0 {
		c.DegradedAfter = d.DegradedAfter
	}
	return c
}

// Validate reports every invalid setting in words an operator understands.
func (c Config) Validate() error {
	var errs []error
	for _, f := range []struct {
		name     string
		v        time.Duration
		min, max time.Duration
	}{
		{"summary_interval", c.SummaryInterval, time.Second, 24 * time.Hour},
		{"consolidate_interval", c.ConsolidateInterval, time.Second, 7 * 24 * time.Hour},
		{"purge_interval", c.PurgeInterval, time.Second, 7 * 24 * time.Hour},
		{"visit_timeout", c.VisitTimeout, 100 * time.Millisecond, time.Hour}, // 30m under qemu (scripts/packaging/compare-arch.sh)
		{"heartbeat_interval", c.HeartbeatInterval, 10 * time.Millisecond, time.Hour},
		{"stop_grace", c.StopGrace, 0, 5 * time.Minute},
	} {
		if f.v < f.min || f.v < 0 {
			errs = append(errs, fmt.Errorf("agent.%s %v: must be at least %v (e.g. \"5m\")", f.name, f.v, f.min))
		} else if f.v > f.max {
			errs = append(errs, fmt.Errorf("agent.%s %v: must be at most %v", f.name, f.v, f.max))
		}
	}
	if c.SummaryMaxIdentities < 1 || c.SummaryMaxIdentities > 10000 {
		errs = append(errs, fmt.Errorf("agent.summary_max_identities %d: want 1..10000", c.SummaryMaxIdentities))
	}
	if c.CommitRetries < 1 || c.CommitRetries > 100 {
		errs = append(errs, fmt.Errorf("agent.commit_retries %d: want 1..100", c.CommitRetries))
	}
	if c.DegradedAfter < 1 || c.DegradedAfter > 1000 {
		errs = append(errs, fmt.Errorf("agent.degraded_after %d: want 1..1000", c.DegradedAfter))
	}
	return errors.Join(errs...)
}
