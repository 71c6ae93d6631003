package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/periocular/atm-agent/agent/daemon"
	"github.com/periocular/atm-agent/internal/cli"
)

func TestConfigCheckCommand(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	env := &cli.Env{Prog: "atm-agent", Stdout: &out, Stderr: &out}
	if err := configCommand().Exec(context.Background(), env, []string{"default"}); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "c.yaml")
	os.WriteFile(p, out.Bytes(), 0o600)
	out.Reset()
	if err := configCommand().Exec(context.Background(), env, []string{"check", p}); err != nil {
		t.Fatalf("config check of the default config: %v", err)
	}
	if !strings.Contains(out.String(), "ok") {
		t.Fatalf("output %q", out.String())
	}
}

func TestConfigErrors(t *testing.T) {
	base := string(daemon.DefaultYAML())
	// lineOf is the line of base that starts with prefix (the tests edit
	// the default file; its comments and order may change).
	lineOf := func(prefix string) string {
		for i, l := range strings.Split(base, "\n") {
			if strings.HasPrefix(l, prefix) {
				return fmt.Sprintf("line %d:", i+1)
			}
		}
		t.Fatalf("default.yaml has no line %q", prefix)
		return ""
	}
	// set replaces the value of the first key matching re (a regexp whose
	// group 1 ends just before the value) with v.
	set := func(re, v string) string {
		out := regexp.MustCompile(re).ReplaceAllString(base, "${1}"+v)
		if out == base {
			t.Fatalf("%s: no match in default.yaml", re)
		}
		return out
	}
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"misspelt key with line", strings.Replace(base, "  burst_frames: 5", "  burst_frame: 5", 1),
			[]string{lineOf("  burst_frames:"), "camera.burst_frame: unknown key (did you mean camera.burst_frames?)"}},
		{"unknown top-level key", base + "\nextra: 1\n", []string{"line", "extra"}},
		{"bad duration", set(`(?m)^(  retention: )\S+`, "30 days"), []string{lineOf("  retention:"), "30 days", "store.retention"}},
		{"no trigger", set(`(?m)^(  http:.*\n    enabled: )true`, "false"), []string{"no trigger enabled"}},
		{"metrics not loopback", strings.Replace(base, "listen: 127.0.0.1:9464", "listen: 0.0.0.0:9464", 1), []string{"loopback"}},
		{"value out of range with line", set(`(?m)^(  burst_frames: )\S+`, "500"), []string{lineOf("  burst_frames:") + " camera.burst_frames 500"}},
		{"identity value with line", set(`(?m)^(  confirm_visits: )\S+`, "0"), []string{lineOf("  confirm_visits:") + " identity.confirm_visits 0"}},
		{"bad rule", strings.Replace(base, "threshold: 5", "threshold: 1", 1), []string{"same-face-repeat", "threshold"}},
		{"mqtt enabled without broker", set(`(?m)^(mqtt:\n  enabled: )false`, "true"), []string{"broker"}},
		{"empty", "", []string{"empty"}},
		{"two documents", base + "\n---\ndevice: {id: x}\n", []string{"more than one"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := daemon.ParseConfig([]byte(tt.yaml))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestConfigOverridesAndFill(t *testing.T) {
	c, err := daemon.ParseConfig([]byte("device: {id: atm-7, site: north}\nmqtt: {enabled: true, brokers: [tcp://127.0.0.1:1883]}\n" +
		"alerts:\n  rules:\n    - {name: r1, kind: visits, threshold: 2, window: 10m}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.MQTT.Topic.Device != "atm-7" || c.MQTT.Topic.Site != "north" {
		t.Fatalf("mqtt topic not filled from device: %+v", c.MQTT.Topic)
	}
	if len(c.Alerts.Rules) != 1 || c.Alerts.Rules[0].Name != "r1" {
		t.Fatalf("rules %+v: want the file's rule only", c.Alerts.Rules)
	}
	if c.Camera.BurstFrames != 5 || c.Store.Path == "" {
		t.Fatal("defaults lost")
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add(daemon.DefaultYAML())
	f.Add([]byte("device: {id: a, site: b}\n"))
	f.Add([]byte("camera:\n  burst_frames: -1\n"))
	f.Add([]byte("alerts: {rules: []}\n"))
	f.Add([]byte("&a [*a]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := daemon.ParseConfig(b)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("ParseConfig accepted an invalid config: %v", err)
		}
	})
}

// `config check` without a file checks the installed config, like run and
// db (a fake install root; outside a checkout).
func TestConfigCheckDefaultsToInstalled(t *testing.T) {
	fake := t.TempDir()
	t.Setenv("ATM_AGENT_ROOT", fake)
	t.Chdir(t.TempDir())
	code, _, errs := runCLI(t, "config", "check")
	want := filepath.Join(fake, "etc/atm-agent/config.yaml")
	if code != 1 || !strings.Contains(errs, want) {
		t.Fatalf("no config installed: exit %d, %q; want 1 naming %s", code, errs, want)
	}
	if err := os.MkdirAll(filepath.Dir(want), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(want, daemon.DefaultYAML(), 0o640); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runCLI(t, "config", "check")
	if code != 0 || out != want+": ok\n" {
		t.Fatalf("exit %d, %q %q; want ok for %s", code, out, errs, want)
	}
	for _, h := range []string{"run", "db stats"} {
		_, help, _ := runCLI(t, append(strings.Fields(h), "--help")...)
		if !strings.Contains(help, want) {
			t.Errorf("%s --help: the default config is not %s:\n%s", h, want, help)
		}
	}
	if code, _, _ := runCLI(t, "config", "check", "a", "b"); code != 2 {
		t.Errorf("two files: exit %d, want 2", code)
	}
}

// store.key_file: credential:store-key (the packaged config): outside the
// unit the copy does not exist; config check reads the credential at its
// source, the file the unit's LoadCredential= loads (--credential, the
// unit's root ExecStartPre=; as root without it, the packaged unit's
// source), and refuses it when others may read it, naming the chmod.
// Before, a world-readable store.key passed and the unit started silently.
func TestConfigCheckCredentialSource(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	dir := t.TempDir()
	p := filepath.Join(dir, "c.yaml")
	os.WriteFile(p, []byte(strings.Replace(string(daemon.DefaultYAML()), `  key_file: ""          # encrypt`, `  key_file: credential:store-key # encrypt`, 1)), 0o600)
	src := filepath.Join(dir, "store.key")
	os.WriteFile(src, bytes.Repeat([]byte{7}, 32), 0o600)
	check := func(args ...string) (int, string) {
		code, out, errs := runCLI(t, append(append([]string{"config", "check"}, args...), p)...)
		return code, out + errs
	}
	if code, out := check("--credential", "store-key="+src); code != 0 || !strings.Contains(out, "store.key_file: "+src+" read at its source") {
		t.Fatalf("a 0600 source: exit %d, %q", code, out)
	}
	os.Chmod(src, 0o644)
	if code, out := check("--credential", "store-key="+src); code == 0 || !strings.Contains(out, "chmod o-rwx "+src) {
		t.Errorf("a 0644 source: exit %d, %q; want refused with the chmod", code, out)
	}
	if os.Geteuid() != 0 {
		return
	}
	saved := daemon.PackagedCredentials
	daemon.PackagedCredentials = map[string]string{"store-key": src}
	defer func() { daemon.PackagedCredentials = saved }()
	if code, out := check(); code == 0 || !strings.Contains(out, "chmod o-rwx "+src) {
		t.Errorf("root, no --credential, a 0644 packaged source: exit %d, %q; want refused", code, out)
	}
	os.Remove(src)
	if code, out := check(); code != 0 {
		t.Errorf("root, the packaged source missing: exit %d, %q; want 0 (not read)", code, out)
	}
}

// run exits 78 on a config it refuses (a bad value, with its line), which
// the unit's RestartPreventExitStatus= lists: not retried every 5 s.
func TestRunRefusedConfigExits78(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(p, []byte(strings.Replace(string(daemon.DefaultYAML()), "  burst_frames: 5", "  burst_frames: 500", 1)), 0o600)
	code, _, errs := runCLI(t, "run", "--config", p)
	if code != 78 || !strings.Contains(errs, "camera.burst_frames 500") || !strings.Contains(errs, "line ") {
		t.Errorf("run: exit %d, %q; want 78 and the value's line", code, errs)
	}
}
