package secretfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A credential copy (systemd's LoadCredential=, rewritten at each start)
// is not the file to fix: the messages name its source in the unit's
// configuration directory.
func TestMessagesNameTheCredentialSource(t *testing.T) {
	creds, conf := t.TempDir(), t.TempDir()
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	t.Setenv("CONFIGURATION_DIRECTORY", conf)
	copyPath := filepath.Join(creds, "session.key")
	if err := os.WriteFile(copyPath, []byte("k"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(copyPath, 0o644)
	if got, want := Source(copyPath), filepath.Join(conf, "session.key"); got != want {
		t.Errorf("Source(%s) = %s, want %s", copyPath, got, want)
	}
	_, err := Read(copyPath, "session key", 0o077)
	if err == nil || !strings.HasSuffix(err.Error(), "run: chmod 0600 "+filepath.Join(conf, "session.key")) {
		t.Errorf("Read of a 0644 copy: %v, want the fix on the source", err)
	}
	if got := Source("/etc/atm-fleet/users.yaml"); got != "/etc/atm-fleet/users.yaml" {
		t.Errorf("Source of a plain file: %s", got)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	t.Setenv("CONFIGURATION_DIRECTORY", "")
	if got := Source("/run/credentials/atm-fleet.service/users.yaml"); got != "/etc/atm-fleet/users.yaml" {
		t.Errorf("Source outside the unit: %s", got)
	}
}
