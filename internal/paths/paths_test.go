package paths

import (
	"os"
	"path/filepath"
	"testing"
)

// A fake install root outside any checkout: every default is the
// installed path under ATM_AGENT_ROOT; build/ is never used.
func TestInstalledOutsideCheckout(t *testing.T) {
	root := t.TempDir()
	t.Chdir(t.TempDir())
	t.Setenv("ATM_AGENT_ROOT", root)
	t.Setenv("ATM_MODELS_DIR", "")
	t.Setenv("XDG_CACHE_HOME", filepath.Join(root, "cache"))
	if c := Checkout(); c != "" {
		t.Fatalf("Checkout() = %q outside a checkout", c)
	}
	for got, want := range map[string]string{
		Models():          filepath.Join(root, "usr/lib/atm-agent/models"),
		Config():          filepath.Join(root, "etc/atm-agent/config.yaml"),
		Photos():          filepath.Join(root, "usr/share/atm-tools/demo"),
		Work("evalcache"): filepath.Join(root, "cache", "atm-tools", "evalcache"),
	} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
	t.Setenv("ATM_MODELS_DIR", "/somewhere/models")
	if got := Models(); got != "/somewhere/models" {
		t.Errorf("ATM_MODELS_DIR ignored: %q", got)
	}
}

// In a checkout (from any of its subdirectories) the development tree's
// build/ is used for models, photos and work dirs; the config stays the
// installed one.
func TestCheckout(t *testing.T) {
	co := t.TempDir()
	if err := os.WriteFile(filepath.Join(co, "go.mod"), []byte("// a checkout\nmodule "+Module+"\n\ngo 1.26\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(co, "agent", "vision")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Chdir(sub)
	t.Setenv("ATM_AGENT_ROOT", "")
	t.Setenv("ATM_MODELS_DIR", "")
	co, _ = filepath.EvalSymlinks(co)
	if got := Checkout(); got != co {
		t.Fatalf("Checkout() = %q, want %q", got, co)
	}
	for got, want := range map[string]string{
		Models():    filepath.Join(co, "build/models"),
		Photos():    filepath.Join(co, "build/src/face-api/demo"),
		Work("src"): filepath.Join(co, "build/src"),
		Config():    "/etc/atm-agent/config.yaml",
	} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
	// Another module's go.mod is not a checkout of this one.
	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "go.mod"), []byte("module example.com/other\n"), 0o644)
	t.Chdir(other)
	if got := Checkout(); got != "" {
		t.Errorf("Checkout() = %q in another module", got)
	}
}
