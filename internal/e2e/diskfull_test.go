package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A full disk: the agent runs with a file-size limit (RLIMIT_FSIZE, the
// process-level stand-in for a full filesystem) so the store cannot grow.
// Visits stored before that stay intact, each later visit is reported as
// lost with the reason, the agent keeps running and stops cleanly, and
// after a restart with room again it stores new visits in the same file.
func TestDiskFull(t *testing.T) {
	skipShort(t)
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("prlimit (util-linux) not installed")
	}
	dir := t.TempDir()
	db := filepath.Join(dir, "agent.db")
	frames := filepath.Join(dir, "frames")
	writeFrames(t, frames, 6)
	port := freePort(t)
	// bbolt grows its file 32K, 64K, 128K, 256K...: a 200 KiB cap fails
	// the growth past 128 KiB after a dozen or so visits.
	cfg := baseConfig(modelsDir(t), db, port) + fmt.Sprintf(`camera:
  source: %s
  kind: images
  loop: true
trigger:
  http:
    enabled: false
  replay:
    enabled: true
    interval: 100ms
    count: 40
`, frames)
	f := filepath.Join(dir, "config.yaml")
	os.WriteFile(f, []byte(cfg), 0o644)

	p := startProg(t, prlimit, "--fsize=204800", "--", agentBin, "run", "--config", f)
	waitFor(t, 120*time.Second, "a visit lost to the full disk", func() bool {
		return strings.Contains(p.log.String(), "visit lost: could not store it")
	})
	log := p.log.String()
	stored := strings.Count(log, "msg=visit ")
	if stored == 0 {
		t.Fatalf("no visit stored before the disk filled:\n%s", log)
	}
	if !strings.Contains(log, "file too large") {
		t.Errorf("the lost-visit error does not say why:\n%s", log)
	}
	if _, exited := p.wait(2 * time.Second); exited {
		t.Fatalf("agent exited on a full disk:\n%s", p.log.String())
	}
	// Health tells the truth: after agent.degraded_after (3) failed
	// commits in a row /healthz answers 503 "degraded" and says why.
	waitFor(t, 60*time.Second, "three visits lost", func() bool {
		return strings.Count(p.log.String(), "visit lost: could not store it") >= 3
	})
	h, code, err := healthz(port)
	if err != nil {
		t.Fatalf("healthz with a full disk: %v", err)
	}
	reasons := fmt.Sprint(h["reasons"])
	if code != 503 || h["status"] != "degraded" || h["ok"] != false || !strings.Contains(reasons, "commits failed") || !strings.Contains(reasons, "file too large") {
		t.Errorf("healthz with a full disk: %d %v, want 503 degraded naming the failing commits", code, h)
	}
	t.Logf("full disk: healthz %d status=%v reasons=%s", code, h["status"], reasons)
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err, ok := p.wait(6 * time.Second); !ok {
		t.Fatal("no exit within 6 s of SIGTERM on a full disk")
	} else if err != nil {
		t.Logf("exit on a full disk: %v", err)
	}
	stored = strings.Count(p.log.String(), "msg=visit ")
	t.Logf("%d visits stored, then the disk was full; first loss: %s", stored, firstLine(p.log.String(), "visit lost"))

	st := openStore(t, db)
	vs, err := st.VisitsBetween(context.Background(), time.Now().Add(-48*time.Hour), time.Now().Add(48*time.Hour))
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != stored {
		t.Fatalf("%d visits in the store, %d reported stored", len(vs), stored)
	}

	// Room again: the same file takes new visits.
	os.WriteFile(f, []byte(strings.Replace(cfg, "count: 40", "count: 3", 1)), 0o644)
	q := start(t, "run", "--config", f)
	waitFor(t, 60*time.Second, "visits after the restart", func() bool {
		return strings.Count(q.log.String(), "msg=visit ") >= 1
	})
	q.cmd.Process.Signal(syscall.SIGTERM)
	if err, ok := q.wait(6 * time.Second); !ok || err != nil {
		t.Fatalf("restart: exited %v, err %v\n%s", ok, err, q.log.String())
	}
	st = openStore(t, db)
	defer st.Close()
	after, err := st.VisitsBetween(context.Background(), time.Now().Add(-48*time.Hour), time.Now().Add(48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(after) <= len(vs) {
		t.Fatalf("%d visits after the restart, %d before: nothing new stored", len(after), len(vs))
	}
	old := map[string]bool{}
	for _, v := range after {
		old[v.ID] = true
	}
	for _, v := range vs {
		if !old[v.ID] {
			t.Errorf("visit %s stored before the full disk is gone after the restart", v.ID)
		}
	}
}

func firstLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}
