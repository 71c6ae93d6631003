package main

import (
	"bytes"
	"context"
	"github.com/periocular/atm-agent/internal/cli/clitest"
	"os"
	"testing"
)

// TestMain lets the test binary act as atm-agent when re-executed with
// ATM_AGENT_AS_CLI=1, so that commands which start child processes of
// themselves (models verify) run the code under test.
func TestMain(m *testing.M) {
	if os.Getenv("ATM_AGENT_AS_CLI") == "1" {
		os.Exit(runMain(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// cli runs a command in-process and returns its exit code and output.
func runTool(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := runMain(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// Every command and group: help on stdout with exit 0, usage errors exit 2,
// --version, man page and completions (internal/cli/clitest).
func TestCLIConventions(t *testing.T) { clitest.Check(t, app()) }
