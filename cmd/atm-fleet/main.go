// Command atm-fleet is the central fleet view: it ingests the agents' MQTT
// status, summaries and alerts into a store (embedded bbolt or PostgreSQL)
// and serves the web dashboard for the fraud analysts (docs/fleet.md). It is
// a central service: the ATM daemon (atm-agent) links none of it.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"
	"gopkg.in/yaml.v3"

	"github.com/periocular/atm-agent/internal/yamlkeys"
	"github.com/periocular/atm-agent/sync/fleet/service"
	"github.com/periocular/atm-agent/sync/fleet/storage/boltstore"
	"github.com/periocular/atm-agent/sync/fleet/web"
)

// version is set at link time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(runMain(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// commands lists the commands: the usage text and the man page (manpage)
// are made from it, the flags of run and compact from their flag sets.
var commands = []struct{ name, synopsis, summary string }{
	{"run", "run --config FILE", "ingest + web dashboard until SIGINT/SIGTERM; SIGHUP (systemctl reload) rereads the users file"},
	{"config check", "config check [--credentials-from DIR] FILE", "validate a config (strict: unknown keys are errors, with their line and the key meant) and read every file it names as run does at start (users file, session key, keys, TLS, DSN): exit 78 on what run would refuse, with run's message; --credentials-from: read the unit's credentials at their sources (run as root)"},
	{"config default", "config default", "print the default config"},
	{"config get", "config get FILE KEY", "print one value of a config, dotted (web.listen), defaults included"},
	{"users check", "users check [--reload PID] FILE", "check a users file as run does and list each user's role and sites: exit 0 if it lists a user, 78 if none or if it is refused; --reload: then send the service PID SIGHUP, whatever the check found, if PID is atm-fleet run (the unit's ExecReload=; any other process: exit 1, not signalled)"},
	{"devices key set", "devices key set [--config FILE] SITE DEVICE FILE|KEY", "pin the public key that signs a device's command replies (atm-agent device-key show prints it; a file: PEM or base64); replaces the one pinned before; with the embedded store while the service runs, it prints the same done through the service's API (PUT /api/v1/devices/SITE/DEVICE/key, as an admin)"},
	{"devices key list", "devices key list [--config FILE]", "list the pinned device keys (site, device, fingerprint, when and by whom)"},
	{"devices key remove", "devices key remove [--config FILE] SITE DEVICE", "unpin a device's key: its replies are taken unauthenticated again (refused with commands.require_signed_replies)"},
	{"compact", "compact [--config FILE]", "shrink the embedded store's file to its records (service stopped)"},
	{"passwd", "passwd", "read a password (twice on a terminal) and print its bcrypt hash for the users file (passwd --help shows the file's format: roles viewer, analyst and admin, and sites)"},
	{"manpage", "manpage", "print the man page (roff; man -l - to read it)"},
	{"version", "version", "print the version"},
}

var usageText = func() string {
	var b strings.Builder
	b.WriteString("atm-fleet: the central fleet view over the agents' MQTT topics (docs/fleet.md)\n\n")
	for _, c := range commands {
		syn := "atm-fleet " + c.synopsis
		if len(syn) > 34 {
			syn += "\n" + strings.Repeat(" ", 37) // the summary on a line of its own
		}
		fmt.Fprintf(&b, "  %-35s%s\n", syn, c.summary)
	}
	return b.String()
}()

func runMain(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return 2
	}
	if helpAsked(args[1:]) {
		stderr = stdout // help goes to stdout, exit 0, for every command (docs/operations.md)
	}
	var err error
	switch args[0] {
	case "run":
		err = cmdRun(ctx, args[1:], stderr)
	case "config":
		err = cmdConfig(args[1:], stdout, stderr)
	case "users":
		err = cmdUsers(args[1:], stdout, stderr)
	case "devices":
		err = cmdDevices(ctx, args[1:], stdout, stderr)
	case "compact":
		err = cmdCompact(args[1:], stdout, stderr)
	case "passwd":
		err = cmdPasswd(args[1:], stdin, stdout, stderr)
	case "manpage":
		err = writeMan(stdout)
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
		var setup *service.SetupError
		var usage usageError
		switch {
		case errors.As(err, &setup):
			return exitSetup
		case errors.As(err, &usage):
			return 2
		}
		return 1
	}
	return 0
}

// exitSetup (EX_CONFIG) is the exit status of a run refused for what only
// the operator can fix (service.SetupError: the config, no user in the
// users file, a key): the unit's RestartPreventExitStatus= names it, so
// systemd does not restart the service every RestartSec= until then.
const exitSetup = 78

// usageError is a command line the command does not take (exit 2).
type usageError string

