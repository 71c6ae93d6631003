package identity

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
)

// pairPR is pairwise precision and recall of labels against truth.
func pairPR(labels, truth []int) (float64, float64) {
	var tp, fp, fn float64
	for i := range labels {
		for j := i + 1; j < len(labels); j++ {
			same, st := labels[i] == labels[j], truth[i] == truth[j]
			switch {
			case same && st:
				tp++
			case same:
				fp++
			case st:
				fn++
			}
		}
	}
	return tp / math.Max(1, tp+fp), tp / math.Max(1, tp+fn)
}

// nearPeople makes people who share a common direction (impostors ~0.4-0.6
// apart, threshold 0.4) with visits spread v, 20 % masked, in shuffled order.
func nearPeople(seed uint64, people int, v float64) ([]Sample, []int) {
	return nearPeopleVisits(seed, people, v, 0, 0)
}

// nearPeopleVisits is nearPeople where the first frequent people come many
// times each.
func nearPeopleVisits(seed uint64, people int, v float64, frequent, many int) ([]Sample, []int) {
	const dim = 128
	s := newSynth(dim, math.Sqrt(v/dim), seed)
	common := s.unit()
	var samples []Sample
	var truth []int
	for p := 0; p < people; p++ {
		c := s.unit()
		for i := range c {
			c[i] = float32(math.Sqrt(0.6))*common[i] + float32(math.Sqrt(0.4))*c[i]
		}
		c, _ = normalized(c)
		s.centres = append(s.centres, c)
		visits := 1 + s.r.IntN(9)
		if p < frequent {
			visits = many
		}
		for k := 0; k < visits; k++ {
			m := visit.Unmasked
			if s.r.IntN(5) == 0 {
				m = visit.Masked
			}
			samples = append(samples, Sample{Embedding: s.visitOf(p), Mask: m})
			truth = append(truth, p)
		}
	}
	perm := s.r.Perm(len(samples))
	ss, tt := make([]Sample, len(samples)), make([]int, len(samples))
	for i, j := range perm {
		ss[i], tt[i] = samples[j], truth[j]
		ss[i].Time = t0.Add(time.Duration(i) * time.Minute)
	}
	return ss, tt
}

