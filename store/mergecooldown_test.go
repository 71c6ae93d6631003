package store

import (
	"context"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/store/record"
)

// A consolidation merge (every visit of A relabelled to B, A deleted)
// carries A's last alert per rule to B, so the cooldown that held A holds
// the merged identity and the same person is not alerted again at once; B's
// own later alert wins. A split (A's visits going to two identities) carries
// nothing.
func TestMergeCarriesCooldown(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t, Options{Now: func() time.Time { return t0.Add(2 * time.Hour) }})
	put := func(id, ident string, at time.Time) {
		t.Helper()
		if _, err := s.CommitVisit(ctx, record.Commit{Identities: []record.Identity{{ID: ident}},
			Visit: &visit.Visit{ID: id, Time: at, IdentityID: ident, Descriptor: visit.Descriptor{Outcome: visit.FaceFound, Embedding: emb(1, 8)}}}); err != nil {
			t.Fatal(err)
		}
	}
	alert := func(id, rule, ident string, at time.Time) {
		t.Helper()
		if _, err := s.CommitVisit(ctx, record.Commit{Alerts: []record.NewAlert{{Alert: visit.Alert{ID: id, Rule: rule, IdentityID: ident, Raised: at}}}}); err != nil {
			t.Fatal(err)
		}
	}
	put("a1", "A", t0)
	put("b1", "B", t0.Add(time.Minute))
	put("c1", "C", t0)
	put("c2", "C", t0.Add(time.Minute))
	alert("al-a-visits", "visits", "A", t0.Add(10*time.Minute))
	alert("al-a-cards", "cards", "A", t0.Add(20*time.Minute))
	alert("al-b-cards", "cards", "B", t0.Add(30*time.Minute)) // later than A's: kept
	alert("al-c", "visits", "C", t0.Add(40*time.Minute))

	// Merge A into B.
	if _, err := s.CommitVisit(ctx, record.Commit{Relabels: []record.Relabel{{VisitID: "a1", IdentityID: "B"}},
		DeleteIdentities: []string{"A"}}); err != nil {
		t.Fatal(err)
	}
	last := func(rule, ident string) time.Time {
		t.Helper()
		at, ok, err := s.LastAlert(ctx, rule, ident)
		if err != nil || !ok {
			t.Fatalf("LastAlert(%s, %s): %v %v", rule, ident, ok, err)
		}
		return at
	}
	if at := last("visits", "B"); !at.Equal(t0.Add(10 * time.Minute)) {
		t.Errorf("B's visits cooldown after the merge: %v, want A's %v", at, t0.Add(10*time.Minute))
	}
	if at := last("cards", "B"); !at.Equal(t0.Add(30 * time.Minute)) {
		t.Errorf("B's cards cooldown after the merge: %v, want its own later one", at)
	}

	// A deletion request for B removes its cooldowns, the carried one too.
	if _, err := s.PurgeIdentity(ctx, "B"); err != nil {
		t.Fatal(err)
	}
	for _, rule := range []string{"visits", "cards"} {
		if _, ok, _ := s.LastAlert(ctx, rule, "B"); ok {
			t.Errorf("purged identity B keeps a %s cooldown", rule)
		}
	}

	// Split C into D and E: neither inherits C's cooldown.
	if _, err := s.CommitVisit(ctx, record.Commit{Identities: []record.Identity{{ID: "D"}, {ID: "E"}},
		Relabels:         []record.Relabel{{VisitID: "c1", IdentityID: "D"}, {VisitID: "c2", IdentityID: "E"}},
		DeleteIdentities: []string{"C"}}); err != nil {
		t.Fatal(err)
	}
	for _, ident := range []string{"D", "E"} {
		if _, ok, _ := s.LastAlert(ctx, "visits", ident); ok {
			t.Errorf("split half %s inherited a cooldown", ident)
		}
	}
}

// An analyst's split (CarryCooldowns) gives the new identity the split
// identity's cooldowns, per rule the later of the two, and leaves the
// split identity its own; a commit naming no two identities fails whole.
func TestSplitCarriesCooldown(t *testing.T) {
	ctx := context.Background()
	now := t0.Add(2 * time.Hour)
	s, _ := openTest(t, Options{Now: func() time.Time { return now }})
	for _, v := range [][2]string{{"x1", "X"}, {"x2", "X"}, {"x3", "X"}} {
		if _, err := s.CommitVisit(ctx, record.Commit{Identities: []record.Identity{{ID: v[1]}},
			Visit: &visit.Visit{ID: v[0], Time: t0, IdentityID: v[1], Descriptor: visit.Descriptor{Outcome: visit.FaceFound, Embedding: emb(1, 8)}}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range []visit.Alert{{ID: "al-visits", Rule: "visits", IdentityID: "X", Raised: t0.Add(10 * time.Minute)},
		{ID: "al-cards", Rule: "cards", IdentityID: "X", Raised: t0.Add(20 * time.Minute)},
		{ID: "al-late", Rule: "late", IdentityID: "X", Raised: now.Add(time.Hour)}} { // a wrong clock's: not carried
		if _, err := s.CommitVisit(ctx, record.Commit{Alerts: []record.NewAlert{{Alert: a}}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.CommitVisit(ctx, record.Commit{Relabels: []record.Relabel{{VisitID: "x3", IdentityID: "Y"}},
		CarryCooldowns: []record.CooldownCarry{{From: "X", To: ""}}}); err == nil {
		t.Fatal("a carry without its identity was committed")
	}
	if _, err := s.CommitVisit(ctx, record.Commit{Identities: []record.Identity{{ID: "Y"}},
		Relabels:       []record.Relabel{{VisitID: "x2", IdentityID: "Y"}, {VisitID: "x3", IdentityID: "Y"}},
		CarryCooldowns: []record.CooldownCarry{{From: "X", To: "Y"}}}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		rule, ident string
		want        time.Time
	}{{"visits", "Y", t0.Add(10 * time.Minute)}, {"cards", "Y", t0.Add(20 * time.Minute)},
		{"visits", "X", t0.Add(10 * time.Minute)}, {"cards", "X", t0.Add(20 * time.Minute)}} {
		at, ok, err := s.LastAlert(ctx, c.rule, c.ident)
		if err != nil || !ok || !at.Equal(c.want) {
			t.Errorf("%s's %s cooldown after the split: %v %v %v, want %v", c.ident, c.rule, at, ok, err, c.want)
		}
	}
	if _, ok, _ := s.LastAlert(ctx, "late", "Y"); ok {
		t.Error("a last alert stamped after the store's clock was carried")
	}
	if n, err := s.Visit(ctx, "x3"); err != nil || n.IdentityID != "Y" {
		t.Errorf("visit x3 after the split: %+v %v", n, err)
	}
}
