package mqttsync

import (
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/wire"
)

// Keys of Home Assistant's MQTT sensor / binary_sensor discovery payloads
// used here (full names; https://www.home-assistant.io/integrations/mqtt/,
// sensor.mqtt, binary_sensor.mqtt) and of its device block.
var (
	haEntityKeys = []string{"name", "unique_id", "object_id", "state_topic", "value_template", "json_attributes_topic",
		"json_attributes_template", "device_class", "state_class", "unit_of_measurement", "entity_category", "icon",
		"payload_on", "payload_off", "availability_topic", "availability_template", "payload_available",
		"payload_not_available", "qos", "device", "origin"}
	haDeviceKeys   = []string{"identifiers", "name", "manufacturer", "model", "sw_version", "suggested_area"}
	haDeviceClass  = map[string][]string{"binary_sensor": {"connectivity", "problem"}, "sensor": {"timestamp"}}
	haDiscoveryTop = regexp.MustCompile(`^homeassistant/(sensor|binary_sensor)/([a-zA-Z0-9_-]+)/([a-zA-Z0-9_-]+)/config$`)
	valueJSONPath  = regexp.MustCompile(`value_json((?:\.[a-z_0-9]+)+)`)
)

// checkDiscovery checks the discovery messages against the format Home
// Assistant reads, and every value_json path against the state example.
func checkDiscovery(t *testing.T, cfg Config, msgs []DiscoveryMessage) {
	t.Helper()
	topics, _ := cfg.Topics()
	var state map[string]any
	ex, err := wire.Schemas.ReadFile("schemas/examples/state.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(ex, &state); err != nil {
		t.Fatal(err)
	}
	uids := map[string]bool{}
	for _, m := range msgs {
		mt := haDiscoveryTop.FindStringSubmatch(m.Topic)
		if mt == nil {
			t.Errorf("topic %q is not <prefix>/<component>/<node_id>/<object_id>/config", m.Topic)
			continue
		}
		var e map[string]any
		if err := json.Unmarshal(m.Payload, &e); err != nil {
			t.Fatalf("%s: %v", m.Topic, err)
		}
		for k := range e {
			if !slices.Contains(haEntityKeys, k) {
				t.Errorf("%s: key %q is not a discovery key", m.Topic, k)
			}
		}
		for _, k := range []string{"name", "unique_id", "state_topic", "value_template", "device", "availability_topic"} {
			if _, ok := e[k]; !ok {
				t.Errorf("%s: no %q", m.Topic, k)
			}
		}
		uid, _ := e["unique_id"].(string)
		if uid == "" || uids[uid] {
			t.Errorf("%s: unique_id %q empty or repeated", m.Topic, uid)
		}
		uids[uid] = true
		if e["state_topic"] != topics.State() {
			t.Errorf("%s: state_topic %v", m.Topic, e["state_topic"])
		}
		// Availability is the status topic, which carries the Last Will:
		// the LWT's "offline" maps to payload_not_available.
		if e["availability_topic"] != topics.Status() || e["payload_available"] != "online" || e["payload_not_available"] != "offline" {
			t.Errorf("%s: availability %v %v/%v, want %s online/offline", m.Topic, e["availability_topic"], e["payload_available"], e["payload_not_available"], topics.Status())
		}
		dev, _ := e["device"].(map[string]any)
		ids, _ := dev["identifiers"].([]any)
		if len(ids) == 0 || dev["name"] == "" {
			t.Errorf("%s: device block %v lacks identifiers or name", m.Topic, dev)
		}
		for k := range dev {
			if !slices.Contains(haDeviceKeys, k) {
				t.Errorf("%s: device key %q", m.Topic, k)
			}
		}
		if ids[0] != mt[2] {
			t.Errorf("%s: node id %s differs from the device identifier %v", m.Topic, mt[2], ids[0])
		}
		if dc, ok := e["device_class"].(string); ok && !slices.Contains(haDeviceClass[mt[1]], dc) {
			t.Errorf("%s: device_class %q not valid for %s", m.Topic, dc, mt[1])
		}
		if mt[1] == "binary_sensor" && (e["payload_on"] != "ON" || e["payload_off"] != "OFF") {
			t.Errorf("%s: payload_on/off", m.Topic)
		}
		// Every field a template reads exists in the state payload.
		for _, k := range []string{"value_template", "json_attributes_template", "availability_template"} {
			tmpl, _ := e[k].(string)
			if strings.Count(tmpl, "{{") != strings.Count(tmpl, "}}") {
				t.Errorf("%s: %s unbalanced: %s", m.Topic, k, tmpl)
			}
			for _, p := range valueJSONPath.FindAllStringSubmatch(tmpl, -1) {
				var v any = state
				for _, part := range strings.Split(strings.TrimPrefix(p[1], "."), ".") {
					obj, ok := v.(map[string]any)
					if !ok {
						t.Errorf("%s: %s reads %s: %q is not an object in the state example", m.Topic, k, p[0], part)
						break
					}
					if v, ok = obj[part]; !ok {
						t.Errorf("%s: %s reads %s: no %q in the state example", m.Topic, k, p[0], part)
						break
					}
				}
			}
		}
	}
	for _, want := range []string{"camera", "problem", "visits_24h", "identities", "last_alert", "outbox"} {
		if !uids[haNodeID(topics.Site, topics.Device)+"_"+want] {
			t.Errorf("no %s entity", want)
		}
	}
}

