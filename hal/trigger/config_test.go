package trigger

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestConfigsDecodeStrictYAML(t *testing.T) {
	var cfg struct {
		GPIO   GPIOConfig   `yaml:"gpio"`
		HTTP   HTTPConfig   `yaml:"http"`
		Replay ReplayConfig `yaml:"replay"`
	}
	src := `
gpio: {pin: GPIO17, edge: falling, active_low: true, pull: up, debounce: 25ms, wait_timeout: 200ms}
http: {socket: /run/atm-agent/trigger.sock, socket_mode: "0660", socket_group: atm, listen: "127.0.0.1:8787", token_file: /etc/atm-agent/token, max_body_bytes: 2048}
replay: {interval: 90s, count: 10, speed: 60}
`
	dec := yaml.NewDecoder(strings.NewReader(src))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.GPIO.Debounce != 25*time.Millisecond || !cfg.GPIO.ActiveLow || cfg.HTTP.SocketMode != "0660" || cfg.Replay.Interval != 90*time.Second {
		t.Fatalf("decoded %+v", cfg)
	}
	dec = yaml.NewDecoder(bytes.NewReader([]byte("gpio: {pin: GPIO17, debounse: 25ms}\n")))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("misspelt key: %v", err)
	}
}
