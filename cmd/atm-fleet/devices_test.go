package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/periocular/atm-agent/sync/wire"
)

// atm-fleet devices key set/list/remove on the embedded store: a key as
// atm-agent device-key show prints it and one in a PEM file are pinned,
// listed with their fingerprints, replaced and removed; a malformed key
// and a device name the topics cannot carry are refused.
func TestDevicesKeyCommands(t *testing.T) {
	dir := t.TempDir()
	run := devicesKeyCLI(t)
	k1 := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32)).Public().(ed25519.PublicKey)
	k2 := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, 32)).Public().(ed25519.PublicKey)
	pemFile := filepath.Join(dir, "atm-2.pub")
	pemBytes, _ := wire.MarshalPublicKeyPEM(k2)
	os.WriteFile(pemFile, pemBytes, 0o644)

	code, out, errs := run("set", "lyon-07", "atm-1", wire.EncodePublicKey(k1))
	if code != 0 || !strings.Contains(out, wire.Fingerprint(k1)) {
		t.Fatalf("set: %d %q %q", code, out, errs)
	}
	// The fleet has heard from no device: the pin holds, with a warning
	// about the names.
	if !strings.Contains(errs, "warning: the fleet has not heard from lyon-07/atm-1 yet") {
		t.Errorf("pin of an unknown device without a warning: %q", errs)
	}
	if code, _, errs := run("set", "lyon-07", "atm-2", pemFile); code != 0 {
		t.Fatalf("set from a PEM file: %d %q", code, errs)
	}
	code, out, _ = run("list")
	if code != 0 || !strings.Contains(out, "lyon-07\tatm-1\t"+wire.Fingerprint(k1)) || !strings.Contains(out, "lyon-07\tatm-2\t"+wire.Fingerprint(k2)) {
		t.Errorf("list: %d %q", code, out)
	}
	// Replaced by a new key (a device whose key was made again).
	if code, _, _ := run("set", "lyon-07", "atm-1", wire.EncodePublicKey(k2)); code != 0 {
		t.Fatal("replace")
	}
	if _, out, _ := run("list"); !strings.Contains(out, "lyon-07\tatm-1\t"+wire.Fingerprint(k2)) {
		t.Errorf("list after replace: %q", out)
	}
	if code, _, _ := run("remove", "lyon-07", "atm-1"); code != 0 {
		t.Error("remove")
	}
	if code, _, errs := run("remove", "lyon-07", "atm-1"); code == 0 || !strings.Contains(errs, "not found") {
		t.Errorf("remove twice: %d %q", code, errs)
	}
	if _, out, _ := run("list"); strings.Contains(out, "atm-1") || !strings.Contains(out, "atm-2") {
		t.Errorf("list after remove: %q", out)
	}
	huge := filepath.Join(dir, "huge.pub")
	os.WriteFile(huge, bytes.Repeat([]byte("A"), 1<<20), 0o644)
	for name, args := range map[string][]string{
		"short key":    {"set", "lyon-07", "atm-3", "AAAA"},
		"weak key":     {"set", "lyon-07", "atm-3", "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}, // the identity point
		"a device":     {"set", "lyon-07", "atm-3", "/dev/zero"},
		"a huge file":  {"set", "lyon-07", "atm-3", huge},
		"no such file": {"set", "lyon-07", "atm-3", "/nonexistent/k.pub"},
		"wildcard":     {"set", "lyon-07", "+", wire.EncodePublicKey(k1)},
		"missing arg":  {"set", "lyon-07", "atm-3"},
		"unknown op":   {"rotate"},
	} {
		if code, _, errs := run(args...); code == 0 {
			t.Errorf("%s: accepted (%q)", name, errs)
		}
	}
}

// devicesKeyCLI writes a fleet config on an embedded store in a folder of
// its own and runs `atm-fleet devices key OP --config FILE ARGS...` on it.
func devicesKeyCLI(t *testing.T) func(args ...string) (int, string, string) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "fleet.yaml")
	if err := os.WriteFile(cfgPath, []byte("store: {driver: bolt, path: "+filepath.Join(dir, "fleet.db")+"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := runMain(context.Background(), append([]string{"devices", "key", args[0], "--config", cfgPath}, args[1:]...), nil, &out, &errb)
		return code, out.String(), errb.String()
	}
}

// A tab or another control character in SUDO_USER does not reach the pin's
// "by": devices key list keeps six tab-separated columns.
func TestDevicesKeyByHasNoControlCharacters(t *testing.T) {
	run := devicesKeyCLI(t)
	t.Setenv("SUDO_USER", "evil\tx\nlyon-07\x1b[2J\u0085")
	k := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32)).Public().(ed25519.PublicKey)
	if code, _, errs := run("set", "lyon-07", "atm-1", wire.EncodePublicKey(k)); code != 0 {
		t.Fatalf("set: %d %q", code, errs)
	}
	code, out, errs := run("list")
	if code != 0 {
		t.Fatalf("list: %d %q", code, errs)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 1 || strings.Count(lines[0], "\t") != 5 || !strings.HasSuffix(lines[0], "\tevil?x?lyon-07?[2J?") {
		t.Errorf("list: %q, want one line of six columns ending in evil?x?lyon-07?[2J?", out)
	}
}
