package secretfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/periocular/atm-agent/internal/regfile"
)

// A secret file loads when only its owner and group may access it, and is
// refused, naming the fix and not the secret, when others may read, write
// or run it; ReadFile, Open and Check agree.
func TestOthersRefused(t *testing.T) {
	const secret = "s3cret-token-0123456789"
	for _, tc := range []struct {
		mode os.FileMode
		ok   bool
	}{{0o600, true}, {0o400, true}, {0o640, true}, {0o660, true}, {0o644, false}, {0o604, false}, {0o602, false}, {0o601, false}, {0o666, false}} {
		p := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(p, []byte(secret), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, tc.mode); err != nil {
			t.Fatal(err)
		}
		b, err := ReadFile(p)
		cerr := Check(p)
		switch {
		case tc.ok && (err != nil || string(b) != secret || cerr != nil):
			t.Errorf("mode %#o: %v / %v", tc.mode, err, cerr)
		case !tc.ok && (err == nil || !errors.Is(err, ErrOthersCanAccess) || !errors.Is(cerr, ErrOthersCanAccess)):
			t.Errorf("mode %#o: read (err %v, check %v), want a refusal", tc.mode, err, cerr)
		case !tc.ok && (!strings.Contains(err.Error(), "chmod o-rwx "+p) || strings.Contains(err.Error(), secret)):
			t.Errorf("mode %#o: %q should name the fix and not the secret", tc.mode, err)
		}
	}
}

// What is not a regular file is refused as regfile refuses it, before a
// read could block; a missing file passes Check, for its reader to report.
func TestNotRegularAndMissing(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadFile(fifo); !errors.Is(err, regfile.ErrNotRegular) {
		t.Errorf("ReadFile(fifo) = %v, want ErrNotRegular", err)
	}
	if err := Check(fifo); !errors.Is(err, regfile.ErrNotRegular) {
		t.Errorf("Check(fifo) = %v, want ErrNotRegular", err)
	}
	if err := Check(filepath.Join(dir, "missing")); err != nil {
		t.Errorf("Check(missing) = %v, want nil", err)
	}
}
