package main

import (
	"context"
	"fmt"

	"github.com/periocular/atm-agent/agent/daemon"
)

func init() {
	commands["config"] = command{"check a config file or print the default one", subcommands("config", map[string]command{
		"check": {"validate a config file (strict: unknown keys are errors)", func(_ context.Context, env *cliEnv, args []string) error {
			fs := newFlags(env, "config check", "config check FILE")
			if err := parseFlags(fs, args); err != nil {
				return err
			}
			if fs.NArg() != 1 {
				fs.Usage()
				return errUsage
			}
			cfg, err := daemon.LoadConfig(fs.Arg(0))
			if err != nil {
				return err
			}
			if err := cfg.CheckFiles(); err != nil {
				return fmt.Errorf("%s: %w", fs.Arg(0), err)
			}
			for _, w := range cfg.Warnings() {
				fmt.Fprintf(env.stderr, "%s: warning: %s\n", fs.Arg(0), w)
			}
			fmt.Fprintf(env.stdout, "%s: ok\n", fs.Arg(0))
			return nil
		}},
		"default": {"print the commented default config", func(_ context.Context, env *cliEnv, args []string) error {
			fs := newFlags(env, "config default", "config default")
			if err := parseFlags(fs, args); err != nil {
				return err
			}
			_, err := env.stdout.Write(daemon.DefaultYAML())
			return err
		}},
	})}
}
