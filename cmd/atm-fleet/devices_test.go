package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/fleet/storage/boltstore"
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
	return devicesKeyCLIIn(t, t.TempDir())
}

// devicesKeyCLIIn is devicesKeyCLI with the store in dir (fleet.db).
func devicesKeyCLIIn(t *testing.T, dir string) func(args ...string) (int, string, string) {
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

// While the service runs on the embedded store, `devices key set` cannot
// open it (bbolt's lock): it says so and prints the API call that does the
// same. That call, run by a shell with curl as printed, with an
// administrator's session, pins the key in the running service; stopped,
// the service's store lists it as pinned by that administrator.
func TestDevicesKeyWhileTheServiceRuns(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("needs curl")
	}
	h, _ := bcrypt.GenerateFromPassword([]byte("correct horse"), bcrypt.MinCost)
	f := startFleetRun(t, fmt.Sprintf("users:\n  - {name: ops, role: admin, password_hash: %q}\n", h))
	var c *http.Client
	fleettest.WaitFor(t, 10*time.Second, "the service signs ops in", func() bool { c = f.signIn("ops"); return c != nil })
	k := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, 32)).Public().(ed25519.PublicKey)

	var out, errb bytes.Buffer
	code := runMain(context.Background(), []string{"devices", "key", "set", "--config", f.config, "lyon-07", "atm-0042", wire.EncodePublicKey(k)}, nil, &out, &errb)
	hint := `  curl -s -b jar -X PUT -H "X-CSRF-Token: $CS" -d '{"public_key":"` + wire.EncodePublicKey(k) + `"}' "$B"'/api/v1/devices/lyon-07/atm-0042/key'`
	if code == 0 || !strings.Contains(errb.String(), "the store is in use by another process") || !strings.Contains(errb.String(), "\n"+hint+"\n") {
		t.Fatalf("set while the service runs: exit %d, %q", code, errb.String())
	}

	// The printed command, with the session's cookie in curl's jar.
	dir := t.TempDir()
	u, _ := url.Parse(f.base)
	var jar strings.Builder
	for _, ck := range c.Jar.Cookies(u) {
		fmt.Fprintf(&jar, "%s\tFALSE\t/\tFALSE\t0\t%s\t%s\n", u.Hostname(), ck.Name, ck.Value)
	}
	writeFile(t, filepath.Join(dir, "jar"), jar.String(), 0o600)
	r, err := c.Get(f.base + "/api/v1/session")
	if err != nil {
		t.Fatal(err)
	}
	var sess struct {
		CSRF string `json:"csrf_token"`
	}
	json.NewDecoder(r.Body).Decode(&sess)
	r.Body.Close()
	sh := exec.Command("bash", "-c", hint)
	sh.Dir, sh.Env = dir, append(os.Environ(), "B="+f.base, "CS="+sess.CSRF)
	b, err := sh.Output()
	var pinned map[string]any
	if err != nil || json.Unmarshal(b, &pinned) != nil || pinned["fingerprint"] != wire.Fingerprint(k) || pinned["by"] != "ops" {
		t.Fatalf("the printed command: %v: %s", err, b)
	}

	f.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-f.exited; err != nil {
		t.Fatalf("stop: %v\n%s", err, f.logs())
	}
	f.exited <- nil // for the cleanup's wait
	out.Reset()
	if code := runMain(context.Background(), []string{"devices", "key", "list", "--config", f.config}, nil, &out, os.Stderr); code != 0 ||
		!strings.HasPrefix(out.String(), "lyon-07\tatm-0042\t"+wire.Fingerprint(k)+"\t") || !strings.HasSuffix(out.String(), "\tops\n") {
		t.Errorf("list after the service stopped: exit %d, %q", code, out.String())
	}
}

// A device whose alert was refused as signed by another key than the one
// pinned (reinstalled): `devices key set` with its new key applies it and
// says so; a second set applies it again, nothing new.
func TestDevicesKeySetRecovers(t *testing.T) {
	dir := t.TempDir()
	old := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32))
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, 32))
	now := time.Now().UTC()
	_, signed := fleettest.AlertPayload(t, key, "lyon-07", "atm-1", "a-1", "p-7", 6, 1)
	st, err := boltstore.Open(filepath.Join(dir, "fleet.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	err = st.PutDeviceKey(ctx, storage.DeviceKey{Site: "lyon-07", Device: "atm-1", PublicKey: old.Public().(ed25519.PublicKey), Pinned: now, By: "root"}, storage.KeyChange{User: "test", Role: "cli"})
	if err == nil {
		err = st.PutReject(ctx, storage.Reject{Received: now, Topic: "atm/lyon-07/atm-1/alert", Site: "lyon-07", Device: "atm-1",
			Error: "alert not authenticated: " + wire.ErrMsgSignature.Error(), Payload: string(signed)})
	}
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	run := devicesKeyCLIIn(t, dir)
	pub := wire.EncodePublicKey(key.Public().(ed25519.PublicKey))
	for i, want := range []string{"1 refused messages now verify and were applied (1 summaries or alerts new), 0 others still do not verify",
		"1 refused messages now verify and were applied (0 summaries or alerts new)"} {
		if code, out, errs := run("set", "lyon-07", "atm-1", pub); code != 0 || !strings.Contains(out, want) {
			t.Errorf("set %d: %d %q %q, want %q", i+1, code, out, errs, want)
		}
	}
	st, err = boltstore.Open(filepath.Join(dir, "fleet.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if a, err := st.Alert(ctx, storage.AlertKey{Site: "lyon-07", Device: "atm-1", AlertID: "a-1"}); err != nil || !a.Authenticated {
		t.Errorf("the recovered alert: %+v, %v", a, err)
	}
	// Both sets are audited as the command's user's, role cli.
	audit, err := st.Audit(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(audit) != 3 || audit[0].Action != storage.ActionPinKey || audit[0].Role != "cli" || audit[0].User != whoami() ||
		!strings.HasPrefix(audit[0].Note, "pinned "+wire.Fingerprint(key.Public().(ed25519.PublicKey))+"; was ") {
		t.Errorf("audit: %+v, want the two sets by %s (cli) after the test's own pin", audit, whoami())
	}
}
