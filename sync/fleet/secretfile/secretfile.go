// Package secretfile reads the fleet service's secret files (the users
// file, the session key, the command-signing key) after checking who may
// read or change them, like sshd does for private keys.
package secretfile

import (
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
)

// Read reads path after checking that it is owned by the service's
// own user or by root and that none of the bits in deny (group/other
// permission bits) are set, like sshd does for private keys.
func Read(path, what string, deny os.FileMode) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := checkFile(fi, Named(path), Source(path), what, deny, os.Geteuid()); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return b, nil
}

// checkFile applies Read's checks to fi: owned by uid or root, none of
// the bits in deny set. name is the file in messages, fix the file to
// chown or chmod.
func checkFile(fi os.FileInfo, name, fix, what string, deny os.FileMode, uid int) error {
	if err := CheckOwner(fi, uid); err != nil {
		to := "root"
		if uid != 0 {
			to = strconv.Itoa(uid) // this service's user: it must read the file
		}
		return fmt.Errorf("%s %s: %w; run: chown %s %s", what, name, err, to, fix)
	}
	if m := fi.Mode().Perm(); runtime.GOOS != "windows" && m&deny != 0 {
		want := m &^ deny
		return fmt.Errorf("%s %s: permissions %04o are too open (%s by group or others); run: chmod %04o %s",
			what, name, m, accessWords(m&deny), want, fix)
	}
	return nil
}

// CheckSource applies to the source of a credential copy (Source) the
// owner and mode checks that `config check --credentials-from`, as root,
// applies at start (Read as root: owned by root, none of the bits in deny
// set), by its metadata: the service cannot read root's file, but can see
// who owns it and its mode. Nothing for a path that is not a copy.
// Rereading a copy (systemd makes it again for each ExecReload= command)
// without it would take a source that a start refuses.
func CheckSource(path, what string, deny os.FileMode) error {
	src := Source(path)
	if src == path {
		return nil
	}
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, Named(path), err)
	}
	return checkFile(fi, src, src, what, deny, 0)
}

// CheckOwner refuses a file owned by anyone but uid (the service's user)
// or root: whatever its mode, its owner can rewrite it (a users file with
// an admin of their own) or make it readable (the session key).
func CheckOwner(fi os.FileInfo, uid int) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	owner := int(st.Uid)
	if owner == uid || owner == 0 {
		return nil
	}
	allowed := "root (the service's user)"
	if uid != 0 {
		allowed = "the service's user, " + uidName(uid) + ", or root"
	}
	return fmt.Errorf("owned by %s, not by %s: its owner could change it whatever its permissions", uidName(owner), allowed)
}

// uidName is "uid N (name)", or "uid N" for a uid without a name.
func uidName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil && u.Username != "" {
		return fmt.Sprintf("uid %d (%s)", uid, u.Username)
	}
	return fmt.Sprintf("uid %d", uid)
}

func accessWords(m os.FileMode) string {
	switch {
	case m&0o044 != 0 && m&0o022 != 0:
		return "readable and writable"
	case m&0o022 != 0:
		return "writable"
	case m&0o044 != 0:
		return "readable"
	}
	return "executable"
}

// CredentialID is the credential id of path when path is a copy systemd
// made for a unit's LoadCredential= (in $CREDENTIALS_DIRECTORY, or
// /run/credentials/UNIT/ID), else "".
func CredentialID(path string) string {
	dir, id := filepath.Split(filepath.Clean(path))
	dir = filepath.Clean(dir)
	if cd := os.Getenv("CREDENTIALS_DIRECTORY"); cd != "" && dir == filepath.Clean(cd) {
		return id
	}
	if parent, unit := filepath.Split(dir); filepath.Clean(parent) == "/run/credentials" && unit != "" {
		return id
	}
	return ""
}

// Source is the file the operator fixes for path: path itself, or for a
// credential copy the unit's source of it, $CONFIGURATION_DIRECTORY/ID
// (the unit's ConfigurationDirectory=: /etc/atm-fleet/ID as packaged, where
// its LoadCredential= lines load from). systemd rewrites the copy at each
// start: a fix made to it is lost.
func Source(path string) string {
	id := CredentialID(path)
	if id == "" {
		return path
	}
	dir := os.Getenv("CONFIGURATION_DIRECTORY")
	if dir == "" {
		dir = "/etc/atm-fleet"
	}
	return filepath.Join(dir, id)
}

// Named is path for messages: with its source when it is a credential copy.
func Named(path string) string {
	if src := Source(path); src != path {
		return fmt.Sprintf("%s (systemd's copy of %s)", path, src)
	}
	return path
}

// WarnReadable is a warning when path (a secret: a password, a DSN, a
// private key) is readable by group or others, else "". A credential copy
// is never (systemd makes it 0400).
func WarnReadable(path, what string) string {
	fi, err := os.Stat(path)
	if err != nil || runtime.GOOS == "windows" {
		return ""
	}
	if m := fi.Mode().Perm(); m&0o044 != 0 {
		return fmt.Sprintf("%s %s: permissions %04o: readable by group or others; run: chmod %04o %s (and load it with the unit's LoadCredential=, docs/fleet.md \"Install\")",
			what, path, m, m&^0o077, path)
	}
	return ""
}
