package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
		{"bad algorithm", []string{"cluster", "a", "-o", "x", "--algorithm", "kmeans"}, "--algorithm"},
		{"bad thresholds", []string{"cluster", "a", "-o", "x", "--thresholds", "0.3,0.3"}, "--thresholds"},
		{"bad workers", []string{"cluster", "a", "-o", "x", "--workers", "0"}, "--workers"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runTool(t, tc.args...)
			if code != 2 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want 2 and %q", code, stderr, tc.want)
			}
		})
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
	if !strings.Contains(stdout, "2 images: 1 people (2+ images), 0 single-image, 0 without a usable face, 0 unreadable, 1 skipped") {
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
	if code, _, stderr := runTool(t, args...); code != 0 {
		t.Fatalf("rerun with --force: exit %d, %s", code, stderr)
	}
	b, _ = os.ReadFile(filepath.Join(out, "report.json"))
	if !strings.Contains(string(b), `"algorithm": "dbscan"`) {
		t.Error("--force run did not replace report.json")
	}
}
