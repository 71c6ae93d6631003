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

// A tab or another control character in SUDO_USER does not reach the pin's
// "by": devices key list keeps six tab-separated columns.
func TestDevicesKeyByHasNoControlCharacters(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "fleet.yaml")
	if err := os.WriteFile(cfgPath, []byte("store: {driver: bolt, path: "+filepath.Join(dir, "fleet.db")+"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SUDO_USER", "evil\tx\nlyon-07\x1b[2J\u0085")
	k := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32)).Public().(ed25519.PublicKey)
	var out, errb bytes.Buffer
	if code := runMain(context.Background(), []string{"devices", "key", "set", "--config", cfgPath, "lyon-07", "atm-1", wire.EncodePublicKey(k)}, nil, &out, &errb); code != 0 {
		t.Fatalf("set: %d %q", code, errb.String())
	}
	out.Reset()
	if code := runMain(context.Background(), []string{"devices", "key", "list", "--config", cfgPath}, nil, &out, &errb); code != 0 {
		t.Fatalf("list: %d %q", code, errb.String())
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 1 || strings.Count(lines[0], "\t") != 5 || !strings.HasSuffix(lines[0], "\tevil?x?lyon-07?[2J?") {
		t.Errorf("list: %q, want one line of six columns ending in evil?x?lyon-07?[2J?", out.String())
	}
}
