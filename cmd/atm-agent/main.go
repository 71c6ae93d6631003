// Command atm-agent is the ATM periocular visit counter's daemon and what an
// operator needs on the box: run, config, db, models verify, version. The
// offline tools (evaluation, training, model conversion, the demo, batch
// clustering, watch) are the separate atm-tools binary, so this one links
// none of them (deps_test.go); `atm-agent cluster` runs atm-tools cluster.
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

// commands is the daemon binary's explicit command list.
func commands() map[string]cli.Command {
	cmds := map[string]cli.Command{
		"run":        runCommand(),
		"config":     configCommand(),
		"device-key": deviceKeyCommand(),
		"db":         dbcmd.Command(),
		"models":     modelscmd.Command(nil),
		"cluster":    clusterCommand(),
	}
	for _, name := range offlineCommands {
		cmds[name] = offlineCommand(name)
	}
	return cmds
}

// app is the daemon binary as help, the man page and completion see it.
func app() cli.App {
	return cli.App{Name: "atm-agent", Summary: "ATM periocular visit counter: the daemon and its operator commands", Commands: commands()}
}

func init() {
	cli.SetManExtra("atm-agent", cli.ManExtra{
		Description: `atm-agent runs on an ATM controller. On each card insert it grabs a burst of camera frames, finds the customer's face (masked or not), groups the visit with earlier visits of the same unknown person, counts visits per person over time windows in a local database, raises alerts by rules and publishes them over MQTT from an outbox that survives network outages.

The daemon is "atm-agent run", started by the systemd unit atm-agent.service. The other commands check its config, its models and its database. The offline tools (model conversion, evaluation, the demo) are atm-tools(1).`,
		Files: [][2]string{
			{"/etc/atm-agent/config.yaml", "the config (run, config check and db read it by default; atm-agent config default prints a commented one)"},
			{"/etc/atm-agent/store.key", "the key that encrypts templates at rest (32 bytes, root 0600), passed to the unit as credential store-key"},
			{"/usr/lib/atm-agent/models", "the face models and their manifest.yaml (the default models.dir)"},
			{"/var/lib/atm-agent/agent.db", "the visit database (store.path)"},
		},
		Environment: [][2]string{
			{"ATM_MODELS_DIR", "models directory used when neither a flag nor the config names one"},
			{"ATM_AGENT_ROOT", "a prefix for the installed paths above (tests of an unpacked package)"},
		},
		SeeAlso: []string{"atm-tools(1)", "systemctl(1)"},
	})
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ignoreSignals(os.Stderr)
	os.Exit(runMain(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// ignoreSignals keeps SIGHUP, SIGUSR1 and SIGUSR2 from killing the agent
// (Go's default for them), which lost the visit in progress with no stop:
// an operator sending HUP for a reload gets a line saying what to do. The
// agent reads its config once, at start.
func ignoreSignals(stderr io.Writer) {
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		for sig := range ch {
			fmt.Fprintf(stderr, "atm-agent: %v ignored: the configuration is read at start; restart the agent to apply a change (systemctl restart atm-agent)\n", sig)
		}
	}()
}

func runMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cli.Run(ctx, app(), args, stdout, stderr)
}
