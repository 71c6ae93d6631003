package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/fleet/service"
	"github.com/periocular/atm-agent/sync/fleet/storage/boltstore"
	"github.com/periocular/atm-agent/sync/wire"
)

func TestConfig(t *testing.T) {
	var out bytes.Buffer
	if code := runMain(context.Background(), []string{"config", "default"}, nil, &out, io.Discard); code != 0 {
		t.Fatalf("config default: exit %d", code)
	}
	if c, err := service.ParseConfig(out.Bytes()); err != nil {
		t.Fatalf("the default config does not parse: %v\n%s", err, out.String())
	} else if got, want := fmt.Sprintf("%+v", c), fmt.Sprintf("%+v", service.DefaultConfig()); got != want {
		// Printed: an empty list reads back as nil.
		t.Errorf("the default config reads back as\n%s, not\n%s", got, want)
	}
	// Durations as a config file writes them (before 2026-12-08 yaml's
	// "720h0m0s"), and config check takes them.
	for _, want := range []string{"\n    history: 720h\n", "\n    alerts: 8760h\n", "\n    prune_interval: 1h\n", "\n    batch_wait: 20ms\n",
		"\n    session_ttl: 12h\n", "\n    stale_after: 5m\n", "\n    reply_timeout: 15s\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("config default lacks %q", want)
		}
	}
	if strings.Contains(out.String(), "m0s\n") || strings.Contains(out.String(), "h0m\n") {
		t.Errorf("config default writes a duration with zero units:\n%s", out.String())
	}
	dir := t.TempDir()
	cfgPath := writeFile(t, filepath.Join(dir, "config.yaml"),
		strings.Replace(out.String(), "users_file: /etc/atm-fleet/users.yaml", "users_file: "+writeUsers(t, dir), 1), 0o644)
	var check, got strings.Builder
	if code := runMain(context.Background(), []string{"config", "check", cfgPath}, nil, &check, os.Stderr); code != 0 || !strings.HasSuffix(check.String(), ": ok\n") {
		t.Errorf("config check of the default config: exit %d, %q", code, check.String())
	}
	if code := runMain(context.Background(), []string{"config", "get", cfgPath, "retention.history"}, nil, &got, os.Stderr); code != 0 || got.String() != "720h\n" {
		t.Errorf("config get retention.history: exit %d, %q, want 720h", code, got.String())
	}
	for name, y := range map[string]string{
		"unknown key":     "store: {driver: bolt, path: /x, size: 3}\n",
		"bad driver":      "store: {driver: sqlite}\n",
		"postgres no dsn": "store: {driver: postgres}\n",
		"short retention": "retention: {history: 1m}\n",
		"no client id":    "mqtt: {client_id: \"\"}\n",
		"bad listen":      "web: {listen: 8080}\n",
		"bad level":       "log_level: loud\n",
		"commands no key": "commands: {enabled: true}\n",
		"commands typo":   "commands: {enabled: true, private_key: /k}\n",
		"reply timeout":   "commands: {enabled: true, private_key_file: /k, reply_timeout: 10m}\n",
	} {
		if _, err := service.ParseConfig([]byte(y)); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

// config check reads the command-signing key a config names: a key
// readable by others (or not a private key) fails the check with the
// reason, a 0600 key from atm-tools command keygen passes.
func TestConfigCheckCommandKey(t *testing.T) {
	dir := t.TempDir()
	_, priv, _ := wire.GenerateCommandKey()
	pemb, _ := wire.MarshalPrivateKeyPEM(priv)
	key := filepath.Join(dir, "central.key")
	os.WriteFile(key, pemb, 0o644)
	users := writeUsers(t, dir)
	cfgPath := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf("web: {users_file: %s}\ncommands: {enabled: true, private_key_file: %s}\n", users, key)), 0o644)
	var errb strings.Builder
	if code := runMain(context.Background(), []string{"config", "check", cfgPath}, nil, io.Discard, &errb); code != exitSetup ||
		!strings.Contains(errb.String(), "command key "+key+": permissions 0644 are too open") || !strings.Contains(errb.String(), "chmod 0600") {
		t.Errorf("a key readable by all: exit %d, %q", code, errb.String())
	}
	os.Chmod(key, 0o600)
	var out strings.Builder
	if code := runMain(context.Background(), []string{"config", "check", cfgPath}, nil, &out, os.Stderr); code != 0 {
		t.Errorf("a 0600 key: exit %d", code)
	}
	os.WriteFile(key, []byte("not a key"), 0o600)
	errb.Reset()
	if code := runMain(context.Background(), []string{"config", "check", cfgPath}, nil, io.Discard, &errb); code != exitSetup || !strings.Contains(errb.String(), "PRIVATE KEY") {
		t.Errorf("not a key: exit %d, %q", code, errb.String())
	}
}

