package daemon

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/periocular/atm-agent/agent"
	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/agent/rules"
	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/hal/camera"
	"github.com/periocular/atm-agent/hal/trigger"
	"github.com/periocular/atm-agent/internal/redact"
	"github.com/periocular/atm-agent/internal/regfile"
	"github.com/periocular/atm-agent/internal/secretfile"
	"github.com/periocular/atm-agent/models"
	"github.com/periocular/atm-agent/store"
	"github.com/periocular/atm-agent/sync/mqttsync"
	"github.com/periocular/atm-agent/sync/wire"
)

// Config is the agent's one YAML file. Each section is the owning package's
// Config, decoded strictly over its defaults.
type Config struct {
	Device   DeviceConfig   `yaml:"device"`
	Models   ModelsConfig   `yaml:"models"`
	Camera   camera.Config  `yaml:"camera"`
	Trigger  TriggerConfig  `yaml:"trigger"`
	Vision   vision.Config  `yaml:"vision"`
	Identity IdentityConfig `yaml:"identity"`
	Alerts   rules.Config   `yaml:"alerts"`
	Store    store.Config   `yaml:"store"`
	MQTT     MQTTConfig     `yaml:"mqtt"`
	Agent    agent.Config   `yaml:"agent"`
	Metrics  MetricsConfig  `yaml:"metrics"`
	Log      LogConfig      `yaml:"log"`
}

// DeviceConfig names this ATM; it fills the MQTT topics and payloads.
type DeviceConfig struct {
	ID   string `yaml:"id"`
	Site string `yaml:"site"`
}

// ModelsConfig locates the model files and picks the networks.
type ModelsConfig struct {
	Dir      string `yaml:"dir"`      // holds manifest.yaml
	Detector string `yaml:"detector"` // "" = the manifest's pipeline choice
	Embedder string `yaml:"embedder"`
}

// IdentityConfig tunes the identity engine. Thresholds come from the model
// manifest unless overridden here.
type IdentityConfig struct {
	ConfirmVisits int                  `yaml:"confirm_visits"`
	Workers       int                  `yaml:"workers"`
	Thresholds    *identity.Thresholds `yaml:"thresholds,omitempty"`
}

// TriggerConfig enables the trigger sources.
type TriggerConfig struct {
	GPIO   GPIOSection   `yaml:"gpio"`
	HTTP   HTTPSection   `yaml:"http"`
	Replay ReplaySection `yaml:"replay"`
}

type GPIOSection struct {
	Enabled            bool `yaml:"enabled"`
	trigger.GPIOConfig `yaml:",inline"`
}

type HTTPSection struct {
	Enabled            bool `yaml:"enabled"`
	trigger.HTTPConfig `yaml:",inline"`
}

type ReplaySection struct {
	Enabled              bool `yaml:"enabled"`
	trigger.ReplayConfig `yaml:",inline"`
}

// MQTTConfig is mqttsync.Config plus an on/off switch; topic site and
// device default to the device section.
type MQTTConfig struct {
	Enabled         bool `yaml:"enabled"`
	mqttsync.Config `yaml:",inline"`
}

// MetricsConfig serves /metrics and /healthz; Listen "" disables. A
// non-loopback Listen needs AllowRemote and then a bearer token
// (TokenFile) or TLS (TLS.CertFile and TLS.KeyFile), or both.
type MetricsConfig struct {
	Listen      string `yaml:"listen"`
	AllowRemote bool   `yaml:"allow_remote"`
	// TokenFile holds the bearer token a scraper must send (at least 16
	// characters, surrounding whitespace ignored): a path or
	// "credential:NAME" for a systemd credential.
	TokenFile string           `yaml:"token_file"`
	TLS       MetricsTLSConfig `yaml:"tls"`
	// Hosts are the names (no port) a plain-HTTP request may carry in its
	// Host header besides IP addresses, localhost and the machine's
	// hostname: the name a central Prometheus scrapes the device by. Any
	// other name gets 421, so a web page cannot read the port through DNS
	// rebinding (netguard.Hosts). With TLS every name is accepted: the
	// certificate does that.
	Hosts []string `yaml:"hosts"`
}

