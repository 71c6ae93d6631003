package modelscmd

import (
	"bytes"
	"context"
	"io"
	"os"
	"testing"

	"github.com/periocular/atm-agent/internal/cli"
)

// TestMain lets the test binary act as the CLI when re-executed with
// ATM_AGENT_AS_CLI=1, so that `models verify`, which probes each model in a
// child process of itself, runs the code under test.
func TestMain(m *testing.M) {
	if os.Getenv("ATM_AGENT_AS_CLI") == "1" {
		os.Exit(runMain(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func runMain(ctx context.Context, args []string, out, errw io.Writer) int {
	return cli.Main(ctx, "atm-agent", map[string]cli.Command{"models": Command(nil)}, args, out, errw)
}

// cli runs a command in-process and returns its exit code and output.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := runMain(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}
