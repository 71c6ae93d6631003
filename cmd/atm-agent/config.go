package main

import (
	"context"
	"fmt"

	"github.com/periocular/atm-agent/agent/daemon"
	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/internal/paths"
)

func configCommand() cli.Command {
	return cli.Command{Summary: "check a config file or print the default one", Subs: map[string]cli.Command{
		"check":   {Summary: "validate a config file (strict: unknown keys are errors)", Run: configCheck},
		"default": {Summary: "print the commented default config", Run: configDefault},
	}}
}

func configCheck(_ context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlags(env, "config check", "config check [FILE]   (default "+paths.ConfigFile+", as run and db)")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return fmt.Errorf("%w: want one config file, got %d arguments", cli.ErrUsage, fs.NArg())
	}
	file := paths.Config()
	if fs.NArg() == 1 {
		file = fs.Arg(0)
	}
	cfg, err := daemon.LoadConfig(file)
	if err != nil {
		return err
	}
	if err := cfg.CheckFiles(); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintf(env.Stderr, "%s: warning: %s\n", file, w)
	}
	fmt.Fprintf(env.Stdout, "%s: ok\n", file)
	return nil
}

func configDefault(_ context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlags(env, "config default", "config default")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	_, err := env.Stdout.Write(daemon.DefaultYAML())
	return err
}
