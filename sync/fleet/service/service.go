// Package service is the fleet service's composition root: its
// configuration and the wiring of store, ingest, pruning and web server.
// cmd/atm-fleet runs it from a config file; `atm-tools demo --fleet` runs
// the same service over simulated ATMs. The ATM daemon links none of it.
package service

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"
	"gopkg.in/yaml.v3"

	"github.com/periocular/atm-agent/internal/yamlkeys"
	"github.com/periocular/atm-agent/sync/fleet/command"
	"github.com/periocular/atm-agent/sync/fleet/ingest"
	"github.com/periocular/atm-agent/sync/fleet/secretfile"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/fleet/storage/boltstore"
	"github.com/periocular/atm-agent/sync/fleet/storage/pgstore"
	"github.com/periocular/atm-agent/sync/fleet/web"
)

// Config is the whole service configuration (YAML, strict).
type Config struct {
	LogLevel  string          `yaml:"log_level"`
	Store     StoreConfig     `yaml:"store"`
	Retention RetentionConfig `yaml:"retention"`
	MQTT      ingest.Config   `yaml:"mqtt"`
	Web       web.Config      `yaml:"web"`
	// Commands signs the commands of the identity review (off by
	// default); they go out on the mqtt connection.
	Commands command.Config `yaml:"commands"`
}

// StoreConfig selects the store.
type StoreConfig struct {
	// Driver is "bolt" (embedded, one instance) or "postgres".
	Driver string `yaml:"driver"`
	// Path of the bbolt file.
	Path string `yaml:"path"`
	// DSN (postgres): a libpq URL or key=value string; DSNFile reads it
	// from a file instead (keeps a password out of the config).
	DSN     string `yaml:"dsn"`
	DSNFile string `yaml:"dsn_file"`
}

// RetentionConfig says how long history is kept and how often it is pruned.
type RetentionConfig struct {
	History       time.Duration `yaml:"history"`
	Alerts        time.Duration `yaml:"alerts"`
	PruneInterval time.Duration `yaml:"prune_interval"`
}

// DefaultConfig returns the defaults of an installed service.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	m := ingest.DefaultConfig()
	m.Brokers = []string{"tcp://127.0.0.1:1883"}
	m.ClientID = "atm-fleet-" + strings.ReplaceAll(host, ".", "-")
	w := web.DefaultConfig()
	w.UsersFile = "/etc/atm-fleet/users.yaml"
	return Config{LogLevel: "info", Store: StoreConfig{Driver: "bolt", Path: "/var/lib/atm-fleet/fleet.db"},
		Retention: RetentionConfig{History: 30 * 24 * time.Hour, Alerts: 365 * 24 * time.Hour, PruneInterval: time.Hour},
		MQTT:      m, Web: w, Commands: command.DefaultConfig()}
}

// ParseConfig decodes YAML strictly over the defaults and validates it.
// Decode errors are told in the file's keys, with their line and the key
// meant (yamlkeys.Explain, as the agent's config check does).
func ParseConfig(b []byte) (Config, error) {
	c := DefaultConfig()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		var doc yaml.Node
		if yaml.Unmarshal(b, &doc) == nil {
			err = yamlkeys.Explain(err, &doc, reflect.TypeOf(Config{}), "a duration (e.g. 500ms, 30s, 5m, 1h)")
		}
		return c, fmt.Errorf("config: %w", err)
	}
	return c, c.Validate()
}

// LoadConfig reads and parses a config file.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Validate checks every section.
func (c Config) Validate() error {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return fmt.Errorf("config: log_level: %w", err)
	}
	switch c.Store.Driver {
	case "bolt":
		if c.Store.Path == "" {
			return errors.New("config: store.path is required for driver bolt")
		}
	case "postgres":
		if (c.Store.DSN == "") == (c.Store.DSNFile == "") {
			return errors.New("config: driver postgres needs exactly one of store.dsn and store.dsn_file")
		}
	default:
		return fmt.Errorf("config: store.driver %q: want bolt or postgres", c.Store.Driver)
	}
	if c.Retention.History < time.Hour || c.Retention.Alerts < time.Hour || c.Retention.PruneInterval < time.Minute {
		return errors.New("config: retention.history and retention.alerts >= 1h, retention.prune_interval >= 1m")
	}
	if err := c.MQTT.Validate(); err != nil {
		return fmt.Errorf("config: mqtt: %w", err)
	}
	if err := c.Web.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := c.Commands.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

