package daemon

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/wire"
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

// `config check` (CheckFiles) refuses what run would refuse at start: the
// trigger's token file and socket group, a socket path too long for a unix
// socket, a store path that is not a file, a models dir without a manifest,
// the MQTT password file, CA bundle and client certificate, and every
// secret file (token, password, private key) that others may read; one the
// group may read passes.
func TestCheckFilesRefusesWhatRunRefuses(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short.token")
	os.WriteFile(short, []byte("0123456789"), 0o600)
	good := filepath.Join(dir, "good.token")
	os.WriteFile(good, []byte("0123456789abcdef0123"), 0o600)
	group := filepath.Join(dir, "group.token")
	os.WriteFile(group, []byte("0123456789abcdef0123"), 0o600)
	os.Chmod(group, 0o640)
	open := filepath.Join(dir, "open.token") // any local user can read it
	os.WriteFile(open, []byte("0123456789abcdef0123"), 0o600)
	os.Chmod(open, 0o644)
	const others = "mode 0644 lets every local user read or change it: chmod o-rwx"
	base := "device: {id: a, site: b}\nmodels: {dir: " + dir + "/nomodels}\nstore: {path: " + dir + "/agent.db}\n"
	http := func(s string) string {
		return "trigger:\n  http:\n    enabled: true\n    socket: " + dir + "/t.sock\n" + s
	}
	mqtt := func(s string) string {
		return "mqtt:\n  enabled: true\n  brokers: [ssl://mqtt.example.net:8883]\n" + s
	}
	for _, tc := range []struct{ name, yaml, want string }{
		{"good", base + http("    listen: 127.0.0.1:0\n    token_file: "+good+"\n"), ""},
		{"short token", base + http("    listen: 127.0.0.1:0\n    token_file: "+short+"\n"), "shorter than 16"},
		{"token file a directory", base + http("    listen: 127.0.0.1:0\n    token_file: "+dir+"\n"), "token"},
		{"no such group", base + http("    socket_group: nosuchgroup-atm\n"), "socket_group"},
		{"socket path too long", base + "trigger:\n  http:\n    enabled: true\n    socket: /run/" + strings.Repeat("s", 120) + "\n", "107"},
		// 100 bytes fit a socket, but the private folder it is bound in
		// first does not: run refuses it, so the check does too.
		{"socket folder too deep", base + "trigger:\n  http:\n    enabled: true\n    socket: /run/" + strings.Repeat("d", 88) + "/t.sock\n", "too deep"},
		// What run's Listen refuses on this machine (before, config check
		// said ok and run exited 1, restarted by systemd every 5 s).
		{"socket path a directory", base + "trigger:\n  http:\n    enabled: true\n    socket: " + dir + "\n", "exists and is not a socket but a directory"},
		{"socket path a regular file", base + "trigger:\n  http:\n    enabled: true\n    socket: " + good + "\n", "exists and is not a socket but a regular file"},
		{"socket folder missing", base + "trigger:\n  http:\n    enabled: true\n    socket: " + dir + "/nodir/t.sock\n", "does not exist"},
		// systemd creates /run/atm-agent before ExecStartPre and removes it
		// at stop: the packaged path passes a check by hand.
		{"socket in the unit's runtime folder", base + "trigger:\n  http:\n    enabled: true\n    socket: /run/atm-agent/trigger.sock\n", ""},
		{"store path a directory", "device: {id: a, site: b}\nmodels: {dir: " + dir + "/nomodels}\nstore: {path: " + dir + "}\n", "not a regular file"},
		{"models dir a file", "device: {id: a, site: b}\nmodels: {dir: " + good + "}\nstore: {path: " + dir + "/agent.db}\n", "models.dir"},
		// The MQTT publisher reads these at start and run exits without them.
		{"mqtt password file missing", base + mqtt("  username: u\n  password_file: "+dir+"/no.pw\n"), "password_file"},
		{"mqtt password file present", base + mqtt("  username: u\n  password_file: "+good+"\n"), ""},
		{"mqtt ca file missing", base + mqtt("  tls: {ca_file: "+dir+"/no-ca.pem}\n"), "ca_file"},
		{"mqtt ca file not PEM", base + mqtt("  tls: {ca_file: "+good+"}\n"), "no PEM certificate"},
		{"mqtt client certificate missing", base + mqtt("  tls: {cert_file: "+dir+"/no.crt, key_file: "+dir+"/no.key}\n"), "client certificate"},
		// Secrets others can read are refused, as the store key is.
		{"token file others can read", base + http("    listen: 127.0.0.1:0\n    token_file: "+open+"\n"), others},
		{"token file the group can read", base + http("    listen: 127.0.0.1:0\n    token_file: "+group+"\n"), ""},
		{"mqtt password file others can read", base + mqtt("  username: u\n  password_file: "+open+"\n"), "mqtt.password_file: " + open + ": " + others},
		{"mqtt password file the group can read", base + mqtt("  username: u\n  password_file: "+group+"\n"), ""},
		{"mqtt tls key others can read", base + mqtt("  tls: {cert_file: "+dir+"/no.crt, key_file: "+open+"}\n"), "mqtt.tls.key_file: " + open + ": " + others},
		{"metrics token others can read", base + "metrics: {listen: 127.0.0.1:0, token_file: " + open + "}\n", "metrics.token_file: read token: " + open + ": " + others},
		{"metrics token the group can read", base + "metrics: {listen: 127.0.0.1:0, token_file: " + group + "}\n", ""},
		{"metrics tls key others can read", base + "metrics: {listen: 127.0.0.1:0, tls: {cert_file: " + dir + "/no.crt, key_file: " + open + "}}\n", "metrics.tls.key_file: " + open + ": " + others},
		{"store key others can read", "device: {id: a, site: b}\nmodels: {dir: " + dir + "/nomodels}\nstore: {path: " + dir + "/agent.db, key_file: " + open + "}\n", others},
		{"mqtt files not read when off", base + "mqtt:\n  enabled: false\n  username: u\n  password_file: " + dir + "/no.pw\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			err = c.CheckFiles()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("CheckFiles: %v, want %q", err, tc.want)
			}
		})
	}
}

