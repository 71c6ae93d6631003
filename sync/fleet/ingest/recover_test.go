package ingest

import (
	"context"
	"crypto/ed25519"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/fleet/storage"
)

// TestRecoverAfterNewDeviceKey: an ATM reinstalled with a new device key,
// through mosquitto into bbolt. Everything it sends is refused (the old key
// is pinned) while the broker acknowledges it, so its outbox empties; the
// device says why (signed by another key, since when). Pinning the new key
// and Recover apply its status, summary and alert, authenticated, and not
// an alert forged meanwhile with a third key; a second Recover adds nothing.
func TestRecoverAfterNewDeviceKey(t *testing.T) {
	m := fleettest.StartMosquitto(t, "")
	st := openBolt(t, filepath.Join(t.TempDir(), "fleet.db"))
	defer st.Close()
	_, oldKey, _ := ed25519.GenerateKey(nil)
	_, newKey, _ := ed25519.GenerateKey(nil)
	_, forger, _ := ed25519.GenerateKey(nil)
	pin(t, st, "lyon-07", "atm-1", oldKey.Public().(ed25519.PublicKey))
	in := start(t, m.URL(), st, "fleet-recover", "")
	defer in.stop(t)

	before := fleettest.StartAgent(t, m.URL(), prefix, "lyon-07", "atm-1", fleettest.Signed(oldKey))
	before.Summary(t, 1, "p-1")
	before.Summary(t, 2, "p-1")
	fleettest.WaitFor(t, 10*time.Second, "the first install's summaries", func() bool { return in.Stats().Applied == 2 })
	before.Stop()

	after := fleettest.StartAgent(t, m.URL(), prefix, "lyon-07", "atm-1", fleettest.Signed(newKey))
	after.Summary(t, 4, "p-1", "p-2")
	alertID := after.Alert(t, "many-visits-24h", "p-2", 6)
	_, byForger := fleettest.AlertPayload(t, forger, "lyon-07", "atm-1", "forged-1", "p-mule", 50, 1000)
	fleettest.Publish(t, m.URL(), prefix+"/lyon-07/atm-1/alert", byForger, false)
	// The agent may send a status more (a change) at any time: wait for the
	// forgery's own refusal, not for a count.
	fleettest.WaitFor(t, 10*time.Second, "status, summary, alert and the forgery refused, the outbox acknowledged", func() bool {
		forged := false
		for _, r := range rejectsOf(t, st, "not authenticated") {
			forged = forged || strings.Contains(r.Payload, `"forged-1"`)
		}
		return forged && in.Stats().Unauthenticated >= 4 && after.Pending() == 0
	})
	ctx := context.Background()
	held, err := st.Rejects(ctx, storage.MaxHeldRejects)
	if err != nil {
		t.Fatal(err)
	}
	d := device(t, st, "lyon-07", "atm-1")
	ref := Refusals(d, held)
	if ref == nil || ref.Reason != "other_key" || ref.Count < 4 || ref.Since.Before(d.LastReceived) {
		t.Fatalf("refusal of the reinstalled ATM: %+v, want other_key, 4 or more since its last message taken (%s)", ref, d.LastReceived)
	}
	t.Logf("refused: %s", ref.Text)
	if _, err := st.Alert(ctx, storage.AlertKey{Site: "lyon-07", Device: "atm-1", AlertID: alertID}); err == nil {
		t.Fatal("the alert signed by the new key was taken before its key was pinned")
	}

	cfg := DefaultConfig()
	cfg.Brokers, cfg.Prefix = []string{m.URL()}, prefix
	newPub := newKey.Public().(ed25519.PublicKey)
	pin(t, st, "lyon-07", "atm-1", newPub)
	rec, err := Recover(ctx, cfg, st, "lyon-07", "atm-1", newPub, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if rec.New != 2 || rec.Applied < 3 || rec.Unverified != 1 {
		t.Errorf("recovered %+v, want the summary and the alert new, a status or more applied, the forgery unverified", rec)
	}
	a, err := st.Alert(ctx, storage.AlertKey{Site: "lyon-07", Device: "atm-1", AlertID: alertID})
	if err != nil || !a.Authenticated {
		t.Fatalf("the recovered alert: %+v, %v; want it, authenticated", a, err)
	}
	if _, err := st.Alert(ctx, storage.AlertKey{Site: "lyon-07", Device: "atm-1", AlertID: "forged-1"}); err == nil {
		t.Error("the forged alert was recovered")
	}
	d = device(t, st, "lyon-07", "atm-1")
	// Its summary restarts the sequence (seq 1 again, newer ts): the latest.
	if d.State() != "online" || !d.StatusAuthenticated || !d.SummaryAuthenticated || d.Summary.Totals.Visits.H1 != 4 {
		t.Errorf("device after recovery: %s, status authenticated %v, summary %+v", d.State(), d.StatusAuthenticated, d.Summary)
	}
	if held, _ = st.Rejects(ctx, storage.MaxHeldRejects); Refusals(d, held) != nil {
		t.Errorf("still refused after the recovery: %+v", Refusals(d, held))
	}
	again, err := Recover(ctx, cfg, st, "lyon-07", "atm-1", newPub, time.Now())
	if err != nil || again.New != 0 || again.Applied != rec.Applied {
		t.Errorf("recovered again: %+v, %v; want the same applied, none new", again, err)
	}
}