func (e usageError) Error() string { return "usage: " + string(e) }

func configCheckFlags(stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("config check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	creds := fs.String("credentials-from", "", "check the files the config names under /run/credentials/UNIT/ at their source DIR/ID instead "+
		"(the unit's LoadCredential=ID:DIR/ID), the users file and session key included; as root (ExecStartPre=+)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: atm-fleet config check [--credentials-from DIR] FILE")
		fs.PrintDefaults()
	}
	return fs, creds
}

// helpAsked: -h or --help among args (before a "--").
func helpAsked(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "-help", "--help":
			return true
		}
	}
	return false
}

// commandHelp prints the synopsis and summary of the commands of group
// (config, users), or of the one args names, and returns flag.ErrHelp.
func commandHelp(w io.Writer, group string, args []string) error {
	prefix := group
	if len(args) > 0 && slices.ContainsFunc(commands, func(c struct{ name, synopsis, summary string }) bool { return c.name == group+" "+args[0] }) {
		prefix = group + " " + args[0]
	}
	for _, c := range commands {
		if c.name == prefix || strings.HasPrefix(c.name, prefix+" ") {
			fmt.Fprintf(w, "usage: atm-fleet %s\n  %s\n", c.synopsis, c.summary)
		}
	}
	if prefix == "users check" {
		fmt.Fprintln(w, usersFormat)
	}
	return flag.ErrHelp
}

func cmdConfig(args []string, stdout, stderr io.Writer) error {
	const usage = usageError("atm-fleet config check [--credentials-from DIR] FILE | atm-fleet config default | atm-fleet config get FILE KEY")
	if helpAsked(args) && (len(args) == 0 || args[0] != "check") {
		return commandHelp(stdout, "config", args)
	}
	switch {
	case len(args) >= 1 && args[0] == "check":
		fs, creds := configCheckFlags(stderr)
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return usage
		}
		file := fs.Arg(0)
		cfg, err := service.LoadConfig(file)
		if err != nil {
			return &service.SetupError{Err: err}
		}
		if *creds != "" {
			cfg = cfg.WithCredentialSources(*creds)
		}
		// What run refuses before it opens the store, by the same code.
		warnings, skipped, err := cfg.Check()
		for _, w := range warnings {
			fmt.Fprintf(stdout, "%s: warning: %s\n", file, w)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		if len(skipped) > 0 {
			fmt.Fprintf(stdout, "%s: note: %s: systemd's copies, made while the service runs, not read here (--credentials-from DIR reads their sources)\n",
				file, strings.Join(skipped, ", "))
		}
		fmt.Fprintf(stdout, "%s: ok\n", file)
		return nil
	case len(args) == 1 && args[0] == "default":
		b, err := yamlkeys.Marshal(service.DefaultConfig())
		if err != nil {
			return err
		}
		_, err = stdout.Write(b)
		return err
	case len(args) == 3 && args[0] == "get":
		cfg, err := service.LoadConfig(args[1])
		if err != nil {
			return err
		}
		v, err := configValue(cfg, args[2])
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, v)
		return nil
	}
	return usage
}

// configValue is the value of a scalar key of cfg, dotted (web.listen),
// as the YAML of `config default` names it.
func configValue(cfg service.Config, key string) (string, error) {
	b, err := yamlkeys.Marshal(cfg)
	if err != nil {
		return "", err
	}
	var node any
	if err := yaml.Unmarshal(b, &node); err != nil {
		return "", err
	}
	for _, k := range strings.Split(key, ".") {
		m, ok := node.(map[string]any)
		if !ok {
			return "", fmt.Errorf("config get: %s: no such key", key)
		}
		if node, ok = m[k]; !ok {
			return "", fmt.Errorf("config get: %s: no such key", key)
		}
	}
	switch node.(type) {
	case map[string]any, []any:
		return "", fmt.Errorf("config get: %s is not a scalar", key)
	}
	return fmt.Sprint(node), nil
}

