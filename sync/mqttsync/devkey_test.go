package mqttsync

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The device key file: made once, never replaced, refused missing, open
// to group or others, or damaged, each with the reason and what to do.
func TestDeviceKeyFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "device.key")
	if _, err := LoadDeviceKey(p); !errors.Is(err, ErrNoDeviceKey) || !strings.Contains(err.Error(), "atm-agent device-key init") {
		t.Errorf("missing: %v", err)
	}
	k, err := InitDeviceKey(p, false)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("made with mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	got, err := LoadDeviceKey(p)
	if err != nil || !got.Equal(k) {
		t.Fatalf("load: %v", err)
	}
	if _, err := InitDeviceKey(p, false); !errors.Is(err, fs.ErrExist) {
		t.Errorf("init over an existing key: %v", err)
	}
	if again, _ := LoadDeviceKey(p); !again.Equal(k) {
		t.Error("the key was replaced")
	}
	if m, _ := filepath.Glob(p + ".tmp-*"); len(m) != 0 {
		t.Errorf("left behind: %v", m)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o660} {
		os.Chmod(p, mode)
		if _, err := LoadDeviceKey(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("mode %#o: %v", mode, err)
		}
	}
	os.Chmod(p, 0o600)
	for name, b := range map[string]string{
		"empty":      "",
		"not PEM":    "hello",
		"public key": "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAA6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=\n-----END PUBLIC KEY-----\n",
		"cut PKCS#8": "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
	} {
		bad := filepath.Join(dir, "bad.key")
		os.Remove(bad)
		if err := os.WriteFile(bad, []byte(b), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadDeviceKey(bad); err == nil || !strings.Contains(err.Error(), "damaged") {
			t.Errorf("%s: %v", name, err)
		}
	}
	// The config: a configured path must exist; the agent's default is
	// made at start.
	c := CommandsConfig{DeviceKeyFile: filepath.Join(dir, "other.key")}
	if err := c.CheckDeviceKey(); !errors.Is(err, ErrNoDeviceKey) {
		t.Errorf("configured, missing: %v", err)
	}
	if _, _, err := c.deviceKey(); !errors.Is(err, ErrNoDeviceKey) {
		t.Errorf("configured, missing, at start: %v", err)
	}
	c.CreateDeviceKey = true
	if err := c.CheckDeviceKey(); err != nil {
		t.Errorf("default, missing: %v", err)
	}
	made, ok, err := c.deviceKey()
	if err != nil || !ok {
		t.Fatalf("default, missing, at start: made %v, %v", ok, err)
	}
	again, ok, err := c.deviceKey()
	if err != nil || ok || !again.Equal(made) {
		t.Errorf("second start: made %v, %v", ok, err)
	}
}

// Made by root for the agent (ownFolder), the key belongs to its folder's
// owner, given on the open file before it has its name; a link the
// folder's owner put at the key's path is refused, and the file it points
// at keeps its owner (root's init never changes an owner by path).
func TestInitDeviceKeyAsRootForTheFolderOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	const nobody = 65534
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "device.key")
	if _, err := InitDeviceKey(p, true); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != nobody || st.Gid != nobody || fi.Mode().Perm() != 0o600 {
		t.Errorf("key owned by %d:%d mode %v, want %d:%d 0600", st.Uid, st.Gid, fi.Mode().Perm(), nobody, nobody)
	}

	victim := filepath.Join(t.TempDir(), "root-only")
	if err := os.WriteFile(victim, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	p2 := filepath.Join(dir, "other.key")
	if err := os.Symlink(victim, p2); err != nil {
		t.Fatal(err)
	}
	if _, err := InitDeviceKey(p2, true); !errors.Is(err, fs.ErrExist) {
		t.Errorf("a link at the key's path: %v, want refused", err)
	}
	if fi, _ := os.Stat(victim); fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Error("the link's target changed owner")
	}
}

// Root (config check, device-key show) loads the key the agent's user
// owns in the agent's folder, as device-key init makes it; a key owned by
// another user than the folder's is refused, naming both. The agent's
// user itself loads its key (a child process run as nobody).
func TestLoadDeviceKeyAsRootOfTheAgentsUser(t *testing.T) {
	if dir := os.Getenv("ATM_DEVKEY_CHILD"); dir != "" {
		if _, err := LoadDeviceKey(filepath.Join(dir, "device.key")); err != nil {
			t.Fatalf("as uid %d: %v", os.Geteuid(), err)
		}
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	const nobody, other = 65534, 65533
	dir, err := os.MkdirTemp("", "atm-devkey-") // t.TempDir's parent is 0700: nobody must reach it
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(state, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(state, "device.key")
	want, err := InitDeviceKey(p, true)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := LoadDeviceKey(p); err != nil || !got.Equal(want) {
		t.Fatalf("root, the folder owner's key: %v", err)
	}
	bin := filepath.Join(dir, "mqttsync.test") // the go tool's folder is root's alone
	if b, err := os.ReadFile(os.Args[0]); err != nil || os.WriteFile(bin, b, 0o755) != nil {
		t.Fatal("copying the test binary", err)
	}
	cmd := exec.Command(bin, "-test.run=^TestLoadDeviceKeyAsRootOfTheAgentsUser$", "-test.count=1")
	cmd.Env = append(os.Environ(), "ATM_DEVKEY_CHILD="+state)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody, Groups: []uint32{}}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("as the agent's user (nobody): %v\n%s", err, out)
	}
	if err := os.Chown(p, other, other); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadDeviceKey(p); err == nil || !strings.Contains(err.Error(), "owned by uid 65533, neither root nor the owner of its folder (uid 65534") {
		t.Errorf("root, a key another user owns: %v, want refused", err)
	}
}
