package main

import (
	"context"

	"github.com/periocular/atm-agent/agent/daemon"
	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/internal/paths"
)

func runCommand() cli.Command {
	return cli.Command{Summary: "run the agent daemon", Run: func(ctx context.Context, env *cli.Env, args []string) error {
		fs := cli.NewFlags(env, "run", "run --config FILE")
		path := fs.String("config", paths.Config(), "agent config file")
		if err := cli.ParseFlags(fs, args); err != nil {
			return err
		}
		cfg, err := daemon.LoadConfig(*path)
		if err != nil {
			return cli.ConfigRefused(err)
		}
		d, err := daemon.NewContext(ctx, cfg, daemon.Options{Version: cli.Version, Logger: daemon.NewLogger(cfg.Log, env.Stderr)})
		if err != nil {
			return err
		}
		return d.Run(ctx)
	}}
}