func TestPasswd(t *testing.T) {
	var out, errb bytes.Buffer
	if code := runMain(context.Background(), []string{"passwd"}, strings.NewReader("correct horse\n"), &out, &errb); code != 0 {
		t.Fatalf("passwd: exit %d: %s", code, errb.String())
	}
	h := strings.TrimSpace(out.String())
	if bcrypt.CompareHashAndPassword([]byte(h), []byte("correct horse")) != nil {
		t.Errorf("hash %q does not verify", h)
	}
	if code := runMain(context.Background(), []string{"passwd"}, strings.NewReader("short\n"), io.Discard, io.Discard); code == 0 {
		t.Error("short password accepted")
	}
}

// writeUsers writes a users file in dir with ana, an analyst whose
// password is "correct horse", and returns its path.
func writeUsers(t *testing.T, dir string) string {
	t.Helper()
	h, _ := bcrypt.GenerateFromPassword([]byte("correct horse"), bcrypt.MinCost)
	users := filepath.Join(dir, "users.yaml")
	if err := os.WriteFile(users, []byte(fmt.Sprintf("users:\n  - {name: ana, role: analyst, password_hash: %q}\n", h)), 0o600); err != nil {
		t.Fatal(err)
	}
	return users
}

// The service as a whole: a real mosquitto, a simulated agent, the bbolt
// store and the web server on a loopback port.
func TestRunEndToEnd(t *testing.T) {
	m := fleettest.StartMosquitto(t, "")
	dir := t.TempDir()
	users := writeUsers(t, dir)
	port := fleettest.FreePort(t)
	conf := fmt.Sprintf(`store: {driver: bolt, path: %s}
mqtt: {brokers: [%q], prefix: atm/e2e, client_id: fleet-e2e}
web: {listen: "127.0.0.1:%d", users_file: %s}
`, filepath.Join(dir, "fleet.db"), m.URL(), port, users)
	cfgPath := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfgPath, []byte(conf), 0o600)
	if code := runMain(context.Background(), []string{"config", "check", cfgPath}, nil, io.Discard, os.Stderr); code != 0 {
		t.Fatalf("config check: exit %d", code)
	}
	cfg, err := service.LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, slog.New(slog.DiscardHandler)) }()
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	var health struct {
		OK     bool
		Ingest struct {
			Connected bool
			Applied   uint64
		}
	}
	get := func() {
		r, err := http.Get(base + "/healthz")
		if err == nil {
			json.NewDecoder(r.Body).Decode(&health)
			r.Body.Close()
		}
	}
	fleettest.WaitFor(t, 10*time.Second, "service up and subscribed", func() bool { get(); return health.Ingest.Connected })
	a := fleettest.StartAgent(t, m.URL(), "atm/e2e", "lyon-07", "atm-1")
	a.Summary(t, 3, "p-1")
	a.Alert(t, "many-visits-24h", "p-1", 6)
	fleettest.WaitFor(t, 10*time.Second, "2 messages applied", func() bool { get(); return health.Ingest.Applied == 2 })
	if r, err := http.Get(base + "/api/v1/devices"); err != nil || r.StatusCode != 401 {
		t.Errorf("unauthenticated API: %v %v", r.StatusCode, err)
	}
	var errb strings.Builder
	if code := runMain(context.Background(), []string{"compact", "--config", cfgPath, "--wait", "100ms"}, nil, io.Discard, &errb); code != 1 ||
		!strings.Contains(errb.String(), "stop the service") {
		t.Errorf("compact while the service runs: exit %d, %q; want 1 and the reason", code, errb.String())
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of cancel")
	}
	var out strings.Builder
	if code := runMain(context.Background(), []string{"compact", "--config", cfgPath}, nil, &out, os.Stderr); code != 0 ||
		!strings.Contains(out.String(), "fleet.db: ") || !strings.Contains(out.String(), " MiB -> ") {
		t.Errorf("compact of the stopped service's store: exit %d, %q", code, out.String())
	}
	st, err := boltstore.Open(cfg.Store.Path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if d, err := st.Device(context.Background(), "lyon-07", "atm-1"); err != nil || d.OpenAlerts != 1 {
		t.Errorf("after compact: %+v, %v", d, err)
	}
}

