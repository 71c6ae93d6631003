package models

import (
	"os"
	"path/filepath"
	"slices"
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
