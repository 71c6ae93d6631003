// Package systemd holds the agent's unit file; this test verifies it.
package systemd

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestUnitVerifies runs systemd-analyze verify on the unit and treats ANY
// output as a failure (unknown keys only warn). The ExecStart binary must
// exist for verify, so the test points it at an executable it has.
func TestUnitVerifies(t *testing.T) {
	tool, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (Debian package systemd)")
	}
	unit, err := os.ReadFile("atm-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=atm-agent",
		"NoNewPrivileges=yes", "ProtectSystem=strict", "DevicePolicy=closed", "DeviceAllow=char-video4linux",
		"DeviceAllow=char-gpiochip", "CapabilityBoundingSet=\n", "SystemCallFilter=@system-service", "User=atm-agent", "LimitCORE=0", "UMask=0077", "CPUWeight=20", "IOWeight=20", "OOMScoreAdjust=500", "After=network-online.target time-sync.target",
		// The ATM application's user must pass through /run/atm-agent to the
		// trigger socket (its own mode and group decide), and the agent must
		// be allowed to give the socket its trigger.http.socket_group.
		"RuntimeDirectory=atm-agent\n", "RuntimeDirectoryMode=0751\n", "SystemCallFilter=fchownat\n"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, body []byte) string {
		p := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(p, body, 0o644); err != nil {
			t.Fatal(err)
		}
		out, _ := exec.Command(tool, "verify", p).CombinedOutput()
		return strings.TrimSpace(string(out))
	}
	body := []byte(strings.ReplaceAll(string(unit), "/usr/bin/atm-agent", self))
	if out := check("atm-agent.service", body); out != "" {
		t.Fatalf("systemd-analyze verify printed:\n%s", out)
	}
	// The check itself must be able to fail.
	bad := []byte(strings.Replace(string(body), "PrivateTmp=yes", "PrivateTmpp=yes", 1))
	if out := check("atm-agent.service", bad); !strings.Contains(out, "PrivateTmpp") {
		t.Fatalf("a misspelt key went unnoticed (output %q)", out)
	}
}

// A refused config stops the retries: run exits 78 on it, which
// RestartPreventExitStatus= lists (with 65, a damaged store), and the
// ExecStartPre= checks, which that setting does not cover, reach the start
// limit. A watchdog restart (a hung camera) takes WatchdogSec= plus
// RestartSec= at least, too slow to reach it.
func TestAgentUnitStopsRetryingARefusedConfig(t *testing.T) {
	checkStartLimit(t, "atm-agent.service")
	prevent := strings.Fields(strings.Join(unitValues(t, "atm-agent.service", "RestartPreventExitStatus", false), " "))
	for _, want := range []string{"65", "78"} {
		if !slices.Contains(prevent, want) {
			t.Errorf("RestartPreventExitStatus= %q lacks %s", prevent, want)
		}
	}
	if v := unitValues(t, "atm-agent.service", "ConfigurationDirectoryMode", false); len(v) != 1 || v[0] != "0750" {
		t.Errorf("ConfigurationDirectoryMode= %q, want 0750 (postinst's mode of /etc/atm-agent; else systemd warns at every start)", v)
	}
}

// The agent sees the store key only as systemd's 0400 copy: the first
// ExecStartPre=, as root, checks the source each LoadCredential= line
// loads (a store.key others may read stops the start).
func TestAgentUnitChecksCredentialSources(t *testing.T) {
	pre := unitValues(t, "atm-agent.service", "ExecStartPre", false)
	creds := unitValues(t, "atm-agent.service", "LoadCredential", false)
	want := "+/usr/bin/atm-agent config check"
	for _, c := range creds {
		id, src, _ := strings.Cut(c, ":")
		want += " --credential " + id + "=" + src
	}
	want += " /etc/atm-agent/config.yaml"
	if len(creds) == 0 || len(pre) != 2 || pre[0] != want || strings.HasPrefix(pre[1], "+") {
		t.Errorf("ExecStartPre= %q: want %q first, then the check as the agent's user", pre, want)
	}
}
