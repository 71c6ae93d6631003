// Package cli is the command-line frame both binaries share: a command
// tree, flag sets that report instead of exiting, help on stdout, the exit
// codes, and the man page and shell completions generated from the same
// tree (gen.go). Each binary's main passes its explicit list of commands.
//
// Exit codes (ExitOK, ExitFailure, ExitUsage, ExitStoreDamaged, ExitConfig) are the
// same for every command of every binary; docs/operations.md lists them.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"sync"

	"github.com/periocular/atm-agent/internal/suggest"
	"github.com/periocular/atm-agent/store"
)

// Version is the version both binaries report (`--version`, `version`),
// set at link time: -ldflags "-X github.com/periocular/atm-agent/internal/cli.Version=V".
// `make build` and scripts/packaging/build-deb.sh take V from
// scripts/version.sh, so the binaries and the .deb carry the same string.
var Version = "dev"

// Command is one command: a leaf has Run (it gets the arguments after its
// name), a group has Subs.
type Command struct {
	Summary string
	Run     func(ctx context.Context, env *Env, args []string) error
	Subs    map[string]Command
	// Hidden commands run but are left out of help, man page and
	// completion (internal helpers such as `models probe`).
	Hidden bool
}

// Group makes a command group.
func Group(summary string, subs map[string]Command) Command {
	return Command{Summary: summary, Subs: subs}
}

// Env carries what every subcommand needs, so tests can run commands
// in-process with their own streams.
type Env struct {
	Prog           string // the binary's name, for usage lines
	Stdout, Stderr io.Writer
	Log            *slog.Logger

	path    []string // the command being run, e.g. ["db", "check"]
	summary string
	capture *leafInfo // set when describing a command, not running it
}

// Exit codes.
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
	// ExitStoreDamaged is the exit code of `run` (and of `db check`) on a
	// damaged store: systemd's unit lists it in RestartPreventExitStatus=,
	// so a damaged file is not reopened in a restart loop (EX_DATAERR).
	ExitStoreDamaged = 65
	// ExitConfig is the exit code of `run` on a config it refuses (a
	// ConfigRefused error): the unit lists it in RestartPreventExitStatus=,
	// so a config only the operator can fix is not retried every few
	// seconds (EX_CONFIG, as atm-fleet's).
	ExitConfig = 78
)

// ConfigRefused marks err as a refused config: the command exits
// ExitConfig. The message is err's.
func ConfigRefused(err error) error { return configRefused{err} }

type configRefused struct{ error }

func (e configRefused) Unwrap() error { return e.error }

// ErrUsage marks a command-line mistake (exit code 2).
var ErrUsage = errors.New("usage")

// App is one binary: its name, one line on what it is, and its commands.
type App struct {
	Name     string
	Summary  string
	Commands map[string]Command
}

// builtins are the commands every binary has, generated from its tree.
func (a App) withBuiltins() App {
	cmds := make(map[string]Command, len(a.Commands)+2)
	for n, c := range a.Commands {
		cmds[n] = c
	}
	cmds["completion"] = Command{Summary: "print a shell completion script (bash, zsh or fish)", Run: func(_ context.Context, env *Env, args []string) error {
		fs := NewFlags(env, "completion", "completion bash|zsh|fish")
		if err := ParseFlags(fs, args); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return fmt.Errorf("%w: want one shell: bash, zsh or fish", ErrUsage)
		}
		return writeCompletion(env.Stdout, a, fs.Arg(0))
	}}
	cmds["manpage"] = Command{Summary: "print the man page (roff; man -l - to read it)", Run: func(_ context.Context, env *Env, args []string) error {
		fs := NewFlags(env, "manpage", "manpage")
		if err := ParseFlags(fs, args); err != nil {
			return err
		}
		return writeMan(env.Stdout, a)
	}}
	if _, ok := cmds["version"]; !ok {
		cmds["version"] = Command{Summary: "print the version (--json: the build, for fleet inventories)", Run: func(_ context.Context, env *Env, args []string) error {
			fs := NewFlags(env, "version", "version [--json]")
			asJSON := fs.Bool("json", false, "print name, version, Go version, OS, architecture and the source revision as one JSON object")
			if err := ParseFlags(fs, args); err != nil {
				return err
			}
			if fs.NArg() != 0 {
				return fmt.Errorf("%w: version takes no arguments", ErrUsage)
			}
			if !*asJSON {
				fmt.Fprintf(env.Stdout, "%s %s\n", a.Name, Version)
				return nil
			}
			b, err := json.Marshal(buildInfo(a.Name))
			if err != nil {
				return err
			}
			fmt.Fprintf(env.Stdout, "%s\n", b)
			return nil
		}}
	}
	a.Commands = cmds
	return a
}

