package daemon

import (
	"reflect"
	"testing"
)

func TestDefaultConfigFileMatchesDefaults(t *testing.T) {
	c, err := ParseConfig(defaultYAML)
	if err != nil {
		t.Fatalf("default config does not pass its own check: %v", err)
	}
	want := DefaultConfig()
	want.fill()
	if len(c.MQTT.Brokers) == 0 {
		c.MQTT.Brokers = nil
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("default.yaml and DefaultConfig differ:\n file %+v\n code %+v", c, want)
	}
}
