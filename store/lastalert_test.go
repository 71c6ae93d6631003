package store

import (
	"context"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/store/record"
)

// The last alert stored with an outbox message is found again after a
// reopen, with that message's seq; an alert stored without one (a
// duplicate raise) does not replace it; an erasure that deletes it
// deletes the record naming it (its id is a hash of the identity's).
func TestLastStoredAlert(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t, Options{})
	if _, _, ok, err := s.LastStoredAlert(ctx); ok || err != nil {
		t.Fatalf("new store: ok %v, %v", ok, err)
	}
	put := func(id, ident string, msg bool) uint64 {
		t.Helper()
		a := record.NewAlert{Alert: visit.Alert{ID: id, Rule: "r", IdentityID: ident, Raised: time.Now().UTC()}}
		if msg {
			a.Message = &visit.OutboxMessage{Topic: "alert", Payload: []byte(`{}`)}
		}
		res, err := s.CommitVisit(ctx, record.Commit{Identities: []record.Identity{{ID: ident}},
			Visit:  &visit.Visit{Time: time.Now(), IdentityID: ident, Descriptor: visit.Descriptor{Outcome: visit.FaceFound, Embedding: emb(1, 8)}},
			Alerts: []record.NewAlert{a}})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Enqueued) == 0 {
			return 0
		}
		return res.Enqueued[0].Seq
	}
	put("al-1", "A", true)
	seq2 := put("al-2", "B", true)
	put("al-3", "A", false)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := CheckFile(ctx, path, CheckOptions{})
	if err != nil || !rep.OK() {
		t.Fatalf("db check with the record: %+v %v", rep, err)
	}
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, seq, ok, err := s.LastStoredAlert(ctx)
	if err != nil || !ok || a.ID != "al-2" || a.IdentityID != "B" || seq != seq2 || seq == 0 {
		t.Fatalf("after a reopen: %+v seq %d ok %v %v, want al-2 with seq %d", a, seq, ok, err, seq2)
	}
	if _, err := s.PurgeIdentity(ctx, "B"); err != nil {
		t.Fatal(err)
	}
	if a, _, ok, err := s.LastStoredAlert(ctx); ok || err != nil {
		t.Fatalf("after B's erasure: %+v ok %v %v, want none", a, ok, err)
	}
	if err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bMeta).Get(kLastAlert); v != nil {
			t.Errorf("after B's erasure the meta record still names %q", v[8:])
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
