package mqttsync

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"

	"github.com/periocular/atm-agent/sync/wire"
)

// HomeAssistantConfig enables Home Assistant MQTT discovery: on every
// connect the publisher sends one retained discovery message per entity to
// <discovery_prefix>/<component>/<node>/<object>/config. Off by default.
type HomeAssistantConfig struct {
	Enabled         bool   `yaml:"enabled"`
	DiscoveryPrefix string `yaml:"discovery_prefix"`
}

// DiscoveryMessage is one retained discovery config.
type DiscoveryMessage struct {
	Topic   string
	Payload []byte
}

// haDevice is the discovery "device" block shared by every entity.
type haDevice struct {
	Identifiers   []string `json:"identifiers"`
	Name          string   `json:"name"`
	Manufacturer  string   `json:"manufacturer"`
	Model         string   `json:"model"`
	SWVersion     string   `json:"sw_version,omitempty"`
	SuggestedArea string   `json:"suggested_area,omitempty"`
}

// haEntity is the discovery payload of one sensor or binary_sensor
// (https://www.home-assistant.io/integrations/sensor.mqtt/, full key
// names, no abbreviations).
type haEntity struct {
	Name                   string   `json:"name"`
	UniqueID               string   `json:"unique_id"`
	ObjectID               string   `json:"object_id"`
	StateTopic             string   `json:"state_topic"`
	ValueTemplate          string   `json:"value_template"`
	JSONAttributesTopic    string   `json:"json_attributes_topic,omitempty"`
	JSONAttributesTemplate string   `json:"json_attributes_template,omitempty"`
	DeviceClass            string   `json:"device_class,omitempty"`
	StateClass             string   `json:"state_class,omitempty"`
	UnitOfMeasurement      string   `json:"unit_of_measurement,omitempty"`
	EntityCategory         string   `json:"entity_category,omitempty"`
	Icon                   string   `json:"icon,omitempty"`
	PayloadOn              string   `json:"payload_on,omitempty"`
	PayloadOff             string   `json:"payload_off,omitempty"`
	AvailabilityTopic      string   `json:"availability_topic"`
	AvailabilityTemplate   string   `json:"availability_template"`
	PayloadAvailable       string   `json:"payload_available"`
	PayloadNotAvailable    string   `json:"payload_not_available"`
	QoS                    int      `json:"qos"`
	Device                 haDevice `json:"device"`
	Origin                 haOrigin `json:"origin"`
}

type haOrigin struct {
	Name      string `json:"name"`
	SWVersion string `json:"sw_version,omitempty"`
}

var haIDChars = regexp.MustCompile(`[^a-zA-Z0-9_-]`)

// haKeep is the value template of a measurement read at path from the
// state, present when the object at have is: else the entity's own state
// (Home Assistant's "this") while it is a number, else None (unknown).
// A state without the field (the first ones after the agent starts, before
// its first summary; the offline will, without the status's fields) then
// keeps the value shown instead of recording a drop to 0.
func haKeep(path, have string) string {
	return "{{ " + path + " if " + have + haKeepFallback
}

// haKeepFallback ends every haKeep template.
const haKeepFallback = " is defined else (this.state if this.state | is_number else None) }}"

// haNodeID turns site and device into a discovery node id ([a-zA-Z0-9_-]).
func haNodeID(site, device string) string {
	return haIDChars.ReplaceAllString("atm_"+site+"_"+device, "_")
}