// CheckFiles reads what the config names and `config check` can verify
// before a start, as the service would read it: the command-signing key
// (its owner and mode too), the MQTT TLS files and password file, the web
// TLS pair, the DSN file. An error is for the operator to fix (run refuses
// it as a SetupError). The warnings name secret files (passwords, the DSN,
// private keys) that group or others can read.
//
// Outside the unit ($CREDENTIALS_DIRECTORY unset: postinst, an operator's
// check) a file under /run/credentials/UNIT/ is systemd's copy, made only
// while the service runs: it is not read (--credentials-from checks its
// source).
func (c Config) CheckFiles() (warnings []string, err error) {
	if os.Getenv("CREDENTIALS_DIRECTORY") == "" {
		c = c.withoutCredentialCopies()
	}
	if c.Commands.Enabled && c.Commands.PrivateKeyFile != "" {
		if _, err := command.LoadKey(c.Commands.PrivateKeyFile); err != nil {
			return nil, fmt.Errorf("config: commands: %w", err)
		}
		if w := command.WarnRootOnly(c.Commands.PrivateKeyFile); w != "" {
			warnings = append(warnings, w)
		}
	}
	if err := c.MQTT.CheckFiles(); err != nil {
		return nil, fmt.Errorf("config: mqtt: %w", err)
	}
	if c.Web.TLSCertFile != "" {
		if _, err := tls.LoadX509KeyPair(c.Web.TLSCertFile, c.Web.TLSKeyFile); err != nil {
			return nil, fmt.Errorf("config: web: tls_cert_file/tls_key_file: %w", err)
		}
	}
	if c.Store.Driver == "postgres" && c.Store.DSNFile != "" {
		if _, err := os.ReadFile(c.Store.DSNFile); err != nil {
			return nil, fmt.Errorf("config: store: dsn_file: %w", err)
		}
	}
	dsnFile := ""
	if c.Store.Driver == "postgres" {
		dsnFile = c.Store.DSNFile
	}
	for _, f := range []struct{ path, what string }{
		{c.MQTT.PasswordFile, "mqtt.password_file"},
		{c.MQTT.TLS.KeyFile, "mqtt.tls.key_file"},
		{c.Web.TLSKeyFile, "web.tls_key_file"},
		{dsnFile, "store.dsn_file"},
	} {
		if f.path != "" {
			if w := secretfile.WarnReadable(f.path, f.what); w != "" {
				warnings = append(warnings, w)
			}
		}
	}
	return warnings, nil
}

// startup is what New reads before it opens the store.
type startup struct {
	users    web.Users
	key      []byte
	cmdKey   ed25519.PrivateKey
	warnings []string // secret files group or others can read
}

