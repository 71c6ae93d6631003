// Package testenv is what tests share about their environment: the
// repository root, the built models dir and the extracted model sources.
// A test that needs models which are not built is skipped with a message
// saying how to build them (`make models`; CI always does, before the tests).
package testenv

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/periocular/atm-agent/models"
)

// Root is the module root (found from this file's path, so it holds
// wherever the test runs).
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Path joins parts under the repository root.
func Path(parts ...string) string {
	return filepath.Join(append([]string{Root()}, parts...)...)
}

// ModelsDir is the built models dir ($ATM_MODELS_DIR, else build/models);
// the test is skipped when it holds no manifest.yaml.
func ModelsDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("ATM_MODELS_DIR")
	if dir == "" {
		dir = Path("build", "models")
	}
	if _, err := os.Stat(filepath.Join(dir, "manifest.yaml")); err != nil {
		t.Skipf("no built models in %s (run `make models`, or set ATM_MODELS_DIR): %v", dir, err)
	}
	return dir
}

// ModelSrc is where `models build` extracted the pinned packages
// ($ATM_MODEL_SRC, else build/src).
func ModelSrc() string {
	if d := os.Getenv("ATM_MODEL_SRC"); d != "" {
		return d
	}
	return Path("build", "src")
}

// CopyModels copies the named models of a built models dir (and a manifest
// listing only them, without a pipeline) to a temporary dir, so a test can
// damage its files.
func CopyModels(t *testing.T, src string, names ...string) (string, *models.Manifest) {
	t.Helper()
	man, err := models.LoadManifest(filepath.Join(src, "manifest.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	var keep []models.Model
	for _, n := range names {
		md, ok := man.Find(n)
		if !ok {
			t.Fatalf("model %s not in manifest", n)
		}
		b, err := os.ReadFile(filepath.Join(src, md.File))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, md.File), b, 0o644); err != nil {
			t.Fatal(err)
		}
		keep = append(keep, *md)
	}
	man.Models = keep
	man.Pipeline = models.Pipeline{}
	if err := man.Save(filepath.Join(dst, "manifest.yaml")); err != nil {
		t.Fatal(err)
	}
	return dst, man
}
