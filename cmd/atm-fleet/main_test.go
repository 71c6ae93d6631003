package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/fleet/service"
	"github.com/periocular/atm-agent/sync/fleet/storage/boltstore"
)

func TestConfig(t *testing.T) {
	var out bytes.Buffer
	if code := runMain(context.Background(), []string{"config", "default"}, nil, &out, io.Discard); code != 0 {
		t.Fatalf("config default: exit %d", code)
	}
	if _, err := service.ParseConfig(out.Bytes()); err != nil {
		t.Fatalf("the default config does not parse: %v\n%s", err, out.String())
	}
	for name, y := range map[string]string{
		"unknown key":     "store: {driver: bolt, path: /x, size: 3}\n",
		"bad driver":      "store: {driver: sqlite}\n",
		"postgres no dsn": "store: {driver: postgres}\n",
		"short retention": "retention: {history: 1m}\n",
		"no client id":    "mqtt: {client_id: \"\"}\n",
		"bad listen":      "web: {listen: 8080}\n",
		"bad level":       "log_level: loud\n",
	} {
		if _, err := service.ParseConfig([]byte(y)); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
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

// The service as a whole: a real mosquitto, a simulated agent, the bbolt
// store and the web server on a loopback port.
func TestRunEndToEnd(t *testing.T) {
	m := fleettest.StartMosquitto(t, "")
	dir := t.TempDir()
	h, _ := bcrypt.GenerateFromPassword([]byte("correct horse"), bcrypt.MinCost)
	users := filepath.Join(dir, "users.yaml")
	os.WriteFile(users, []byte(fmt.Sprintf("users:\n  - {name: ana, role: analyst, password_hash: %q}\n", h)), 0o600)
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
