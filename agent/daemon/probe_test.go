package daemon

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/periocular/atm-agent/hal/camera"
	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/wire"
)

// faceFolder is a new image folder (an image-folder camera's source) with
// the named face-api sample photos.
func faceFolder(t *testing.T, names ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "frames")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range names {
		b, err := os.ReadFile(filepath.Join(testenv.ModelSrc(), "face-api", "demo", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// socketClient is an HTTP client of the trigger endpoint on socket sock.
func socketClient(sock string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		// At most 16 connections: the socket's cap (trigger.MaxSocketConns)
		// is 32, and requests beyond the cap queue here.
		MaxConnsPerHost: 16,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", sock)
		}}}
}

// waitServing waits until the trigger endpoint answers (it serves once
// the agent runs).
func waitServing(t *testing.T, hc *http.Client) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if resp, err := hc.Get("http://agent/v1/health"); err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the trigger endpoint did not serve")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestIdleCameraFailureReported: the daemon (real models, store, camera
// supervisor and gocv image-folder driver, trigger endpoint on its socket,
// MQTT to a real mosquitto) with camera.probe_interval 500ms. The folder
// is moved away while no visit runs: within the interval /v1/health says
// ready false and camera down, /healthz degraded, and a fresh subscriber's
// retained status degraded; the folder back, all three say ok again. No
// visit is triggered. Before, all three said ok until the next visit was
// stored as camera_error.
func TestIdleCameraFailureReported(t *testing.T) {
	if testing.Short() {
		t.Skip("starts mosquitto and loads the models")
	}
	frames := faceFolder(t, "sample1.jpg", "sample2.jpg")
	m := fleettest.StartMosquitto(t, "")
	cfg := mqttTestConfig(t, m.URL(), DeviceConfig{ID: "atm-p", Site: "test"})
	sock := filepath.Join(t.TempDir(), "trigger.sock")
	cfg.Trigger.HTTP.Enabled, cfg.Trigger.HTTP.Socket = true, sock
	cfg.Camera.Source, cfg.Camera.Kind, cfg.Camera.Loop = frames, camera.KindImages, true
	const every = 500 * time.Millisecond
	cfg.Camera.ProbeInterval = every
	cfg.Camera.ReopenMin, cfg.Camera.ReopenMax = 100*time.Millisecond, 200*time.Millisecond
	cfg.MQTT.StatusInterval = time.Minute // changes are not waited for
	cfg.fill()
	d, err := New(cfg, Options{Version: "test", Logger: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer runDaemon(t, d)()

	hc := socketClient(sock)
	// state reads the three views: /v1/health (ready, camera), /healthz
	// (ok) and the retained status (health).
	type views struct {
		ready   bool
		camera  string
		healthz bool
		status  wire.Status
	}
	read := func() (v views, err error) {
		resp, err := hc.Get("http://agent/v1/health")
		if err != nil {
			return v, err
		}
		defer resp.Body.Close()
		var h struct {
			Ready  bool   `json:"ready"`
			Camera string `json:"camera"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
			return v, err
		}
		v.ready, v.camera = h.Ready, h.Camera
		_, v.healthz = d.health()
		if b := retained(t, m.URL(), "atm/test/atm-p/status"); b != nil {
			err = json.Unmarshal(b, &v.status)
		}
		return v, err
	}
	wait := func(what string, bound time.Duration, cond func(views) bool) time.Duration {
		t.Helper()
		start := time.Now()
		for {
			v, err := read()
			if err == nil && cond(v) {
				return time.Since(start)
			}
			if time.Since(start) > bound {
				t.Fatalf("%s: not within %s: %+v (%v)", what, bound, v, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	ok := func(v views) bool {
		return v.ready && v.camera == "ok" && v.healthz && v.status.Health == wire.HealthOK
	}
	wait("ok at start", 10*time.Second, ok)

	away := frames + ".away"
	if err := os.Rename(frames, away); err != nil {
		t.Fatal(err)
	}
	// The probe (0.5 s), the status check (1 s), a fresh subscription.
	bound := every + 3*time.Second
	took := wait("degraded", bound, func(v views) bool {
		return !v.ready && v.camera == "down" && !v.healthz && v.status.Health == wire.HealthDegraded &&
			slices.Contains(v.status.Reasons, "camera: down")
	})
	t.Logf("folder moved away: all three degraded after %s (probe interval %s)", took.Round(time.Millisecond), every)

	if err := os.Rename(away, frames); err != nil {
		t.Fatal(err)
	}
	took = wait("recovery", bound, ok)
	t.Logf("folder back: all three ok after %s", took.Round(time.Millisecond))
	if s := d.ag.Stats(); s.Triggers != 0 {
		t.Errorf("%d triggers: the test needs none", s.Triggers)
	}
}
