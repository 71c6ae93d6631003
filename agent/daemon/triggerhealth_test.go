package daemon

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/periocular/atm-agent/internal/testenv"
)

// The trigger endpoint's GET /v1/health says whether the agent can film
// and which version it is: the daemon (real models, store and camera
// supervisor over a fake device, the endpoint on its socket) with the
// camera unplugged answers ready false, camera down and the reason; once
// the camera is back, ready true. Before, /v1/health said only
// "status":"ok" while every visit was stored as camera_error.
func TestTriggerHealthReportsCamera(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the models")
	}
	sock := filepath.Join(t.TempDir(), "trigger.sock")
	cfg := DefaultConfig()
	cfg.Models.Dir = testenv.ModelsDir(t)
	cfg.Store.Path = filepath.Join(t.TempDir(), "agent.db")
	cfg.Trigger = TriggerConfig{}
	cfg.Trigger.HTTP.Enabled, cfg.Trigger.HTTP.Socket = true, sock
	cfg.Metrics.Listen = ""
	cfg.Camera.Source, cfg.Camera.Kind = "fake0", "device"
	cfg.Camera.ReopenMin, cfg.Camera.ReopenMax = 50*time.Millisecond, 100*time.Millisecond
	cfg.fill()
	var broken atomic.Bool
	broken.Store(true)
	d, err := New(cfg, Options{Version: "9.8.7-test", Logger: testLog(t), CameraOpen: flakyOpen(&broken)})
	if err != nil {
		t.Fatal(err)
	}
	defer runDaemon(t, d)()
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", sock)
		}}}
	health := func() map[string]any {
		t.Helper()
		var m map[string]any
		deadline := time.Now().Add(5 * time.Second)
		for {
			resp, err := c.Get("http://agent/v1/health")
			if err == nil {
				err = json.NewDecoder(resp.Body).Decode(&m)
				resp.Body.Close()
				if err == nil && resp.StatusCode == http.StatusOK {
					return m
				}
			}
			if time.Now().After(deadline) { // the endpoint serves once the agent runs
				t.Fatalf("GET /v1/health: %v", err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	m := health()
	reasons, _ := m["reasons"].([]any)
	if m["status"] != "ok" || m["version"] != "9.8.7-test" || m["ready"] != false || m["camera"] != "down" ||
		len(reasons) == 0 || reasons[0] != "camera: down" {
		t.Fatalf("camera unplugged: /v1/health %v", m)
	}
	broken.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for m = health(); m["ready"] != true; m = health() {
		if time.Now().After(deadline) {
			t.Fatalf("camera back: /v1/health %v", m)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if m["camera"] != "ok" || len(m["reasons"].([]any)) != 0 {
		t.Fatalf("camera back: /v1/health %v", m)
	}
}
