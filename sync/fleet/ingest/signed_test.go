package ingest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/wire"
)

// pin pins pub for site/device in st.
func pin(t testing.TB, st storage.Store, site, device string, pub ed25519.PublicKey) {
	t.Helper()
	if err := st.PutDeviceKey(context.Background(), storage.DeviceKey{Site: site, Device: device, PublicKey: pub, Pinned: time.Now(), By: "test"}, storage.KeyChange{User: "test", Role: "cli"}); err != nil {
		t.Fatal(err)
	}
}

// rejectsOf lists the kept rejects whose error holds what.
func rejectsOf(t testing.TB, st storage.Store, what string) []storage.Reject {
	t.Helper()
	all, err := st.Rejects(context.Background(), 100)
	if err != nil {
		t.Fatal(err)
	}
	var out []storage.Reject
	for _, r := range all {
		if strings.Contains(r.Error, what) {
			out = append(out, r)
		}
	}
	return out
}

// TestIngestSignedMessages: real agents (the agent's publisher) through
// mosquitto into a bbolt store. A device whose key is pinned: its signed
// status, summary and alert are taken as authenticated; an alert and a
// status forged on its topics (unsigned, signed by another key, its own
// signed alert altered to name another pinned device and republished
// there, its own alert republished on another device's topic) are
// refused, counted in unauthenticated (or rejected) and kept as rejects,
// and change neither its sequence accounting nor its status. An agent of
// an earlier release (unsigned, no key pinned) is taken as before,
// unauthenticated. With require_signed, a new instance takes the pinned
// device's retained messages and refuses the unpinned one's.
func TestIngestSignedMessages(t *testing.T) {
	m := fleettest.StartMosquitto(t, "")
	dir := t.TempDir()
	st := openBolt(t, filepath.Join(dir, "fleet.db"))
	defer st.Close()
	_, key, _ := ed25519.GenerateKey(nil)
	_, forger, _ := ed25519.GenerateKey(nil)
	_, keyC, _ := ed25519.GenerateKey(nil)
	pin(t, st, "lyon-07", "atm-1", key.Public().(ed25519.PublicKey))
	pin(t, st, "lyon-07", "atm-3", keyC.Public().(ed25519.PublicKey))
	in := start(t, m.URL(), st, "fleet-sig", "")
	defer in.stop(t)

	signed := fleettest.StartAgent(t, m.URL(), prefix, "lyon-07", "atm-1", fleettest.Signed(key))
	old := fleettest.StartAgent(t, m.URL(), prefix, "paris-01", "atm-2")
	signed.Summary(t, 3, "p-1")
	alertID := signed.Alert(t, "many-visits-24h", "p-1", 7)
	old.Summary(t, 2, "p-9")
	oldAlert := old.Alert(t, "many-visits-24h", "p-9", 6)
	fleettest.WaitFor(t, 10*time.Second, "4 messages applied, 2 statuses", func() bool {
		return in.Stats().Applied == 4 && device(t, st, "lyon-07", "atm-1").State() == "online" && device(t, st, "paris-01", "atm-2").State() == "online"
	})
	alert := func(site, dev, id string) storage.Alert {
		a, err := st.Alert(context.Background(), storage.AlertKey{Site: site, Device: dev, AlertID: id})
		if err != nil {
			t.Fatalf("alert %s: %v", id, err)
		}
		return a
	}
	d1, d2 := device(t, st, "lyon-07", "atm-1"), device(t, st, "paris-01", "atm-2")
	if !d1.StatusAuthenticated || !d1.SummaryAuthenticated || !alert("lyon-07", "atm-1", alertID).Authenticated {
		t.Errorf("pinned and signed: status %v, summary %v, alert %v: want all authenticated", d1.StatusAuthenticated, d1.SummaryAuthenticated,
			alert("lyon-07", "atm-1", alertID).Authenticated)
	}
	if d2.StatusAuthenticated || d2.SummaryAuthenticated || alert("paris-01", "atm-2", oldAlert).Authenticated || d2.MaxSeq != 2 {
		t.Errorf("unpinned, unsigned: taken as authenticated, or not taken: %+v", d2)
	}
	if s := in.Stats(); s.Unauthenticated != 0 || s.Rejected != 0 {
		t.Fatalf("stats %+v before any forgery", s)
	}

	// Forgeries on atm-1's topics.
	unsigned, byOther := fleettest.AlertPayload(t, forger, "lyon-07", "atm-1", "forged-1", "p-mule", 50, 1000)
	st1 := wire.Status{Envelope: wire.NewEnvelope("lyon-07", "atm-1", time.Now()), State: wire.StateOffline}
	st1.SchemaVersion, st1.MessageID = wire.StatusSchemaVersion, "st-forged"
	forgedStatus, _ := json.Marshal(st1)
	// atm-1's own signed alert, as the broker gives it.
	got := make(chan []byte, 1)
	sub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(m.URL()).SetClientID("fleettest-sub"))
	if tok := sub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber: %v", tok.Error())
	}
	defer sub.Disconnect(50)
	if tok := sub.Subscribe(prefix+"/lyon-07/atm-1/alert", 1, func(_ mqtt.Client, msg mqtt.Message) {
		select {
		case got <- msg.Payload():
		default:
		}
	}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	signed.Alert(t, "many-visits-24h", "p-1", 8)
	var genuine []byte
	select {
	case genuine = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("atm-1's second alert not seen")
	}
	fleettest.WaitFor(t, 5*time.Second, "atm-1's second alert applied", func() bool { return in.Stats().Applied == 5 })
	renamed := bytes.Replace(genuine, []byte(`"device":"atm-1"`), []byte(`"device":"atm-3"`), 1)
	if bytes.Equal(renamed, genuine) {
		t.Fatal("the genuine alert does not name atm-1")
	}
	for _, f := range []struct {
		topic   string
		payload []byte
	}{
		{prefix + "/lyon-07/atm-1/alert", unsigned},
		{prefix + "/lyon-07/atm-1/alert", byOther},
		{prefix + "/lyon-07/atm-1/status", forgedStatus},
		{prefix + "/lyon-07/atm-3/alert", renamed}, // atm-1's signature, atm-3's topic and name
	} {
		fleettest.Publish(t, m.URL(), f.topic, f.payload, false)
	}
	fleettest.Publish(t, m.URL(), prefix+"/lyon-07/atm-3/alert", genuine, false) // names atm-1
	fleettest.WaitFor(t, 5*time.Second, "5 refused", func() bool { return in.Stats().Rejected == 5 })
	if s := in.Stats(); s.Unauthenticated != 4 || s.Applied != 5 {
		t.Errorf("stats %+v: want 4 unauthenticated of 5 rejected, nothing more applied", s)
	}
	d1 = device(t, st, "lyon-07", "atm-1")
	if d1.MaxSeq != 3 || d1.Unique != 3 || d1.State() != "online" || !d1.StatusAuthenticated || d1.Rejected != 3 {
		t.Errorf("atm-1 after forgeries: max_seq %d unique %d state %s authenticated %v rejected %d: want 3, 3, online, true, 3",
			d1.MaxSeq, d1.Unique, d1.State(), d1.StatusAuthenticated, d1.Rejected)
	}
	if _, err := st.Alert(context.Background(), storage.AlertKey{Site: "lyon-07", Device: "atm-1", AlertID: "forged-1"}); err == nil {
		t.Error("the forged alert was stored")
	}
	rs := rejectsOf(t, st, "not authenticated")
	for _, r := range rs {
		t.Logf("reject %s: %s", r.Topic, r.Error)
	}
	if len(rs) != 4 || len(rejectsOf(t, st, "message is not signed")) != 2 || len(rejectsOf(t, st, "does not verify with the device's key")) != 2 {
		t.Errorf("%d rejects for the signature, want 4 with their reasons", len(rs))
	}

	// The old agent is still taken.
	old.Summary(t, 4, "p-9")
	fleettest.WaitFor(t, 5*time.Second, "the unsigned agent's summary", func() bool { return device(t, st, "paris-01", "atm-2").MaxSeq == 3 })

	// require_signed: a new instance with a fresh store and the same
	// pins takes atm-1's retained status and summary, refuses atm-2's.
	fresh := openBolt(t, filepath.Join(dir, "fresh.db"))
	defer fresh.Close()
	pin(t, fresh, "lyon-07", "atm-1", key.Public().(ed25519.PublicKey))
	cfg := DefaultConfig()
	cfg.Brokers, cfg.Prefix, cfg.ClientID, cfg.RequireSigned = []string{m.URL()}, prefix, "fleet-strict", true
	strict, err := New(cfg, fresh, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- strict.Run(ctx) }()
	defer func() { cancel(); <-done }()
	// atm-2's agent runs on: a status it sends live (a change) while the
	// strict instance subscribes is refused too, so atm-2's refusals are
	// at least its retained status and summary, and nothing else is.
	refusedKinds := func() map[string]bool {
		kinds := map[string]bool{}
		for _, r := range rejectsOf(t, fresh, "require_signed") {
			kinds[r.Topic] = true
		}
		return kinds
	}
	fleettest.WaitFor(t, 10*time.Second, "retained messages taken or refused", func() bool {
		k := refusedKinds()
		return device(t, fresh, "lyon-07", "atm-1").Summary != nil &&
			k[prefix+"/paris-01/atm-2/status"] && k[prefix+"/paris-01/atm-2/summary"]
	})
	if d := device(t, fresh, "lyon-07", "atm-1"); !d.StatusAuthenticated || !d.SummaryAuthenticated {
		t.Errorf("strict: atm-1 %+v", d)
	}
	if _, err := fresh.Device(context.Background(), "paris-01", "atm-2"); err == nil {
		t.Error("strict: the unpinned device was recorded")
	}
	if k := refusedKinds(); len(k) != 2 {
		t.Errorf("strict: rejects naming require_signed on %v, want atm-2's status and summary alone", k)
	}
	if n, r := strict.Stats().Unauthenticated, len(rejectsOf(t, fresh, "require_signed")); n < 2 || int(n) != r {
		t.Errorf("strict: %d unauthenticated, %d rejects naming require_signed: want the same, at least 2", n, r)
	}
}
