package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
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
func cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := runMain(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// repoRoot is the module root (tests run in cmd/atm-agent).
func repoRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// builtModels returns the models dir made by `make models`; the tests that
// need it fail (not skip) without it, since CI always builds it first.
func builtModels(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("ATM_MODELS_DIR")
	if dir == "" {
		dir = filepath.Join(repoRoot(t), "build", "models")
	}
	if _, err := os.Stat(filepath.Join(dir, "manifest.yaml")); err != nil {
		t.Fatalf("no built models in %s (run `make models`): %v", dir, err)
	}
	return dir
}
