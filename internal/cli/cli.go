// Package cli is the command-line frame both binaries share: a command
// list, flag sets that report instead of exiting, subcommand groups and the
// exit codes. Each binary's main passes its explicit list of commands.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"

	"github.com/periocular/atm-agent/store"
)

// Command is one subcommand: Run gets the arguments after its name.
type Command struct {
	Summary string
	Run     func(ctx context.Context, env *Env, args []string) error
}

// Env carries what every subcommand needs, so tests can run commands
// in-process with their own streams.
type Env struct {
	Prog           string // the binary's name, for usage lines
	Stdout, Stderr io.Writer
	Log            *slog.Logger
}

// ErrUsage marks a command-line mistake (exit code 2).
var ErrUsage = errors.New("usage")

// ExitStoreDamaged is the exit code of `run` (and of `db check`) on a
// damaged store: systemd's unit lists it in RestartPreventExitStatus=, so a
// damaged file is not reopened in a restart loop (EX_DATAERR).
const ExitStoreDamaged = 65

// Main runs the command args[0] of cmds and returns the exit code.
func Main(ctx context.Context, prog string, cmds map[string]Command, args []string, stdout, stderr io.Writer) int {
	env := &Env{Prog: prog, Stdout: stdout, Stderr: stderr,
		Log: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr, prog, cmds)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "%s: unknown command %q\n\n", prog, args[0])
		usage(stderr, prog, cmds)
		return 2
	}
	if err := cmd.Run(ctx, env, args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "%s %s: %v\n", prog, args[0], err)
		if errors.Is(err, ErrUsage) {
			return 2
		}
		if errors.Is(err, store.ErrDamaged) {
			return ExitStoreDamaged
		}
		return 1
	}
	return 0
}

func usage(w io.Writer, prog string, cmds map[string]Command) {
	fmt.Fprintf(w, "usage: %s <command> [flags]\n\ncommands:\n", prog)
	var names []string
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, cmds[n].Summary)
	}
}

// NewFlags makes a flag set that reports errors instead of exiting.
func NewFlags(env *Env, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.Stderr, "usage: %s %s\n", env.Prog, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// ParseFlags parses and wraps failures as usage errors.
func ParseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", ErrUsage, err)
	}
	return nil
}

// Subcommands dispatches "<prog> <group> <sub>".
func Subcommands(group string, subs map[string]Command) func(context.Context, *Env, []string) error {
	return func(ctx context.Context, env *Env, args []string) error {
		if len(args) == 0 || subs[args[0]].Run == nil {
			var names []string
			for n, c := range subs {
				names = append(names, fmt.Sprintf("  %s %-8s %s", group, n, c.Summary))
			}
			sort.Strings(names)
			fmt.Fprintf(env.Stderr, "usage: %s %s <command>\n%s\n", env.Prog, group, strings.Join(names, "\n"))
			if len(args) == 0 {
				return ErrUsage
			}
			return fmt.Errorf("%w: unknown %s command %q", ErrUsage, group, args[0])
		}
		return subs[args[0]].Run(ctx, env, args[1:])
	}
}