// MetricsTLSConfig serves the metrics port over TLS (PEM files).
type MetricsTLSConfig struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// LogConfig selects the log level and format.
type LogConfig struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text or json
}

// DefaultConfig returns the configuration `atm-agent config default` prints.
func DefaultConfig() Config {
	cam := camera.DefaultConfig()
	cam.Source = "/dev/video0"
	cam.Width, cam.Height = 640, 480
	idc := identity.DefaultConfig()
	httpc := trigger.DefaultHTTPConfig()
	httpc.Socket = "/run/atm-agent/trigger.sock"
	replay := trigger.ReplayConfig{Speed: 1}
	return Config{
		Device:   DeviceConfig{ID: "atm-0001", Site: "site-1"},
		Models:   ModelsConfig{Dir: "/usr/lib/atm-agent/models"},
		Camera:   cam,
		Trigger:  TriggerConfig{GPIO: GPIOSection{GPIOConfig: trigger.DefaultGPIOConfig()}, HTTP: HTTPSection{Enabled: true, HTTPConfig: httpc}, Replay: ReplaySection{ReplayConfig: replay}},
		Vision:   vision.DefaultConfig(),
		Identity: IdentityConfig{ConfirmVisits: idc.ConfirmVisits},
		Alerts:   rules.DefaultConfig(),
		Store:    store.DefaultConfig(),
		MQTT:     MQTTConfig{Config: mqttsync.DefaultConfig()},
		Agent:    agent.DefaultConfig(),
		Metrics:  MetricsConfig{Listen: "127.0.0.1:9464", Hosts: []string{}},
		Log:      LogConfig{Level: "info", Format: "text"},
	}
}

//go:embed default.yaml
var defaultYAML []byte

// DefaultYAML returns the commented default config file (`atm-agent config
// default`); it parses to DefaultConfig.
func DefaultYAML() []byte { return bytes.Clone(defaultYAML) }

// ParseConfig decodes YAML strictly over the defaults: an unknown or
// misspelt key is an error naming its line. It then validates.
func ParseConfig(b []byte) (Config, error) {
	c := DefaultConfig()
	// An empty sequence in the file replaces the default rules.
	c.Alerts.Rules = nil
	// The document as nodes: durations in days are rewritten in place
	// (rewriteDays) and decode errors are told in keys (configError).
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err == nil {
		if msgs := fractionErrors(&doc); len(msgs) > 0 {
			return Config{}, fmt.Errorf("config: %s", strings.Join(msgs, "\n  "))
		}
		b = rewriteDays(b, &doc)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return Config{}, errors.New("config is empty")
		}
		return Config{}, fmt.Errorf("config: %w", configError(err, &doc))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return Config{}, errors.New("config: more than one YAML document")
	}
	if c.Alerts.Rules == nil {
		c.Alerts = rules.DefaultConfig()
	}
	c.fill()
	if err := c.Validate(); err != nil {
		return Config{}, shortDurations(ruleLines(err, &doc))
	}
	return c, nil
}

