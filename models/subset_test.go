package models

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The package's models dir holds exactly what the pipeline runs, and
// still passes the file checks.
func TestCopyPipeline(t *testing.T) {
	src := os.Getenv("ATM_MODELS_DIR")
	if src == "" {
		src = filepath.Join("..", "build", "models")
	}
	if _, err := os.Stat(filepath.Join(src, "manifest.yaml")); err != nil {
		t.Skipf("built models needed (make models): %v", err)
	}
	full, err := LoadManifest(filepath.Join(src, "manifest.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	sub, err := CopyPipeline(src, dst)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, md := range sub.Models {
		names = append(names, md.Name)
		if err := md.Check(dst); err != nil {
			t.Errorf("%s: %v", md.Name, err)
		}
	}
	p := full.Pipeline
	for _, want := range []string{p.Detector, p.Landmarks, p.Embedder, p.FastDetector} {
		if want != "" && !slices.Contains(names, want) {
			t.Errorf("pipeline model %s left out: %v", want, names)
		}
	}
	if len(sub.Models) >= len(full.Models) {
		t.Errorf("%d of %d models kept", len(sub.Models), len(full.Models))
	}
	// Nothing but the pipeline's files and the manifest.
	want := map[string]bool{"manifest.yaml": true}
	for _, md := range sub.Models {
		for _, f := range md.Files() {
			want[f] = true
		}
	}
	ents, _ := os.ReadDir(dst)
	for _, e := range ents {
		if !want[e.Name()] {
			t.Errorf("unexpected file %s", e.Name())
		}
	}
	if len(ents) != len(want) {
		t.Errorf("%d files, want %d", len(ents), len(want))
	}
	back, err := LoadManifest(filepath.Join(dst, "manifest.yaml"))
	if err != nil || back.Pipeline != full.Pipeline {
		t.Errorf("written manifest: %v %+v", err, back)
	}
}

// A manifest entry whose file climbs out of the models dir ("../x") was
// copied to OUT/../x, over whatever was there (ship runs as root); a file
// whose bytes are not the manifest's was copied unverified. Both are
// refused now, and nothing is written outside OUT.
func TestCopyPipelineRefusesEscapesAndTamper(t *testing.T) {
	src := os.Getenv("ATM_MODELS_DIR")
	if src == "" {
		src = filepath.Join("..", "build", "models")
	}
	man, err := os.ReadFile(filepath.Join(src, "manifest.yaml"))
	if err != nil {
		t.Skipf("built models needed (make models): %v", err)
	}
	const entry = "file: blazeface-256.onnx"
	if !strings.Contains(string(man), entry) {
		t.Skip("no blazeface-256.onnx entry")
	}
	mirror := func(t *testing.T, root string) string {
		dir := filepath.Join(root, "a", "models")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		ents, _ := os.ReadDir(src)
		for _, e := range ents {
			if e.Name() != "manifest.yaml" {
				if err := os.Symlink(filepath.Join(must(filepath.Abs(src)), e.Name()), filepath.Join(dir, e.Name())); err != nil {
					t.Fatal(err)
				}
			}
		}
		return dir
	}

	root := t.TempDir()
	dir := mirror(t, root)
	if err := os.MkdirAll(filepath.Join(root, "a", "outside"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "blazeface-256.onnx"), filepath.Join(root, "a", "outside", "blazeface-256.onnx")); err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(man), entry, "file: ../outside/blazeface-256.onnx", 1)
	if err := os.WriteFile(filepath.Join(dir, "manifest.yaml"), []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(root, "ship", "x", "out")
	if _, err := CopyPipeline(dir, out); err == nil || !strings.Contains(err.Error(), "outside the models dir") {
		t.Errorf("a ../ path: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "ship", "x", "outside")); err == nil {
		t.Error("a file was written outside --out")
	}

	root = t.TempDir()
	dir = mirror(t, root)
	if err := os.WriteFile(filepath.Join(dir, "manifest.yaml"), man, 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "blazeface-256.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	os.Remove(filepath.Join(dir, "blazeface-256.onnx"))
	if err := os.WriteFile(filepath.Join(dir, "blazeface-256.onnx"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := CopyPipeline(dir, filepath.Join(root, "out")); !errors.Is(err, ErrIntegrity) {
		t.Errorf("a tampered file: %v, want ErrIntegrity", err)
	}
}

func must(s string, err error) string {
	if err != nil {
		panic(err)
	}
	return s
}
