package store

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoadKeyRefusesAKeyOthersCanRead: a key file any local user may read
// (written with umask 022: 0644) is refused, naming the fix and not the
// key; owner-only and group-readable files load (before: 0644 loaded
// silently).
func TestLoadKeyRefusesAKeyOthersCanRead(t *testing.T) {
	key := bytes.Repeat([]byte{0x42}, 32)
	for _, tc := range []struct {
		mode os.FileMode
		ok   bool
	}{{0o600, true}, {0o400, true}, {0o640, true}, {0o644, false}, {0o604, false}, {0o602, false}, {0o666, false}} {
		p := filepath.Join(t.TempDir(), "store.key")
		if err := os.WriteFile(p, key, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, tc.mode); err != nil {
			t.Fatal(err)
		}
		k, err := LoadKey(p)
		switch {
		case tc.ok && (err != nil || !bytes.Equal(k, key)):
			t.Errorf("mode %#o: %v", tc.mode, err)
		case !tc.ok && (err == nil || !strings.Contains(err.Error(), "chmod o-rwx")):
			t.Errorf("mode %#o: loaded (err %v), want a refusal", tc.mode, err)
		case !tc.ok && strings.Contains(err.Error(), string(key)):
			t.Errorf("mode %#o: error holds the key", tc.mode)
		}
	}
}
