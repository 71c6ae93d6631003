package dbcmd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/store"
)

// "(is the agent running?)" is said for a held lock only: a damaged or
// missing file gets its own error without the misleading hint (before, every
// open error carried it).
func TestStoreOpenErrorHint(t *testing.T) {
	const hint = "is the agent running?"
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.db")
	os.WriteFile(garbage, []byte(strings.Repeat("not a bbolt file ", 1000)), 0o600)
	_, corrupt := store.Open(garbage, store.Options{NoCreate: true, ReadOnly: true})
	_, missing := store.Open(filepath.Join(dir, "typo.db"), store.Options{NoCreate: true, ReadOnly: true})
	for _, tc := range []struct {
		name string
		err  error
		hint bool
	}{
		{"lock timeout", fmt.Errorf("open store: %w", bolt.ErrTimeout), true},
		{"corrupt file", corrupt, false},
		{"missing file", missing, false},
		{"other", errors.New("open store: permission denied"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.err == nil {
				t.Fatal("the open did not fail")
			}
			got := storeOpenError(tc.err).Error()
			if strings.Contains(got, hint) != tc.hint {
				t.Fatalf("%q: hint present %v, want %v", got, !tc.hint, tc.hint)
			}
		})
	}
}
