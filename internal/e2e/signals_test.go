package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// SIGHUP, SIGUSR1 and SIGUSR2 are Go's "terminate" signals by default: the
// agent died at once on any of them, with no graceful stop, losing the visit
// in progress. It now says they are ignored and keeps working; SIGTERM still
// stops it cleanly.
func TestHangupIgnored(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	frames := filepath.Join(dir, "frames")
	writeFrames(t, frames, 2)
	sock := filepath.Join(dir, "trigger.sock")
	port := freePort(t)
	cfg := filepath.Join(dir, "config.yaml")
	body := baseConfig(modelsDir(t), filepath.Join(dir, "agent.db"), port) + fmt.Sprintf(`camera:
  source: %s
  loop: true
trigger:
  http:
    enabled: true
    socket: %s
`, frames, sock)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	p := start(t, "run", "--config", cfg)
	waitFor(t, 30*time.Second, "the trigger socket", func() bool { _, err := os.Stat(sock); return err == nil })
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2} {
		if err := p.cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "the ignored signals logged", func() bool {
		return strings.Count(p.log.String(), "ignored: the configuration is read at start") == 3
	})
	if err, exited := p.wait(0); exited {
		t.Fatalf("agent exited on SIGHUP/SIGUSR1/SIGUSR2: %v\n%s", err, tail(p.log.String(), 10))
	}
	resp, err := socketClient(sock).Post("http://agent/v1/visit", "application/json", bytes.NewBufferString(`{"txn_id":"after-hup-1"}`))
	if err != nil {
		t.Fatalf("trigger after SIGHUP: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("trigger after SIGHUP: %d, want 202", resp.StatusCode)
	}
	waitFor(t, 30*time.Second, "the visit stored", func() bool { return strings.Contains(p.log.String(), "msg=visit ") })
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err, done := p.wait(6 * time.Second); !done || err != nil {
		t.Fatalf("SIGTERM: %v (done %v)\n%s", err, done, tail(p.log.String(), 10))
	}
}
