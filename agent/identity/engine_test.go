package identity

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
)

var t0 = time.Date(2025, 3, 1, 9, 0, 0, 0, time.UTC)

func testConfig() Config {
	c := DefaultConfig()
	c.Thresholds = Thresholds{UU: 0.4, MM: 0.3, MU: 0.2}
	return c
}

func newTestEngine(t *testing.T, cfg Config, dim int) *Engine {
	t.Helper()
	e, err := New(cfg, dim, WithIDGenerator(SequentialIDs("p-")))
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func mustAssign(t *testing.T, e *Engine, id string, at time.Time, x []float32, m visit.MaskState) Assignment {
	t.Helper()
	a, err := e.Assign(Observation{VisitID: id, Time: at, Embedding: x, Mask: m})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
		ok   bool
	}{
		{"valid", func(*Config) {}, true},
		{"mu disabled zero", func(c *Config) { c.Thresholds.MU = 0 }, true},
		{"mu disabled nan", func(c *Config) { c.Thresholds.MU = math.NaN() }, true},
		{"uu unset", func(c *Config) { c.Thresholds.UU = 0 }, false},
		{"mm unset", func(c *Config) { c.Thresholds.MM = 0 }, false},
		{"mu negative", func(c *Config) { c.Thresholds.MU = -0.1 }, false},
		{"confirm zero", func(c *Config) { c.ConfirmVisits = 0 }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig()
			tc.mod(&c)
			if err := c.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
		})
	}
	if err := DefaultConfig().Validate(); err == nil {
		t.Fatal("default config without thresholds must not validate")
	}
}

func TestRandomID(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := RandomID()
		if len(id) != 12 || id[:2] != "p-" {
			t.Fatalf("RandomID() = %q", id)
		}
		for _, c := range id[2:] {
			if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
				t.Fatalf("RandomID() = %q: not lowercase base32", id)
			}
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id] = true
	}
}

func TestSinglePendingThenConfirmed(t *testing.T) {
	s := newSynth(64, 0.05, 1)
	e := newTestEngine(t, testConfig(), 64)
	p := s.person()
	a := mustAssign(t, e, "v1", t0, s.visitOf(p), visit.Unmasked)
	if !a.New || a.Status != Pending || a.NowConfirmed {
		t.Fatalf("first visit: %+v, want new pending", a)
	}
	if id, _ := e.Identity(a.IdentityID); id.Confidence != 0 || id.Visits != 1 {
		t.Fatalf("single visit identity %+v, want confidence 0 and 1 visit", id)
	}
	var last Assignment
	for k := 2; k <= 5; k++ {
		last = mustAssign(t, e, fmt.Sprint("v", k), t0.Add(time.Duration(k)*time.Hour), s.visitOf(p), visit.Unmasked)
		if last.IdentityID != a.IdentityID {
			t.Fatalf("visit %d went to %s, want %s", k, last.IdentityID, a.IdentityID)
		}
		if k == 2 && !last.NowConfirmed {
			t.Fatalf("second consistent visit did not confirm: %+v", last)
		}
		if k > 2 && last.NowConfirmed {
			t.Fatalf("visit %d re-confirmed", k)
		}
	}
	ids := e.Identities()
	if len(ids) != 1 || ids[0].Visits != 5 || ids[0].Status != Confirmed {
		t.Fatalf("identities %+v, want one confirmed with 5 visits", ids)
	}
	if c := ids[0].Confidence; !(c > 0.5 && c < 1) {
		t.Fatalf("confidence %v, want in (0.5,1) for 5 tight visits", c)
	}
	if !ids[0].FirstSeen.Equal(t0) || !ids[0].LastSeen.Equal(t0.Add(5*time.Hour)) {
		t.Fatalf("first/last seen %v %v", ids[0].FirstSeen, ids[0].LastSeen)
	}
	if last.Distance <= 0 || last.Distance > 0.4 {
		t.Fatalf("distance %v, want in (0,0.4]", last.Distance)
	}
}

