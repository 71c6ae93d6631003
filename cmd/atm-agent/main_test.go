package main

import (
	"bytes"
	"context"
	"github.com/periocular/atm-agent/internal/cli/clitest"
	"strings"
	"testing"
)

// runCLI runs a command in-process and returns its exit code and output.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := runMain(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// The daemon binary offers what runs on the box and nothing else: the
// offline tools are atm-tools' (deps_test.go checks the linked packages).
func TestCommandList(t *testing.T) {
	code, usage, _ := runCLI(t, "help")
	if code != 0 {
		t.Fatalf("help: exit %d", code)
	}
	for _, c := range []string{"run", "config", "db", "models", "version", "cluster"} {
		if !strings.Contains(usage, "\n  "+c+" ") {
			t.Errorf("usage lacks %q:\n%s", c, usage)
		}
	}
	for _, c := range []string{"eval", "demo", "watch", "command"} {
		if strings.Contains(usage, "\n  "+c+" ") {
			t.Errorf("the daemon offers the offline tool %q:\n%s", c, usage)
		}
		if code, _, errs := runCLI(t, c); code != 2 || !strings.Contains(errs, "is an atm-tools command (package atm-tools)") {
			t.Errorf("%s: exit %d, %s; want 2, pointing to atm-tools", c, code, errs)
		}
	}
	// Without atm-tools next to the test binary or on PATH, cluster says
	// what to install (internal/e2e runs it with atm-tools).
	t.Setenv("PATH", t.TempDir())
	if code, _, errs := runCLI(t, "cluster", "in", "-o", "out"); code != 2 || !strings.Contains(errs, "cannot run atm-tools cluster in -o out: atm-tools is not installed") {
		t.Errorf("cluster without atm-tools: exit %d, %s", code, errs)
	}
	if code, _, errs := runCLI(t, "models", "build"); code != 2 || !strings.Contains(errs, "unknown models command") {
		t.Errorf("models build: exit %d %s; want 2, unknown (atm-tools builds models)", code, errs)
	}
}

// Every command and group: help on stdout with exit 0, usage errors exit 2,
// --version, man page and completions (internal/cli/clitest).
func TestCLIConventions(t *testing.T) { clitest.Check(t, app()) }