// Main runs the command args[0] of cmds and returns the exit code.
func Main(ctx context.Context, prog string, cmds map[string]Command, args []string, stdout, stderr io.Writer) int {
	return Run(ctx, App{Name: prog, Commands: cmds}, args, stdout, stderr)
}

// Run runs app with args (without the program name) and returns the exit code.
func Run(ctx context.Context, app App, args []string, stdout, stderr io.Writer) int {
	app = app.withBuiltins()
	env := &Env{Prog: app.Name, Stdout: stdout, Stderr: stderr,
		Log: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	if len(args) > 0 && args[0] == "--version" {
		fmt.Fprintf(stdout, "%s %s\n", app.Name, Version)
		return ExitOK
	}
	err := dispatch(ctx, env, app, nil, app.Commands, args)
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return ExitOK
	case errors.Is(err, errUsageShown):
		return ExitUsage
	}
	name := strings.TrimSpace(app.Name + " " + strings.Join(env.path, " "))
	fmt.Fprintf(stderr, "%s: %v\n", name, err)
	if errors.Is(err, ErrUsage) {
		fmt.Fprintf(stderr, "run '%s --help' for usage\n", name)
		return ExitUsage
	}
	if errors.Is(err, store.ErrDamaged) {
		return ExitStoreDamaged
	}
	if errors.As(err, new(configRefused)) {
		return ExitConfig
	}
	return ExitFailure
}

// errUsageShown: a usage error whose message is already printed.
var errUsageShown = errors.New("usage shown")

func isHelp(s string) bool { return s == "-h" || s == "--help" || s == "-help" || s == "help" }

func dispatch(ctx context.Context, env *Env, app App, path []string, cmds map[string]Command, args []string) error {
	if len(args) == 0 {
		listUsage(env.Stderr, app, path, cmds)
		return errUsageShown
	}
	if isHelp(args[0]) {
		if args[0] == "help" && len(args) > 1 {
			return helpFor(ctx, env, app, path, cmds, args[1:])
		}
		listUsage(env.Stdout, app, path, cmds)
		return flag.ErrHelp
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		env.path = path
		what := "command"
		if len(path) > 0 {
			what = strings.Join(path, " ") + " command"
		}
		msg := fmt.Sprintf("unknown %s %q", what, args[0])
		if s := Suggest(args[0], visibleNames(cmds)); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		return fmt.Errorf("%w: %s", ErrUsage, msg)
	}
	path = append(append([]string(nil), path...), args[0])
	if cmd.Subs != nil {
		return dispatch(ctx, env, app, path, cmd.Subs, args[1:])
	}
	env.path, env.summary = path, cmd.Summary
	return cmd.Run(ctx, env, args[1:])
}

