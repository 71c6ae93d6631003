// Package mqttsync publishes the agent's outbox, status and command replies
// to an MQTT broker with paho.mqtt.golang, and renders a fleet's messages for
// `atm-agent watch`.
package mqttsync

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/periocular/atm-agent/sync/wire"
)

// Config configures the MQTT connection and the outbox drain. The summary
// interval belongs to the agent, not here.
type Config struct {
	// Brokers are URLs: tcp://host:1883, ssl://host:8883 (also mqtt://,
	// mqtts://, tls://, ws://, wss://). paho tries them in order.
	Brokers  []string    `yaml:"brokers"`
	ClientID string      `yaml:"client_id"` // default "atm-agent-<device>"
	Topic    TopicConfig `yaml:"topic"`
	TLS      TLSConfig   `yaml:"tls"`
	Username string      `yaml:"username"`
	// PasswordFile holds the password (trailing newline ignored); never
	// put the password itself in the YAML.
	PasswordFile        string        `yaml:"password_file"`
	KeepAlive           time.Duration `yaml:"keep_alive"`
	ConnectTimeout      time.Duration `yaml:"connect_timeout"`
	ReconnectBackoffMax time.Duration `yaml:"reconnect_backoff_max"`
	// PublishTimeout bounds the wait for one PUBACK (and every other token).
	PublishTimeout time.Duration `yaml:"publish_timeout"`
	// DrainInterval is how often the outbox is polled when nobody calls
	// Notify.
	DrainInterval time.Duration `yaml:"drain_interval"`
	// HistoricalAfter marks a message historical when it is older than
	// this when sent (it is also historical when it was enqueued before
	// the current connection came up).
	HistoricalAfter time.Duration `yaml:"historical_after"`
	// Batch is how many outbox messages are read at once; MaxInflight how
	// many unacknowledged publishes may be outstanding.
	Batch       int            `yaml:"batch"`
	MaxInflight int            `yaml:"max_inflight"`
	Commands    CommandsConfig `yaml:"commands"`
}

// TopicConfig names the device: topics are <prefix>/<site>/<device>/<kind>.
type TopicConfig struct {
	Prefix string `yaml:"prefix"`
	Site   string `yaml:"site"`
	Device string `yaml:"device"`
}

// TLSConfig configures TLS for ssl:// brokers. CertFile and KeyFile give a
// client certificate (mutual TLS); CAFile replaces the system roots.
type TLSConfig struct {
	CAFile             string `yaml:"ca_file"`
	CertFile           string `yaml:"cert_file"`
	KeyFile            string `yaml:"key_file"`
	ServerName         string `yaml:"server_name"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// CommandsConfig enables the command topic. Off by default.
type CommandsConfig struct {
	Enabled bool `yaml:"enabled"`
	// Timeout bounds one command's handling.
	Timeout time.Duration `yaml:"timeout"`
}

// DefaultConfig returns the defaults; Topic and Brokers must still be set.
func DefaultConfig() Config {
	return Config{
		Topic:               TopicConfig{Prefix: "atm"},
		KeepAlive:           30 * time.Second,
		ConnectTimeout:      10 * time.Second,
		ReconnectBackoffMax: time.Minute,
		PublishTimeout:      10 * time.Second,
		DrainInterval:       2 * time.Second,
		HistoricalAfter:     30 * time.Second,
		Batch:               64,
		MaxInflight:         16,
		Commands:            CommandsConfig{Timeout: 30 * time.Second},
	}
}

// ParseConfig decodes YAML strictly (unknown keys are errors) over the
// defaults and validates the result.
func ParseConfig(b []byte) (Config, error) {
	c := DefaultConfig()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("mqtt config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Topics returns the validated topic builder of the configured device.
func (c Config) Topics() (wire.Topics, error) {
	return wire.NewTopics(c.Topic.Prefix, c.Topic.Site, c.Topic.Device)
}

// Validate reports the first configuration error.
func (c Config) Validate() error {
	if len(c.Brokers) == 0 {
		return errors.New("mqtt config: brokers: at least one broker URL is required")
	}
	usesTLS := c.TLS.CAFile != "" || c.TLS.CertFile != "" || c.TLS.InsecureSkipVerify
	for _, b := range c.Brokers {
		u, err := url.Parse(b)
		if err != nil {
			return fmt.Errorf("mqtt config: broker %q: %w", b, err)
		}
		switch u.Scheme {
		case "ssl", "tls", "mqtts", "wss":
		case "tcp", "mqtt", "ws":
			if usesTLS {
				return fmt.Errorf("mqtt config: broker %q is not a TLS URL but tls is configured (use ssl://)", b)
			}
		default:
			return fmt.Errorf("mqtt config: broker %q: unsupported scheme %q", b, u.Scheme)
		}
		if u.Host == "" {
			return fmt.Errorf("mqtt config: broker %q: missing host", b)
		}
	}
	if _, err := c.Topics(); err != nil {
		return fmt.Errorf("mqtt config: topic: %w", err)
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		return errors.New("mqtt config: tls: cert_file and key_file go together")
	}
	if c.Username == "" && c.PasswordFile != "" {
		return errors.New("mqtt config: password_file without username")
	}
	for name, d := range map[string]time.Duration{
		"keep_alive": c.KeepAlive, "connect_timeout": c.ConnectTimeout, "reconnect_backoff_max": c.ReconnectBackoffMax,
		"publish_timeout": c.PublishTimeout, "drain_interval": c.DrainInterval, "historical_after": c.HistoricalAfter,
	} {
		if d <= 0 {
			return fmt.Errorf("mqtt config: %s must be > 0", name)
		}
	}
	if c.KeepAlive < time.Second {
		return errors.New("mqtt config: keep_alive must be at least 1s")
	}
	if c.Batch < 1 || c.Batch > 10000 {
		return fmt.Errorf("mqtt config: batch %d out of 1..10000", c.Batch)
	}
	if c.MaxInflight < 1 || c.MaxInflight > 1000 {
		return fmt.Errorf("mqtt config: max_inflight %d out of 1..1000", c.MaxInflight)
	}
	if c.Commands.Enabled && c.Commands.Timeout <= 0 {
		return errors.New("mqtt config: commands.timeout must be > 0")
	}
	return nil
}

func (c Config) clientID() string {
	if c.ClientID != "" {
		return c.ClientID
	}
	return "atm-agent-" + c.Topic.Device
}

// tlsConfig loads the configured files; nil when TLS is not configured.
func (c Config) tlsConfig() (*tls.Config, error) {
	t := c.TLS
	if t == (TLSConfig{}) {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt tls: read ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("mqtt tls: ca_file %q holds no PEM certificate", t.CAFile)
		}
		cfg.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt tls: load client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func (c Config) password() (string, error) {
	if c.PasswordFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(c.PasswordFile)
	if err != nil {
		return "", fmt.Errorf("mqtt: read password_file: %w", err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}