// TestHomeAssistantMeasurementsKeepValue: a state without the field a
// measurement reads (the first states after the agent starts carry no
// summary until its first one, up to summary_interval; the offline will
// carries no status fields) must not set the sensor to 0. Before, the
// Visits (24 h) template said "else 0": its history dropped to 0 at every
// restart of the agent. Each measurement now keeps the value shown (its
// own state, "this.state", when a number) or is unknown (None).
func TestHomeAssistantMeasurementsKeepValue(t *testing.T) {
	cfg := testConfig("tcp://127.0.0.1:1883")
	cfg.HomeAssistant.Enabled = true
	msgs, err := cfg.Discovery("1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, m := range msgs {
		var e struct {
			StateClass    string `json:"state_class"`
			ValueTemplate string `json:"value_template"`
		}
		if err := json.Unmarshal(m.Payload, &e); err != nil {
			t.Fatal(err)
		}
		if e.StateClass != "measurement" {
			continue
		}
		n++
		if !strings.HasSuffix(e.ValueTemplate, " is defined else (this.state if this.state | is_number else None) }}") ||
			strings.Contains(e.ValueTemplate, "default(0)") || strings.Contains(e.ValueTemplate, "else 0") {
			t.Errorf("%s: value_template %s does not keep the value shown when the state lacks its field", m.Topic, e.ValueTemplate)
		}
	}
	if n != 3 {
		t.Fatalf("%d measurement sensors, want 3 (visits, identities, outbox)", n)
	}
}

func TestHomeAssistantDiscoveryFormat(t *testing.T) {
	cfg := testConfig("tcp://127.0.0.1:1883")
	cfg.Topic.Site = "lyon.07"
	cfg.HomeAssistant.Enabled = true
	msgs, err := cfg.Discovery("1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 6 {
		t.Fatalf("%d discovery messages", len(msgs))
	}
	checkDiscovery(t, cfg, msgs)
	if !strings.Contains(msgs[0].Topic, "/atm_lyon_07_atm-1/") {
		t.Errorf("node id not sanitised: %s", msgs[0].Topic)
	}
	cfg.HomeAssistant.DiscoveryPrefix = "home/+"
	if err := cfg.Validate(); err == nil {
		t.Error("wildcard discovery prefix accepted")
	}
}

// The discovery configs reach a broker retained, with the availability
// topic retained beside them, only when enabled.
func TestMosquittoHomeAssistantDiscovery(t *testing.T) {
	skipShort(t)
	m := newMosquitto(t, "")
	for _, enabled := range []bool{false, true} {
		cfg := testConfig(m.url("tcp"))
		cfg.HomeAssistant.Enabled = enabled
		cfg.Topic.Device = map[bool]string{false: "atm-off", true: "atm-on"}[enabled]
		_, cancel, done := runPublisher(t, cfg, Deps{Outbox: &memOutbox{}, Version: "1.2.3",
			Status: func() wire.Status { return wire.Status{AgentVersion: "1.2.3", Health: wire.HealthOK} }})
		time.Sleep(500 * time.Millisecond)
		col := newCollector(t, m.url("tcp"), "ha-"+cfg.Topic.Device, "homeassistant/#", false, nil)
		var got []DiscoveryMessage
		if enabled {
			waitFor(t, 3*time.Second, "6 retained discovery configs", func() bool { return len(col.snapshot()) >= 6 })
		} else {
			time.Sleep(500 * time.Millisecond)
		}
		for _, r := range col.snapshot() {
			if !r.Retained {
				t.Errorf("%s not retained", r.Topic)
			}
			if strings.Contains(r.Topic, "atm-on") != enabled {
				t.Errorf("discovery from the wrong publisher: %s", r.Topic)
			}
			got = append(got, DiscoveryMessage{r.Topic, r.Payload})
		}
		if enabled {
			checkDiscovery(t, cfg, got)
		} else if len(got) != 0 {
			t.Errorf("discovery disabled but %d configs published", len(got))
		}
		cancel()
		<-done
		done <- nil
	}
}