// A rule window longer than store.retention counts less than it says:
// config check (Warnings) tells it.
func TestRuleWindowBeyondRetentionWarns(t *testing.T) {
	c := DefaultConfig()
	c.Store.KeyFile = "credential:store-key"
	if w := c.Warnings(); len(w) != 0 {
		t.Fatalf("defaults with a key warn: %q", w)
	}
	c.Store.KeyFile = ""
	if w := strings.Join(c.Warnings(), "\n"); !strings.Contains(w, "store.key_file is not set: face templates are kept unencrypted") {
		t.Errorf("no key, warnings %q: want the unencrypted templates named", w)
	}
	c.Alerts.Rules[1].Window = 60 * 24 * time.Hour
	if w := strings.Join(c.Warnings(), "\n"); !strings.Contains(w, `alerts: rule "multiple-cards": window 60d is longer than store.retention 30d`) {
		t.Errorf("warnings %q", w)
	}
}

// TestConfigErrorsOnceWithLines: a bad device.id is reported once (before,
// a second time as the MQTT topic's: "mqtt config: topic: invalid topic:
// device ..."), the other MQTT settings are still checked, and an alert
// rule's problem names the line of its key, as decode errors do (before,
// no line).
func TestConfigErrorsOnceWithLines(t *testing.T) {
	yml := `device: {id: "atm/0001", site: b}
models: {dir: /m}
trigger: {http: {enabled: true}}
mqtt:
  enabled: true
  brokers: [tcp://127.0.0.1:1883]
  password_file: /p
alerts:
  rules:
    - name: repeat
      kind: visits
      threshold: 1
      window: 1h
    - name: cards
      kind: cardz
      threshold: 3
      window: 24h
`
	_, err := ParseConfig([]byte(yml))
	if err == nil {
		t.Fatal("accepted")
	}
	msg := err.Error()
	t.Log(msg)
	if n := strings.Count(msg, "atm/0001"); n != 1 || strings.Contains(msg, "mqtt config: topic") {
		t.Errorf("the bad device.id is reported %d times (want once, as device.id):\n%s", n, msg)
	}
	for _, want := range []string{
		"password_file without username",
		`line 12: alert rule "repeat": threshold must be at least 2 (got 1)`,
		`line 15: alert rule "cards": unknown kind "cardz"`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing %q in:\n%s", want, msg)
		}
	}
}

// TestDefaultConfigNamesEveryCommand: the default config's comment on
// mqtt.commands.enabled names every command the agent accepts (before, it
// named three of six).
func TestDefaultConfigNamesEveryCommand(t *testing.T) {
	var line string
	for l := range strings.Lines(string(defaultYAML)) {
		if strings.HasPrefix(strings.TrimSpace(l), "enabled:") && strings.Contains(l, "signed only") {
			line = l
		}
	}
	if line == "" {
		t.Fatal("no mqtt.commands.enabled line in default.yaml")
	}
	for _, c := range []wire.CommandName{wire.CmdPing, wire.CmdPublishSummary, wire.CmdPurgeIdentity,
		wire.CmdIdentityVisits, wire.CmdSplitVisits, wire.CmdMergeIdentities} {
		if !strings.Contains(line, string(c)) {
			t.Errorf("the comment %q does not name %s", strings.TrimSpace(line), c)
		}
	}
}
