// Package mqttsync publishes the agent's outbox, status and command replies
// to an MQTT broker with paho.mqtt.golang, and renders a fleet's messages for
// `atm-tools watch`.
package mqttsync

import (
	"bytes"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/periocular/atm-agent/internal/redact"
	"github.com/periocular/atm-agent/internal/secretfile"
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
	Batch       int `yaml:"batch"`
	MaxInflight int `yaml:"max_inflight"`
	// MaxMessageSize is the largest outbox payload published, in bytes:
	// at most the broker's limit (mosquitto message_size_limit). MQTT 3.1.1
	// has no way to refuse a message: mosquitto acknowledges a larger one
	// and drops it, other brokers close the connection on every try. A
	// larger summary lists fewer identities (the least active move to
	// identities_omitted); any other larger message is dropped, counted in
	// Stats.Oversize and logged.
	MaxMessageSize int `yaml:"max_message_size"`
	// StatusInterval bounds the age of the retained status and state:
	// they are republished when they change (checked every second) and at
	// least this often.
	StatusInterval time.Duration `yaml:"status_interval"`
	// StateWill keeps a second connection (client id <client_id>-will)
	// whose Last Will marks the retained state offline when the agent dies
	// or loses the network: MQTT allows one will per connection, and the
	// publisher's own carries the status.
	StateWill bool           `yaml:"state_will"`
	Commands  CommandsConfig `yaml:"commands"`
	// HomeAssistant publishes MQTT discovery for Home Assistant.
	HomeAssistant HomeAssistantConfig `yaml:"home_assistant"`
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

// CommandsConfig enables the command topic. Off by default. Commands must
// be signed (Ed25519, see wire.SignCommand) by one of PublicKeys, carry a
// ts within MaxClockSkew of the device clock and a message_id this device
// has not accepted before (remembered in SeenFile across restarts).
type CommandsConfig struct {
	Enabled bool `yaml:"enabled"`
	// Timeout bounds the wait for the agent's worker to take a command;
	// one it has taken runs to its end and is answered with its result.
	Timeout time.Duration `yaml:"timeout"`
	// PublicKeys may sign commands (at least one when enabled; several
	// allow a rotation).
	PublicKeys []CommandKey `yaml:"public_keys"`
	// MaxClockSkew: a command whose ts is further than this from the
	// device clock, either way, is refused.
	MaxClockSkew time.Duration `yaml:"max_clock_skew"`
	// SeenFile keeps the message ids accepted within the skew window, so
	// a replayed command is refused after a restart too. The agent's
	// config defaults it to commands-seen.json next to the store.
	SeenFile string `yaml:"seen_file"`
	// MaxSeen bounds the remembered ids; while that many unexpired ids are
	// held, new commands are refused.
	MaxSeen int `yaml:"max_seen"`
	// DeviceKeyFile is the device's Ed25519 private key (PKCS#8 PEM, mode
	// 0600) that signs every reply (wire.SignReply) and, commands on or
	// off, every status, state, summary and alert (wire.SignMessage). The
	// agent's config defaults it to device.key next to the store.
	DeviceKeyFile string `yaml:"device_key_file"`
	// CreateDeviceKey: a missing DeviceKeyFile is made at start, commands
	// on or off (set by the agent's config for the default path only; a
	// configured path must exist).
	CreateDeviceKey bool `yaml:"-"`
}

// CommandKey is one Ed25519 public key allowed to sign commands: inline as
// the base64 of its 32 bytes (Key) or in a file (File: PEM "PUBLIC KEY" or
// the same base64), exactly one of the two. Name appears in the logs.
type CommandKey struct {
	Name string `yaml:"name"`
	Key  string `yaml:"key"`
	File string `yaml:"file"`
}

// maxCommandKeys bounds the keys tried for each command.
const maxCommandKeys = 16

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
		MaxMessageSize:      65536,
		StatusInterval:      time.Minute,
		StateWill:           true,
		HomeAssistant:       HomeAssistantConfig{DiscoveryPrefix: "homeassistant"},
		Commands:            CommandsConfig{Timeout: 30 * time.Second, MaxClockSkew: 5 * time.Minute, MaxSeen: 1024},
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
			return fmt.Errorf("mqtt config: broker %q: %w", redact.URL(b), redact.Error(err, b))
		}
		switch u.Scheme {
		case "ssl", "tls", "mqtts", "wss":
		case "tcp", "mqtt", "ws":
			if usesTLS {
				return fmt.Errorf("mqtt config: broker %q is not a TLS URL but tls is configured (use ssl://)", redact.URL(b))
			}
		default:
			return fmt.Errorf("mqtt config: broker %q: unsupported scheme %q", redact.URL(b), u.Scheme)
		}
		if u.Host == "" {
			return fmt.Errorf("mqtt config: broker %q: missing host", redact.URL(b))
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
	for _, f := range []struct {
		name string
		d    time.Duration
		max  time.Duration
	}{
		{"keep_alive", c.KeepAlive, time.Hour}, {"connect_timeout", c.ConnectTimeout, 10 * time.Minute},
		{"reconnect_backoff_max", c.ReconnectBackoffMax, time.Hour}, {"publish_timeout", c.PublishTimeout, 10 * time.Minute},
		{"drain_interval", c.DrainInterval, time.Hour}, {"historical_after", c.HistoricalAfter, 7 * 24 * time.Hour},
		{"status_interval", c.StatusInterval, time.Hour},
	} {
		if f.d <= 0 || f.d > f.max {
			return fmt.Errorf("mqtt config: %s %s: want more than 0, at most %s", f.name, f.d, f.max)
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
	if c.MaxMessageSize < 4096 || c.MaxMessageSize > 268435455 {
		return fmt.Errorf("mqtt config: max_message_size %d out of 4096..268435455", c.MaxMessageSize)
	}
	if c.HomeAssistant.Enabled {
		if err := wire.ValidatePrefix(c.HomeAssistant.DiscoveryPrefix); err != nil {
			return fmt.Errorf("mqtt config: home_assistant.discovery_prefix: %w", err)
		}
	}
	if c.Commands.Enabled {
		if err := c.Commands.validate(); err != nil {
			return fmt.Errorf("mqtt config: commands: %w", err)
		}
	}
	return nil
}

func (c CommandsConfig) validate() error {
	if c.Timeout < time.Second || c.Timeout > 10*time.Minute {
		// The wait for the worker, which may be filming a visit (a few
		// seconds) or consolidating: a few milliseconds refused nearly
		// every command while a visit was in progress.
		return fmt.Errorf("timeout %v: want 1s..10m (how long a command waits for the agent's worker)", c.Timeout)
	}
	if c.MaxClockSkew < 10*time.Second || c.MaxClockSkew > time.Hour {
		return fmt.Errorf("max_clock_skew %v: want 10s..1h", c.MaxClockSkew)
	}
	if c.MaxSeen < 16 || c.MaxSeen > 100000 {
		return fmt.Errorf("max_seen %d: want 16..100000", c.MaxSeen)
	}
	if c.SeenFile == "" {
		return errors.New("seen_file is required (where accepted command ids are remembered across restarts)")
	}
	if c.DeviceKeyFile == "" {
		return errors.New("device_key_file is required (the key that signs the device's replies)")
	}
	if len(c.PublicKeys) == 0 {
		return errors.New("public_keys: at least one Ed25519 public key is required; commands are accepted only when signed (atm-tools command keygen)")
	}
	if len(c.PublicKeys) > maxCommandKeys {
		return fmt.Errorf("public_keys: %d keys, at most %d", len(c.PublicKeys), maxCommandKeys)
	}
	names := map[string]bool{}
	for i, k := range c.PublicKeys {
		if k.Name == "" {
			return fmt.Errorf("public_keys[%d]: name is required", i)
		}
		if names[k.Name] {
			return fmt.Errorf("public_keys[%d]: duplicate name %q", i, k.Name)
		}
		names[k.Name] = true
		if (k.Key == "") == (k.File == "") {
			return fmt.Errorf("public_keys[%d] %q: give exactly one of key (base64) and file", i, k.Name)
		}
		if k.Key != "" {
			if _, err := wire.ParsePublicKey([]byte(k.Key)); err != nil {
				return fmt.Errorf("public_keys[%d] %q: key: %v (want the base64 of a 32-byte Ed25519 public key)", i, k.Name, err)
			}
		}
	}
	return nil
}

// LoadKeys reads the command public keys (files included), in config
// order. `config check` calls it so a missing or bad key file is found
// before the daemon starts.
func (c CommandsConfig) LoadKeys() ([]ed25519.PublicKey, error) {
	var out []ed25519.PublicKey
	for i, k := range c.PublicKeys {
		b := []byte(k.Key)
		if k.File != "" {
			var err error
			if b, err = os.ReadFile(k.File); err != nil {
				return nil, fmt.Errorf("mqtt commands: public_keys[%d] %q: %w", i, k.Name, err)
			}
		}
		pk, err := wire.ParsePublicKey(b)
		if err != nil {
			return nil, fmt.Errorf("mqtt commands: public_keys[%d] %q: %v", i, k.Name, err)
		}
		out = append(out, pk)
	}
	return out, nil
}

// Warnings lists settings that are valid but weaken security: commands or
// a password over plaintext to a host that is not loopback, and TLS with
// certificate verification off.
func (c Config) Warnings() []string {
	var w []string
	for _, b := range c.Brokers {
		u, err := url.Parse(b)
		if err != nil {
			continue
		}
		switch u.Scheme {
		case "tcp", "mqtt", "ws":
		default:
			continue
		}
		if isLoopback(u.Hostname()) {
			continue
		}
		if c.Commands.Enabled {
			w = append(w, fmt.Sprintf("mqtt: commands are enabled over plaintext %s: anyone on the network path can read them and see the device's replies (signatures still stop forged commands); use ssl:// or mqtts://", redact.URL(b)))
		}
		if c.PasswordFile != "" {
			w = append(w, fmt.Sprintf("mqtt: the broker password is sent in clear over %s: anyone on the network path can read it; use ssl:// or mqtts://", redact.URL(b)))
		}
	}
	if c.TLS.InsecureSkipVerify {
		w = append(w, "mqtt: tls.insecure_skip_verify is true: the broker's certificate is not checked, so anyone on the network path can pose as the broker (and read the password, summaries and alerts); set tls.ca_file instead")
	}
	return w
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (c Config) clientID() string {
	if c.ClientID != "" {
		return c.ClientID
	}
	return "atm-agent-" + c.Topic.Device
}

// CheckFiles reads the files the publisher reads when it starts (the TLS
// CA bundle, the client certificate and key, the password file) and returns
// the error it would: `atm-agent config check`, the unit's ExecStartPre,
// then refuses a config that `run` would refuse, instead of letting the
// daemon exit at start in a restart loop.
func (c Config) CheckFiles() error {
	if _, err := c.tlsConfig(); err != nil {
		return err
	}
	_, err := c.password()
	return err
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
		if err := secretfile.Check(t.KeyFile); err != nil {
			return nil, fmt.Errorf("mqtt tls: key_file: %w", err)
		}
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
	// A password every local user can read lets any of them publish as
	// the device (and read what it may read).
	b, err := secretfile.ReadFile(c.PasswordFile)
	if err != nil {
		return "", fmt.Errorf("mqtt: read password_file: %w", err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}