// LoadConfig reads and parses a config file. A path that is not a regular
// file (a named pipe, a device, a directory) is refused before it is read.
func LoadConfig(path string) (Config, error) {
	b, err := regfile.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// fill derives settings that default to another section.
func (c *Config) fill() {
	if c.MQTT.Topic.Site == "" {
		c.MQTT.Topic.Site = c.Device.Site
	}
	if c.MQTT.Topic.Device == "" {
		c.MQTT.Topic.Device = c.Device.ID
	}
	if c.MQTT.Commands.SeenFile == "" && c.Store.Path != "" {
		c.MQTT.Commands.SeenFile = filepath.Join(filepath.Dir(c.Store.Path), "commands-seen.json")
	}
	// The device key that signs replies, status, state, summaries and
	// alerts: by default device.key beside the store, made at the first
	// start with MQTT on when missing (a configured path must exist;
	// with commands off, a key that cannot be had is a warning and the
	// messages go unsigned: mqttsync.loadDeviceKey).
	if c.MQTT.Commands.DeviceKeyFile == "" && c.Store.Path != "" {
		c.MQTT.Commands.DeviceKeyFile = filepath.Join(filepath.Dir(c.Store.Path), DeviceKeyName)
		c.MQTT.Commands.CreateDeviceKey = true
	}
}

// DeviceKeyName is the file name of the default device key, beside the
// store.
const DeviceKeyName = "device.key"

// unitRuntimeDir is the folder systemd creates for the unit
// (RuntimeDirectory=atm-agent) while it runs: the trigger socket's.
const unitRuntimeDir = "/run/atm-agent"

// PackagedCredentials are the packaged unit's LoadCredential= lines
// (systemd/atm-agent.service): each credential's id and its source file.
var PackagedCredentials = map[string]string{"store-key": "/etc/atm-agent/store.key"}

// WithCredentialSources is c with each setting that names a systemd
// credential ("credential:ID", store.key_file and metrics.token_file)
// whose id sources has replaced by that source file, so that CheckFiles
// reads the file the operator keeps (its mode, its contents) rather than
// the private copy only the unit's processes see. read lists what was
// replaced ("store.key_file: /etc/atm-agent/store.key").
func (c Config) WithCredentialSources(sources map[string]string) (_ Config, read []string) {
	for _, f := range []struct {
		key  string
		path *string
	}{{"store.key_file", &c.Store.KeyFile}, {"metrics.token_file", &c.Metrics.TokenFile}} {
		if id, ok := strings.CutPrefix(*f.path, "credential:"); ok && sources[id] != "" {
			*f.path = sources[id]
			read = append(read, f.key+": "+sources[id])
		}
	}
	return c, read
}

// Warnings lists settings that are valid but weaken security or the alert
// rules, or name a relative path; `config check` prints them and the
// daemon logs them at start.
func (c Config) Warnings() []string {
	w := rules.RetentionWarnings(c.Alerts.Rules, c.Store.Retention)
	w = append(w, c.relativePathWarnings()...)
	w = append(w, c.rootWarnings()...)
	if c.Store.KeyFile == "" {
		w = append(w, "store.key_file is not set: face templates are kept unencrypted on disk; set it (the package's key: "+
			"store.key_file: credential:store-key, which the unit passes from /etc/atm-agent/store.key) and the agent "+
			"seals the templates already stored at its next start")
	}
	if cam := c.Camera; cam.Name == "" && camera.DefaultName(cam.Source) != redact.URL(cam.Source) {
		w = append(w, fmt.Sprintf("camera.source is longer than %d characters: the status names the camera %q (its end); set camera.name to a short label",
			camera.MaxNameLen, camera.DefaultName(cam.Source)))
	}
	if m := c.Metrics; m.Listen != "" && m.AllowRemote && m.TLS.CertFile == "" && m.TokenFile != "" {
		w = append(w, fmt.Sprintf("metrics: %s serves the bearer token's endpoints without TLS: anyone on the network path can read the token; set metrics.tls", m.Listen))
	}
	if !c.MQTT.Enabled {
		return w
	}
	return append(w, c.MQTT.Config.Warnings()...)
}

// checkOtherReads refuses the files that packages reading them with
// os.ReadFile (the MQTT publisher's password, TLS and command key files and
// seen file; the replay schedule; the metrics port's TLS certificate and
// key) would read at start, when one exists and
// is not a regular file: a named pipe there blocked `config check` and
// `run` for good, deaf to SIGTERM. A secret among them (the password, the
// TLS private keys) is also refused when others may read it, as `run`
// refuses it. The daemon's own reads (config,
// manifest, store key, tokens) refuse such files themselves (regfile).
func (c Config) checkOtherReads() error {
	for _, s := range c.pathSettings() {
		if !s.otherRead || s.path == "" || strings.HasPrefix(s.path, "credential:") {
			continue
		}
		check := regfile.Check
		if s.secret {
			check = secretfile.Check
		}
		if err := check(s.path); err != nil {
			return fmt.Errorf("%s: %w", s.key, err)
		}
	}
	return nil
}

// pathSetting is a setting that names a file or folder the agent uses.
type pathSetting struct {
	key, path string
	// otherRead: read by a package that does not use regfile (MQTT, TLS,
	// command keys, the replay schedule), so checkOtherReads checks it.
	otherRead bool
	// defaulted: the value was derived, not written in the file.
	defaulted bool
	// secret: a password, token or private key; checkOtherReads also
	// refuses it when others may read it (secretfile.Check).
	secret bool
}

// pathSettings lists the path settings of the parts that are enabled.
func (c Config) pathSettings() []pathSetting {
	ss := []pathSetting{{key: "models.dir", path: c.Models.Dir}, {key: "store.path", path: c.Store.Path}, {key: "store.key_file", path: c.Store.KeyFile}}
	if k := camera.ResolveKind(c.Camera); k == camera.KindImages || k == camera.KindFile {
		ss = append(ss, pathSetting{key: "camera.source", path: c.Camera.Source})
	}
	if h := c.Trigger.HTTP; h.Enabled {
		ss = append(ss, pathSetting{key: "trigger.http.socket", path: h.Socket}, pathSetting{key: "trigger.http.token_file", path: h.TokenFile})
	}
	if r := c.Trigger.Replay; r.Enabled {
		ss = append(ss, pathSetting{key: "trigger.replay.file", path: r.File, otherRead: true})
	}
	if m := c.Metrics; m.Listen != "" {
		ss = append(ss, pathSetting{key: "metrics.token_file", path: m.TokenFile},
			pathSetting{key: "metrics.tls.cert_file", path: m.TLS.CertFile, otherRead: true}, pathSetting{key: "metrics.tls.key_file", path: m.TLS.KeyFile, otherRead: true, secret: true})
	}
	if m := c.MQTT; m.Enabled {
		ss = append(ss, pathSetting{key: "mqtt.password_file", path: m.PasswordFile, otherRead: true, secret: true}, pathSetting{key: "mqtt.tls.ca_file", path: m.TLS.CAFile, otherRead: true},
			pathSetting{key: "mqtt.tls.cert_file", path: m.TLS.CertFile, otherRead: true}, pathSetting{key: "mqtt.tls.key_file", path: m.TLS.KeyFile, otherRead: true, secret: true})
		if m.Commands.Enabled {
			for i, k := range m.Commands.PublicKeys {
				ss = append(ss, pathSetting{key: fmt.Sprintf("mqtt.commands.public_keys[%d].file", i), path: k.File, otherRead: true})
			}
			ss = append(ss, pathSetting{key: "mqtt.commands.seen_file", path: m.Commands.SeenFile, otherRead: true,
				defaulted: m.Commands.SeenFile == filepath.Join(filepath.Dir(c.Store.Path), "commands-seen.json")})
		}
	}
	return ss
}

// relativePathWarnings names every path setting that holds a relative
// path. Such a path is resolved against the working directory of the
// process that reads the config, not against the config file's folder:
// `run` under the unit (working directory /) and `db stats --config` from a
// shell then name different files. Warned, not refused: a development
// config run from its folder is a fair use.
func (c Config) relativePathWarnings() []string {
	wd, err := os.Getwd()
	if err != nil {
		wd = "unknown: " + err.Error()
	}
	var w []string
	for _, s := range c.pathSettings() {
		if s.defaulted || s.path == "" || filepath.IsAbs(s.path) || strings.HasPrefix(s.path, "credential:") {
			continue
		}
		w = append(w, fmt.Sprintf("%s %q is a relative path: it is resolved against the working directory (now %s), not the config file's folder; the unit runs in /, so give an absolute path", s.key, s.path, wd))
	}
	return w
}

// CheckFiles reads the files the config names that the daemon would only
// read at start (the store key, the MQTT command public keys, the tokens,
// the models' manifest) and checks the paths it would open (the store file
// and its folder; the trigger socket's length, folder, what is at it
// already and its group; the MQTT commands' seen_file and its folder), so that `config check`, the unit's ExecStartPre,
// refuses what `run` would refuse. The unit runs it as the agent's user in
// the agent's sandbox, so access(2) there answers for run: a folder
// ProtectSystem=strict leaves read-only (EROFS), one the user may not
// write, a store file it may not open, a socket group it is not in. Run by
// root, permissions pass (Warnings then says what root can tell about the
// unit's user). Every file is read only if it is a regular file (a named
// pipe would block the read for good).
func (c Config) CheckFiles() error {
	if err := c.checkOtherReads(); err != nil {
		return err
	}
	// A models dir that is not there at all is left to run (the package
	// installs it; a config is often checked before); one that is there
	// must hold a manifest that parses.
	if _, err := os.Stat(c.Models.Dir); !errors.Is(err, fs.ErrNotExist) {
		if _, err := models.LoadManifest(filepath.Join(c.Models.Dir, "manifest.yaml")); err != nil {
			return fmt.Errorf("models.dir %s: %w", c.Models.Dir, err)
		}
	}
	if st, err := os.Stat(c.Store.Path); err == nil && !st.Mode().IsRegular() {
		return fmt.Errorf("store.path %s is not a regular file (%s)", c.Store.Path, st.Mode().Type())
	}
	// What run's open and compaction need of this process (under the
	// unit: its user, in its sandbox): a folder that exists and that it
	// may write, and an existing store it may read and write.
	if err := c.checkStoreAccess(); err != nil {
		return err
	}
	if h := c.Trigger.HTTP; h.Enabled {
		// The token and the socket group, read and resolved as run does.
		if _, err := trigger.NewHTTP(h.HTTPConfig, nil); err != nil {
			return err
		}
		// The path as the listener would take it: its length, its folder,
		// nothing but a stale socket at it. A missing /run/atm-agent
		// passes: systemd creates it (RuntimeDirectory=) before the unit's
		// ExecStartPre, and removes it when the unit stops, so a check by
		// hand with the agent stopped would otherwise always fail.
		if h.Socket != "" {
			err := trigger.CheckSocketTarget(h.Socket)
			if errors.Is(err, trigger.ErrSocketFolderMissing) && filepath.Dir(h.Socket) == unitRuntimeDir {
				err = nil
			}
			if err != nil {
				return fmt.Errorf("trigger.http.socket: %w", err)
			}
			if err := checkSocketAccess(h.Socket); err != nil {
				return err
			}
		}
	}
	// The store key: missing, unreadable or short keys fail here rather
	// than when the daemon opens the store. A systemd credential can only
	// be read where CREDENTIALS_DIRECTORY is set (ExecStartPre is).
	if k := c.Store.KeyFile; k != "" && (!strings.HasPrefix(k, "credential:") || os.Getenv("CREDENTIALS_DIRECTORY") != "") {
		key, err := store.LoadKey(k)
		clear(key)
		if err != nil {
			return fmt.Errorf("store.key_file: %w", err)
		}
	}
	if c.MQTT.Enabled {
		if err := c.MQTT.Config.CheckFiles(); err != nil {
			return err
		}
	}
	if c.MQTT.Enabled && c.MQTT.Commands.Enabled {
		if _, err := c.MQTT.Commands.LoadKeys(); err != nil {
			return err
		}
		if err := c.MQTT.Commands.CheckDeviceKey(); err != nil {
			return fmt.Errorf("mqtt.commands.device_key_file: %w", err)
		}
		if err := c.checkSeenFileAccess(); err != nil {
			return err
		}
	}
	if t := c.Metrics.TokenFile; c.Metrics.Listen != "" && t != "" && (!strings.HasPrefix(t, "credential:") || os.Getenv("CREDENTIALS_DIRECTORY") != "") {
		if _, err := loadToken(t); err != nil {
			return fmt.Errorf("metrics.token_file: %w", err)
		}
	}
	return nil
}

// Validate reports every problem, each naming its setting.
func (c Config) Validate() error {
	var errs []error
	bad := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	devErr := wire.ValidateLevel("device", c.Device.ID)
	if devErr != nil {
		bad(fmt.Errorf("device.id: %v (letters, digits, '-', '_', '.')", devErr))
	}
	siteErr := wire.ValidateLevel("site", c.Device.Site)
	if siteErr != nil {
		bad(fmt.Errorf("device.site: %v (letters, digits, '-', '_', '.')", siteErr))
	}
	if c.Models.Dir == "" {
		bad(errors.New("models.dir is required: the directory holding manifest.yaml"))
	}
	bad(c.Camera.Validate())
	bad(c.Vision.Validate())
	if c.Identity.ConfirmVisits < 1 || c.Identity.ConfirmVisits > 1000 {
		bad(fmt.Errorf("identity.confirm_visits %d: want 1..1000", c.Identity.ConfirmVisits))
	}
	if c.Identity.Workers < 0 || c.Identity.Workers > identity.MaxWorkers {
		bad(fmt.Errorf("identity.workers %d: want 0 (all cores) to %d", c.Identity.Workers, identity.MaxWorkers))
	}
	if t := c.Identity.Thresholds; t != nil {
		ic := identity.Config{Thresholds: *t, ConfirmVisits: 1}
		bad(ic.Validate())
	}
	bad(c.Alerts.Validate())
	bad(c.Store.Validate())
	bad(c.Agent.Validate())
	if b, v := c.Camera.BurstDuration, c.Agent.VisitTimeout; b > 0 && v > 0 && b >= v {
		bad(fmt.Errorf("camera.burst_duration %s is not below agent.visit_timeout %s: every visit would time out in its burst", b, v))
	}
	n := 0
	if c.Trigger.GPIO.Enabled {
		n++
		bad(c.Trigger.GPIO.Validate())
	}
	if c.Trigger.HTTP.Enabled {
		n++
		bad(c.Trigger.HTTP.Validate())
	}
	if c.Trigger.Replay.Enabled {
		n++
		bad(c.Trigger.Replay.Validate())
	}
	if n == 0 {
		bad(errors.New("trigger: no trigger enabled; enable gpio, http or replay (otherwise no visit ever starts)"))
	}
	if c.MQTT.Enabled {
		m := c.MQTT.Config
		// The topic's site and device are device.site and device.id
		// (fill): one bad id is reported once, as device.id or
		// device.site above, not a second time as the MQTT topic's
		// (stand-ins let the rest of the MQTT settings be checked).
		if devErr != nil && m.Topic.Device == c.Device.ID {
			m.Topic.Device = "device"
		}
		if siteErr != nil && m.Topic.Site == c.Device.Site {
			m.Topic.Site = "site"
		}
		bad(m.Validate())
		if c.MQTT.Topic.Device != c.Device.ID || c.MQTT.Topic.Site != c.Device.Site {
			bad(fmt.Errorf("mqtt.topic site/device (%s/%s) differ from device.site/id (%s/%s); leave them empty",
				c.MQTT.Topic.Site, c.MQTT.Topic.Device, c.Device.Site, c.Device.ID))
		}
	}
	if l := c.Metrics.Listen; l != "" {
		host, _, err := net.SplitHostPort(l)
		ip := net.ParseIP(host)
		mt := c.Metrics.TLS
		switch {
		case err != nil:
			bad(fmt.Errorf("metrics.listen %q: %v", l, err))
		case host == "localhost" || (ip != nil && ip.IsLoopback()):
		case !c.Metrics.AllowRemote:
			bad(fmt.Errorf("metrics.listen %q is not a loopback address: set metrics.allow_remote: true (with token_file or tls) to open it to a central Prometheus, or listen on 127.0.0.1", l))
		case c.Metrics.TokenFile == "" && mt.CertFile == "":
			bad(fmt.Errorf("metrics.listen %q is remote: set metrics.token_file (bearer token) or metrics.tls.cert_file/key_file, or both", l))
		}
		if (mt.CertFile == "") != (mt.KeyFile == "") {
			bad(errors.New("metrics.tls: cert_file and key_file go together"))
		}
		for i, h := range c.Metrics.Hosts {
			if h == "" || strings.ContainsAny(h, ":/ \t[]@") {
				bad(fmt.Errorf("metrics.hosts[%d] %q: want a host name without port or scheme (e.g. atm-0042.bank.example)", i, h))
			}
		}
	}
	switch strings.ToLower(c.Log.Level) {
	case "debug", "info", "warn", "error":
	default:
		bad(fmt.Errorf("log.level %q: want debug, info, warn or error", c.Log.Level))
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		bad(fmt.Errorf("log.format %q: want text or json", c.Log.Format))
	}
	return errors.Join(errs...)
}