// prepare validates c and reads every file it names, as a start does
// before it opens the store: the files CheckFiles reads, the users file
// (owner, mode, format, bcrypt hashes, at least one user), the session key
// (owner, mode, length) and the command key. Each refusal is a
// *SetupError. With skipCopies (a check outside the unit) a users file,
// session key or command key under /run/credentials/UNIT/ is not read:
// systemd makes that copy only while the service runs, owned by the
// service's (dynamic) user, and the unit's root check reads its source. Its warnings are returned with an error too.
func (c Config) prepare(skipCopies bool) (st startup, err error) {
	if err := c.Validate(); err != nil {
		return st, &SetupError{err}
	}
	// What the config names (TLS files, password and DSN files): unreadable
	// or missing, it is the operator's to fix, not a reason to restart.
	if st.warnings, err = c.CheckFiles(); err != nil {
		return st, &SetupError{err}
	}
	copied := func(p string) bool { return skipCopies && secretfile.CredentialID(p) != "" }
	if !copied(c.Web.UsersFile) {
		if st.users, err = web.LoadUsers(c.Web.UsersFile); err != nil {
			return st, &SetupError{err}
		}
	}
	if !copied(c.Web.SessionKeyFile) {
		if st.key, err = web.LoadSessionKey(c.Web.SessionKeyFile); err != nil {
			return st, &SetupError{err}
		}
	}
	if c.Commands.Enabled && !copied(c.Commands.PrivateKeyFile) {
		if st.cmdKey, err = command.LoadKey(c.Commands.PrivateKeyFile); err != nil {
			return st, &SetupError{err}
		}
	}
	return st, nil
}

// Check is `atm-fleet config check`: everything a start refuses before it
// opens the store, by the same code (prepare) and with the same messages,
// and the warnings a start logs. Outside the unit ($CREDENTIALS_DIRECTORY
// unset) the files under /run/credentials/UNIT/ are systemd's copies,
// made only while the service runs: they are not read (see
// WithCredentialSources), and skipped lists their keys.
func (c Config) Check() (warnings, skipped []string, err error) {
	outside := os.Getenv("CREDENTIALS_DIRECTORY") == ""
	if outside {
		for _, f := range c.credentialFiles() {
			if *f.path != "" && secretfile.CredentialID(*f.path) != "" {
				skipped = append(skipped, f.key)
			}
		}
	}
	st, err := c.prepare(outside)
	return st.warnings, skipped, err
}

// withoutCredentialCopies is c without the files it names under
// /run/credentials/UNIT/ (a TLS pair goes as a whole).
func (c Config) withoutCredentialCopies() Config {
	cred := func(p string) bool { return p != "" && secretfile.CredentialID(p) != "" }
	for _, p := range []*string{&c.MQTT.PasswordFile, &c.MQTT.TLS.CAFile, &c.Store.DSNFile, &c.Commands.PrivateKeyFile} {
		if cred(*p) {
			*p = ""
		}
	}
	if cred(c.MQTT.TLS.CertFile) || cred(c.MQTT.TLS.KeyFile) {
		c.MQTT.TLS.CertFile, c.MQTT.TLS.KeyFile = "", ""
	}
	if cred(c.Web.TLSCertFile) || cred(c.Web.TLSKeyFile) {
		c.Web.TLSCertFile, c.Web.TLSKeyFile = "", ""
	}
	return c
}

// WithCredentialSources is c with every file it names that is a copy systemd
// makes for the unit (/run/credentials/UNIT/ID, LoadCredential=) replaced by
// its source dir/ID, where the unit's LoadCredential= lines load it from:
// `config check --credentials-from` checks the operator's files, not the
// private 0400 copies the service is handed.
func (c Config) WithCredentialSources(dir string) Config {
	for _, f := range c.credentialFiles() {
		if id := secretfile.CredentialID(*f.path); *f.path != "" && id != "" {
			*f.path = filepath.Join(dir, id)
		}
	}
	return c
}

// credentialFiles are the keys of c that name a file, which can be a
// credential copy.
func (c *Config) credentialFiles() []struct {
	key  string
	path *string
} {
	return []struct {
		key  string
		path *string
	}{
		{"web.users_file", &c.Web.UsersFile}, {"web.session_key_file", &c.Web.SessionKeyFile},
		{"web.tls_cert_file", &c.Web.TLSCertFile}, {"web.tls_key_file", &c.Web.TLSKeyFile},
		{"mqtt.password_file", &c.MQTT.PasswordFile}, {"mqtt.tls.ca_file", &c.MQTT.TLS.CAFile},
		{"mqtt.tls.cert_file", &c.MQTT.TLS.CertFile}, {"mqtt.tls.key_file", &c.MQTT.TLS.KeyFile},
		{"store.dsn_file", &c.Store.DSNFile}, {"commands.private_key_file", &c.Commands.PrivateKeyFile},
	}
}

