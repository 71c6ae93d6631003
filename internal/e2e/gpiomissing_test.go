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

// A card-insert GPIO chip that is not there (wrong name, driver not
// loaded, a board without it): the agent keeps running, the ATM
// application's HTTP trigger still starts visits, and /healthz says 503
// with the reason. Before, the agent exited with "trigger source: gpio:
// chip not found" a few milliseconds after ready, and systemd restarted it
// every 5 s (RestartSec), the HTTP trigger down with it.
func TestMissingGPIOChipKeepsHTTPTrigger(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	frames := filepath.Join(dir, "frames")
	writeFrames(t, frames, 2)
	db := filepath.Join(dir, "agent.db")
	sock := filepath.Join(dir, "trigger.sock")
	port := freePort(t)
	cfg := filepath.Join(dir, "config.yaml")
	body := baseConfig(modelsDir(t), db, port) + fmt.Sprintf(`camera:
  source: %s
  loop: true
trigger:
  gpio:
    enabled: true
    chip: gpiochip97
    line: 3
  http:
    enabled: true
    socket: %s
`, frames, sock)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	p := start(t, "run", "--config", cfg)
	waitFor(t, 30*time.Second, "the trigger socket", func() bool { _, err := os.Stat(sock); return err == nil })
	time.Sleep(time.Second) // before, the agent was gone by now
	if err, exited := p.wait(0); exited {
		t.Fatalf("agent exited on a missing GPIO chip: %v\n%s", err, tail(p.log.String(), 10))
	}
	c := socketClient(sock)
	resp, err := c.Post("http://agent/v1/visit", "application/json", bytes.NewBufferString(`{"txn_id":"gpio-missing-1"}`))
	if err != nil {
		t.Fatalf("HTTP trigger with the GPIO chip missing: %v\n%s", err, tail(p.log.String(), 10))
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("HTTP trigger: %d, want 202", resp.StatusCode)
	}
	waitFor(t, 30*time.Second, "the visit stored", func() bool { return strings.Contains(p.log.String(), "msg=visit ") })
	h, code, err := healthz(port)
	if err != nil {
		t.Fatal(err)
	}
	reasons := fmt.Sprint(h["reasons"])
	if code != http.StatusServiceUnavailable || !strings.Contains(reasons, `trigger: gpio: chip "gpiochip97" not found`) {
		t.Errorf("healthz %d %v: want 503 naming the missing chip", code, h)
	}
	if !strings.Contains(p.log.String(), "gpio trigger unavailable") {
		t.Errorf("log does not say the GPIO trigger is unavailable:\n%s", tail(p.log.String(), 10))
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err, done := p.wait(6 * time.Second); !done || err != nil {
		t.Fatalf("SIGTERM: %v (done %v)", err, done)
	}
	t.Logf("healthz %d reasons %s", code, reasons)
}
