package daemon

import (
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/periocular/atm-agent/hal/camera"
	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/sync/mqttsync"
)

// scrapeDaemon runs the daemon (real models and store, a fake camera
// device, default rules) with its metrics port on loopback and returns
// one /metrics body taken after start.
func scrapeDaemon(t *testing.T) []byte {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Models.Dir = testenv.ModelsDir(t)
	cfg.Store.Path = filepath.Join(t.TempDir(), "agent.db")
	cfg.Trigger = TriggerConfig{}
	cfg.Camera.Source, cfg.Camera.Kind = "fake0", "device"
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Metrics.Listen = l.Addr().String()
	l.Close()
	// MQTT on (its metrics registered) towards a port nobody listens on.
	cfg.MQTT.Enabled = true
	cfg.MQTT.Brokers = []string{"tcp://" + cfg.Metrics.Listen}
	cfg.MQTT.Commands.Enabled = true // the test-only key (docs/mqtt.md): never configure it
	cfg.MQTT.Commands.PublicKeys = []mqttsync.CommandKey{{Name: "test", Key: "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="}}
	cfg.fill()
	var broken atomic.Bool
	d, err := New(cfg, Options{Version: "1.2.3-test", Logger: testLog(t),
		CameraOpen: func(camera.Config) (camera.Device, error) { return flakyDevice{&broken}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer runDaemon(t, d)()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + cfg.Metrics.Listen + "/metrics")
		if err == nil {
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode == http.StatusOK {
				return b
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no /metrics: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMetricsEndpointReal: the daemon's own /metrics, everything
// registered, is promlint-clean and has every series at start.
func TestMetricsEndpointReal(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the models")
	}
	b := scrapeDaemon(t)
	lintClean(t, b)
	for _, want := range []string{
		`atm_agent_build_info{version="1.2.3-test",goversion="go`,
		"atm_agent_identities 0",
		`atm_agent_alerts_total{rule="same-face-repeat"} 0`,
		`atm_agent_alerts_total{rule="multiple-cards"} 0`,
		`atm_agent_alerts_total{rule="faceless-burst"} 0`,
		`atm_agent_visits_total{outcome="camera_error"} 0`,
		"atm_agent_rule_errors_total 0",
		"atm_agent_camera_up ",
		"atm_agent_camera_abandoned 0",
		"atm_agent_camera_open_blocked 0",
		"atm_agent_visit_seconds_count 0",
		"atm_agent_mqtt_commands_accepted_total 0",
		"atm_agent_mqtt_commands_rejected_total 0",
		"atm_agent_mqtt_commands_throttled_total 0",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("no %q in /metrics", want)
		}
	}
}
