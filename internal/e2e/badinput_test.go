package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	manifest "github.com/periocular/atm-agent/models"
	"github.com/periocular/atm-agent/store/record"
)

// replayCfg: four interval triggers, no broker.
func replayCfg(camera string) string {
	return fmt.Sprintf(`camera:
  source: %s
  read_timeout: 500ms
  open_timeout: 1s
trigger:
  http:
    enabled: false
  replay:
    enabled: true
    interval: 300ms
    count: 4
`, camera)
}

func TestMisspeltKey(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	db := filepath.Join(dir, "agent.db")
	cfg := baseConfig(modelsDir(t), db, freePort(t)) + replayCfg(filepath.Join(dir, "frames")) + "vision:\n  min_scor: 0.6\n"
	f := filepath.Join(dir, "config.yaml")
	os.WriteFile(f, []byte(cfg), 0o644)
	line := strings.Count(cfg[:strings.Index(cfg, "min_scor")], "\n") + 1
	p := start(t, "run", "--config", f)
	err, done := p.wait(10 * time.Second)
	if !done || err == nil {
		t.Fatalf("agent did not fail on a misspelt key (done %v, err %v)", done, err)
	}
	out := p.log.String()
	if !strings.Contains(out, "min_scor") || !strings.Contains(out, fmt.Sprintf("line %d", line)) {
		t.Errorf("error does not name the key and line %d:\n%s", line, out)
	}
	if _, err := os.Stat(db); !os.IsNotExist(err) {
		t.Errorf("store created despite a bad config: %v", err)
	}
	t.Logf("exit %v: %s", err, strings.TrimSpace(out))
}

// A camera that is not there: the agent keeps running, reports the camera
// down, records the visits as camera errors, and stops cleanly.
func TestMissingCamera(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	db := filepath.Join(dir, "agent.db")
	port := freePort(t)
	cfg := baseConfig(modelsDir(t), db, port) + replayCfg("/dev/video97")
	f := filepath.Join(dir, "config.yaml")
	os.WriteFile(f, []byte(cfg), 0o644)
	p := start(t, "run", "--config", f)
	waitFor(t, 30*time.Second, "four visits", func() bool { return strings.Count(p.log.String(), "msg=visit ") >= 4 })
	h, code, err := healthz(port)
	if err != nil {
		t.Fatalf("healthz: %v\n%s", err, p.log.String())
	}
	if code != 503 || h["camera"] != "down" || h["ok"] != false {
		t.Errorf("healthz %d %v: want 503 with camera down", code, h)
	}
	if _, exited := p.wait(0); exited {
		t.Fatal("agent exited with the camera missing")
	}
	stop := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	err, ok := p.wait(6 * time.Second)
	if !ok || err != nil {
		t.Fatalf("SIGTERM: exited %v, err %v", ok, err)
	}
	t.Logf("camera down: healthz %d %v; SIGTERM -> exit %v", code, h, time.Since(stop).Round(time.Millisecond))
	st := openStore(t, db)
	defer st.Close()
	vs, err := st.VisitsBetween(context.Background(), time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 4 {
		t.Fatalf("%d visits stored, want 4", len(vs))
	}
	for _, v := range vs {
		if v.Outcome != visit.CameraError {
			t.Errorf("visit %s outcome %v, want camera_error", v.ID, v.Outcome)
		}
	}
}

// A model file whose bytes changed: the agent refuses to start, names the
// file, and leaves the stored data as it was.
func TestTamperedModel(t *testing.T) {
	skipShort(t)
	src := modelsDir(t)
	dir := t.TempDir()
	models := filepath.Join(dir, "models")
	os.MkdirAll(models, 0o755)
	ents, _ := os.ReadDir(src)
	// Damage the model the agent runs first: the manifest's detector.
	man, err := manifest.LoadManifest(filepath.Join(src, "manifest.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	det, ok := man.Find(man.Pipeline.Detector)
	if !ok {
		t.Fatalf("manifest has no detector %q", man.Pipeline.Detector)
	}
	victim := det.File
	for _, e := range ents {
		from, to := filepath.Join(src, e.Name()), filepath.Join(models, e.Name())
		switch e.Name() {
		case "manifest.yaml", victim:
			b, err := os.ReadFile(from)
			if err != nil {
				t.Fatal(err)
			}
			if e.Name() == victim {
				b[len(b)/2] ^= 0xff
			}
			os.WriteFile(to, b, 0o600)
		default:
			os.Symlink(from, to)
		}
	}
	// A store holding one visit, written before the agent starts.
	db := filepath.Join(dir, "agent.db")
	st := openStore(t, db)
	v := visit.Visit{ID: "before-0001", Time: time.Now().Add(-time.Minute), Trigger: "test",
		Descriptor: visit.Descriptor{Outcome: visit.NoFace}}
	if _, err := st.CommitVisit(context.Background(), record.Commit{Visit: &v}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	sum := func() [32]byte { b, _ := os.ReadFile(db); return sha256.Sum256(b) }
	before := sum()

	cfg := baseConfig(models, db, freePort(t)) + replayCfg(filepath.Join(dir, "frames"))
	f := filepath.Join(dir, "config.yaml")
	os.WriteFile(f, []byte(cfg), 0o644)
	p := start(t, "run", "--config", f)
	err, done := p.wait(20 * time.Second)
	if !done || err == nil {
		t.Fatalf("agent started with a tampered model (done %v)", done)
	}
	out := p.log.String()
	if !regexp.MustCompile(regexp.QuoteMeta(victim)).MatchString(out) {
		t.Errorf("error does not name %s:\n%s", victim, out)
	}
	t.Logf("exit %v: %s", err, tail(out, 2))
	if sum() != before {
		t.Errorf("store file changed by a start that failed on its models")
	}
	st = openStore(t, db)
	defer st.Close()
	got, err := st.Visit(context.Background(), "before-0001")
	if err != nil || got.Outcome != visit.NoFace {
		t.Errorf("stored visit after the failed start: %+v, %v", got, err)
	}
}