// The service as configured: commands on, the key from its file, the
// command client on the ingest's connection; an analyst signed in as a
// program reads an identity's visits from a simulated agent that trusts
// the key, and splits one off.
func TestRunReviewEndToEnd(t *testing.T) {
	m := fleettest.StartMosquitto(t, "")
	dir := t.TempDir()
	users := writeUsers(t, dir)
	pub, priv, _ := wire.GenerateCommandKey()
	pemb, _ := wire.MarshalPrivateKeyPEM(priv)
	key := filepath.Join(dir, "central.key")
	os.WriteFile(key, pemb, 0o600)
	port := fleettest.FreePort(t)
	cfg, err := service.ParseConfig([]byte(fmt.Sprintf(`store: {driver: bolt, path: %s}
mqtt: {brokers: [%q], prefix: atm/e2e, client_id: fleet-e2e-review}
web: {listen: "127.0.0.1:%d", users_file: %s}
commands: {enabled: true, private_key_file: %s, reply_timeout: 5s, resend_interval: 500ms}
`, filepath.Join(dir, "fleet.db"), m.URL(), port, users, key)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, slog.New(slog.DiscardHandler)) }()
	defer func() {
		cancel()
		<-done
	}()
	rv := fleettest.NewReviewer(map[string][]fleettest.Visit{"p-1": {
		{ID: "v-1", TxnID: "T-1", TS: time.Now().Add(-time.Hour)}, {ID: "v-2", TxnID: "T-2", TS: time.Now()}}})
	a := fleettest.StartAgent(t, m.URL(), "atm/e2e", "lyon-07", "atm-1", fleettest.Commands(pub, rv))
	a.Summary(t, 2, "p-1")
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 10 * time.Second}
	do := func(method, path, body string, hdr ...string) (int, map[string]any) {
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Accept", "application/json")
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		r, err := c.Do(req)
		if err != nil {
			return 0, nil
		}
		defer r.Body.Close()
		var out map[string]any
		json.NewDecoder(r.Body).Decode(&out)
		return r.StatusCode, out
	}
	fleettest.WaitFor(t, 10*time.Second, "web up", func() bool { code, _ := do("GET", "/login", ""); return code == 200 })
	_, tok := do("GET", "/login", "")
	_, sess := do("POST", "/login", url.Values{"csrf": {fmt.Sprint(tok["csrf"])}, "user": {"ana"}, "password": {"correct horse"}}.Encode(),
		"Content-Type", "application/x-www-form-urlencoded")
	var out map[string]any
	fleettest.WaitFor(t, 10*time.Second, "the device online in the fleet", func() bool {
		code, d := do("GET", "/api/v1/devices/lyon-07/atm-1", "")
		return code == 200 && d["state"] == "online"
	})
	code, out := do("GET", "/api/v1/devices/lyon-07/atm-1/identities/p-1/visits", "")
	if code != 200 || out["total"] != float64(2) {
		t.Fatalf("visits: %d %v", code, out)
	}
	code, out = do("POST", "/api/v1/identities/split", `{"site":"lyon-07","device":"atm-1","identity":"p-1","visits":["v-1"]}`,
		"Content-Type", "application/json", "X-CSRF-Token", fmt.Sprint(sess["csrf_token"]))
	if code != 200 || out["new_identity"] != "p-split-1" {
		t.Fatalf("split: %d %v", code, out)
	}
	if got := rv.Visits("p-1"); len(got) != 1 || got[0] != "v-2" {
		t.Errorf("p-1 after the split: %v", got)
	}
}

// A run refused for what only the operator can fix exits 78 (the unit's
// RestartPreventExitStatus=): a users file with no user (as the package
// installs it), a missing config. Other failures stay 1.
func TestRunSetupExitStatus(t *testing.T) {
	dir := t.TempDir()
	users := filepath.Join(dir, "users.yaml")
	if err := os.WriteFile(users, []byte("users:\n#  - {name: ana, role: analyst, password_hash: \"$2a$12$...\"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.yaml")
	body := fmt.Sprintf("store: {driver: bolt, path: %s}\nweb: {listen: 127.0.0.1:0, users_file: %s}\n", filepath.Join(dir, "fleet.db"), users)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	if code := runMain(context.Background(), []string{"run", "--config", cfg}, nil, io.Discard, &errb); code != exitSetup ||
		!strings.Contains(errb.String(), "users file: no users") {
		t.Fatalf("no user: exit %d, %q", code, errb.String())
	}
	errb.Reset()
	if code := runMain(context.Background(), []string{"run", "--config", filepath.Join(dir, "missing.yaml")}, nil, io.Discard, &errb); code != exitSetup {
		t.Fatalf("missing config: exit %d, %q", code, errb.String())
	}
	if code := runMain(context.Background(), []string{"compact", "--config", filepath.Join(dir, "missing.yaml")}, nil, io.Discard, io.Discard); code != 1 {
		t.Fatalf("compact with a missing config: exit %d, want 1", code)
	}
}
