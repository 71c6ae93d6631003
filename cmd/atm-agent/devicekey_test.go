package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/periocular/atm-agent/sync/mqttsync"
	"github.com/periocular/atm-agent/sync/wire"
)

// device-key init makes the key beside the config's store (0600) and
// prints what show prints: the public key the replies verify with, its
// fingerprint and the fleet's pinning line; a second init and a key other
// users may read are refused.
func TestDeviceKeyInitShow(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte("device: {site: lyon-07, id: atm-0042}\nstore: {path: "+filepath.Join(dir, "agent.db")+"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := runMain(context.Background(), append([]string{"device-key"}, append(args, "--config", cfg)...), &out, &errb)
		return code, out.String(), errb.String()
	}
	if code, _, errs := run("show"); code == 0 || !strings.Contains(errs, "no device key") {
		t.Errorf("show before init: %d %q", code, errs)
	}
	code, initOut, errs := run("init")
	if code != 0 {
		t.Fatalf("init: %d %q", code, errs)
	}
	key, err := mqttsync.LoadDeviceKey(filepath.Join(dir, "device.key"))
	if err != nil {
		t.Fatal(err)
	}
	pub := key.Public().(ed25519.PublicKey)
	want := "public_key: " + wire.EncodePublicKey(pub) + "\nfingerprint: " + wire.Fingerprint(pub) +
		"\npin: atm-fleet devices key set lyon-07 atm-0042 " + wire.EncodePublicKey(pub) + "\n"
	_, showOut, _ := run("show")
	if initOut != want || showOut != want {
		t.Errorf("init printed %q, show %q; want %q", initOut, showOut, want)
	}
	if code, _, errs := run("init"); code == 0 || !strings.Contains(errs, "not replaced") {
		t.Errorf("second init: %d %q", code, errs)
	}
	os.Chmod(filepath.Join(dir, "device.key"), 0o644)
	if code, _, errs := run("show"); code == 0 || !strings.Contains(errs, "chmod 600") {
		t.Errorf("show of a 0644 key: %d %q", code, errs)
	}
}

// Run before the config is edited (the package's default site-1
// atm-0001), show says so and its pin line names SITE DEVICE, not a
// device that is not this one.
func TestDeviceKeyShowDefaultNames(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte("store: {path: "+filepath.Join(dir, "agent.db")+"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := runMain(context.Background(), []string{"device-key", "init", "--config", cfg}, &out, &errb); code != 0 {
		t.Fatalf("init: %d %q", code, errb.String())
	}
	if !strings.Contains(out.String(), "pin: atm-fleet devices key set SITE DEVICE ") || strings.Contains(out.String(), "site-1") ||
		!strings.Contains(errb.String(), "still names the default device site-1 atm-0001") {
		t.Errorf("init with the default names: stdout %q, stderr %q", out.String(), errb.String())
	}
}
