package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/internal/testenv"
)

func TestClusterUsage(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no input", []string{"cluster", "-o", "x"}, "exactly one input folder"},
		{"two inputs", []string{"cluster", "a", "b", "-o", "x"}, "exactly one input folder"},
		{"no output", []string{"cluster", "a"}, "-o OUT is required"},
		{"empty input", []string{"cluster", "", "-o", "x"}, "input folder is an empty string"},
		{"bad algorithm", []string{"cluster", "a", "-o", "x", "--algorithm", "kmeans"}, "--algorithm"},
		{"bad thresholds", []string{"cluster", "a", "-o", "x", "--thresholds", "0.3,0.3"}, "--thresholds"},
		{"bad workers", []string{"cluster", "a", "-o", "x", "--workers", "0"}, "--workers"},
		{"too many workers", []string{"cluster", "a", "-o", "x", "--workers", "1000"}, "--workers 1000: want 1 to"},
		{"huge thumbnails", []string{"cluster", "a", "-o", "x", "--thumb", "100000"}, "--thumb"},
		{"cache inside output", []string{"cluster", "a", "-o", "x", "--cache", "x/c"}, "--cache"},
		{"cache is output", []string{"cluster", "a", "-o", "x", "--cache", "x"}, "--cache"},
		// Flags after DIR (the documented order) are usage errors too, not
		// exit 1 with the whole flag list on stderr.
		{"unknown flag after DIR", []string{"cluster", "a", "-o", "x", "--workrs", "2"}, "unknown flag --workrs (did you mean --workers?)"},
		{"bad flag value after DIR", []string{"cluster", "a", "--workers", "two", "-o", "x"}, "invalid value"},
		{"bad singletons", []string{"cluster", "a", "-o", "x", "--singletons", "many"}, "--singletons"},
		{"near NaN", []string{"cluster", "a", "-o", "x", "--near", "NaN"}, "--near"},
		{"near negative", []string{"cluster", "a", "-o", "x", "--near", "-1"}, "--near"},
		{"eps negative", []string{"cluster", "a", "-o", "x", "--algorithm", "dbscan", "--eps", "-1"}, "--eps"},
		{"min-samples 0", []string{"cluster", "a", "-o", "x", "--algorithm", "dbscan", "--min-samples", "0"}, "--min-samples"},
		{"min-face-px negative", []string{"cluster", "a", "-o", "x", "--min-face-px", "-5"}, "--min-face-px"},
		{"usage names the tool", []string{"cluster", "a", "b", "-o", "x"}, "usage: atm-tools cluster"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runTool(t, tc.args...)
			if code != 2 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want 2 and %q", code, stderr, tc.want)
			}
		})
	}
}

// Help after DIR goes to stdout with exit 0, like help before it; an
// input that is the output folder, or inside it, is a usage error.
func TestClusterUsageAfterDir(t *testing.T) {
	code, stdout, stderr := runTool(t, "cluster", "a", "--help")
	if code != 0 || !strings.Contains(stdout, "usage: atm-tools cluster") || stderr != "" {
		t.Errorf("cluster DIR --help: exit %d, stdout %d bytes, stderr %q; want 0 and the help on stdout", code, len(stdout), stderr)
	}
	// --threads defaults to cores/workers here, not the 2 of the eval commands.
	if !strings.Contains(stdout, "OpenCV threads of each worker's pipeline (default: cores/workers)") || strings.Contains(stdout, "OpenCV threads (default 2)") {
		t.Errorf("--threads help does not say its default:\n%s", stdout)
	}
	models := testenv.ModelsDir(t)
	d := t.TempDir()
	for _, out := range []string{d, filepath.Dir(d)} {
		code, _, stderr = runTool(t, "cluster", d, "-o", out, "--models-dir", models, "--no-cache")
		if code != 2 || !strings.Contains(stderr, "input inside the output folder") {
			t.Errorf("-o %s for input %s: exit %d, %s; want 2", out, d, code, stderr)
		}
	}
}