// onlineAgainstBatch clusters ss with batch average linkage and assigns
// them one by one to a new engine; labels reads the engine's current
// identity of each sample.
func onlineAgainstBatch(t *testing.T, cfg Config, ss []Sample) (batch []int, e *Engine, labels func() []int) {
	t.Helper()
	batch, err := Cluster(context.Background(), ss, ClusterOptions{Algorithm: Average, Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	e = newTestEngine(t, cfg, 128)
	for i, x := range ss {
		mustAssign(t, e, fmt.Sprint(i), x.Time, x.Embedding, x.Mask)
	}
	labels = func() []int {
		out := make([]int, len(ss))
		for i := range ss {
			out[i] = int(e.who[i])
		}
		return out
	}
	return batch, e, labels
}

// The engine's two-level consolidation must repair online merges about as
// well as average linkage from single visits, and never lose precision.
func TestConsolidationCloseToBatchHAC(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Thresholds = Thresholds{UU: 0.4, MM: 0.4, MU: 0}
	for _, v := range []float64{0.45, 0.6} {
		t.Run(fmt.Sprint("v=", v), func(t *testing.T) {
			ss, truth := nearPeople(41, 300, v)
			batch, e, labels := onlineAgainstBatch(t, cfg, ss)
			op, _ := pairPR(labels(), truth)
			if _, err := e.Consolidate(context.Background()); err != nil {
				t.Fatal(err)
			}
			cp, cr := pairPR(labels(), truth)
			bp, br := pairPR(batch, truth)
			t.Logf("online P=%.4f; consolidated P=%.4f R=%.4f; batch P=%.4f R=%.4f", op, cp, cr, bp, br)
			if cp < op || cp < bp-0.005 || cr < br-0.01 {
				t.Fatalf("consolidated P=%.4f R=%.4f; online P=%.4f; batch P=%.4f R=%.4f", cp, cr, op, bp, br)
			}
		})
	}
}

// People who come back hundreds of times make identities larger than the
// chunks level 1 compares at once; level 2 must join their chunks again, and
// a wrong online merge of two of them must still come apart.
func TestConsolidationFrequentVisitors(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Thresholds = Thresholds{UU: 0.4, MM: 0.4, MU: 0}
	ss, truth := nearPeopleVisits(43, 150, 0.3, 4, 768)
	batch, e, labels := onlineAgainstBatch(t, cfg, ss)
	biggest := 0
	for _, id := range e.ids {
		biggest = max(biggest, len(id.members))
	}
	if biggest <= level1Chunk {
		t.Fatalf("largest identity has %d visits: the test must exceed one chunk (%d)", biggest, level1Chunk)
	}
	op, _ := pairPR(labels(), truth)
	if _, err := e.Consolidate(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := labels()
	cp, cr := pairPR(got, truth)
	bp, br := pairPR(batch, truth)
	t.Logf("%d visits, largest identity %d; online P=%.4f; consolidated P=%.4f R=%.4f; batch P=%.4f R=%.4f",
		len(ss), biggest, op, cp, cr, bp, br)
	if cp < op || cp < bp-0.005 || cr < br-0.01 {
		t.Fatalf("consolidated P=%.4f R=%.4f; online P=%.4f; batch P=%.4f R=%.4f", cp, cr, op, bp, br)
	}
	// Each frequent visitor's largest identity is as large as batch average
	// linkage makes it: the chunks were joined again.
	largest := func(labels []int, p int) int {
		count := map[int]int{}
		top := 0
		for i, l := range labels {
			if truth[i] == p {
				count[l]++
				top = max(top, count[l])
			}
		}
		return top
	}
	for p := range 4 {
		if c, b := largest(got, p), largest(batch, p); float64(c) < 0.98*float64(b) {
			t.Errorf("frequent visitor %d: largest identity holds %d visits, batch %d", p, c, b)
		}
	}
}

// A plan made while visits keep arriving applies to the visits it saw; the
// later ones follow their identity. A retention sweep in between makes the
// plan stale.
func TestPlanWhileAssigning(t *testing.T) {
	e := newTestEngine(t, testConfig(), 8)
	a1 := mustAssign(t, e, "a1", t0, onCircle(8, 0, 0), visit.Unmasked)
	a2 := mustAssign(t, e, "a2", t0.Add(time.Hour), onCircle(8, 0, 60), visit.Unmasked)
	mustAssign(t, e, "a3", t0.Add(2*time.Hour), onCircle(8, 0, 30), visit.Unmasked)
	p, err := e.ConsolidatePlan(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if p.Visits() != 3 {
		t.Fatalf("plan over %d visits, want 3", p.Visits())
	}
	// After the plan: one more visit of a2's identity (at a2) and a new person.
	if x := mustAssign(t, e, "a4", t0.Add(3*time.Hour), onCircle(8, 0, 62), visit.Unmasked); x.IdentityID != a2.IdentityID {
		t.Fatalf("a4 -> %s, want %s", x.IdentityID, a2.IdentityID)
	}
	b := mustAssign(t, e, "b1", t0.Add(3*time.Hour), onCircle(8, 4, 0), visit.Unmasked)
	ch, err := e.ApplyPlan(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(ch) != 1 || ch[0].Kind != Merge || ch[0].From != a2.IdentityID || ch[0].To != a1.IdentityID {
		t.Fatalf("changes %+v", ch)
	}
	for v, want := range map[string]string{"a2": a1.IdentityID, "a4": a1.IdentityID, "b1": b.IdentityID} {
		if id, _ := e.IdentityOf(v); id != want {
			t.Fatalf("%s in %s, want %s", v, id, want)
		}
	}
	if _, err := e.ApplyPlan(p); err != ErrStalePlan {
		t.Fatalf("second apply: %v, want ErrStalePlan", err)
	}
	p, _ = e.ConsolidatePlan(context.Background())
	e.Forget(t0.Add(90 * time.Minute))
	if _, err := e.ApplyPlan(p); err != ErrStalePlan {
		t.Fatalf("apply after Forget: %v, want ErrStalePlan", err)
	}
	if n := e.Len(); n != 3 {
		t.Fatalf("%d visits after Forget, want 3", n)
	}
}

// Assign, Forget and Consolidate from several goroutines (run with -race):
// every visit ends up stored exactly once.
func TestConcurrentConsolidate(t *testing.T) {
	ss, _ := nearPeople(43, 60, 0.3)
	e := newTestEngine(t, testConfig(), 128)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 5 {
			if _, err := e.Consolidate(context.Background()); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i, x := range ss {
		mustAssign(t, e, fmt.Sprint(i), x.Time, x.Embedding, x.Mask)
		if i == len(ss)/2 {
			e.Forget(t0.Add(10 * time.Minute))
		}
	}
	<-done
	if _, err := e.Consolidate(context.Background()); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, id := range e.Identities() {
		n += id.Visits
	}
	if n != e.Len() || e.Len() != len(ss)-10 {
		t.Fatalf("identities hold %d visits, engine %d, want %d", n, e.Len(), len(ss)-10)
	}
}

// The sketch prefilters of consolidation (group cutoffs, pair cutoffs, the
// second sketch) must not change the result against exact comparisons.
func TestConsolidationPrefilterMatchesExact(t *testing.T) {
	ss, _ := nearPeople(44, 200, 0.6)
	run := func(exact bool) []string {
		cfg := DefaultConfig()
		cfg.Thresholds = Thresholds{UU: 0.4, MM: 0.35, MU: 0.3}
		cfg.Exact = exact
		e := newTestEngine(t, cfg, 128)
		for i, x := range ss {
			mustAssign(t, e, fmt.Sprint(i), x.Time, x.Embedding, x.Mask)
		}
		if _, err := e.Consolidate(context.Background()); err != nil {
			t.Fatal(err)
		}
		out := make([]string, len(ss))
		for i := range ss {
			out[i], _ = e.IdentityOf(fmt.Sprint(i))
		}
		return out
	}
	fast, exact := run(false), run(true)
	for i := range fast {
		if fast[i] != exact[i] {
			t.Fatalf("visit %d: %s with the prefilter, %s exact", i, fast[i], exact[i])
		}
	}
}

// The agent removes a new identity at once when its visit is too poor to
// found one. That visit and its identity are newer than any plan in flight:
// removing them must not make the plan stale (it did: every low-quality
// stranger during a consolidation forced a new plan, and after three the
// consolidation ran under the engine lock, blocking visits).
func TestRemoveNewerIdentityKeepsPlan(t *testing.T) {
	s := newSynth(32, 0.05, 12)
	e := newTestEngine(t, testConfig(), 32)
	var ps []int
	for k := 0; k < 6; k++ {
		ps = append(ps, s.person())
	}
	for k := 0; k < 24; k++ {
		mustAssign(t, e, fmt.Sprint("v", k), t0.Add(time.Duration(k)*time.Minute), s.visitOf(ps[k%6]), visit.Unmasked)
	}
	p, err := e.ConsolidatePlan(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	mustAssign(t, e, "kept", t0.Add(time.Hour), s.visitOf(ps[0]), visit.Unmasked)
	a := mustAssign(t, e, "poor", t0.Add(time.Hour), s.visitOf(s.person()), visit.Unmasked)
	if !a.New || !e.Remove(a.IdentityID) {
		t.Fatalf("stranger: %+v", a)
	}
	b := mustAssign(t, e, "next", t0.Add(2*time.Hour), s.visitOf(ps[1]), visit.Unmasked)
	if _, err := e.ApplyPlan(p); err != nil {
		t.Fatalf("plan after removing a newer identity: %v", err)
	}
	for v, want := range map[string]string{"kept": "v0", "next": "v1"} {
		got, _ := e.IdentityOf(v)
		if w, _ := e.IdentityOf(want); got != w {
			t.Fatalf("%s: identity %s, want %s's %s", v, got, want, w)
		}
	}
	if id, _ := e.IdentityOf("next"); id != b.IdentityID {
		t.Fatalf("next moved from %s to %s", b.IdentityID, id)
	}
	// A removal of visits the plan covers still makes it stale.
	p, err = e.ConsolidatePlan(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !e.Remove(b.IdentityID) {
		t.Fatal("remove")
	}
	if _, err := e.ApplyPlan(p); !errors.Is(err, ErrStalePlan) {
		t.Fatalf("plan after removing planned visits: %v, want ErrStalePlan", err)
	}
}

// Removing the newest visits while a plan reads the slab, then assigning
// new ones, must not overwrite rows the plan is reading (it did: the
// truncation kept the shared backing array and Assign appended into it).
func TestRemoveTailDuringPlanDoesNotOverwriteView(t *testing.T) {
	s := newSynth(32, 0.05, 13)
	e := newTestEngine(t, testConfig(), 32)
	p, q := s.person(), s.person()
	for k := 0; k < 4; k++ {
		mustAssign(t, e, fmt.Sprint("p", k), t0, s.visitOf(p), visit.Unmasked)
	}
	a := mustAssign(t, e, "q", t0, s.visitOf(q), visit.Unmasked)
	sp, _ := e.beginPlan()
	defer e.endPlan()
	last := slices.Clone(sp.row(4))
	if !e.Remove(a.IdentityID) {
		t.Fatal("remove")
	}
	mustAssign(t, e, "r", t0, s.visitOf(s.person()), visit.Unmasked)
	if !slices.Equal(sp.row(4), last) {
		t.Fatal("a row the plan reads was overwritten")
	}
}
