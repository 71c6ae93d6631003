package layout

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/periocular/atm-agent/internal/testenv"
)

const module = "github.com/periocular/atm-agent/"

// pureGo must never link gocv (OpenCV): they build and test with
// CGO_ENABLED=0, and a Mat can never reach them.
var pureGo = []string{
	"agent", "agent/identity", "agent/rules", "agent/visit",
	"agent/vision/facedecode", "agent/vision/blazeface",
	"store", "sync/mqttsync", "sync/wire",
	"hal/trigger", "hal/camera",
	"models", "internal/promtext", "internal/redact", "internal/netguard",
}

func goList(t *testing.T, args ...string) []string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go command is not on PATH")
	}
	cmd := exec.Command(goBin, append([]string{"list"}, args...)...)
	cmd.Dir = testenv.Root()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v", args, err)
	}
	return strings.Fields(string(out))
}

func TestNoGocvInCore(t *testing.T) {
	for _, p := range pureGo {
		if strings.HasSuffix(p, "/...") {
		}
		deps := goList(t, "-deps", "-f", "{{.ImportPath}}", module+p)
		for _, d := range deps {
			if d == "gocv.io/x/gocv" || strings.HasPrefix(d, "gocv.io/") {
				t.Errorf("%s links %s: it must build without cgo (see docs: the camera's gocv driver is hal/camera/cvcam)", p, d)
				break
			}
		}
	}
}

// The agent's core consumes small interfaces: no bbolt, no paho, no
// gocv (agent/daemon wires the real parts).
func TestAgentCoreDeps(t *testing.T) {
	for _, p := range []string{"agent", "agent/identity", "agent/rules", "agent/visit"} {
		for _, d := range goList(t, "-deps", "-f", "{{.ImportPath}}", module+p) {
			bad := d == module+"store" || strings.HasPrefix(d, module+"sync/mqttsync") ||
				strings.HasPrefix(d, "go.etcd.io/bbolt") || strings.HasPrefix(d, "github.com/eclipse/paho.mqtt.golang") ||
				strings.HasPrefix(d, "gocv.io/")
			if bad {
				t.Errorf("%s links %s (store/record holds the types it needs)", p, d)
			}
		}
	}
}

// The top level holds the card's folders (agent, hal, store, sync, models,
// scripts, systemd) plus cmd, internal, docs, testdata, the module files and
// the licence files, which stay at the root where readers and tools look.
func TestTopLevel(t *testing.T) {
	allowed := []string{"agent", "hal", "store", "sync", "models", "scripts", "systemd",
		"cmd", "internal", "docs", "testdata",
		"README.md", "LICENSE", "NOTICE", "Makefile", "go.mod", "go.sum", ".gitignore", ".ci", ".git", "build"}
	ents, err := os.ReadDir(testenv.Root())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !slices.Contains(allowed, e.Name()) {
			t.Errorf("top level holds %q: put it under one of %v", e.Name(), allowed[:11])
		}
	}
	// Every Go package sits under those folders.
	for _, p := range goList(t, "-f", "{{.ImportPath}}", "./...") {
		top, _, _ := strings.Cut(strings.TrimPrefix(p, module), "/")
		if !slices.Contains(allowed[:11], top) {
			t.Errorf("package %s is outside the card's folders", p)
		}
	}
}
