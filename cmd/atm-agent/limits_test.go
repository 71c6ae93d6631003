package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/periocular/atm-agent/agent/daemon"
	"github.com/periocular/atm-agent/internal/cli"
)

// Values that passed `config check` and then broke the agent (issue 13):
// each is refused, naming its setting.
func TestConfigLimits(t *testing.T) {
	base := string(daemon.DefaultYAML())
	replay := func(speed string) string {
		i := strings.Index(base, "  replay:")
		j := i + strings.Index(base[i:], "\n\n")
		return base[:i] + "  replay:\n    enabled: true\n    interval: 1s\n    speed: " + speed + base[j:]
	}
	rule := func(field, from, to string) string {
		return strings.Replace(base, field+": "+from, field+": "+to, 1)
	}
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"min_score NaN", rule("min_score", "0.3", ".nan"), "min_score NaN"},
		{"min_score Inf", rule("min_score", "0.3", ".inf"), "min_score +Inf"},
		{"min_face_px NaN", rule("min_face_px", "40", ".nan"), "min_face_px"},
		{"max_yaw Inf", rule("max_yaw", "0.6", ".inf"), "max_yaw"},
		{"new_identity_quality NaN", rule("new_identity_quality", "0.5", ".nan"), "new_identity_quality"},
		{"pad_tight NaN", rule("pad_tight", "2", ".nan"), "pad_tight"},
		{"vision threads huge", rule("threads", "2", "100000"), "threads"},
		{"replay speed NaN", replay(".nan"), "speed"},
		{"replay speed Inf", replay(".inf"), "speed"},
		{"burst_duration 2562047h", rule("burst_duration", "500ms", "2562047h"), "burst_duration"},
		{"read_timeout a year", strings.Replace(base, "read_timeout: 2s", "read_timeout: 8760h", 1), "read_timeout"},
		{"camera fps NaN", strings.Replace(base, "  fps: 0", "  fps: .nan", 1), "fps"},
		{"identity workers 100000000", rule("workers", "0", "100000000"), "identity.workers 100000000"},
		{"confirm_visits int64 max", rule("confirm_visits", "2", "9223372036854775807"), "confirm_visits"},
		{"rule threshold int64 max", rule("threshold", "5", "9223372036854775807"), "threshold 9223372036854775807"},
		{"rule window 2562047h", strings.Replace(base, "window: 1h", "window: 2562047h", 1), "window"},
		{"retention 2562047h", strings.Replace(base, "retention: 30d", "retention: 2562047h", 1), "store.retention"},
		{"burst longer than the visit", strings.Replace(rule("burst_duration", "500ms", "5s"), "visit_timeout: 10s", "visit_timeout: 2s", 1), "burst_duration 5s is not below agent.visit_timeout 2s"},
		{"visit_timeout 2562047h", strings.Replace(base, "visit_timeout: 10s", "visit_timeout: 2562047h", 1), "visit_timeout"},
		{"outbox max_messages int64 max", strings.Replace(base, "alert_cap_messages: ", "alert_cap_messages: 9223372036854775807 #", 1), "store.outbox"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.yaml == base {
				t.Fatal("the replacement did not apply: default.yaml changed")
			}
			_, err := daemon.ParseConfig([]byte(tc.yaml))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

// config check reads the store key: missing, short and valid files.
func TestConfigCheckKeyFile(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short.key")
	os.WriteFile(short, []byte("0123456789abcdef"), 0o600)
	good := filepath.Join(dir, "good.key")
	os.WriteFile(good, bytes.Repeat([]byte{7}, 32), 0o600)
	for _, tc := range []struct {
		name, key, want string
	}{
		{"missing", filepath.Join(dir, "nope.key"), "no such file"},
		{"short", short, "want 32 raw bytes or 64 hex characters, got 16 bytes"},
		{"good", good, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name+".yaml")
			os.WriteFile(p, bytes.Replace(daemon.DefaultYAML(), []byte(`  key_file: ""          # encrypt`), []byte(`  key_file: "`+tc.key+`" # encrypt`), 1), 0o600)
			var out bytes.Buffer
			err := configCommand().Exec(context.Background(), &cli.Env{Prog: "atm-agent", Stdout: &out, Stderr: &out}, []string{"check", p})
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused a good key: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "store.key_file")):
				t.Fatalf("error %v; want store.key_file and %q", err, tc.want)
			}
		})
	}
}
