package mqttsync

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"

	"github.com/periocular/atm-agent/internal/fileops"
	"github.com/periocular/atm-agent/internal/regfile"
	"github.com/periocular/atm-agent/sync/wire"
)

// The device key signs every reply (wire.SignReply) and every status,
// state, summary and alert (wire.SignMessage): whoever may publish on the
// device's topics cannot answer or report in its place. It is an
// Ed25519 private key in PKCS#8 PEM, mode 0600, owned by the agent's user
// (or root), kept in the state folder next to the store by default.

// ErrNoDeviceKey: the device key file does not exist.
var ErrNoDeviceKey = errors.New("no device key")

// LoadDeviceKey reads the device key: refused when missing, when its mode
// lets the group or others read or change it, when it is owned by another
// user than this process's or root (for root, also the owner of the key's
// folder, the agent's user: root's config check and device-key show read
// the agent's key), or when it is not an Ed25519 PKCS#8 PEM key.
func LoadDeviceKey(path string) (ed25519.PrivateKey, error) {
	f, err := regfile.Open(path) // a named pipe would block the read for good
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("device key %s: %w (make it: atm-agent device-key init, then pin its public key at the fleet: atm-fleet devices key set)", path, ErrNoDeviceKey)
	}
	if err != nil {
		return nil, fmt.Errorf("device key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("device key: %w", err)
	}
	if m := fi.Mode().Perm(); runtime.GOOS != "windows" && m&0o077 != 0 {
		return nil, fmt.Errorf("device key %s: mode %#o lets group or others read or change it (whoever reads it can answer in the device's place): chmod 600 %s", path, m, path)
	}
	if uid, _, ok := fileops.Owner(fi); ok && uid != os.Geteuid() && uid != 0 {
		if os.Geteuid() != 0 {
			return nil, fmt.Errorf("device key %s: owned by uid %d, not by this process's user (uid %d) or root: its owner could read or replace it; chown it or make a new one", path, uid, os.Geteuid())
		}
		// Root (config check, device-key show) reads the agent's key: the
		// one its folder's owner, the agent's user, owns, as device-key
		// init gives it.
		if dir, err := os.Stat(filepath.Dir(path)); err != nil {
			return nil, fmt.Errorf("device key: %w", err)
		} else if downer, _, ok := fileops.Owner(dir); ok && downer != uid {
			return nil, fmt.Errorf("device key %s: owned by uid %d, neither root nor the owner of its folder (uid %d, the agent's user): its owner could read or replace it; chown it to the agent's user or make a new one", path, uid, downer)
		}
	}
	b, err := io.ReadAll(io.LimitReader(f, 16<<10))
	if err != nil {
		return nil, fmt.Errorf("device key: %w", err)
	}
	defer clear(b)
	k, err := wire.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("device key %s is damaged: %v (move it away, run atm-agent device-key init and pin the new public key at the fleet)", path, err)
	}
	return k, nil
}

// InitDeviceKey makes a new device key at path (mode 0600) and returns it.
// It never replaces a file: an existing one is an error (fs.ErrExist). The
// key reaches the disk before its name does. With ownFolder, run as root
// (the package's postinst, an operator), the key is given to the folder's
// owner, the agent's user, who must read it: on the open file, before it
// has its name, never by path, which the folder's owner could meanwhile
// point at another file (root would then hand that file to them).
func InitDeviceKey(path string, ownFolder bool) (ed25519.PrivateKey, error) {
	if _, err := os.Lstat(path); err == nil {
		return nil, fmt.Errorf("device key %s: %w: not replaced (a new key must be pinned at the fleet again)", path, fs.ErrExist)
	}
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		return nil, err
	}
	pemBytes, err := wire.MarshalPrivateKeyPEM(priv)
	if err != nil {
		return nil, err
	}
	defer clear(pemBytes)
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("device key: %w", err)
	}
	defer os.Remove(tmp.Name())
	err = tmp.Chmod(0o600)
	if err == nil && ownFolder && os.Geteuid() == 0 {
		var fi os.FileInfo
		if fi, err = os.Stat(dir); err == nil {
			if uid, gid, ok := fileops.Owner(fi); ok && uid != 0 {
				err = tmp.Chown(uid, gid)
			}
		}
	}
	if err == nil {
		_, err = tmp.Write(pemBytes)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("device key: %w", err)
	}
	// A link, not a rename: it fails when path appeared meanwhile.
	if err := os.Link(tmp.Name(), path); err != nil {
		return nil, fmt.Errorf("device key: %w", err)
	}
	fileops.SyncDir(dir)
	return priv, nil
}

// deviceKey loads the configured device key; with CreateDeviceKey, a
// missing one is made first (the default path in the state folder, as
// sshd makes its host keys), and made says so.
func (c CommandsConfig) deviceKey() (k ed25519.PrivateKey, made bool, err error) {
	k, err = LoadDeviceKey(c.DeviceKeyFile)
	if errors.Is(err, ErrNoDeviceKey) && c.CreateDeviceKey {
		k, err = InitDeviceKey(c.DeviceKeyFile, false)
		return k, err == nil, err
	}
	return k, false, err
}

// loadDeviceKey is the publisher's device key. With commands on, it must
// load (made first with CreateDeviceKey): replies are always signed. With
// commands off, the agent signs what it publishes when it can: a key that
// is missing (and not made) or unusable is a warning, and its messages go
// unsigned (a fleet that pinned the key refuses them, which shows it),
// rather than an upgraded agent that needs no key refusing to start. No
// DeviceKeyFile (a config without a store): unsigned.
func loadDeviceKey(c CommandsConfig, log *slog.Logger) (ed25519.PrivateKey, error) {
	if c.DeviceKeyFile == "" {
		return nil, nil
	}
	k, made, err := c.deviceKey()
	switch {
	case err != nil && c.Enabled:
		return nil, fmt.Errorf("mqtt commands: %w", err)
	case err != nil:
		log.Warn("mqtt: no usable device key: status, summaries and alerts are published unsigned (a fleet that pinned the device's key refuses them)", "err", err)
		return nil, nil
	case made:
		pub := k.Public().(ed25519.PublicKey)
		log.Warn("mqtt: made a new device key: pin its public key at the fleet (atm-agent device-key show; atm-fleet devices key set)",
			"file", c.DeviceKeyFile, "public_key", wire.EncodePublicKey(pub), "fingerprint", wire.Fingerprint(pub))
	}
	return k, nil
}

// CheckDeviceKey is what `config check` asks of the device key: it loads
// when it exists; a missing one passes only where run makes it
// (CreateDeviceKey).
func (c CommandsConfig) CheckDeviceKey() error {
	k, err := LoadDeviceKey(c.DeviceKeyFile)
	clear(k)
	if errors.Is(err, ErrNoDeviceKey) && c.CreateDeviceKey {
		return nil
	}
	return err
}
