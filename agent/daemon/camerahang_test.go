package daemon

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/periocular/atm-agent/hal/camera"
)

// A stream whose open hangs (a black-hole RTSP server) shows in /healthz
// and /metrics: the open blocked (no other starts until it returns, so
// threads no longer pile up) and the goroutines abandoned in OpenCV.
// Before, the abandoned count reached neither.
func TestHangingCameraOpenInHealth(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the models")
	}
	cfg := modelsTestConfig(t)
	cfg.Camera.Source, cfg.Camera.Kind = "rtsp://127.0.0.1:9/x", camera.KindStream
	cfg.Camera.OpenTimeout, cfg.Camera.ReopenMin, cfg.Camera.ReopenMax = 50*time.Millisecond, 10*time.Millisecond, 20*time.Millisecond
	cfg.Camera.CloseTimeout = 50 * time.Millisecond
	cfg.fill()
	release := make(chan struct{})
	defer close(release)
	var opens atomic.Int32
	d, err := New(cfg, Options{Version: "test", Logger: testLog(t), CameraOpen: func(camera.Config) (camera.Device, error) {
		opens.Add(1)
		<-release
		return nil, camera.ErrDown
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer runDaemon(t, d)()
	deadline := time.Now().Add(5 * time.Second)
	for !d.cam.Health().OpenBlocked {
		if time.Now().After(deadline) {
			t.Fatal("the hanging open never showed as blocked")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // 15 reopen backoffs
	body, ok := d.health()
	m := body.(map[string]any)
	if ok || m["camera_open_blocked"] != true || m["camera_abandoned"] != 1 {
		t.Errorf("/healthz while the open hangs: ok %v, %v", ok, body)
	}
	if r := strings.Join(m["reasons"].([]string), "; "); !strings.Contains(r, "camera: an open has been stuck in OpenCV since ") {
		t.Errorf("reasons %q: want the stuck open", r)
	}
	if n := opens.Load(); n != 1 {
		t.Errorf("%d opens started, want 1 (no other while one hangs)", n)
	}
}
