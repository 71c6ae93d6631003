package systemd

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestFleetUnitVerifies checks the fleet service's unit as TestUnitVerifies
// checks the agent's: systemd-analyze verify must print nothing.
func TestFleetUnitVerifies(t *testing.T) {
	tool, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (Debian package systemd)")
	}
	unit, err := os.ReadFile("atm-fleet.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ExecStart=/usr/bin/atm-fleet run --config /etc/atm-fleet/config.yaml",
		"ExecReload=/bin/true\nExecReload=+/usr/bin/atm-fleet users check --reload $MAINPID /etc/atm-fleet/users.yaml\n",
		"ExecStartPre=/usr/bin/atm-fleet config check /etc/atm-fleet/config.yaml", "DynamicUser=yes", "StateDirectory=atm-fleet", "RestartPreventExitStatus=78",
		"LoadCredential=users.yaml:/etc/atm-fleet/users.yaml", "LoadCredential=session.key:/etc/atm-fleet/session.key",
		"NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=\n", "SystemCallFilter=@system-service"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	check := func(body string) string {
		p := filepath.Join(t.TempDir(), "atm-fleet.service")
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		out, _ := exec.Command(tool, "verify", p).CombinedOutput()
		return strings.TrimSpace(string(out))
	}
	body := strings.ReplaceAll(string(unit), "/usr/bin/atm-fleet", self)
	if out := check(body); out != "" {
		t.Fatalf("systemd-analyze verify printed:\n%s", out)
	}
	if out := check(strings.Replace(body, "PrivateTmp=yes", "PrivateTmpp=yes", 1)); !strings.Contains(out, "PrivateTmpp") {
		t.Fatalf("a misspelt key went unnoticed (output %q)", out)
	}
}

// fleetUnitValues is every value of key in the fleet unit, in order;
// commented ones ("#   key=...") too when commented is set.
func fleetUnitValues(t *testing.T, key string, commented bool) []string {
	t.Helper()
	return unitValues(t, "atm-fleet.service", key, commented)
}

// unitValues are the values of key in the unit file (with commented, also
// in its comments).
func unitValues(t *testing.T, unit, key string, commented bool) []string {
	t.Helper()
	b, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if commented {
			l = strings.TrimLeft(strings.TrimPrefix(l, "#"), " ")
		}
		if v, ok := strings.CutPrefix(l, key+"="); ok {
			out = append(out, v)
		}
	}
	return out
}

// A failing start stops being retried: with RestartSec= between starts,
// StartLimitBurst= starts fit in StartLimitIntervalSec=, so the limit is
// reached (systemd's default, 5 in 10 s, never is at RestartSec=5s). It
// covers the ExecStartPre= checks, which RestartPreventExitStatus= does not.
func TestFleetUnitStartLimitReached(t *testing.T) { checkStartLimit(t, "atm-fleet.service") }

func checkStartLimit(t *testing.T, unit string) {
	dur := func(key string) time.Duration {
		v := unitValues(t, unit, key, false)
		if len(v) != 1 {
			t.Fatalf("%s: %q, want one value", key, v)
		}
		d, err := time.ParseDuration(strings.ReplaceAll(v[0], "min", "m"))
		if err != nil {
			t.Fatalf("%s=%s: %v", key, v[0], err)
		}
		return d
	}
	restart, interval := dur("RestartSec"), dur("StartLimitIntervalSec")
	burst, err := strconv.Atoi(strings.Join(unitValues(t, unit, "StartLimitBurst", false), ""))
	if err != nil {
		t.Fatalf("StartLimitBurst: %v", err)
	}
	if took := time.Duration(burst-1) * restart; took >= interval {
		t.Errorf("%d starts %v apart take %v, not within StartLimitIntervalSec=%v: the limit is never reached", burst, restart, took, interval)
	}
	if took := time.Duration(burst-1) * restart; took > 2*time.Minute {
		t.Errorf("a failing unit is retried for %v", took)
	}
}

// The service sees its credentials only as systemd's 0400 copies; a
// root ExecStartPre= checks their sources. It finds each one as
// /etc/atm-fleet/ID: every LoadCredential= of the unit (and of the drop-in
// lines its comments suggest) must load from there.
func TestFleetUnitChecksCredentialSources(t *testing.T) {
	pre := fleetUnitValues(t, "ExecStartPre", false)
	want := "+/usr/bin/atm-fleet config check --credentials-from /etc/atm-fleet /etc/atm-fleet/config.yaml"
	if len(pre) == 0 || pre[0] != want {
		t.Errorf("ExecStartPre= %q: the first should be %q", pre, want)
	}
	creds := fleetUnitValues(t, "LoadCredential", true)
	if len(creds) < 4 {
		t.Fatalf("LoadCredential= lines (commented included): %q", creds)
	}
	for _, c := range creds {
		id, src, _ := strings.Cut(c, ":")
		if src != "/etc/atm-fleet/"+id {
			t.Errorf("LoadCredential=%s: the source must be /etc/atm-fleet/%s (where the check looks)", c, id)
		}
	}
}
