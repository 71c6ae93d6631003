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
		os.Exit(mainWithSignals(os.Args[1:]))
	}
	// The cluster tests must not fill the user's cache: a private one.
	dir, err := os.MkdirTemp("", "atm-tools-test-cache-")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_CACHE_HOME", dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// cli runs a command in-process and returns its exit code and output.
func runTool(t testing.TB, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := runMain(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// Every command and group: help on stdout with exit 0, usage errors exit 2,
// --version, man page and completions (internal/cli/clitest).
func TestCLIConventions(t *testing.T) { clitest.Check(t, app()) }
