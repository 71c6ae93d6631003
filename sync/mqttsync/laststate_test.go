package mqttsync

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/store/record"
	"github.com/periocular/atm-agent/sync/wire"
)

// An alert whose record the store deleted (retention here; an erasure
// deletes it the same way) before its outbox message was delivered is
// sent, but does not become the state's last_alert: the state names the
// last delivered alert the store still holds, as a restart on that store
// would. Before, the last alert acknowledged was named whatever the store
// said, so an alert erased during an outage came back in the retained
// state once the broker was reachable.
func TestLastAlertNamesOnlyStoredAlerts(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	now := time.Now()
	commit := func(i int, raised time.Time) {
		t.Helper()
		b := payload(t, wire.KindAlert, i, raised)
		var w wire.Alert
		if err := json.Unmarshal(b, &w); err != nil {
			t.Fatal(err)
		}
		a := visit.Alert{ID: w.AlertID, Rule: w.Rule, Kind: w.Kind, IdentityID: w.IdentityID, Window: w.Window, Raised: raised}
		m := visit.OutboxMessage{Kind: wire.KindAlert, Topic: wire.KindAlert, Created: now, Payload: b}
		if _, err := st.CommitVisit(ctx, record.Commit{Alerts: []record.NewAlert{{Alert: a, Message: &m}}}); err != nil {
			t.Fatal(err)
		}
	}
	commit(1, now)                   // kept: seq 1
	commit(2, now.Add(-2*time.Hour)) // sent after, but expired: seq 2
	if _, err := st.Purge(ctx, now.Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if ok, _ := st.AlertExists(ctx, "a-2"); ok {
		t.Fatal("the expired alert is still stored")
	}
	broker := startMochi(t)
	col := newCollector(t, broker, "dash", "atm/test/s1/atm-1/#", false, nil)
	p, _, _ := runPublisher(t, testConfig(broker), Deps{Outbox: st})
	waitFor(t, 5*time.Second, "both alerts delivered", func() bool { return p.Stats().LastAckedSeq == 2 })
	p.Notify() // a state after the second acknowledgement
	var ds wire.DeviceState
	waitFor(t, 5*time.Second, "a state after both alerts", func() bool {
		for _, r := range col.snapshot() {
			if r.Topic == "atm/test/s1/atm-1/state" && json.Unmarshal(r.Payload, &ds) == nil && ds.Seq == 2 {
				return true
			}
		}
		return false
	})
	if ds.LastAlert == nil || ds.LastAlert.AlertID != "a-1" {
		t.Fatalf("last_alert %+v, want a-1 (a-2 is no longer stored)", ds.LastAlert)
	}

	// The kept one goes too (an erasure): the state is republished at
	// once without it.
	if _, err := st.Purge(ctx, now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	p.AlertsDeleted()
	waitFor(t, 5*time.Second, "a state without last_alert", func() bool {
		snap := col.snapshot()
		for i := len(snap) - 1; i >= 0; i-- {
			if r := snap[i]; r.Topic == "atm/test/s1/atm-1/state" {
				var last wire.DeviceState
				return json.Unmarshal(r.Payload, &last) == nil && last.LastAlert == nil
			}
		}
		return false
	})
}