// Discovery returns the retained discovery messages of this device: its
// availability (the status topic, which carries the Last Will), camera
// health, agent health, visits in the last 24 h, identities held, the
// last alert and the outbox backlog, all read from the retained state
// topic. version is the agent version shown on the device.
func (c Config) Discovery(version string) ([]DiscoveryMessage, error) {
	t, err := c.Topics()
	if err != nil {
		return nil, err
	}
	prefix := c.HomeAssistant.DiscoveryPrefix
	if prefix == "" {
		prefix = "homeassistant"
	}
	node := haNodeID(t.Site, t.Device)
	dev := haDevice{Identifiers: []string{node}, Name: "ATM " + t.Device + " (" + t.Site + ")",
		Manufacturer: "periocular", Model: "atm-agent", SWVersion: version, SuggestedArea: t.Site}
	base := haEntity{StateTopic: t.State(), AvailabilityTopic: t.Status(),
		AvailabilityTemplate: "{{ 'online' if value_json.state == 'online' else 'offline' }}",
		PayloadAvailable:     string(wire.StateOnline), PayloadNotAvailable: string(wire.StateOffline), QoS: 1,
		Device: dev, Origin: haOrigin{Name: "atm-agent", SWVersion: version}}
	type ent struct {
		component, object string
		f                 func(e *haEntity)
	}
	ents := []ent{
		{"binary_sensor", "camera", func(e *haEntity) {
			e.Name, e.DeviceClass, e.PayloadOn, e.PayloadOff = "Camera", "connectivity", "ON", "OFF"
			e.ValueTemplate = "{{ 'ON' if (value_json.cameras | default([]) | selectattr('ok') | list | length) == (value_json.cameras | default([]) | length) and (value_json.cameras | default([]) | length) > 0 else 'OFF' }}"
			e.JSONAttributesTopic = t.State()
			e.JSONAttributesTemplate = "{{ {'cameras': value_json.cameras | default([])} | tojson }}"
		}},
		{"binary_sensor", "problem", func(e *haEntity) {
			e.Name, e.DeviceClass, e.PayloadOn, e.PayloadOff, e.EntityCategory = "Health", "problem", "ON", "OFF", "diagnostic"
			e.ValueTemplate = "{{ 'ON' if value_json.health == 'degraded' else 'OFF' }}"
			e.JSONAttributesTopic = t.State()
			e.JSONAttributesTemplate = "{{ {'reasons': value_json.reasons | default([])} | tojson }}"
		}},
		{"sensor", "visits_24h", func(e *haEntity) {
			e.Name, e.StateClass, e.UnitOfMeasurement, e.Icon = "Visits (24 h)", "measurement", "visits", "mdi:account-multiple"
			e.ValueTemplate = haKeep("value_json.summary.totals.visits.h24", "value_json.summary")
		}},
		{"sensor", "identities", func(e *haEntity) {
			e.Name, e.StateClass, e.UnitOfMeasurement, e.Icon = "Identities", "measurement", "identities", "mdi:account-question"
			e.ValueTemplate = haKeep("value_json.identities", "value_json.identities")
		}},
		{"sensor", "last_alert", func(e *haEntity) {
			e.Name, e.DeviceClass, e.Icon = "Last alert", "timestamp", "mdi:alert"
			e.ValueTemplate = "{{ value_json.last_alert.raised if value_json.last_alert is defined else None }}"
			e.JSONAttributesTopic = t.State()
			e.JSONAttributesTemplate = "{{ value_json.last_alert | default({}) | tojson }}"
		}},
		{"sensor", "outbox", func(e *haEntity) {
			e.Name, e.StateClass, e.UnitOfMeasurement, e.EntityCategory, e.Icon = "Outbox backlog", "measurement", "messages", "diagnostic", "mdi:tray-full"
			e.ValueTemplate = haKeep("value_json.outbox.depth", "value_json.outbox")
		}},
	}
	out := make([]DiscoveryMessage, 0, len(ents))
	for _, x := range ents {
		e := base
		e.UniqueID = node + "_" + x.object
		e.ObjectID = e.UniqueID
		x.f(&e)
		b, err := json.Marshal(e)
		if err != nil {
			return nil, fmt.Errorf("home assistant discovery %s: %w", x.object, err)
		}
		out = append(out, DiscoveryMessage{Topic: strings.Join([]string{prefix, x.component, node, x.object, "config"}, "/"), Payload: b})
	}
	return out, nil
}
