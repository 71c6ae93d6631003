package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/periocular/atm-agent/internal/cli"
)

// toolsName is the offline tools' binary, from the atm-tools package.
const toolsName = "atm-tools"

// offlineCommands are atm-tools' other commands: tried here, they are a
// usage error that names where they are (hidden from help).
var offlineCommands = []string{"eval", "demo", "watch", "command", "convert-head"}

func offlineCommand(name string) cli.Command {
	return cli.Command{Hidden: true, Run: func(context.Context, *cli.Env, []string) error {
		return fmt.Errorf("%w: %s is an atm-tools command (package atm-tools): atm-tools %s --help", cli.ErrUsage, name, name)
	}}
}

// execve replaces the process (a variable for tests).
var execve = syscall.Exec

// clusterCommand is `atm-agent cluster`: the batch job (sort a folder of
// face images into one folder per person) lives in atm-tools, so that the
// daemon links none of it (deps_test.go); this runs it with the same
// arguments, from next to this binary or from PATH.
func clusterCommand() cli.Command {
	return cli.Command{
		Summary: "sort a folder of face images into one folder per person (runs atm-tools cluster: package atm-tools)",
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			fs := cli.NewFlags(env, "cluster", "cluster DIR -o OUT [flags]")
			if err := cli.ParseFlags(fs, nil); err != nil { // describes the command for help, man page and completion
				return err
			}
			tools, err := findTools()
			if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
				fmt.Fprintf(env.Stdout, "usage: %s cluster DIR -o OUT [flags]\n\n%s\n\nThe job and its flags are atm-tools cluster's (docs/cluster.md)", env.Prog, clusterCommand().Summary)
				if err != nil {
					fmt.Fprintf(env.Stdout, "; %v\n", err)
					return flag.ErrHelp
				}
				fmt.Fprintf(env.Stdout, ":\n\n")
				help := exec.CommandContext(ctx, tools, "cluster", "--help")
				help.Stdout, help.Stderr = env.Stdout, env.Stderr
				if err := help.Run(); err != nil {
					return fmt.Errorf("%s cluster --help: %w", tools, err)
				}
				return flag.ErrHelp
			}
			if err != nil { // as unknown as before atm-tools came: a usage error
				return fmt.Errorf("%w: cannot run %s: %v", cli.ErrUsage, strings.Join(append([]string{toolsName, "cluster"}, args...), " "), err)
			}
			argv := append([]string{tools, "cluster"}, args...)
			return fmt.Errorf("run %s: %w", tools, execve(tools, argv, os.Environ()))
		},
	}
}

// findTools finds atm-tools next to this binary (the packages install both
// in /usr/bin), then on PATH.
func findTools() (string, error) {
	if self, err := os.Executable(); err == nil {
		if self, err := filepath.EvalSymlinks(self); err == nil {
			p := filepath.Join(filepath.Dir(self), toolsName)
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
				return p, nil
			}
		}
	}
	p, err := exec.LookPath(toolsName)
	if err != nil {
		return "", errors.New("atm-tools is not installed (not next to atm-agent, not on PATH): install the atm-tools package (apt install atm-tools)")
	}
	return p, nil
}
