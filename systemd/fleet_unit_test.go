package systemd

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
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
		"ExecStartPre=/usr/bin/atm-fleet config check", "DynamicUser=yes", "StateDirectory=atm-fleet", "RestartPreventExitStatus=78",
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
