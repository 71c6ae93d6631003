// Command atm-agent is the ATM periocular visit counter: the daemon, the batch
// clustering job, model provisioning and the evaluation harness.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/term"

	"github.com/periocular/atm-agent/store"
)

// version is set at link time (-ldflags "-X main.version=...").
var version = "dev"

// command is one subcommand: run gets the arguments after its name.
type command struct {
	summary string
	run     func(ctx context.Context, env *cliEnv, args []string) error
}

var commands = map[string]command{}

// cliEnv carries what every subcommand needs, so tests can run commands
// in-process with their own streams.
type cliEnv struct {
	stdout, stderr io.Writer
	log            *slog.Logger
}

// errUsage marks a command-line mistake (exit code 2).
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(runMain(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func runMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	env := &cliEnv{stdout: stdout, stderr: stderr,
		log: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "atm-agent: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	if err := cmd.run(ctx, env, args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "atm-agent %s: %v\n", args[0], err)
		if errors.Is(err, errUsage) {
			return 2
		}
		if errors.Is(err, store.ErrDamaged) {
			return exitStoreDamaged
		}
		return 1
	}
	return 0
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: atm-agent <command> [flags]\n\ncommands:")
	var names []string
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
}

// newFlags makes a flag set that reports errors instead of exiting.
func newFlags(env *cliEnv, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "usage: atm-agent %s\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses and wraps failures as usage errors.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	return nil
}

// subcommands dispatches "atm-agent <group> <sub>".
func subcommands(group string, subs map[string]command) func(context.Context, *cliEnv, []string) error {
	return func(ctx context.Context, env *cliEnv, args []string) error {
		if len(args) == 0 || subs[args[0]].run == nil {
			var names []string
			for n, c := range subs {
				names = append(names, fmt.Sprintf("  %s %-8s %s", group, n, c.summary))
			}
			sort.Strings(names)
			fmt.Fprintf(env.stderr, "usage: atm-agent %s <command>\n%s\n", group, strings.Join(names, "\n"))
			if len(args) == 0 {
				return errUsage
			}
			return fmt.Errorf("%w: unknown %s command %q", errUsage, group, args[0])
		}
		return subs[args[0]].run(ctx, env, args[1:])
	}
}

func init() {
	commands["version"] = command{"print the agent version", func(_ context.Context, env *cliEnv, _ []string) error {
		fmt.Fprintf(env.stdout, "atm-agent %s\n", version)
		return nil
	}}
}

func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }
