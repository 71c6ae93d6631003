package daemon

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/hal/camera"
	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/wire"
)

// flakyDevice is camera hardware that can be unplugged: while broken,
// reads and opens fail.
type flakyDevice struct{ broken *atomic.Bool }

var errUnplugged = errors.New("device unplugged")

func (d flakyDevice) Read() (camera.Frame, error) {
	if d.broken.Load() {
		return camera.Frame{}, errUnplugged
	}
	// A live sensor's frames differ and are not one flat colour (a frozen
	// or blank burst is refused: hal/camera ErrFrozen, ErrBlank).
	b := make([]byte, 64*48*3)
	rand.Read(b[:64])
	return camera.Frame{W: 64, H: 48, BGR: b, Time: time.Now()}, nil
}
func (d flakyDevice) Grab() error  { _, err := d.Read(); return err }
func (d flakyDevice) Close() error { return nil }

// flakyOpen opens a flakyDevice, or fails while broken is set.
func flakyOpen(broken *atomic.Bool) camera.OpenFunc {
	return func(camera.Config) (camera.Device, error) {
		if broken.Load() {
			return nil, errUnplugged
		}
		return flakyDevice{broken}, nil
	}
}

// retained subscribes like a dashboard that just started, returns the
// retained message on topic (nil if none came within a second) and
// disconnects.
func retained(t *testing.T, broker, topic string) []byte {
	t.Helper()
	got := make(chan []byte, 1)
	o := mqtt.NewClientOptions().AddBroker(broker).SetClientID("dash-" + time.Now().Format("150405.000000"))
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("dashboard connect: %v", tok.Error())
	}
	defer c.Disconnect(50)
	c.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) {
		if m.Retained() {
			select {
			case got <- slices.Clone(m.Payload()):
			default:
			}
		}
	})
	select {
	case b := <-got:
		return b
	case <-time.After(time.Second):
		return nil
	}
}

// TestRetainedStatusFollowsCamera runs the daemon (real models, store,
// camera supervisor over a fake device, MQTT to a real mosquitto): the
// camera fails after start and a fresh subscriber sees the failure in the
// retained status and state within the bound, then sees the recovery.
func TestRetainedStatusFollowsCamera(t *testing.T) {
	if testing.Short() {
		t.Skip("starts mosquitto and loads the models")
	}
	m := fleettest.StartMosquitto(t, "")
	cfg := mqttTestConfig(t, m.URL(), DeviceConfig{ID: "atm-7", Site: "test"})
	cfg.Camera.Source, cfg.Camera.Kind = "fake0", "device"
	cfg.Camera.ReopenMin, cfg.Camera.ReopenMax = 100*time.Millisecond, 300*time.Millisecond
	cfg.Camera.MaxReadFailures = 1
	cfg.MQTT.StatusInterval = time.Minute // changes are not waited for
	cfg.fill()
	var broken atomic.Bool
	d, err := New(cfg, Options{Version: "test", Logger: testLog(t), CameraOpen: flakyOpen(&broken)})
	if err != nil {
		t.Fatal(err)
	}
	defer runDaemon(t, d)()
	topic := "atm/test/atm-7/"
	status := func(kind string) wire.Status {
		var s wire.Status
		if b := retained(t, m.URL(), topic+kind); b != nil {
			if err := json.Unmarshal(b, &s); err != nil {
				t.Fatal(err)
			}
		}
		return s
	}
	// waitStatus polls fresh subscriptions until cond holds for both
	// retained topics, and returns how long that took.
	waitStatus := func(what string, bound time.Duration, cond func(s wire.Status) bool) time.Duration {
		t.Helper()
		start := time.Now()
		for {
			st, ds := status("status"), status("state")
			if cond(st) && cond(ds) {
				return time.Since(start)
			}
			if time.Since(start) > bound {
				t.Fatalf("%s: not retained within %s:\nstatus %+v\nstate %+v", what, bound, st, ds)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	camOK := func(s wire.Status) bool {
		return s.State == wire.StateOnline && len(s.Cameras) == 1 && s.Cameras[0].OK && s.Health == wire.HealthOK
	}
	// Up: the probe read after the first open makes the camera ok.
	waitStatus("camera ok at start", 10*time.Second, camOK)

	// The camera fails after start: a visit's burst finds it gone.
	broken.Store(true)
	failed := time.Now()
	d.Agent().Trigger(visit.Trigger{Source: "test"})
	bound := 3 * time.Second // the burst's read, StatusCheck (1 s), publish
	waitStatus("camera failure", bound, func(s wire.Status) bool {
		return len(s.Cameras) == 1 && !s.Cameras[0].OK && strings.Contains(s.Cameras[0].Error, "unplugged") &&
			s.Health == wire.HealthDegraded && slices.Contains(s.Reasons, "camera: down")
	})
	t.Logf("camera failure seen by a fresh subscriber %s after the unplug (bound %s)", time.Since(failed).Round(time.Millisecond), bound)

	// It comes back: the supervisor's reopen succeeds.
	broken.Store(false)
	back := time.Now()
	waitStatus("camera recovery", bound, camOK)
	t.Logf("recovery seen %s after the replug (bound %s)", time.Since(back).Round(time.Millisecond), bound)
}

// modelsTestConfig is the daemon's configuration for a test: the real
// models, a store in t.TempDir(), no trigger source nor metrics port. Call
// fill after changing it.
func modelsTestConfig(t *testing.T) Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Models.Dir = testenv.ModelsDir(t)
	cfg.Store.Path = filepath.Join(t.TempDir(), "agent.db")
	cfg.Trigger = TriggerConfig{}
	cfg.Metrics.Listen = ""
	return cfg
}

// mqttTestConfig is modelsTestConfig with MQTT to broker as device dev.
func mqttTestConfig(t *testing.T, broker string, dev DeviceConfig) Config {
	t.Helper()
	cfg := modelsTestConfig(t)
	cfg.Device = dev
	cfg.MQTT.Enabled = true
	cfg.MQTT.Brokers = []string{broker}
	return cfg
}

func testLog(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}

// stillCamera is camera hardware that always gives one grey frame.
type stillCamera struct{}

func (stillCamera) Burst(context.Context) ([]visit.Frame, error) {
	return []visit.Frame{{W: 64, H: 48, BGR: make([]byte, 64*48*3), Time: time.Now()}}, nil
}

// TestNoFalseDegradedAtStart: two reasons were given for a healthy
// agent. Before the work loop's first heartbeat, the status (the one the
// publisher sends at connect, which can come first) said "work loop: no
// heartbeat since 0001-01-01T00:00:00Z"; the loop is now judged from the
// start (degraded, since the start time, only when it has not beaten for
// 3 heartbeats plus a visit timeout since then). And with an injected
// camera (Options.Camera, the demo's simulator) the zero camera health
// read as down: "camera: down" in every status and /healthz for as long
// as the daemon ran, though the status lists no camera. Real models and
// bbolt store; the camera is a fake.
func TestNoFalseDegradedAtStart(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the models")
	}
	cfg := modelsTestConfig(t)
	cfg.fill()
	d, err := New(cfg, Options{Version: "test", Logger: testLog(t), Camera: stillCamera{}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if s := d.status(); s.Health != wire.HealthOK || len(s.Reasons) != 0 {
		t.Errorf("status before the first beat: %s %q, want ok", s.Health, s.Reasons)
	}
	if body, ok := d.health(); !ok {
		t.Errorf("/healthz before the first beat: %v, want ok", body)
	} else if _, ok := body.(map[string]any)["camera"]; ok {
		t.Errorf("/healthz reports a camera state for an injected camera: %v", body)
	}
	// A loop that never beat is still found stuck, judged from the start.
	d.started = time.Now().Add(-time.Hour)
	s := d.status()
	want := "work loop: no heartbeat since " + d.started.UTC().Format(time.RFC3339)
	if s.Health != wire.HealthDegraded || !slices.Equal(s.Reasons, []string{want}) {
		t.Errorf("status of a loop that never beat in an hour: %s %q, want degraded with %q", s.Health, s.Reasons, want)
	}
}

// runDaemon runs d until the returned stop is called; stop cancels it and
// reports Run's error.
func runDaemon(t *testing.T, d *Daemon) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

// TestNoDegradedWhileCameraStarts: a subscriber on a real mosquitto
// watches every status and state of a daemon whose camera takes 1.5 s to
// open (real models, store and camera supervisor; the device is a fake).
// A healthy start is never reported degraded: before, the status sent at
// connect said "degraded", "camera: down" (the camera was not opened
// yet), and about a second later ok, on every restart. A camera that
// really fails to open is reported degraded.
func TestNoDegradedWhileCameraStarts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts mosquitto and loads the models")
	}
	m := fleettest.StartMosquitto(t, "")
	for _, c := range []struct {
		name  string
		fails bool
	}{{"healthy", false}, {"fails", true}} {
		t.Run(c.name, func(t *testing.T) {
			dev := DeviceConfig{ID: "atm-" + c.name, Site: "test"}
			seen := make(chan wire.Status, 100)
			o := mqtt.NewClientOptions().AddBroker(m.URL()).SetClientID("dash-" + c.name)
			sub := mqtt.NewClient(o)
			if tok := sub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Fatalf("dashboard connect: %v", tok.Error())
			}
			defer sub.Disconnect(50)
			tok := sub.Subscribe("atm/test/"+dev.ID+"/+", 1, func(_ mqtt.Client, msg mqtt.Message) {
				var s wire.Status
				if !strings.HasSuffix(msg.Topic(), "/status") && !strings.HasSuffix(msg.Topic(), "/state") || json.Unmarshal(msg.Payload(), &s) != nil {
					return
				}
				seen <- s
			})
			if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Fatalf("subscribe: %v", tok.Error())
			}
			cfg := mqttTestConfig(t, m.URL(), dev)
			cfg.Camera.Source, cfg.Camera.Kind = "fake0", "device"
			cfg.Camera.OpenTimeout = 5 * time.Second
			cfg.fill()
			var broken atomic.Bool
			broken.Store(c.fails)
			d, err := New(cfg, Options{Version: "test", Logger: testLog(t), CameraOpen: func(cc camera.Config) (camera.Device, error) {
				time.Sleep(1500 * time.Millisecond)
				return flakyOpen(&broken)(cc)
			}})
			if err != nil {
				t.Fatal(err)
			}
			defer runDaemon(t, d)()
			deadline := time.After(10 * time.Second)
			for {
				select {
				case s := <-seen:
					if s.State != wire.StateOnline {
						continue
					}
					if !c.fails {
						if s.Health != wire.HealthOK {
							t.Fatalf("a healthy start published %s %q (cameras %+v)", s.Health, s.Reasons, s.Cameras)
						}
						if len(s.Cameras) == 1 && s.Cameras[0].OK {
							return
						}
						continue
					}
					if s.Health == wire.HealthDegraded && slices.Contains(s.Reasons, "camera: down") {
						return
					}
				case <-deadline:
					t.Fatalf("no online status with the camera's outcome (fails %v) within 10 s", c.fails)
				}
			}
		})
	}
}
