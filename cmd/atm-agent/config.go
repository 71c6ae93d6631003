package main

import (
	"context"
	"fmt"
	"os"
	"strings"

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
	fs := cli.NewFlags(env, "config check", "config check [--credential ID=FILE]... [FILE]   (default "+paths.ConfigFile+", as run and db)")
	sources := map[string]string{}
	fs.Func("credential", "read the systemd credential ID (a setting's credential:ID) at its source FILE, as the unit's LoadCredential=ID:FILE loads it (repeatable; "+
		"as root outside the unit, the packaged unit's store-key=/etc/atm-agent/store.key is read when no --credential is given)", func(v string) error {
		id, file, ok := strings.Cut(v, "=")
		if !ok || id == "" || file == "" {
			return fmt.Errorf("want ID=FILE, got %q", v)
		}
		sources[id] = file
		return nil
	})
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
	// Root outside the unit, where the credentials the config names do not
	// exist: their sources, those of the packaged unit's LoadCredential=
	// that are there (a world-readable store.key is refused here as the
	// unit's root check refuses it).
	if len(sources) == 0 && os.Getenv("CREDENTIALS_DIRECTORY") == "" && os.Geteuid() == 0 {
		for id, src := range daemon.PackagedCredentials {
			if _, err := os.Lstat(src); err == nil {
				sources[id] = src
			}
		}
	}
	cfg, read := cfg.WithCredentialSources(sources)
	for _, r := range read {
		fmt.Fprintf(env.Stdout, "%s: note: %s read at its source (the unit's LoadCredential=)\n", file, r)
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
