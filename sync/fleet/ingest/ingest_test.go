package ingest

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/fleet/storage/boltstore"
	"github.com/periocular/atm-agent/sync/fleet/storage/pgstore"
	"github.com/periocular/atm-agent/sync/wire"
)

const prefix = "atm/test"

type running struct {
	*Ingester
	cancel context.CancelFunc
	done   chan error
}

func (r *running) stop(t testing.TB) {
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("ingest Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("ingest Run did not return within 10s of cancel")
	}
}

func start(t testing.TB, broker string, st storage.Store, clientID, group string) *running {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Brokers, cfg.Prefix, cfg.ClientID, cfg.SharedGroup = []string{broker}, prefix, clientID, group
	cfg.ReconnectBackoffMax, cfg.ConnectTimeout, cfg.KeepAlive = 500*time.Millisecond, 2*time.Second, 2*time.Second
	in, err := New(cfg, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Ingester: in, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- in.Run(ctx) }()
	fleettest.WaitFor(t, 10*time.Second, clientID+" subscribed", func() bool { return in.Stats().Connected })
	return r
}

func openBolt(t testing.TB, path string) *boltstore.Store {
	s, err := boltstore.Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func device(t testing.TB, st storage.Store, site, dev string) storage.Device {
	d, err := st.Device(context.Background(), site, dev)
	if err != nil {
		return storage.Device{}
	}
	return d
}

// Agents publishing through the agent's own publisher into a real
// mosquitto; the service ingests into a real bbolt file: devices, gaps,
// duplicates, last will, queued delivery across a restart of the service,
// and live state rebuilt from retained statuses into an empty store.
func TestIngestMosquittoBolt(t *testing.T) {
	m := fleettest.StartMosquitto(t, "")
	dir := t.TempDir()
	st := openBolt(t, filepath.Join(dir, "fleet.db"))
	in := start(t, m.URL(), st, "fleet-1", "")

	a1 := fleettest.StartAgent(t, m.URL(), prefix, "lyon-07", "atm-1")
	a2 := fleettest.StartAgent(t, m.URL(), prefix, "paris-01", "atm-2")
	a1.Summary(t, 3, "p-1", "p-2")
	a1.Skip() // seq 2 is never sent: one gap
	alertID := a1.Alert(t, "many-visits-24h", "p-1", 7)
	for i := 0; i < 5; i++ {
		a2.Summary(t, i, "p-9")
	}
	fleettest.WaitFor(t, 10*time.Second, "7 messages applied and 2 statuses", func() bool {
		return in.Stats().Applied == 7 && device(t, st, "lyon-07", "atm-1").State() == "online" && device(t, st, "paris-01", "atm-2").State() == "online"
	})
	d1 := device(t, st, "lyon-07", "atm-1")
	if d1.State() != "online" || d1.MaxSeq != 3 || d1.Gaps() != 1 || d1.OpenAlerts != 1 || d1.Summary == nil {
		t.Errorf("atm-1: state=%s max=%d gaps=%d open=%d", d1.State(), d1.MaxSeq, d1.Gaps(), d1.OpenAlerts)
	}
	d2 := device(t, st, "paris-01", "atm-2")
	if d2.Gaps() != 0 || d2.Unique != 5 || d2.Summary.Seq != 5 {
		t.Errorf("atm-2: gaps=%d unique=%d", d2.Gaps(), d2.Unique)
	}
	a, err := st.Alert(context.Background(), storage.AlertKey{Site: "lyon-07", Device: "atm-1", AlertID: alertID})
	if err != nil || a.Count != 7 || a.IdentityID != "p-1" || a.Seq != 3 {
		t.Errorf("alert: %+v %v", a, err)
	}

	// A redelivered message (same message id) is counted as a duplicate.
	s := wire.Summary{Envelope: wire.NewEnvelope("paris-01", "atm-2", time.Now()), Identities: []wire.IdentityCounts{}}
	s.Seq, s.MessageID = 5, d2.Summary.MessageID
	b, _ := json.Marshal(s)
	fleettest.Publish(t, m.URL(), prefix+"/paris-01/atm-2/summary", b, false)
	fleettest.WaitFor(t, 5*time.Second, "duplicate counted", func() bool { return device(t, st, "paris-01", "atm-2").Duplicates == 1 })

	// Last Will: a crashed agent's offline status reaches the fleet.
	a2.Stop()
	fleettest.WaitFor(t, 5*time.Second, "atm-2 stopped", func() bool { return device(t, st, "paris-01", "atm-2").State() == "stopped" })
	fleettest.DieWithWill(t, m.URL(), prefix, "paris-01", "atm-2")
	fleettest.WaitFor(t, 5*time.Second, "atm-2 offline (last will)", func() bool { return device(t, st, "paris-01", "atm-2").State() == "offline" })

	// The service stops; the agent goes on publishing; the broker queues for
	// the persistent session and the restarted service gets everything.
	in.stop(t)
	for i := 0; i < 20; i++ {
		a1.Summary(t, i, "p-1")
	}
	fleettest.WaitFor(t, 10*time.Second, "agent outbox drained to the broker", func() bool { return a1.Pending() == 0 })
	in = start(t, m.URL(), st, "fleet-1", "")
	fleettest.WaitFor(t, 10*time.Second, "queued messages ingested", func() bool { return device(t, st, "lyon-07", "atm-1").MaxSeq == 23 })
	d1 = device(t, st, "lyon-07", "atm-1")
	if d1.Gaps() != 1 || d1.Unique != 22 {
		t.Errorf("after restart: gaps=%d unique=%d, want 1 and 22", d1.Gaps(), d1.Unique)
	}
	// The subscribe also gave the retained summaries and statuses again:
	// a retained summary already stored is not the device's duplicate
	// (each restart of the service counted one per device).
	fleettest.WaitFor(t, 5*time.Second, "the retained copies taken", func() bool {
		s := in.Stats()
		return s.Applied+s.Duplicates+s.Retained+s.Statuses >= 24
	})
	in.stop(t)
	if d1, d2 := device(t, st, "lyon-07", "atm-1"), device(t, st, "paris-01", "atm-2"); d1.Duplicates != 0 || d2.Duplicates != 1 {
		t.Errorf("after restart: duplicates %d and %d, want 0 and 1 (the redelivery above)", d1.Duplicates, d2.Duplicates)
	}
	// An operator clears a retained topic (a renamed device): not a
	// rejected payload.
	if _, err := in.Decode(prefix+"/paris-01/atm-2/summary", nil, time.Now()); err != nil {
		t.Errorf("a cleared retained summary: %v, want it ignored", err)
	}

	// A new instance with an empty store knows every device's availability
	// at once from the retained statuses.
	fresh := openBolt(t, filepath.Join(dir, "fresh.db"))
	defer fresh.Close()
	in2 := start(t, m.URL(), fresh, "fleet-fresh", "")
	defer in2.stop(t)
	fleettest.WaitFor(t, 5*time.Second, "retained statuses", func() bool {
		return device(t, fresh, "lyon-07", "atm-1").State() == "online" && device(t, fresh, "paris-01", "atm-2").State() == "offline"
	})
	st.Close()
}

// Bad input: each is rejected with a clear reason, kept in the store, and
// ingestion goes on.
func TestIngestRejects(t *testing.T) {
	m := fleettest.StartMosquitto(t, "")
	st := openBolt(t, filepath.Join(t.TempDir(), "fleet.db"))
	defer st.Close()
	in := start(t, m.URL(), st, "fleet-rej", "")
	defer in.stop(t)
	good := func(site, dev string, seq uint64) wire.Summary {
		s := wire.Summary{Envelope: wire.NewEnvelope(site, dev, time.Now()), Identities: []wire.IdentityCounts{}}
		s.Seq, s.MessageID = seq, fmt.Sprintf("%d-x", seq)
		return s
	}
	withField := func(v any, k string, val any) []byte {
		b, _ := json.Marshal(v)
		var obj map[string]any
		json.Unmarshal(b, &obj)
		if val == nil {
			delete(obj, k)
		} else {
			obj[k] = val
		}
		b, _ = json.Marshal(obj)
		return b
	}
	// withIdentity adds one identity carrying an extra field k.
	withIdentity := func(v wire.Summary, k string, val any) []byte {
		now := time.Now().UTC()
		id, _ := json.Marshal(wire.IdentityCounts{ID: "p-1", FirstSeen: now, LastSeen: now})
		var obj map[string]any
		json.Unmarshal(id, &obj)
		obj[k] = val
		b, _ := json.Marshal(v)
		var sum map[string]any
		json.Unmarshal(b, &sum)
		sum["identities"] = []any{obj}
		b, _ = json.Marshal(sum)
		return b
	}
	cases := []struct {
		topic   string
		payload []byte
		want    string
	}{
		{prefix + "/s1/d1/summary", []byte("{not json"), "not a JSON object"},
		{prefix + "/s1/d1/summary", withField(good("s1", "d1", 1), "embedding", []float64{0.1, 0.2}), `field "embedding" is forbidden`},
		{prefix + "/s1/d1/summary", withField(good("s1", "d1", 2), "schema_version", 3), "schema_version 3 not supported"},
		{prefix + "/s1/d1/summary", withField(good("s1", "d1", 3), "message_id", nil), "violates summary.schema.json"},
		{prefix + "/s1/d1/summary", withField(good("s1", "OTHER", 4), "x", nil), "payload names s1/OTHER"},
		{prefix + "/$s1/d1/summary", withField(good("$s1", "d1", 5), "x", nil), "topic:"},
		// Unknown fields are read past, but never biometric or card data,
		// at any depth.
		{prefix + "/s1/d1/summary", withIdentity(good("s1", "d1", 6), "card_hash", "9f86d081"), `field "card_hash" is forbidden`},
	}
	for _, c := range cases {
		fleettest.Publish(t, m.URL(), c.topic, c.payload, false)
	}
	fleettest.Publish(t, m.URL(), prefix+"/s1/d1/summary", withField(good("s1", "d1", 9), "x", nil), false)
	// A newer agent's optional fields (the versioning policy adds them
	// within a schema_version): read, not rejected.
	fleettest.Publish(t, m.URL(), prefix+"/s1/d1/summary", withField(good("s1", "d1", 10), "camera", "front"), false)
	fleettest.Publish(t, m.URL(), prefix+"/s1/d1/summary", withIdentity(good("s1", "d1", 11), "return_rate", 0.4), false)
	defer func() { t.Logf("stats %+v", in.Stats()) }()
	fleettest.WaitFor(t, 10*time.Second, "rejects and the good ones", func() bool {
		s := in.Stats()
		return s.Rejected == uint64(len(cases)) && s.Applied == 3
	})
	rj, err := st.Rejects(context.Background(), 100)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range cases {
		r := rj[len(rj)-1-i] // newest first
		if !strings.Contains(r.Error, c.want) || r.Topic != c.topic {
			t.Errorf("reject %d: topic %q error %q, want %q", i, r.Topic, r.Error, c.want)
		}
		t.Logf("%s: %s", r.Topic, r.Error)
	}
	if d := device(t, st, "s1", "d1"); d.Rejected != len64(cases)-1 || d.MaxSeq != 11 {
		t.Errorf("device: rejected=%d max=%d", d.Rejected, d.MaxSeq)
	}
}

func len64[T any](s []T) uint64 { return uint64(len(s)) }

// Scale-out: two instances in one shared-subscription group on one
// PostgreSQL split the ingest, and both see the whole fleet.
func TestSharedSubscriptionPostgres(t *testing.T) {
	m := fleettest.StartMosquitto(t, "")
	pg := fleettest.StartPostgres(t)
	dsn := pg.NewDatabase(t)
	ctx := context.Background()
	var stores []*pgstore.Store
	var ins []*running
	for i := 0; i < 2; i++ {
		s, err := pgstore.Open(ctx, dsn, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		stores = append(stores, s)
		r := start(t, m.URL(), s, fmt.Sprintf("fleet-%d", i), "fleet")
		defer r.stop(t)
		ins = append(ins, r)
	}
	const perAgent = 60
	agents := []*fleettest.Agent{
		fleettest.StartAgent(t, m.URL(), prefix, "lyon-07", "atm-1"),
		fleettest.StartAgent(t, m.URL(), prefix, "lyon-07", "atm-2"),
	}
	for i := 0; i < perAgent; i++ {
		for _, a := range agents {
			if i%10 == 9 {
				a.Alert(t, "many-visits-24h", fmt.Sprintf("p-%d", i), 6)
			} else {
				a.Summary(t, i, "p-1")
			}
		}
	}
	total := func() uint64 { return ins[0].Stats().Applied + ins[1].Stats().Applied }
	fleettest.WaitFor(t, 20*time.Second, "all messages applied", func() bool { return total() == 2*perAgent })
	s0, s1 := ins[0].Stats(), ins[1].Stats()
	t.Logf("instance 0 applied %d, instance 1 applied %d (duplicates %d, %d)", s0.Applied, s1.Applied, s0.Duplicates, s1.Duplicates)
	if s0.Applied == 0 || s1.Applied == 0 {
		t.Errorf("shared subscription did not split the ingest: %d / %d", s0.Applied, s1.Applied)
	}
	for i, s := range stores {
		devs, err := s.Devices(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(devs) != 2 {
			t.Fatalf("instance %d sees %d devices", i, len(devs))
		}
		for _, d := range devs {
			if d.Unique != perAgent || d.Gaps() != 0 || d.OpenAlerts != perAgent/10 || d.State() != "online" {
				t.Errorf("instance %d, %s: unique=%d gaps=%d open=%d state=%s", i, d.Device, d.Unique, d.Gaps(), d.OpenAlerts, d.State())
			}
		}
	}
}

func TestConfigValidate(t *testing.T) {
	ok := DefaultConfig()
	ok.Brokers, ok.ClientID = []string{"tcp://127.0.0.1:1883"}, "fleet-1"
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Config){
		"no broker":    func(c *Config) { c.Brokers = nil },
		"no client id": func(c *Config) { c.ClientID = "" },
		"bad prefix":   func(c *Config) { c.Prefix = "$SYS" },
		"bad group":    func(c *Config) { c.SharedGroup = "a/b" },
		"cert no key":  func(c *Config) { c.TLS.CertFile = "c.pem" },
		"zero batch":   func(c *Config) { c.Batch = 0 },
	} {
		c := ok
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	ok.SharedGroup = "fleet"
	f := ok.Filters()
	if f["$share/fleet/atm/+/+/alert"] != 1 || f["atm/+/+/status"] != 1 || len(f) != 3 {
		t.Errorf("filters = %v", f)
	}
}

// The broker connection over mutual TLS: the right CA and client
// certificate ingest; a wrong CA says why and ingests nothing.
func TestIngestTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := fleettest.MakeCert(t, dir, "ca", nil, nil, true, x509.ExtKeyUsageAny)
	fleettest.MakeCert(t, dir, "server", ca, caKey, false, x509.ExtKeyUsageServerAuth)
	fleettest.MakeCert(t, dir, "client", ca, caKey, false, x509.ExtKeyUsageClientAuth)
	fleettest.MakeCert(t, dir, "otherca", nil, nil, true, x509.ExtKeyUsageAny)
	tlsPort := fleettest.FreePort(t)
	m := fleettest.StartMosquitto(t, fmt.Sprintf("listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\nrequire_certificate true\n",
		tlsPort, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")))
	tlsURL := fmt.Sprintf("ssl://127.0.0.1:%d", tlsPort)
	run := func(clientID string, tc TLSConfig) (*Ingester, *boltstore.Store, func()) {
		st := openBolt(t, filepath.Join(dir, clientID+".db"))
		cfg := DefaultConfig()
		cfg.Brokers, cfg.Prefix, cfg.ClientID, cfg.TLS = []string{tlsURL}, prefix, clientID, tc
		cfg.ReconnectBackoffMax, cfg.ConnectTimeout, cfg.KeepAlive = 500*time.Millisecond, 2*time.Second, 2*time.Second
		in, err := New(cfg, st, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); in.Run(ctx) }()
		return in, st, func() { cancel(); <-done; st.Close() }
	}
	good := TLSConfig{CAFile: filepath.Join(dir, "ca.pem"), CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client.key")}
	in, st, stop := run("fleet-tls", good)
	defer stop()
	bad := good
	bad.CAFile = filepath.Join(dir, "otherca.pem")
	inBad, _, stopBad := run("fleet-tls-wrong-ca", bad)
	defer stopBad()
	fleettest.WaitFor(t, 10*time.Second, "TLS subscription", func() bool { return in.Stats().Connected })
	a := fleettest.StartAgent(t, m.URL(), prefix, "lyon-07", "atm-1") // the agent on the plain listener
	a.Summary(t, 2, "p-1")
	fleettest.WaitFor(t, 10*time.Second, "summary over TLS", func() bool { return device(t, st, "lyon-07", "atm-1").MaxSeq == 1 })
	fleettest.WaitFor(t, 10*time.Second, "the wrong CA reported", func() bool {
		return strings.Contains(inBad.Stats().LastError, "unknown authority")
	})
	if s := inBad.Stats(); s.Connected || s.Applied != 0 || s.Statuses != 0 {
		t.Errorf("wrong CA: %+v", s)
	}
	if at := inBad.Stats().LastErrorAt; at.IsZero() || time.Since(at) > time.Minute {
		t.Errorf("last_error_at %v, want the time of the error", at)
	}
	t.Logf("wrong CA: %s", inBad.Stats().LastError)
	if _, err := New(Config{Brokers: []string{tlsURL}, Prefix: "atm", ClientID: "x", Batch: 1, BatchWait: time.Millisecond, MaxPayload: 4096,
		KeepAlive: time.Second, ConnectTimeout: time.Second, ReconnectBackoffMax: time.Second,
		TLS: TLSConfig{CAFile: filepath.Join(dir, "missing.pem")}}, st, nil); err == nil || !strings.Contains(err.Error(), "ca_file") {
		t.Errorf("missing CA file: %v", err)
	}
}
