// Command atm-fleet is the central fleet view: it ingests the agents' MQTT
// status, summaries and alerts into a store (embedded bbolt or PostgreSQL)
// and serves the web dashboard for the fraud analysts (docs/fleet.md). It is
// a central service: the ATM daemon (atm-agent) links none of it.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/term"
	"gopkg.in/yaml.v3"

	"github.com/periocular/atm-agent/sync/fleet/ingest"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/fleet/storage/boltstore"
	"github.com/periocular/atm-agent/sync/fleet/storage/pgstore"
	"github.com/periocular/atm-agent/sync/fleet/web"
)

// version is set at link time (-ldflags "-X main.version=...").
var version = "dev"

// Config is the whole service configuration (YAML, strict).
type Config struct {
	LogLevel  string          `yaml:"log_level"`
	Store     StoreConfig     `yaml:"store"`
	Retention RetentionConfig `yaml:"retention"`
	MQTT      ingest.Config   `yaml:"mqtt"`
	Web       web.Config      `yaml:"web"`
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

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	m := ingest.DefaultConfig()
	m.Brokers = []string{"tcp://127.0.0.1:1883"}
	m.ClientID = "atm-fleet-" + strings.ReplaceAll(host, ".", "-")
	w := web.DefaultConfig()
	w.UsersFile = "/etc/atm-fleet/users.yaml"
	return Config{LogLevel: "info", Store: StoreConfig{Driver: "bolt", Path: "/var/lib/atm-fleet/fleet.db"},
		Retention: RetentionConfig{History: 30 * 24 * time.Hour, Alerts: 365 * 24 * time.Hour, PruneInterval: time.Hour},
		MQTT:      m, Web: w}
}

// ParseConfig decodes YAML strictly over the defaults and validates it.
func ParseConfig(b []byte) (Config, error) {
	c := DefaultConfig()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return c, fmt.Errorf("config: %w", err)
	}
	return c, c.Validate()
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
	return nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(runMain(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

const usageText = `atm-fleet: the central fleet view over the agents' MQTT topics (docs/fleet.md)

  atm-fleet run --config FILE        ingest + web dashboard until SIGINT/SIGTERM
  atm-fleet config check FILE        validate a config (strict: unknown keys are errors)
  atm-fleet config default           print the default config
  atm-fleet passwd                   read a password (twice on a terminal) and print its bcrypt hash for the users file
  atm-fleet version
`

func runMain(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = cmdRun(ctx, args[1:], stderr)
	case "config":
		err = cmdConfig(args[1:], stdout)
	case "passwd":
		err = cmdPasswd(stdin, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "atm-fleet", version)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usageText)
	default:
		fmt.Fprintf(stderr, "atm-fleet: unknown command %q\n\n%s", args[0], usageText)
		return 2
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "atm-fleet %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

func loadConfig(path string) (Config, error) {
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

func cmdConfig(args []string, stdout io.Writer) error {
	switch {
	case len(args) == 2 && args[0] == "check":
		if _, err := loadConfig(args[1]); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: ok\n", args[1])
		return nil
	case len(args) == 1 && args[0] == "default":
		b, err := yaml.Marshal(DefaultConfig())
		if err != nil {
			return err
		}
		_, err = stdout.Write(b)
		return err
	}
	return errors.New("usage: atm-fleet config check FILE | atm-fleet config default")
}

func cmdPasswd(stdin io.Reader, stdout, stderr io.Writer) error {
	var pw string
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(stderr, "password: ")
		a, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return err
		}
		fmt.Fprint(stderr, "again: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return err
		}
		if string(a) != string(b) {
			return errors.New("the passwords differ")
		}
		pw = string(a)
	} else {
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		pw = strings.TrimRight(line, "\r\n")
	}
	h, err := web.HashPassword(pw)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, h)
	return nil
}

func openStore(ctx context.Context, c StoreConfig, log *slog.Logger) (storage.Store, error) {
	if c.Driver == "bolt" {
		return boltstore.Open(c.Path, 5*time.Second)
	}
	dsn := c.DSN
	if c.DSNFile != "" {
		b, err := os.ReadFile(c.DSNFile)
		if err != nil {
			return nil, fmt.Errorf("store: dsn_file: %w", err)
		}
		dsn = strings.TrimSpace(string(b))
	}
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return pgstore.Open(octx, dsn, log)
}

func cmdRun(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/atm-fleet/config.yaml", "config file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lv}))
	return Run(ctx, cfg, log)
}

// Run wires store, ingest, pruning and web, and runs them until ctx ends.
// The store is opened first and closed last.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	users, err := web.LoadUsers(cfg.Web.UsersFile)
	if err != nil {
		return err
	}
	key, err := web.LoadSessionKey(cfg.Web.SessionKeyFile)
	if err != nil {
		return err
	}
	st, err := openStore(ctx, cfg.Store, log)
	if err != nil {
		return err
	}
	defer st.Close()
	in, err := ingest.New(cfg.MQTT, st, log)
	if err != nil {
		return err
	}
	ret := storage.Retention{History: cfg.Retention.History, Alerts: cfg.Retention.Alerts}
	srv, err := web.New(cfg.Web, st, users, key, web.Deps{Logger: log, Retention: ret, IngestStats: func() any { return in.Stats() }})
	if err != nil {
		return err
	}
	log.Info("atm-fleet starting", "version", version, "store", cfg.Store.Driver, "listen", cfg.Web.Listen, "users", len(users))
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return in.Run(gctx) })
	g.Go(func() error { return srv.Run(gctx) })
	g.Go(func() error { prune(gctx, st, ret, cfg.Retention.PruneInterval, log); return nil })
	err = g.Wait()
	log.Info("atm-fleet stopped", "err", err)
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