// Service is one running fleet instance: its store, ingest and web server.
type Service struct {
	cfg   Config
	log   *slog.Logger
	store storage.Store
	in    *ingest.Ingester
	web   *web.Server
	ret   storage.Retention
}

// SetupError is a start refused for what only the operator can fix: the
// config, the users file (no user yet), the session key or the command key.
// Starting again does not help; cmd/atm-fleet exits 78 (EX_CONFIG) on it and
// the unit's RestartPreventExitStatus=78 stops systemd's restarts. A store
// that cannot be opened (PostgreSQL down) is not one.
type SetupError struct{ Err error }

func (e *SetupError) Error() string { return e.Err.Error() }
func (e *SetupError) Unwrap() error { return e.Err }

// New validates cfg, loads the users and session key, opens the store and
// builds the ingest and the web server. Close releases the store. What
// the operator must fix is a *SetupError.
func New(ctx context.Context, cfg Config, log *slog.Logger) (_ *Service, err error) {
	prep, err := cfg.prepare(false)
	for _, w := range prep.warnings {
		log.Warn("atm-fleet: " + w)
	}
	if err != nil {
		return nil, err
	}
	users, key, cmdKey := prep.users, prep.key, prep.cmdKey
	s := &Service{cfg: cfg, log: log, ret: storage.Retention{History: cfg.Retention.History, Alerts: cfg.Retention.Alerts}}
	if s.store, err = openStore(ctx, cfg.Store, log); err != nil {
		return nil, err
	}
	if p, ok := s.store.(interface{ RemovedPhantoms() int }); ok && p.RemovedPhantoms() > 0 {
		log.Info("atm-fleet: removed device records that never had an accepted message (created for rejected payloads by earlier versions)",
			"devices", p.RemovedPhantoms())
	}
	defer func() {
		if err != nil {
			s.store.Close()
		}
	}()
	if s.in, err = ingest.New(cfg.MQTT, s.store, log); err != nil {
		return nil, err
	}
	deps := web.Deps{Logger: log, Retention: s.ret, IngestStats: func() any { return s.in.Stats() },
		Recover: func(ctx context.Context, site, device string, pub ed25519.PublicKey) (ingest.Recovered, error) {
			return ingest.Recover(ctx, cfg.MQTT, s.store, site, device, pub, time.Now())
		}}
	if cfg.Commands.Enabled {
		cmd, err := command.New(cfg.Commands, cfg.MQTT.Prefix, cmdKey, s.in, log)
		if err != nil {
			return nil, err
		}
		cmd.UseKeys(s.store)
		s.in.Route(cmd.ReplyFilter(), cmd.Handle)
		deps.Commands, deps.CommandStats = cmd, func() any { return cmd.Stats() }
	}
	s.web, err = web.New(cfg.Web, s.store, users, key, deps)
	if err != nil {
		return nil, err
	}
	log.Info("atm-fleet ready", "store", cfg.Store.Driver, "listen", cfg.Web.Listen, "users", len(users), "commands", cfg.Commands.Enabled)
	return s, nil
}

// OpenStore opens the configured store as run does, for the admin
// commands (atm-fleet devices key): the embedded file while the service is
// stopped (it holds the file's lock), PostgreSQL at any time.
func OpenStore(ctx context.Context, c StoreConfig, log *slog.Logger) (storage.Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return openStore(ctx, c, log)
}

func openStore(ctx context.Context, c StoreConfig, log *slog.Logger) (storage.Store, error) {
	if c.Driver == "bolt" {
		st, err := boltstore.Open(c.Path, 5*time.Second)
		if err == nil && st.ScrubPending() != nil {
			log.Warn("fleet store: an erasure's records may still be in the file's free pages (its rewrite found no room); free space and restart, or stop the service and run atm-fleet compact",
				"err", st.ScrubPending())
		}
		return st, err
	}
	dsn := c.DSN
	if c.DSNFile != "" {
		b, err := os.ReadFile(c.DSNFile)
		if err != nil {
			return nil, fmt.Errorf("store: dsn_file: %w", err)
		}
		dsn = strings.TrimSpace(string(b))
	}
	return openPostgres(ctx, dsn, log)
}

