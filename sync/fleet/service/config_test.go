package service

import (
	"regexp"
	"strings"
	"testing"
)

// A mistyped key or a bad value is told in the file's keys, with its line
// and the key meant, never in Go types (as the agent's config check).
func TestConfigErrorsInKeys(t *testing.T) {
	_, err := ParseConfig([]byte("mqtt:\n  batch_wiat: 1s\n  qos: 1\nretention:\n  history: 30 days\nweb: {listen: \"127.0.0.1:1\", user_file: /u}\n"))
	if err == nil {
		t.Fatal("bad config accepted")
	}
	msg := err.Error()
	for _, want := range []string{
		"line 2: mqtt.batch_wiat: unknown key (did you mean mqtt.batch_wait?)",
		"line 3: mqtt.qos: unknown key (mqtt has: batch, batch_wait, brokers,",
		`line 5: retention.history: "30 days" is not a duration (e.g. 500ms, 30s, 5m, 1h)`,
		"line 6: web.user_file: unknown key (did you mean web.users_file?)",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if m := regexp.MustCompile(`\b(\w+\.Config|time\.Duration|!!str)\b|not found in type`).FindString(msg); m != "" {
		t.Errorf("error names a Go type (%s):\n%s", m, msg)
	}
}
