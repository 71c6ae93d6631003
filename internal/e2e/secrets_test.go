package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// Credentials in camera.source (an RTSP URL, with a password in its
// userinfo and another in its query string, as Dahua's URLs carry it) and
// in an MQTT broker URL never appear in the log, the /healthz body or the
// retained MQTT status; the redacted forms do. Before, the RTSP password
// was in all three, and later the query's password still was.
func TestSecretsRedacted(t *testing.T) {
	skipShort(t)
	const camPw, queryPw, brokerPw = "CamS3cretPw", "QueryS3cretPw", "BrokerPw9x"
	broker := mosquitto(t)
	brokerURL := strings.Replace(broker, "tcp://", "tcp://mqttuser:"+brokerPw+"@", 1)
	dir := t.TempDir()
	port := freePort(t)
	// Nothing listens on the camera's port: every open fails, with the
	// source in OpenCV's error.
	source := fmt.Sprintf("rtsp://admin:%s@127.0.0.1:%d/cam/realmonitor?channel=1&user=admin&password=%s", camPw, freePort(t), queryPw)
	cfg := baseConfig(modelsDir(t), filepath.Join(dir, "agent.db"), port) + fmt.Sprintf(`camera:
  source: "%s"
  read_timeout: 500ms
  open_timeout: 2s
trigger:
  http:
    enabled: false
  replay:
    enabled: true
    interval: 300ms
    count: 2
mqtt:
  enabled: true
  brokers: [%s]
  drain_interval: 200ms
`, source, brokerURL)
	f := filepath.Join(dir, "config.yaml")
	os.WriteFile(f, []byte(cfg), 0o600)

	var mu sync.Mutex
	var status []string
	cl := paho.NewClient(paho.NewClientOptions().AddBroker(broker).SetClientID("e2e-secrets"))
	if tok := cl.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer cl.Disconnect(100)
	if tok := cl.Subscribe("#", 1, func(_ paho.Client, m paho.Message) {
		if strings.HasSuffix(m.Topic(), "/status") || strings.HasSuffix(m.Topic(), "/state") {
			mu.Lock()
			status = append(status, string(m.Payload()))
			mu.Unlock()
		}
	}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}

	p := start(t, "run", "--config", f)
	waitFor(t, 30*time.Second, "two visits", func() bool { return strings.Count(p.log.String(), "msg=visit ") >= 2 })
	waitFor(t, 10*time.Second, "a status message", func() bool { mu.Lock(); defer mu.Unlock(); return len(status) > 0 })
	var hz string
	waitFor(t, 10*time.Second, "/healthz with the camera error", func() bool {
		r, err := (&http.Client{Timeout: time.Second}).Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", port))
		if err != nil {
			return false
		}
		defer r.Body.Close()
		b, _ := io.ReadAll(r.Body)
		hz = string(b)
		return strings.Contains(hz, "camera_error")
	})
	time.Sleep(time.Second) // a status republished after a camera change, more log lines
	mu.Lock()
	st := strings.Join(status, "\n")
	mu.Unlock()
	log := p.log.String()
	for name, text := range map[string]string{"log": log, "/healthz": hz, "status": st} {
		for _, pw := range []string{camPw, queryPw, brokerPw} {
			if strings.Contains(text, pw) {
				t.Errorf("%s holds a password:\n%s", name, text)
			}
		}
	}
	if !strings.Contains(log, "rtsp://admin:xxxxx@127.0.0.1") || !strings.Contains(st, "rtsp://admin:xxxxx@127.0.0.1") ||
		!strings.Contains(log, "realmonitor?channel=1&user=xxxxx&password=xxxxx") || !strings.Contains(st, `realmonitor?channel=1\u0026user=xxxxx\u0026password=xxxxx`) {
		t.Errorf("the redacted source is not in the log or the status:\nlog:\n%s\nstatus:\n%s", tail(log, 20), st)
	}
	if !strings.Contains(log, "tcp://mqttuser:xxxxx@127.0.0.1") {
		t.Errorf("the redacted broker is not in the log:\n%s", tail(log, 20))
	}
	t.Logf("healthz: %s", hz)
	t.Logf("status: %s", status[len(status)-1])
}
