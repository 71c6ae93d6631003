package store

import (
	"errors"
	"fmt"
	"time"
)

// Config is the store section of the agent configuration (strict YAML).
type Config struct {
	// Path of the bbolt file; the directory should be the unit's
	// StateDirectory.
	Path string `yaml:"path"`
	// Retention of visits and alerts, e.g. "720h".
	Retention time.Duration `yaml:"retention"`
	// KeyFile enables encryption of embeddings at rest: a file with 32 raw
	// bytes or 64 hex characters, or "credential:NAME" for a systemd
	// credential. Empty disables encryption.
	KeyFile string `yaml:"key_file"`
	// LockTimeout bounds the wait for the database file lock.
	LockTimeout time.Duration `yaml:"lock_timeout"`
	Outbox      OutboxConfig  `yaml:"outbox"`
}

// OutboxConfig bounds the MQTT outbox (see Options).
type OutboxConfig struct {
	MaxMessages      int   `yaml:"max_messages"`
	MaxBytes         int64 `yaml:"max_bytes"`
	AlertCapMessages int   `yaml:"alert_cap_messages"`
	AlertCapBytes    int64 `yaml:"alert_cap_bytes"`
}

// DefaultConfig returns the defaults; decode YAML over it.
func DefaultConfig() Config {
	return Config{
		Path:        "/var/lib/atm-agent/agent.db",
		Retention:   DefaultRetention,
		LockTimeout: DefaultLockTimeout,
		Outbox: OutboxConfig{
			MaxMessages:      DefaultOutboxMaxMessages,
			MaxBytes:         DefaultOutboxMaxBytes,
			AlertCapMessages: DefaultOutboxAlertCapMsgs,
			AlertCapBytes:    DefaultOutboxAlertCapBytes,
		},
	}
}

// MaxRetention bounds store.retention (time arithmetic with larger spans
// overflows).
const MaxRetention = 10 * 366 * 24 * time.Hour

// Validate reports every invalid setting.
func (c Config) Validate() error {
	var errs []error
	if c.Path == "" {
		errs = append(errs, errors.New("store.path is required"))
	}
	if c.Retention <= 0 {
		errs = append(errs, fmt.Errorf("store.retention must be positive, e.g. \"720h\" (got %v)", c.Retention))
	} else if c.Retention > MaxRetention {
		errs = append(errs, fmt.Errorf("store.retention %v: at most %v (10 years)", c.Retention, MaxRetention))
	}
	if c.LockTimeout <= 0 || c.LockTimeout > 10*time.Minute {
		errs = append(errs, fmt.Errorf("store.lock_timeout must be positive, at most 10m (got %v)", c.LockTimeout))
	}
	o := c.Outbox
	if o.MaxMessages <= 0 || o.MaxBytes <= 0 {
		errs = append(errs, fmt.Errorf("store.outbox.max_messages and max_bytes must be positive (got %d, %d)", o.MaxMessages, o.MaxBytes))
	}
	if o.AlertCapMessages > 100_000_000 || o.AlertCapBytes > 64<<30 {
		errs = append(errs, fmt.Errorf("store.outbox caps (%d messages, %d bytes): at most 100000000 messages and 64 GiB", o.AlertCapMessages, o.AlertCapBytes))
	}
	if o.AlertCapMessages < o.MaxMessages || o.AlertCapBytes < o.MaxBytes {
		errs = append(errs, fmt.Errorf("store.outbox alert caps (%d messages, %d bytes) must be at least max_messages/max_bytes (%d, %d)",
			o.AlertCapMessages, o.AlertCapBytes, o.MaxMessages, o.MaxBytes))
	}
	return errors.Join(errs...)
}

// Options converts a validated Config, loading the key file when set.
// DeviceID, Now and Logger are left for the caller.
func (c Config) Options() (Options, error) {
	if err := c.Validate(); err != nil {
		return Options{}, err
	}
	o := Options{
		Retention:              c.Retention,
		OutboxMaxMessages:      c.Outbox.MaxMessages,
		OutboxMaxBytes:         c.Outbox.MaxBytes,
		OutboxAlertCapMessages: c.Outbox.AlertCapMessages,
		OutboxAlertCapBytes:    c.Outbox.AlertCapBytes,
		Timeout:                c.LockTimeout,
	}
	if c.KeyFile != "" {
		k, err := LoadKey(c.KeyFile)
		if err != nil {
			return Options{}, err
		}
		o.Key = k
	}
	return o, nil
}
