package e2e

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/periocular/atm-agent/internal/imagecheck/crafted"
	"github.com/periocular/atm-agent/internal/testenv"
)

// runCluster runs `atm-tools cluster in -o out args...` and returns its
// stdout+stderr and its peak resident set (rusage ru_maxrss) in bytes.
func runCluster(t *testing.T, in, out string, args ...string) (string, int64) {
	t.Helper()
	cmd := exec.Command(toolsBin, append([]string{"cluster", in, "-o", out, "--models-dir", modelsDir(t), "--workers", "2", "--thumb", "-1", "--no-cache"}, args...)...)
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cluster: %v\n%s", err, b)
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return string(b), ru.Maxrss * 1024 // kilobytes on Linux
}

// `cluster` over a folder of hostile images made here finishes, lists each
// as unreadable with its reason, and stays within a memory bound derived
// from a run over the same good photos alone: the baseline plus 16 bytes
// per pixel of the largest image admitted (decode 3, the padded copy for
// tight crops and resizes the rest) plus 64 MiB. Before, the 69-byte PNG
// aborted the run (uncaught OpenCV exception) and the bombs decoded to
// 2.7 GB before asking for 10.8 GB.
func TestClusterHostileImages(t *testing.T) {
	skipShort(t)
	const maxPixels = 16_000_000
	good := twoDemoPhotos(t)
	_, base := runCluster(t, good, filepath.Join(t.TempDir(), "out"), "--max-pixels", "16000000")

	in := t.TempDir()
	want, err := crafted.WriteHostileSet(in)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range want {
		want[k] = strings.Replace(v, "50000000", "16000000", 1)
	}
	for _, n := range []string{"sample1.jpg", "sample2.jpg"} {
		b, _ := os.ReadFile(filepath.Join(good, n))
		os.WriteFile(filepath.Join(in, n), b, 0o644)
	}
	// Admitted and decoded: two bombs at the pixel limit, which the
	// workers may only hold one at a time (the pixel budget).
	os.WriteFile(filepath.Join(in, "at-limit-1.jpg"), crafted.JPEGClaiming(4000, 4000), 0o644)
	os.WriteFile(filepath.Join(in, "at-limit-2.png"), crafted.BombPNG(4000, 4000, 4000), 0o644)

	out := filepath.Join(t.TempDir(), "out")
	log, peak := runCluster(t, in, out, "--max-pixels", "16000000")
	b, err := os.ReadFile(filepath.Join(out, "unreadable.json"))
	if err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	var un []struct{ Path, Reason string }
	if err := json.Unmarshal(b, &un); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, p := range un {
		got[p.Path] = p.Reason
	}
	for name, reason := range want {
		if !strings.HasPrefix(got[name], reason) {
			t.Errorf("%q: listed as %q, want %q", name, got[name], reason)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d unreadable, want %d: %v", len(got), len(want), got)
	}
	bound := base + 16*maxPixels + 64<<20
	t.Logf("peak RSS %.0f MiB (good photos alone %.0f MiB, bound %.0f MiB)", mib(peak), mib(base), mib(bound))
	if peak > bound {
		t.Errorf("peak RSS %.0f MiB over the bound %.0f MiB", mib(peak), mib(bound))
	}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// `atm-agent cluster` runs the batch job of atm-tools installed beside it,
// with the same arguments and exit status (the daemon links none of it).
func TestAgentClusterRunsTools(t *testing.T) {
	skipShort(t)
	in := twoDemoPhotos(t)
	out := filepath.Join(t.TempDir(), "out")
	cmd := exec.Command(agentBin, "cluster", in, "-o", out, "--models-dir", modelsDir(t), "--workers", "2", "--thumb", "-1", "--no-cache")
	cmd.Env = append(os.Environ(), "PATH=/nonexistent") // found beside atm-agent, not on PATH
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("atm-agent cluster: %v\n%s", err, b)
	}
	rep, err := os.ReadFile(filepath.Join(out, "report.json"))
	if err != nil || !strings.Contains(string(rep), `"sample2.jpg"`) {
		t.Fatalf("report.json: %v", err)
	}
	help, err := exec.Command(agentBin, "cluster", "--help").Output()
	if err != nil || !strings.HasPrefix(string(help), "usage: atm-agent cluster") || !strings.Contains(string(help), "--algorithm") {
		t.Fatalf("atm-agent cluster --help: %v\n%s", err, help)
	}
	cmd = exec.Command(agentBin, "cluster", in) // no -o: atm-tools' usage error
	b, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(b), "atm-tools cluster") {
		t.Fatalf("atm-agent cluster without -o: %v\n%s", err, b)
	}
}

// twoDemoPhotos is a new folder holding face-api's sample1.jpg and
// sample2.jpg (make models fetches them).
func twoDemoPhotos(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, n := range []string{"sample1.jpg", "sample2.jpg"} {
		b, err := os.ReadFile(testenv.Path("build", "src", "face-api", "demo", n))
		if err != nil {
			t.Fatalf("demo photo (make models): %v", err)
		}
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
