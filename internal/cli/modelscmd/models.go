// Package modelscmd is the `models` command group both binaries share:
// verify (file, size, sha256 and a test forward in a child process) and the
// internal probe it runs. atm-tools adds fetch and build.
package modelscmd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/internal/paths"
	"github.com/periocular/atm-agent/models"
)

// DefaultDir is the models dir: ATM_MODELS_DIR, else build/models in a
// source checkout, else the installed /usr/lib/atm-agent/models
// (internal/paths).
func DefaultDir() string { return paths.Models() }

// Command is the models group: verify and probe, plus extra (atm-tools
// passes fetch and build).
func Command(extra map[string]cli.Command) cli.Command {
	subs := map[string]cli.Command{
		"verify": {Summary: "check every model: file, size, sha256 and a test forward", Run: modelsVerify},
		"probe":  {Summary: "(internal) load one model and run a test forward", Run: modelsProbe, Hidden: true},
	}
	summary := "verify the face models"
	for n, c := range extra {
		subs[n] = c
		summary = "fetch, convert and verify the face models"
	}
	return cli.Command{Summary: summary, Subs: subs}
}

func modelsVerify(ctx context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlags(env, "models verify", "models verify [--dir DIR] [model ...]")
	dir := fs.String("dir", DefaultDir(), "models dir holding manifest.yaml and the model files")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	man, err := models.LoadManifest(filepath.Join(*dir, "manifest.yaml"))
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	failed := 0
	for i := range man.Models {
		md := &man.Models[i]
		if fs.NArg() > 0 && !contains(fs.Args(), md.Name) {
			continue
		}
		status := "OK"
		if err := md.Check(*dir); err != nil {
			status = "FAIL: " + err.Error()
		} else if err := probeChild(ctx, self, *dir, md); err != nil {
			status = "FAIL: " + err.Error()
		}
		if status != "OK" {
			failed++
		}
		fmt.Fprintf(env.Stdout, "%-28s %s  %s\n", md.Name, short(md.SHA256), status)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d models failed verification", failed, len(man.Models))
	}
	return nil
}

// probeChild runs the test forward in a child process so that a file OpenCV
// cannot parse costs that child, not the caller.
func probeChild(ctx context.Context, self, dir string, md *models.Model) error {
	cmd := exec.CommandContext(ctx, self, "models", "probe", "--dir", dir, md.Name)
	out, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	msg := strings.TrimSpace(string(out))
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ProcessState != nil && !ee.Exited() {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGSYS {
			// Not the file: a seccomp filter (a unit's SystemCallFilter=)
			// refused a system call the load makes.
			return fmt.Errorf("loading the model was killed by the system call filter (%s): a call it makes is not allowed (a Torch model needs memfd_create)", ee.ProcessState)
		}
		return fmt.Errorf("OpenCV aborted loading the model (%s): the file is not a valid %s model%s", ee.ProcessState, md.Format, openCVWhat(msg))
	}
	// OpenCV's importers throw C++ exceptions that nothing catches: the
	// child aborts inside cgo, and the Go runtime turns the SIGABRT into a
	// crash report and exit status 2, whose last line is a register.
	if strings.Contains(msg, "signal arrived during cgo execution") {
		return fmt.Errorf("OpenCV aborted loading the model: the file is not a valid %s model%s", md.Format, openCVWhat(msg))
	}
	if i := strings.LastIndex(msg, "\n"); i >= 0 {
		msg = msg[i+1:]
	}
	if msg == "" {
		// The child could not start or died silently: say so.
		return fmt.Errorf("test forward in a child process failed: %w", err)
	}
	for _, prog := range []string{"atm-agent", "atm-tools"} {
		msg = strings.TrimPrefix(msg, prog+" models probe: ")
	}
	return errors.New(msg)
}

// openCVWhat is ": " and OpenCV's own message from a child's output (the
// what() of the exception that aborted it, from "error:" on), or "".
func openCVWhat(out string) string {
	for _, l := range strings.Split(out, "\n") {
		_, what, ok := strings.Cut(l, "what():")
		if !ok {
			continue
		}
		what = strings.TrimSpace(what)
		if _, rest, ok := strings.Cut(what, " error: "); ok {
			what = rest
		}
		return ": " + what
	}
	return ""
}

func modelsProbe(_ context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlags(env, "models probe", "models probe --dir DIR NAME")
	dir := fs.String("dir", DefaultDir(), "models dir")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: want one model name", cli.ErrUsage)
	}
	man, err := models.LoadManifest(filepath.Join(*dir, "manifest.yaml"))
	if err != nil {
		return err
	}
	md, ok := man.Find(fs.Arg(0))
	if !ok {
		return fmt.Errorf("no model %q in the manifest", fs.Arg(0))
	}
	return vision.Probe(*dir, md)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func short(sha string) string {
	if len(sha) > 12 {
		return sha[:12]
	}
	return sha
}
