package mqttsync

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/store"
	"github.com/periocular/atm-agent/store/record"
	"github.com/periocular/atm-agent/sync/wire"
)

// openStore opens a new store file, closed at the test's end.
func openStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "agent.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// enqueueStore commits one message of kind (payload number i) to the
// store's outbox.
func enqueueStore(t *testing.T, st *store.Store, kind string, i int) {
	t.Helper()
	now := time.Now()
	m := visit.OutboxMessage{Kind: kind, Topic: kind, Created: now, Payload: payload(t, kind, i, now)}
	if _, err := st.CommitVisit(context.Background(), record.Commit{Outbox: []visit.OutboxMessage{m}}); err != nil {
		t.Fatal(err)
	}
}

// A restarted publisher on the real store starts its status seq at what
// the previous run delivered, not at 0: the docs promise the status's seq
// is the highest seq the broker acknowledged, and a dashboard compares it
// with what it holds. Messages left in the outbox are not counted.
func TestStatusSeqSurvivesRestart(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	enqueue := func(from, to int) {
		t.Helper()
		for i := from; i <= to; i++ {
			enqueueStore(t, st, wire.KindAlert, i)
		}
	}
	enqueue(1, 5)

	broker := startMochi(t)
	p, cancel, done := runPublisher(t, testConfig(broker), Deps{Outbox: st})
	waitFor(t, 5*time.Second, "outbox drained", func() bool { n, _, _ := st.OutboxStats(); return n == 0 })
	waitFor(t, 2*time.Second, "seq 5 acknowledged", func() bool { return p.Stats().LastAckedSeq == 5 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	done <- nil // for the cleanup

	// Two more while the agent is down; then a run that cannot reach any
	// broker, so nothing new is acknowledged.
	enqueue(6, 7)
	if seq, err := st.OutboxSentSeq(ctx); err != nil || seq != 5 {
		t.Fatalf("OutboxSentSeq %d, %v; want 5 (6 and 7 are unsent)", seq, err)
	}
	cfg := testConfig("tcp://127.0.0.1:1")
	p2, _, _ := runPublisher(t, cfg, Deps{Outbox: st})
	waitFor(t, 2*time.Second, "seq seeded from the store", func() bool { return p2.Stats().LastAckedSeq == 5 })
	if n, _, _ := st.OutboxStats(); n != 2 {
		t.Fatalf("outbox holds %d, want the 2 unsent", n)
	}
}

// A restarted publisher on the real store puts the last summary the
// broker acknowledged in its first state, before any new summary: the
// state's summary no longer disappears for a period after each restart
// (or crash), which a dashboard reading the one state topic showed as
// "no data".
func TestStateSummarySurvivesRestart(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	enqueueStore(t, st, wire.KindSummary, 9)
	broker := startMochi(t)
	cfg := testConfig(broker)
	_, cancel, done := runPublisher(t, cfg, Deps{Outbox: st})
	waitFor(t, 5*time.Second, "outbox drained", func() bool { n, _, _ := st.OutboxStats(); return n == 0 })
	waitFor(t, 2*time.Second, "state summary kept", func() bool { b, _ := st.StateSummary(ctx); return b != nil })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	done <- nil // for the cleanup

	// The retained state is cleared, as after a broker restart without
	// persistence; the restarted publisher has nothing new to send.
	clear := newCollector(t, broker, "clear", "#", false, nil)
	clear.c.Publish("atm/test/s1/atm-1/state", 1, true, []byte{}).Wait()
	clear.c.Disconnect(50)
	runPublisher(t, cfg, Deps{Outbox: st})
	col := newCollector(t, broker, "dash", "atm/test/s1/atm-1/state", false, nil)
	var ds wire.DeviceState
	waitFor(t, 5*time.Second, "the restarted agent's state", func() bool {
		for _, r := range col.snapshot() {
			if len(r.Payload) > 0 && json.Unmarshal(r.Payload, &ds) == nil && ds.State == wire.StateOnline {
				return true
			}
		}
		return false
	})
	if ds.Summary == nil || ds.Summary.Seq != 1 || ds.Summary.Totals.Visits.H24 != 9 {
		t.Fatalf("state after the restart carries summary %+v, want the one delivered before (seq 1, 9 visits in 24 h)", ds.Summary)
	}
	// Malformed kept bytes are refused by the store.
	if err := st.KeepStateSummary(ctx, []byte("[1]")); err == nil {
		t.Error("kept a state summary that is not an object")
	}
}