func TestClusterCommand(t *testing.T) {
	models := testenv.ModelsDir(t)
	in := t.TempDir()
	photo, err := os.ReadFile(filepath.Join(testenv.Root(), "build", "src", "face-api", "demo", "sample1.jpg"))
	if err != nil {
		t.Fatalf("demo photo (run `make models`): %v", err)
	}
	for name, b := range map[string][]byte{"a.jpg": photo, "sub/b.JPG": photo, "c.txt": []byte("x")} {
		p := filepath.Join(in, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "out")
	args := []string{"cluster", in, "-o", out, "--models-dir", models, "--thresholds", "0.3,0.3,0", "--thumb", "-1"}
	code, stdout, stderr := runTool(t, args...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "2 images: 1 person (2+ images), 0 single-image, 0 without a usable face, 0 unreadable, 1 skipped") {
		t.Errorf("summary %q", stdout)
	}
	for _, f := range []string{"person_0001/a.jpg", "person_0001/sub__b.JPG", "report.json", "report.html"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
	var rep struct {
		Run struct {
			Algorithm  string
			Thresholds struct{ UU float64 }
			Models     []struct{ Name, SHA256 string }
		}
	}
	b, _ := os.ReadFile(filepath.Join(out, "report.json"))
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	// The detection stage (one detector, or the manifest's fast one and
	// the main one) and the embedder, each with its checksum.
	if rep.Run.Algorithm != "average" || rep.Run.Thresholds.UU != 0.3 || len(rep.Run.Models) < 2 {
		t.Errorf("run metadata %+v", rep.Run)
	}
	for _, m := range rep.Run.Models {
		if m.Name == "" || len(m.SHA256) != 64 {
			t.Errorf("model without name or checksum in the run metadata: %+v", rep.Run.Models)
		}
	}
	if code, _, stderr := runTool(t, args...); code != 2 || !strings.Contains(stderr, "--force") {
		t.Fatalf("rerun without --force: exit %d, %s", code, stderr)
	}
	args = append(args, "--force", "--algorithm", "dbscan", "--singletons", "own")
	code, _, stderr = runTool(t, args...)
	if code != 0 {
		t.Fatalf("rerun with --force: exit %d, %s", code, stderr)
	}
	// The original project's eps on cosine templates: warned, with the
	// calibrated value.
	if !strings.Contains(stderr, "warning: --eps 0.5 (the original project's default) does not fit") || !strings.Contains(stderr, "Calibrated default: --eps ") {
		t.Errorf("no eps warning for dbscan: %s", stderr)
	}
	b, _ = os.ReadFile(filepath.Join(out, "report.json"))
	if !strings.Contains(string(b), `"algorithm": "dbscan"`) {
		t.Error("--force run did not replace report.json")
	}
}

// SIGTERM in the middle of a run (a real child process, the real pipeline):
// the command stops, says so, and leaves no partial OUT, so the same
// command runs again without --force and takes what was embedded before
// the signal from the cache. Without a terminal, progress comes as lines.
func TestClusterSignal(t *testing.T) {
	models := testenv.ModelsDir(t)
	photo, err := os.ReadFile(filepath.Join(testenv.Root(), "build", "src", "face-api", "demo", "sample1.jpg"))
	if err != nil {
		t.Fatalf("demo photo (run `make models`): %v", err)
	}
	in := t.TempDir()
	for i := range 120 {
		// Distinct bytes (a trailer after the end of image): no two share a
		// cache entry.
		b := append(slices.Clone(photo), fmt.Sprintf("copy %d", i)...)
		if err := os.WriteFile(filepath.Join(in, fmt.Sprintf("p%03d.jpg", i)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "out")
	args := []string{"cluster", in, "-o", out, "--models-dir", models, "--cache", t.TempDir(),
		"--thresholds", "0.3,0.3,0.3", "--workers", "1", "--thumb", "-1"}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "ATM_AGENT_AS_CLI=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Signal once the run has started writing OUT and embedding.
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(out, ".atm-agent-cluster")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("run never started: %s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("no exit 30 s after SIGTERM: %s", stderr.String())
	}
	if err == nil || !strings.Contains(stderr.String(), "interrupted: "+out+" removed") {
		t.Fatalf("after SIGTERM: %v\n%s", err, stderr.String())
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("partial OUT left behind: %v", err)
	}
	// The same command again, no --force: it completes, partly from the
	// cache.
	cmd = exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "ATM_AGENT_AS_CLI=1")
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	if err := cmd.Run(); err != nil {
		t.Fatalf("re-run: %v\n%s", err, se.String())
	}
	var hits int
	if i := strings.Index(so.String(), "perception "); i < 0 {
		t.Fatalf("summary %q", so.String())
	} else {
		fmt.Sscanf(so.String()[i:][strings.Index(so.String()[i:], ", ")+2:], "%d from the cache", &hits)
	}
	if hits == 0 || !strings.Contains(so.String(), "120 images: 1 person") {
		t.Errorf("re-run summary %q: want 120 images in one person, some from the cache", so.String())
	}
	if !strings.Contains(se.String(), "cluster: 120/120 images (100%)") {
		t.Errorf("no line progress on a pipe: %q", se.String())
	}
}

func TestClusterWarnings(t *testing.T) {
	cal := identity.Thresholds{UU: 0.52, MM: 0.40, MU: 0.50}
	for _, tc := range []struct {
		name  string
		alg   identity.Algorithm
		eps   float64
		thSet bool
		th    identity.Thresholds
		want  string // "" for no warning
	}{
		{"dbscan original eps", identity.DBSCAN, 0.5, false, cal, "cosine distance 0.125, far tighter than the calibrated threshold uu 0.520 (eps 1.02); most faces will be left as singletons (DBSCAN noise). Calibrated default: --eps 1.02"},
		{"dbscan fitting eps", identity.DBSCAN, 1.0, false, cal, ""},
		{"dbscan loose eps", identity.DBSCAN, 1.4, false, cal, "looser than"},
		{"average calibrated", identity.Average, 0.5, false, cal, ""},
		{"average far thresholds", identity.Average, 0.5, true, identity.Thresholds{UU: 0.1, MM: 0.4, MU: 0.5}, "--thresholds uu 0.1 is far from faceplugin's calibrated 0.520 (cosine distance). Calibrated default: --thresholds 0.52,0.4,0.5"},
		{"average close thresholds", identity.Average, 0.5, true, identity.Thresholds{UU: 0.45, MM: 0.35, MU: 0.45}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := strings.Join(clusterWarnings(tc.alg, tc.eps, false, tc.thSet, tc.th, cal, true, "faceplugin"), "\n")
			if (tc.want == "") != (w == "") || !strings.Contains(w, tc.want) {
				t.Errorf("warnings %q, want %q", w, tc.want)
			}
		})
	}
}

// The seed clips (real MP4s of the original project, from
// ../shared/datasets/seed-clips or $ATM_SEED_CLIPS; skipped without them)
// sampled at one frame per second: every frame of god masked and god
// unmasked is one person (cross-mask), Holness another; a second run takes
// every frame from the cache.
func TestClusterSeedClips(t *testing.T) {
	models := testenv.ModelsDir(t)
	dir := os.Getenv("ATM_SEED_CLIPS")
	if dir == "" {
		dir = testenv.Path("..", "shared", "datasets", "seed-clips")
	}
	clips := []string{"god_masked.mp4", "god_unmasked.mp4", "holness_masked.mp4"}
	in := t.TempDir()
	for _, c := range clips {
		src := filepath.Join(dir, c)
		if _, err := os.Stat(src); err != nil {
			t.Skipf("seed clips absent (set ATM_SEED_CLIPS): %v", err)
		}
		if err := os.Symlink(src, filepath.Join(in, c)); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "out")
	args := []string{"cluster", in, "-o", out, "--models-dir", models, "--cache", t.TempDir(), "--video-fps", "1"}
	code, stdout, stderr := runTool(t, args...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "(frames of 3 videos included)") || !strings.Contains(stdout, ", 0 unreadable") {
		t.Errorf("summary %q", stdout)
	}
	var rep struct {
		Images []struct {
			Path, Folder string
			Video        *struct{ Path string }
		}
	}
	b, err := os.ReadFile(filepath.Join(out, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	folders := map[string]map[string]int{} // video -> folder -> frames
	for _, e := range rep.Images {
		if e.Video == nil || !strings.HasPrefix(e.Path, e.Video.Path+"#t=") {
			t.Errorf("item %s is not a video frame", e.Path)
			continue
		}
		if folders[e.Video.Path] == nil {
			folders[e.Video.Path] = map[string]int{}
		}
		folders[e.Video.Path][e.Folder]++
	}
	t.Logf("frames by video and folder: %v", folders)
	one := func(v string) string {
		if len(folders[v]) != 1 {
			t.Errorf("%s: frames in %v, want one folder", v, folders[v])
		}
		for f := range folders[v] {
			return f
		}
		return ""
	}
	gm, gu, h := one("god_masked.mp4"), one("god_unmasked.mp4"), one("holness_masked.mp4")
	if gm != gu || gm == h || !strings.HasPrefix(gm, "person_") || !strings.HasPrefix(h, "person_") {
		t.Errorf("god masked in %s, god unmasked in %s, holness in %s", gm, gu, h)
	}
	code, stdout, stderr = runTool(t, append(args, "--force")...)
	if code != 0 || !strings.Contains(stdout, "from the cache, 0 embedded") {
		t.Errorf("second run: exit %d, %q %s", code, stdout, stderr)
	}
}
