// Command atm-agent is the ATM periocular visit counter's daemon and what an
// operator needs on the box: run, config, db, models verify, version. The
// offline tools (evaluation, training, model conversion, the demo, batch
// clustering, watch) are the separate atm-tools binary, so this one links
// none of them (deps_test.go).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/internal/cli/dbcmd"
	"github.com/periocular/atm-agent/internal/cli/modelscmd"
)

// version is set at link time (-ldflags "-X main.version=...").
var version = "dev"

// commands is the daemon binary's explicit command list.
func commands() map[string]cli.Command {
	return map[string]cli.Command{
		"run":     runCommand(),
		"config":  configCommand(),
		"db":      dbcmd.Command(),
		"models":  modelscmd.Command(nil),
		"version": versionCommand(),
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(runMain(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func runMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cli.Main(ctx, "atm-agent", commands(), args, stdout, stderr)
}

func versionCommand() cli.Command {
	return cli.Command{Summary: "print the agent version", Run: func(_ context.Context, env *cli.Env, _ []string) error {
		fmt.Fprintf(env.Stdout, "atm-agent %s\n", version)
		return nil
	}}
}
