package main

import (
	"context"
	"log/slog"

	"github.com/periocular/atm-agent/agent/daemon"
)

func init() {
	commands["run"] = command{"run the agent daemon", func(ctx context.Context, env *cliEnv, args []string) error {
		fs := newFlags(env, "run", "run --config FILE")
		path := fs.String("config", "/etc/atm-agent/config.yaml", "agent config file")
		if err := parseFlags(fs, args); err != nil {
			return err
		}
		cfg, err := daemon.LoadConfig(*path)
		if err != nil {
			return err
		}
		d, err := daemon.New(cfg, daemon.Options{Version: version, Logger: newLogger(cfg.Log, env)})
		if err != nil {
			return err
		}
		return d.Run(ctx)
	}}
}

func newLogger(cfg daemon.LogConfig, env *cliEnv) *slog.Logger {
	return daemon.NewLogger(cfg, env.stderr)
}
