// Package secretfile reads the agent's secret files (the store key, the
// trigger and metrics bearer tokens, the MQTT password, TLS private keys)
// and refuses one that every local user may read or change, as ssh refuses
// such a private key: a token any local user can read lets them call the
// trigger API (inject visits) or scrape the metrics, a broker password lets
// them publish as the device. The group may read it (0640 root:atm-agent,
// or the ATM application's group for the trigger token). One check for
// every secret file, so `config check` and `run` refuse the same files with
// the same words.
package secretfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/periocular/atm-agent/internal/regfile"
)

// ErrOthersCanAccess is wrapped by the error for a secret file whose mode
// grants any permission to others.
var ErrOthersCanAccess = errors.New("lets every local user read or change it")

// CheckMode refuses mode m of the secret file at path when it grants
// anything to others (a regular file's mode; other kinds pass, for
// regfile to refuse). The error names the fix.
func CheckMode(path string, m fs.FileMode) error {
	if !m.IsRegular() || m.Perm()&0o007 == 0 {
		return nil
	}
	return fmt.Errorf("%s: mode %#o %w: chmod o-rwx %s (0640 with the group that must read it, or 0600)",
		path, m.Perm(), ErrOthersCanAccess, path)
}

// Open opens the secret file at path for reading: a regular file
// (regfile.Open) whose mode, checked on the open file, grants nothing to
// others.
func Open(path string) (*os.File, error) {
	f, err := regfile.Open(path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil {
		err = CheckMode(path, fi.Mode())
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// ReadFile reads the secret file at path (Open).
func ReadFile(path string) ([]byte, error) { return regfile.ReadWith(Open, path) }

// Check refuses path when it is there and is not a regular file, or when
// its mode grants anything to others, without opening it: for a secret a
// library reads itself (tls.LoadX509KeyPair). A missing path passes, for
// its reader to report.
func Check(path string) error {
	if err := regfile.Check(path); err != nil {
		return err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil
	}
	return CheckMode(path, fi.Mode())
}