func TestConfirmVisits(t *testing.T) {
	s := newSynth(64, 0.05, 2)
	cfg := testConfig()
	cfg.ConfirmVisits = 3
	e := newTestEngine(t, cfg, 64)
	p := s.person()
	for k, want := range []Status{Pending, Pending, Confirmed} {
		a := mustAssign(t, e, fmt.Sprint(k), t0, s.visitOf(p), visit.Unmasked)
		if a.Status != want {
			t.Fatalf("visit %d: status %s, want %s", k, a.Status, want)
		}
	}
}

func TestTwoPeopleNeverMerge(t *testing.T) {
	s := newSynth(64, 0.05, 3)
	e := newTestEngine(t, testConfig(), 64)
	a, b := s.person(), s.person()
	got := map[string]map[int]bool{}
	for k := 0; k < 20; k++ {
		for _, p := range []int{a, b} {
			as := mustAssign(t, e, fmt.Sprint(p, "-", k), t0.Add(time.Duration(k)*time.Minute), s.visitOf(p), visit.Unmasked)
			if got[as.IdentityID] == nil {
				got[as.IdentityID] = map[int]bool{}
			}
			got[as.IdentityID][p] = true
		}
		if k%5 == 4 {
			if _, err := e.Consolidate(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}
	for id, ps := range got {
		if len(ps) > 1 {
			t.Fatalf("identity %s holds both people", id)
		}
	}
	if ids := e.Identities(); len(ids) != 2 {
		t.Fatalf("%d identities, want 2", len(ids))
	}
}

func TestConsolidationRepairsEarlySplitKeepsOlderID(t *testing.T) {
	e := newTestEngine(t, testConfig(), 8) // UU threshold 0.4
	// a1 and a2 are 60 degrees apart (distance 0.5 > 0.4): two identities.
	a1 := mustAssign(t, e, "a1", t0, onCircle(8, 0, 0), visit.Unmasked)
	a2 := mustAssign(t, e, "a2", t0.Add(time.Hour), onCircle(8, 0, 60), visit.Unmasked)
	if a1.IdentityID == a2.IdentityID {
		t.Fatal("60 degrees apart must not match online")
	}
	// a3 between them (0.134 to both) joins the older identity.
	a3 := mustAssign(t, e, "a3", t0.Add(2*time.Hour), onCircle(8, 0, 30), visit.Unmasked)
	if a3.IdentityID != a1.IdentityID {
		t.Fatalf("a3 -> %s, want the older %s", a3.IdentityID, a1.IdentityID)
	}
	// Another person far away stays alone.
	b := mustAssign(t, e, "b1", t0, onCircle(8, 4, 0), visit.Unmasked)
	ch, err := e.Consolidate(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []Change{{Kind: Merge, From: a2.IdentityID, To: a1.IdentityID, VisitIDs: []string{"a2"}}}
	if !slices.EqualFunc(ch, want, func(x, y Change) bool {
		return x.Kind == y.Kind && x.From == y.From && x.To == y.To && slices.Equal(x.VisitIDs, y.VisitIDs)
	}) {
		t.Fatalf("changes %+v, want %+v", ch, want)
	}
	for _, v := range []string{"a1", "a2", "a3"} {
		if id, _ := e.IdentityOf(v); id != a1.IdentityID {
			t.Fatalf("%s in %s, want %s", v, id, a1.IdentityID)
		}
	}
	if id, _ := e.IdentityOf("b1"); id != b.IdentityID {
		t.Fatalf("b1 moved to %s", id)
	}
	if _, ok := e.Identity(a2.IdentityID); ok {
		t.Fatal("merged identity still listed")
	}
	// A second consolidation is a no-op.
	if ch, _ := e.Consolidate(context.Background()); len(ch) != 0 {
		t.Fatalf("second consolidation changed %+v", ch)
	}
}

func TestApplyLabelsSplitAndRelabel(t *testing.T) {
	e := newTestEngine(t, testConfig(), 8)
	// Identity A: 4 visits at the same point; B: 2 visits.
	for i := 0; i < 4; i++ {
		mustAssign(t, e, fmt.Sprint("a", i), t0, onCircle(8, 0, 0), visit.Unmasked)
	}
	mustAssign(t, e, "b0", t0, onCircle(8, 4, 0), visit.Unmasked)
	mustAssign(t, e, "b1", t0, onCircle(8, 4, 0), visit.Unmasked)
	A, _ := e.IdentityOf("a0")
	B, _ := e.IdentityOf("b0")
	e.mu.Lock()
	// a3 leaves A; B falls apart 1/1 so neither half holds its majority.
	ch := e.applyLabels([]int{0, 0, 0, 1, 2, 3})
	e.mu.Unlock()
	if len(ch) != 3 || ch[0].Kind != Split || ch[0].From != A || !slices.Equal(ch[0].VisitIDs, []string{"a3"}) ||
		ch[1].Kind != Relabel || ch[1].From != B || ch[2].Kind != Relabel || ch[2].From != B {
		t.Fatalf("changes %+v", ch)
	}
	if id, _ := e.IdentityOf("a0"); id != A {
		t.Fatalf("majority of A lost its id: %s", id)
	}
	ids := e.Identities()
	if len(ids) != 4 {
		t.Fatalf("%d identities, want 4", len(ids))
	}
	for _, id := range ids {
		if id.ID == B {
			t.Fatal("id B survived without a majority")
		}
		if id.Visits == 1 && id.Status != Pending {
			t.Fatalf("single-visit identity %s is %s", id.ID, id.Status)
		}
	}
}

func TestMaskPairs(t *testing.T) {
	same := onCircle(8, 0, 0)
	near := onCircle(8, 0, 20) // distance 0.06
	tests := []struct {
		name  string
		mu    float64
		match bool
	}{
		{"mu disabled", 0, false},
		{"mu nan", math.NaN(), false},
		{"mu enabled", 0.2, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.Thresholds.MU = tc.mu
			e := newTestEngine(t, cfg, 8)
			a := mustAssign(t, e, "u", t0, same, visit.Unmasked)
			b := mustAssign(t, e, "m", t0, near, visit.Masked)
			if (a.IdentityID == b.IdentityID) != tc.match {
				t.Fatalf("masked/unmasked match = %v, want %v", a.IdentityID == b.IdentityID, tc.match)
			}
			if _, err := e.Consolidate(context.Background()); err != nil {
				t.Fatal(err)
			}
			if n := len(e.Identities()); (n == 1) != tc.match {
				t.Fatalf("after consolidation %d identities", n)
			}
			// Masked with masked still matches.
			c := mustAssign(t, e, "m2", t0, same, visit.Masked)
			if id, _ := e.IdentityOf("m"); c.IdentityID != id {
				t.Fatal("masked visits did not match each other")
			}
		})
	}
}

func TestMixedIdentityUsesLikePairs(t *testing.T) {
	cfg := testConfig()
	cfg.Thresholds.MU = 0.5
	e := newTestEngine(t, cfg, 8)
	a := mustAssign(t, e, "u1", t0, onCircle(8, 0, 0), visit.Unmasked)
	if b := mustAssign(t, e, "m1", t0, onCircle(8, 0, 50), visit.Masked); b.IdentityID != a.IdentityID {
		t.Fatal("MU within 0.5 should match")
	}
	// A second unmasked visit 55 degrees from u1 (distance 0.43 > UU 0.4) is
	// compared with u1 only, even though it is close to m1.
	if c := mustAssign(t, e, "u2", t0, onCircle(8, 0, 55), visit.Unmasked); c.IdentityID == a.IdentityID {
		t.Fatal("like-with-like comparison ignored")
	}
}

func TestForgetAndRemove(t *testing.T) {
	s := newSynth(32, 0.05, 4)
	e := newTestEngine(t, testConfig(), 32)
	p, q := s.person(), s.person()
	for k := 0; k < 4; k++ {
		mustAssign(t, e, fmt.Sprint("p", k), t0.Add(time.Duration(k)*24*time.Hour), s.visitOf(p), visit.Unmasked)
	}
	qa := mustAssign(t, e, "q0", t0, s.visitOf(q), visit.Unmasked)
	pid, _ := e.IdentityOf("p0")
	gone := e.Forget(t0.Add(48 * time.Hour))
	if !slices.Equal(gone, []string{qa.IdentityID}) {
		t.Fatalf("Forget removed %v, want [%s]", gone, qa.IdentityID)
	}
	if e.Len() != 2 {
		t.Fatalf("%d visits left, want 2", e.Len())
	}
	id, ok := e.Identity(pid)
	if !ok || id.Visits != 2 || !id.FirstSeen.Equal(t0.Add(48*time.Hour)) || id.Status != Confirmed {
		t.Fatalf("after Forget: %+v %v", id, ok)
	}
	if _, ok := e.IdentityOf("p0"); ok {
		t.Fatal("forgotten visit still known")
	}
	// New visits still match the remaining members.
	if a := mustAssign(t, e, "p9", t0.Add(100*time.Hour), s.visitOf(p), visit.Unmasked); a.IdentityID != pid {
		t.Fatalf("after Forget the person got %s", a.IdentityID)
	}
	if !e.Remove(pid) || e.Remove(pid) {
		t.Fatal("Remove should succeed once")
	}
	if e.Len() != 0 || len(e.Identities()) != 0 {
		t.Fatalf("after Remove: %d visits, %d identities", e.Len(), len(e.Identities()))
	}
}

func TestRestoreGivesIdenticalDecisions(t *testing.T) {
	s := newSynth(48, 0.08, 5)
	samples, _ := s.dataset(30, 6)
	cfg := testConfig()
	mk := func(gen IDGenerator) *Engine {
		e, err := New(cfg, 48, WithIDGenerator(gen))
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	a := mk(SequentialIDs("x-"))
	half := len(samples) / 2
	for i, sm := range samples[:half] {
		mustAssign(t, a, fmt.Sprint(i), sm.Time, sm.Embedding, sm.Mask)
	}
	if _, err := a.Consolidate(context.Background()); err != nil {
		t.Fatal(err)
	}
	snap := a.Snapshot()
	// Through JSON, as the store may keep it.
	raw, err := json.Marshal(snap)
	if err != nil {
		t.Fatal(err)
	}
	var back Snapshot
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	b := mk(SequentialIDs("y-"))
	if err := b.Restore(back); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a.Identities(), b.Identities()) {
		t.Fatal("restored identities differ")
	}
	// New ids differ by generator; map them and compare the rest.
	m := map[string]string{}
	for i, sm := range samples[half:] {
		x := mustAssign(t, a, fmt.Sprint(half+i), sm.Time, sm.Embedding, sm.Mask)
		y := mustAssign(t, b, fmt.Sprint(half+i), sm.Time, sm.Embedding, sm.Mask)
		if x.New != y.New || x.Distance != y.Distance || x.Status != y.Status {
			t.Fatalf("visit %d: %+v vs %+v", half+i, x, y)
		}
		if x.New {
			m[x.IdentityID] = y.IdentityID
		} else if want, ok := m[x.IdentityID]; ok && want != y.IdentityID || !ok && x.IdentityID != y.IdentityID {
			t.Fatalf("visit %d: %s vs %s", half+i, x.IdentityID, y.IdentityID)
		}
	}
}

func TestRestoreRejectsInconsistentState(t *testing.T) {
	e := newTestEngine(t, testConfig(), 4)
	bad := Snapshot{Dim: 4, Members: []visit.Member{{VisitID: "v", Embedding: []float32{1, 0, 0, 0}, IdentityID: "nope"}}}
	if err := e.Restore(bad); err == nil {
		t.Fatal("unknown identity accepted")
	}
	bad = Snapshot{Dim: 3}
	if err := e.Restore(bad); err == nil {
		t.Fatal("wrong dimension accepted")
	}
}

func TestAssignRejectsBadInput(t *testing.T) {
	e := newTestEngine(t, testConfig(), 4)
	for _, x := range [][]float32{{1, 0, 0}, {0, 0, 0, 0}, {float32(math.NaN()), 0, 0, 1}} {
		if _, err := e.Assign(Observation{VisitID: "v", Embedding: x}); err == nil {
			t.Fatalf("embedding %v accepted", x)
		}
	}
	mustAssign(t, e, "v", t0, []float32{1, 0, 0, 0}, visit.Unmasked)
	if _, err := e.Assign(Observation{VisitID: "v", Embedding: []float32{1, 0, 0, 0}}); err == nil {
		t.Fatal("duplicate visit id accepted")
	}
}

// A template whose norm is below float32's range of reciprocals (a
// subnormal-scaled vector) is normalised in float64: it used to become
// +Inf/NaN (1/norm overflows float32), was accepted and started an identity
// nothing could ever match.
func TestAssignTinyNormTemplate(t *testing.T) {
	s := newSynth(16, 0.02, 9)
	p := s.person()
	e := newTestEngine(t, testConfig(), 16)
	first := mustAssign(t, e, "v1", t0, s.visitOf(p), visit.Unmasked)
	tiny := s.visitOf(p)
	for i := range tiny {
		tiny[i] *= 1e-40
	}
	a := mustAssign(t, e, "v2", t0.Add(time.Minute), tiny, visit.Unmasked)
	if a.IdentityID != first.IdentityID || a.New {
		t.Fatalf("tiny-norm visit of the same person: %+v, want identity %s", a, first.IdentityID)
	}
	for _, x := range e.Snapshot().Members[1].Embedding {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			t.Fatalf("stored embedding has a non-finite value: %v", e.Snapshot().Members[1].Embedding)
		}
	}
}

// TestJoinNeverFounds: Join stores a visit only where Assign would have put
// it in an existing identity (the same cut), else nothing: no identity, no
// id drawn. Offered again once an identity near it exists, it joins; the
// join survives a snapshot and restore, and a plan made before it stays
// valid, the joined visit following its identity.
func TestJoinNeverFounds(t *testing.T) {
	const dim = 8
	e := newTestEngine(t, testConfig(), dim) // UU cut 0.4: within about 53 degrees
	poor := Observation{VisitID: "poor", Time: t0, Embedding: onCircle(dim, 0, 10), Mask: visit.Unmasked}
	if as, ok, err := e.Join(poor); err != nil || ok || as.IdentityID != "" {
		t.Fatalf("join with no identity: %+v, %v, %v", as, ok, err)
	}
	if e.Len() != 0 || e.IdentityCount() != 0 {
		t.Fatalf("a refused join stored %d visits, %d identities", e.Len(), e.IdentityCount())
	}
	a := mustAssign(t, e, "a1", t0.Add(time.Hour), onCircle(dim, 0, 0), visit.Unmasked)
	if a.IdentityID != "p-0001" {
		t.Fatalf("first identity %s: the refused join drew an id", a.IdentityID)
	}
	b := mustAssign(t, e, "b1", t0.Add(2*time.Hour), onCircle(dim, 0, 120), visit.Unmasked)
	if !b.New {
		t.Fatalf("b1 joined %s", b.IdentityID)
	}
	p, err := e.ConsolidatePlan(context.Background())
	if err != nil {
		t.Fatal(err)
	}

	far := Observation{VisitID: "far", Time: t0, Embedding: onCircle(dim, 0, 60), Mask: visit.Unmasked}
	if as, ok, err := e.Join(far); err != nil || ok {
		t.Fatalf("join 60 degrees from both identities: %+v, %v, %v", as, ok, err)
	}
	as, ok, err := e.Join(poor)
	if err != nil || !ok || as.IdentityID != a.IdentityID || as.New {
		t.Fatalf("join near a1: %+v, %v, %v; want %s", as, ok, err, a.IdentityID)
	}
	if want := float32(1 - math.Cos(10*math.Pi/180)); math.Abs(float64(as.Distance-want)) > 1e-5 {
		t.Errorf("distance %v, want %v", as.Distance, want)
	}
	if _, _, err := e.Join(poor); err == nil {
		t.Error("a visit joined twice")
	}
	if id, _ := e.Identity(a.IdentityID); id.Visits != 2 || !id.FirstSeen.Equal(t0) || id.Status != Confirmed {
		t.Errorf("identity after the join: %+v", id)
	}
	if _, err := e.ApplyPlan(p); err != nil {
		t.Fatalf("plan made before the join: %v", err)
	}
	if got, _ := e.IdentityOf("poor"); got != a.IdentityID {
		t.Errorf("after the plan the joined visit is in %q, want %s", got, a.IdentityID)
	}

	r := newTestEngine(t, testConfig(), dim)
	if err := r.Restore(e.Snapshot()); err != nil {
		t.Fatal(err)
	}
	if got, _ := r.IdentityOf("poor"); got != a.IdentityID || r.Len() != 3 || r.IdentityCount() != 2 {
		t.Errorf("restored: poor in %q, %d visits, %d identities", got, r.Len(), r.IdentityCount())
	}
}