// helpFor prints the help of `help a b ...` on stdout.
func helpFor(ctx context.Context, env *Env, app App, path []string, cmds map[string]Command, args []string) error {
	for i, a := range args {
		cmd, ok := cmds[a]
		if !ok {
			env.path = path
			return fmt.Errorf("%w: no command %q", ErrUsage, strings.Join(append(append([]string(nil), path...), args[:i+1]...), " "))
		}
		path = append(append([]string(nil), path...), a)
		if cmd.Subs != nil {
			cmds = cmd.Subs
			continue
		}
		env.path, env.summary = path, cmd.Summary
		return cmd.Run(ctx, env, []string{"--help"})
	}
	listUsage(env.Stdout, app, path, cmds)
	return flag.ErrHelp
}

func visibleNames(cmds map[string]Command) []string {
	var names []string
	for n, c := range cmds {
		if !c.Hidden {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

func listUsage(w io.Writer, app App, path []string, cmds map[string]Command) {
	name := strings.TrimSpace(app.Name + " " + strings.Join(path, " "))
	fmt.Fprintf(w, "usage: %s <command> [flags]\n", name)
	if len(path) == 0 && app.Summary != "" {
		fmt.Fprintf(w, "\n%s\n", app.Summary)
	}
	fmt.Fprintf(w, "\ncommands:\n")
	for _, n := range visibleNames(cmds) {
		fmt.Fprintf(w, "  %-12s %s\n", n, cmds[n].Summary)
	}
	fmt.Fprintf(w, "\n'%s help <command>' or '%s <command> --help' for a command's flags.\n", name, name)
	if len(path) == 0 {
		fmt.Fprintf(w, "%s --version prints the version.\n", app.Name)
		fmt.Fprintf(w, "\nexit status: %d ok, %d failure, %d usage error, %d damaged database, %d config refused (run).\n",
			ExitOK, ExitFailure, ExitUsage, ExitStoreDamaged, ExitConfig)
	}
}

// leafInfo is what a leaf command's flag set says about it.
type leafInfo struct {
	synopsis string
	fs       *flag.FlagSet
}

type flagEntry struct {
	env      *Env
	synopsis string
}

// flagEnvs maps a flag set from NewFlags to its command.
var flagEnvs sync.Map // *flag.FlagSet -> flagEntry

// NewFlags makes a flag set that reports errors instead of exiting. Its
// help (-h, --help) goes to stdout with exit code 0; a mistake is a usage
// error (exit code 2).
func NewFlags(env *Env, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.Stderr, "usage: %s %s\n", env.Prog, synopsis)
		fs.PrintDefaults()
	}
	flagEnvs.Store(fs, flagEntry{env: env, synopsis: synopsis})
	return fs
}

// ParseFlags parses, prints help on stdout for -h/--help (returning
// flag.ErrHelp) and wraps failures as usage errors.
func ParseFlags(fs *flag.FlagSet, args []string) error {
	// Load, not LoadAndDelete: a command that takes its arguments between
	// flags (cluster DIR -o OUT) parses again after each one, and a mistake
	// after the first argument is a usage error too.
	v, ok := flagEnvs.Load(fs)
	if !ok {
		return fs.Parse(args)
	}
	e := v.(flagEntry)
	if e.env.capture != nil {
		e.env.capture.synopsis, e.env.capture.fs = e.synopsis, fs
		return flag.ErrHelp
	}
	usage := fs.Usage
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.Usage = usage
	fs.SetOutput(e.env.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		printHelp(e.env, e.synopsis, fs)
		return err
	}
	if err != nil {
		msg := err.Error()
		if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
			name = strings.TrimLeft(name, "-")
			msg = "unknown flag --" + name
			var names []string
			fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
			if s := Suggest(name, names); s != "" {
				msg += fmt.Sprintf(" (did you mean --%s?)", s)
			}
		}
		return fmt.Errorf("%w: %s", ErrUsage, msg)
	}
	return nil
}

func printHelp(env *Env, synopsis string, fs *flag.FlagSet) {
	w := env.Stdout
	fmt.Fprintf(w, "usage: %s %s\n", env.Prog, synopsis)
	if env.summary != "" {
		fmt.Fprintf(w, "\n%s\n", env.summary)
	}
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprintf(w, "\nflags:\n")
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(env.Stderr)
	}
}