// pgWait bounds how long a start waits for PostgreSQL to accept
// connections (a server starting with the machine, or restarting): inside
// the unit's start, so a database down for a while is waited for rather
// than met with a restart loop that the unit's start limit ends.
var pgWait = 60 * time.Second

// openPostgres opens the PostgreSQL store, retrying while the server does
// not answer (pgUnreachable) for up to pgWait; any other failure (the DSN,
// authentication, no such database, a migration) is returned at once.
func openPostgres(ctx context.Context, dsn string, log *slog.Logger) (storage.Store, error) {
	start, delay := time.Now(), 250*time.Millisecond
	for attempt := 1; ; attempt++ {
		octx, cancel := context.WithTimeout(ctx, 30*time.Second)
		st, err := pgstore.Open(octx, dsn, log)
		cancel()
		switch {
		case err == nil:
			if attempt > 1 {
				log.Info("fleet store: PostgreSQL reached", "after", time.Since(start).Round(time.Millisecond), "attempts", attempt)
			}
			return st, nil
		case !pgUnreachable(err) || ctx.Err() != nil:
			return nil, err
		case time.Since(start)+delay > pgWait:
			return nil, fmt.Errorf("%w (waited %v for the server)", err, pgWait)
		case attempt == 1:
			log.Warn("fleet store: PostgreSQL does not answer yet; waiting for it", "for", pgWait, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// pgUnreachable says whether err means the server did not answer
// (refused, unreachable, timed out, a name not resolved yet) or answered
// that it is starting up or shutting down: worth waiting for. A server
// that answers and refuses (authentication, no such database) is not.
func pgUnreachable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "57P03" // cannot_connect_now
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded)
}

// ReloadUsers reads the users file again and, if it passes the checks of
// a start, puts it in force at once (web.Server.ReloadUsers); if not, the
// users in force stay. Only the users file is reread: the rest of the
// config, the session key and the other files it names wait for a
// restart. cmd/atm-fleet calls it on SIGHUP (systemctl reload).
func (s *Service) ReloadUsers() error { return s.web.ReloadUsers() }

// Store is the service's store (read it while the service runs; Close
// closes it).
func (s *Service) Store() storage.Store { return s.store }

// IngestStats are the ingest counters since start.
func (s *Service) IngestStats() ingest.Stats { return s.in.Stats() }

// Close closes the store; call it after Run has returned.
func (s *Service) Close() error { return s.store.Close() }

// Run ingests, prunes and serves on cfg.Web.Listen until ctx ends; it
// returns after its goroutines have ended.
func (s *Service) Run(ctx context.Context) error { return s.Serve(ctx, nil) }

// Serve is Run with the web server on ln (nil: listen on cfg.Web.Listen).
func (s *Service) Serve(ctx context.Context, ln net.Listener) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.in.Run(gctx) })
	g.Go(func() error {
		if ln == nil {
			return s.web.Run(gctx)
		}
		return s.web.Serve(gctx, ln)
	})
	g.Go(func() error { prune(gctx, s.store, s.ret, s.cfg.Retention.PruneInterval, s.log); return nil })
	err := g.Wait()
	s.log.Info("atm-fleet stopped", "err", err)
	return err
}

// prune applies retention at start and every interval until ctx ends.
func prune(ctx context.Context, st storage.Store, r storage.Retention, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		n, err := st.Prune(pctx, time.Now(), r)
		cancel()
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("atm-fleet: prune failed", "err", err)
		case err == nil && n != (storage.PruneStats{}):
			log.Info("atm-fleet: pruned", "stats", fmt.Sprintf("%+v", n))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