// cmdUsers: `users check FILE` loads a users file as run does. With
// --reload PID (the unit's ExecReload=, as root) it then sends the running
// service SIGHUP, whether the check passed or not, if PID is atm-fleet run
// (checkFleetRun; any other process: exit 1, nothing signalled): the service rereads its
// copy with the same checks, keeps its users if they fail, and /healthz
// says how its last reload went; the exit status is the check's, so
// `systemctl reload` fails on a file a start would refuse.
func cmdUsers(args []string, stdout, stderr io.Writer) error {
	if helpAsked(args) {
		return commandHelp(stdout, "users", args)
	}
	const usage = usageError("atm-fleet users check [--reload PID] FILE")
	if len(args) == 0 || args[0] != "check" {
		return usage
	}
	fs := flag.NewFlagSet("users check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	pid := fs.Int("reload", 0, "then send the service with this process id SIGHUP (it rereads the users file), whatever the check found; only a process that is atm-fleet run")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usage
	}
	file := fs.Arg(0)
	users, err := web.LoadUsers(file)
	if *pid > 0 {
		if perr := checkFleetRun(*pid); perr != nil {
			if err != nil {
				fmt.Fprintf(stderr, "atm-fleet users: %v\n", err)
			}
			return fmt.Errorf("reload: %w", perr)
		}
		if serr := syscall.Kill(*pid, syscall.SIGHUP); serr != nil {
			return fmt.Errorf("reload: signal process %d: %w", *pid, serr)
		}
	}
	if err != nil {
		return &service.SetupError{Err: err}
	}
	fmt.Fprintf(stdout, "%s: %d user(s)\n", file, len(users))
	for _, name := range slices.Sorted(maps.Keys(users)) {
		u := users[name]
		fmt.Fprintf(stdout, "  %s: %s, %s\n", u.Name, u.Role, scopeText(u))
	}
	return nil
}

// scopeText says which sites a user of the users file sees.
func scopeText(u web.User) string {
	if u.Sites == nil {
		return "every site"
	}
	return "sites " + u.Sites.String()
}

func compactFlags(stderr io.Writer) (*flag.FlagSet, *string, *time.Duration) {
	fs := flag.NewFlagSet("compact", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/atm-fleet/config.yaml", "config file")
	wait := fs.Duration("wait", 5*time.Second, "how long to wait for the store file's lock")
	return fs, path, wait
}

// cmdCompact rewrites the embedded store without its free pages.
func cmdCompact(args []string, stdout, stderr io.Writer) error {
	fs, path, wait := compactFlags(stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (usage: atm-fleet compact [--config FILE])", fs.Arg(0))
	}
	cfg, err := service.LoadConfig(*path)
	if err != nil {
		return err
	}
	if cfg.Store.Driver != "bolt" {
		return fmt.Errorf("store.driver is %s: PostgreSQL reclaims the space of deleted rows itself (autovacuum); VACUUM FULL shrinks its files", cfg.Store.Driver)
	}
	before, after, err := boltstore.Compact(cfg.Store.Path, *wait)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %.1f MiB -> %.1f MiB\n", cfg.Store.Path, float64(before)/(1<<20), float64(after)/(1<<20))
	return nil
}

// usersFormat is the users file's format, for passwd's help.
const usersFormat = `
The users file (web.users_file; docs/fleet.md "Users and roles"):

  users:
    - {name: ana,  role: analyst, password_hash: "HASH"}
    - {name: vic,  role: viewer,  password_hash: "HASH", sites: [lisbon-01, "porto-*"]}
    - {name: root, role: admin,   password_hash: "HASH"}

role: viewer (reads), analyst (also acknowledges and resolves alerts, reviews
and corrects identities) or admin (also the settings). sites, for a viewer or
an analyst only: the sites they see and act on, exact names or a prefix
ending in '*'; all (or, for a user written as one {...}, no sites): every
site. A user written as a block (a key per line) must say its sites. Check
it with: atm-fleet users check FILE`

func cmdPasswd(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("passwd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: atm-fleet passwd   (reads a password, twice on a terminal, one line otherwise; prints its bcrypt hash for the users file)")
		fmt.Fprintln(stderr, usersFormat)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError("atm-fleet passwd")
	}
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

func runFlags(stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/atm-fleet/config.yaml", "config file")
	return fs, path
}

func cmdRun(ctx context.Context, args []string, stderr io.Writer) error {
	fs, path := runFlags(stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := service.LoadConfig(*path)
	if err != nil {
		return &service.SetupError{Err: err}
	}
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lv}))
	return Run(ctx, cfg, log)
}

// Run builds the service (store opened first, closed last) and runs it
// until ctx ends. SIGHUP (systemctl reload) rereads the users file
// meanwhile (Service.ReloadUsers).
func Run(ctx context.Context, cfg service.Config, log *slog.Logger) error {
	log.Info("atm-fleet starting", "version", version)
	// From the start: a SIGHUP while the store opens (PostgreSQL waited
	// for) must not end the process (its default action); it rereads the
	// file once the service is built.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	svc, err := service.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer svc.Close()
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	reloaded := make(chan struct{})
	go func() {
		defer close(reloaded)
		for {
			select {
			case <-rctx.Done():
				return
			case <-hup:
				// The outcome is logged (and counted in /healthz) by
				// the reload itself.
				_ = svc.ReloadUsers()
			}
		}
	}()
	err = svc.Run(ctx)
	stop()
	<-reloaded
	return err
}