// Leaf is one runnable command of the tree as help, man page and
// completion see it.
type Leaf struct {
	Path     []string
	Summary  string
	Synopsis string
	Flags    []*flag.Flag
}

// Walk describes every visible leaf command of app, builtins included, in
// name order: it runs each with --help into a capturing Env, so the flags
// are the ones the command really parses. A leaf that does not parse its
// flags with NewFlags/ParseFlags is an error.
func Walk(ctx context.Context, app App) ([]Leaf, error) {
	app = app.withBuiltins()
	var out []Leaf
	var walk func(path []string, cmds map[string]Command) error
	walk = func(path []string, cmds map[string]Command) error {
		for _, n := range visibleNames(cmds) {
			c := cmds[n]
			p := append(append([]string(nil), path...), n)
			if c.Subs != nil {
				if err := walk(p, c.Subs); err != nil {
					return err
				}
				continue
			}
			info := &leafInfo{}
			env := &Env{Prog: app.Name, Stdout: io.Discard, Stderr: io.Discard, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
				path: p, summary: c.Summary, capture: info}
			err := c.Run(ctx, env, []string{"--help"})
			if !errors.Is(err, flag.ErrHelp) || info.fs == nil {
				return fmt.Errorf("%s %s: --help does not reach the command's flag set (err %v)", app.Name, strings.Join(p, " "), err)
			}
			l := Leaf{Path: p, Summary: c.Summary, Synopsis: info.synopsis}
			info.fs.VisitAll(func(f *flag.Flag) { l.Flags = append(l.Flags, f) })
			out = append(out, l)
		}
		return nil
	}
	err := walk(nil, app.Commands)
	return out, err
}

// Groups returns every visible group path of app (the top level is the
// empty path) with its visible child names.
func groups(app App) map[string][]string {
	out := map[string][]string{}
	var walk func(path []string, cmds map[string]Command)
	walk = func(path []string, cmds map[string]Command) {
		out[strings.Join(path, " ")] = visibleNames(cmds)
		for _, n := range visibleNames(cmds) {
			if c := cmds[n]; c.Subs != nil {
				walk(append(append([]string(nil), path...), n), c.Subs)
			}
		}
	}
	walk(nil, app.Commands)
	return out
}

// Suggest returns the candidate closest to s when it is close enough to
// be what was meant (internal/suggest).
func Suggest(s string, candidates []string) string { return suggest.Closest(s, candidates) }

// Exec runs c with args as Run would from the command line: a group
// dispatches to its subcommand. For tests that call one command in-process.
func (c Command) Exec(ctx context.Context, env *Env, args []string) error {
	if c.Subs == nil {
		return c.Run(ctx, env, args)
	}
	return dispatch(ctx, env, App{Name: env.Prog}, env.path, c.Subs, args)
}

// BuildInfo is what `version --json` prints: enough for a fleet inventory
// to tell builds apart.
type BuildInfo struct {
	Name      string `json:"name"`
	Version   string `json:"version"`
	Go        string `json:"go"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	Revision  string `json:"vcs_revision,omitempty"`
	Time      string `json:"vcs_time,omitempty"`
	Modified  bool   `json:"vcs_modified,omitempty"`
	Cgo       bool   `json:"cgo"`
	Static    bool   `json:"static,omitempty"`
	BuildMode string `json:"build_mode,omitempty"`
}

func buildInfo(name string) BuildInfo {
	b := BuildInfo{Name: name, Version: Version, Go: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
		case "vcs.time":
			b.Time = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		case "CGO_ENABLED":
			b.Cgo = s.Value == "1"
		case "-buildmode":
			b.BuildMode = s.Value
		case "-ldflags":
			b.Static = strings.Contains(s.Value, "-static")
		}
	}
	return b
}
