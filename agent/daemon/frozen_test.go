package daemon

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/hal/camera"
	"github.com/periocular/atm-agent/internal/testenv"
)

// frozenDevice is a V4L2 camera whose driver wedged on one image: every
// read returns the same bytes.
type frozenDevice struct{ f camera.Frame }

func (d frozenDevice) Read() (camera.Frame, error) {
	return camera.Frame{W: d.f.W, H: d.f.H, BGR: append([]byte(nil), d.f.BGR...)}, nil
}
func (d frozenDevice) Grab() error  { return nil }
func (d frozenDevice) Close() error { return nil }

// A camera frozen on a customer's face: before, every card insert was a
// face visit of that one identity (same-face-repeat fired on the fifth,
// against whoever stood there when the driver wedged) while /healthz said
// ok. Now each visit is a camera_error, no identity, no alert, and
// /healthz says why (real models, real store, the real camera supervisor
// over a fake device).
func TestFrozenCameraVisitsAreCameraErrors(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the models")
	}
	img := gocv.IMRead(filepath.Join(testenv.ModelSrc(), "face-api", "demo", "sample1.jpg"), gocv.IMReadColor)
	if img.Empty() {
		t.Fatal("demo photo not readable")
	}
	frame := camera.Frame{W: img.Cols(), H: img.Rows(), BGR: img.ToBytes()}
	img.Close()

	cfg := modelsTestConfig(t)
	cfg.Camera.Source, cfg.Camera.Kind = "/dev/video0", "device"
	cfg.Camera.ReopenMin, cfg.Camera.ReopenMax = 50*time.Millisecond, 100*time.Millisecond
	cfg.fill()
	d, err := New(cfg, Options{Version: "test", Logger: testLog(t),
		CameraOpen: func(camera.Config) (camera.Device, error) { return frozenDevice{frame}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer runDaemon(t, d)()
	waitCond(t, 30*time.Second, "the agent running", func() bool { return d.Agent() != nil && d.cam != nil && d.cam.Health().Frames > 0 })
	const n = 6
	for i := range n {
		d.Agent().Trigger(visit.Trigger{ID: fmt.Sprintf("frozen-%d", i), Time: time.Now(), Source: "test"})
		waitCond(t, 30*time.Second, "the visit stored", func() bool { return d.Agent().Stats().Committed == uint64(i+1) })
	}
	s := d.Agent().Stats()
	if s.Visits[visit.CameraError] != n || s.Visits[visit.FaceFound] != 0 || s.Alerts != 0 {
		t.Errorf("visits %v, alerts %d: want %d camera_error, no face visit, no alert", s.Visits, s.Alerts, n)
	}
	body, ok := d.health()
	reasons := fmt.Sprint(body.(map[string]any)["reasons"])
	if ok || !strings.Contains(reasons, "frozen") {
		t.Errorf("healthz ok=%v reasons %s: want degraded, naming frozen frames", ok, reasons)
	}
	ids, err := d.Store().Identities(context.Background())
	if err != nil || len(ids) != 0 {
		t.Errorf("identities %v (%v): want none from a frozen camera", ids, err)
	}
	t.Logf("visits %v, reasons %s", s.Visits, reasons)
}

func waitCond(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
