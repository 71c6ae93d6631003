package identity

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
)

// near is a unit-ish vector close to axis (cosine about 0.99).
func near(dim, axis, k int) []float32 {
	x := make([]float32, dim)
	x[axis] = 1
	x[(axis+1+k%(dim-1))%dim] += 0.1
	return x
}

// onePerson assigns n visits of one face (axis 0): one identity, p-1.
func onePerson(t *testing.T, n int) *Engine {
	t.Helper()
	e := newTestEngine(t, testConfig(), 16)
	for i := range n {
		if a := mustAssign(t, e, fmt.Sprintf("v%d", i), t0.Add(time.Duration(i)*time.Minute), near(16, 0, i), visit.Unmasked); a.IdentityID != "p-0001" {
			t.Fatalf("visit %d assigned to %s", i, a.IdentityID)
		}
	}
	return e
}

func members(t *testing.T, e *Engine, id string) []string {
	t.Helper()
	ms, ok := e.Members(id)
	if !ok {
		t.Fatalf("identity %s does not exist", id)
	}
	return ms
}

// A split that consolidation would undo (the visits are one face) holds
// with the apart constraint, and only with it; new visits are assigned and
// consolidated normally.
func TestSplitHoldsThroughConsolidation(t *testing.T) {
	ctx := context.Background()
	moved := []string{"v3", "v4", "v5"}
	for _, constrained := range []bool{false, true} {
		t.Run(fmt.Sprint("constrained=", constrained), func(t *testing.T) {
			e := onePerson(t, 6)
			ch, err := e.Split("p-0001", moved)
			if err != nil {
				t.Fatal(err)
			}
			if ch.Kind != Split || ch.From != "p-0001" || ch.To != "p-0002" || !reflect.DeepEqual(ch.VisitIDs, moved) {
				t.Fatalf("split change %+v", ch)
			}
			if got := members(t, e, "p-0002"); !reflect.DeepEqual(got, moved) {
				t.Fatalf("p-2 holds %v", got)
			}
			if v, _ := e.Identity("p-0001"); v.Visits != 3 {
				t.Fatalf("p-0001 keeps %d visits", v.Visits)
			}
			if constrained {
				e.SetConstraints([]Constraint{{Apart: true, A: moved, B: []string{"v0", "v1", "v2"}}})
			}
			chs, err := e.Consolidate(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !constrained {
				// The same face: consolidation joins them again.
				if len(chs) != 1 || chs[0].Kind != Merge || e.IdentityCount() != 1 {
					t.Fatalf("without the constraint consolidation gave %+v, %d identities; want the halves merged", chs, e.IdentityCount())
				}
				return
			}
			if len(chs) != 0 || e.IdentityCount() != 2 {
				t.Fatalf("with the constraint consolidation gave %+v, %d identities", chs, e.IdentityCount())
			}
			// A new visit of the same face is assigned normally (to one of
			// the halves); consolidating again keeps the halves apart.
			a := mustAssign(t, e, "v6", t0.Add(time.Hour), near(16, 0, 6), visit.Unmasked)
			if a.New {
				t.Fatalf("new visit started an identity: %+v", a)
			}
			if _, err := e.Consolidate(ctx); err != nil {
				t.Fatal(err)
			}
			p1, p2 := members(t, e, "p-0001"), members(t, e, "p-0002")
			for _, v := range moved {
				if strings.Contains(strings.Join(p1, ","), v) {
					t.Fatalf("moved visit %s back in p-0001 %v", v, p1)
				}
			}
			if len(p1)+len(p2) != 7 {
				t.Fatalf("p-0001 %v, p-2 %v", p1, p2)
			}
		})
	}
}

// A merge of two faces that consolidation would split again holds with the
// together constraint, and only with it.
func TestMergeHoldsThroughConsolidation(t *testing.T) {
	ctx := context.Background()
	for _, constrained := range []bool{false, true} {
		t.Run(fmt.Sprint("constrained=", constrained), func(t *testing.T) {
			e := newTestEngine(t, testConfig(), 16)
			for i := range 3 {
				mustAssign(t, e, fmt.Sprintf("x%d", i), t0.Add(time.Duration(i)*time.Minute), near(16, 0, i), visit.Unmasked)
				mustAssign(t, e, fmt.Sprintf("y%d", i), t0.Add(time.Duration(i)*time.Minute+time.Second), near(16, 8, i), visit.Unmasked)
			}
			if e.IdentityCount() != 2 {
				t.Fatalf("%d identities, want 2", e.IdentityCount())
			}
			ch, err := e.Merge("p-0002", "p-0001")
			if err != nil {
				t.Fatal(err)
			}
			if ch.Kind != Merge || ch.From != "p-0002" || ch.To != "p-0001" || !reflect.DeepEqual(ch.VisitIDs, []string{"y0", "y1", "y2"}) {
				t.Fatalf("merge change %+v", ch)
			}
			if _, ok := e.Identity("p-0002"); ok || e.IdentityCount() != 1 {
				t.Fatal("p-2 still exists after the merge")
			}
			if constrained {
				e.SetConstraints([]Constraint{{A: members(t, e, "p-0001")}})
			}
			chs, err := e.Consolidate(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !constrained {
				x, _ := e.IdentityOf("x0")
				y, _ := e.IdentityOf("y0")
				if len(chs) == 0 || e.IdentityCount() != 2 || x == y {
					t.Fatalf("without the constraint consolidation gave %+v; want the two faces split again", chs)
				}
				return
			}
			if len(chs) != 0 || len(members(t, e, "p-0001")) != 6 {
				t.Fatalf("with the constraint consolidation gave %+v, p-0001 %v", chs, members(t, e, "p-0001"))
			}
			// Still together after a restore (constraints name visits).
			e.Restore(e.Snapshot())
			if chs, _ := e.Consolidate(ctx); len(chs) != 0 {
				t.Fatalf("after a restore consolidation gave %+v", chs)
			}
		})
	}
}

// A refused split or merge changes nothing.
func TestCorrectionRefused(t *testing.T) {
	e := onePerson(t, 3)
	mustAssign(t, e, "w0", t0.Add(time.Hour), near(16, 8, 0), visit.Unmasked) // p-2
	before := e.Identities()
	for _, tc := range []struct {
		name  string
		do    func() error
		want  error
		words string
	}{
		{"unknown identity", func() error { _, err := e.Split("p-0009", []string{"v0"}); return err }, ErrUnknownIdentity, "p-0009"},
		{"unknown visit", func() error { _, err := e.Split("p-0001", []string{"v0", "nope"}); return err }, ErrUnknownVisit, "nope"},
		{"other identity's visit", func() error { _, err := e.Split("p-0001", []string{"v0", "w0"}); return err }, nil, "belongs to identity \"p-0002\""},
		{"all visits", func() error { _, err := e.Split("p-0001", []string{"v0", "v1", "v2"}); return err }, nil, "at least one must stay"},
		{"no visit", func() error { _, err := e.Split("p-0001", nil); return err }, nil, "no visit"},
		{"merge unknown", func() error { _, err := e.Merge("p-0009", "p-0001"); return err }, ErrUnknownIdentity, "p-0009"},
		{"merge into unknown", func() error { _, err := e.Merge("p-0001", "p-0009"); return err }, ErrUnknownIdentity, "p-0009"},
		{"merge into itself", func() error { _, err := e.Merge("p-0001", "p-0001"); return err }, nil, "itself"},
	} {
		err := tc.do()
		if err == nil || tc.want != nil && !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.words) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	if after := e.Identities(); !reflect.DeepEqual(before, after) {
		t.Errorf("identities changed:\n%+v\n%+v", before, after)
	}
}

func TestSimilarities(t *testing.T) {
	e := onePerson(t, 3)
	mustAssign(t, e, "w0", t0.Add(time.Hour), near(16, 8, 0), visit.Unmasked)
	got := e.Similarities("p-0001", []string{"v0", "v1", "w0", "nope"})
	if len(got) != 2 || got["v0"] < 0.9 || got["v0"] > 1 || got["v1"] < 0.9 {
		t.Fatalf("similarities %v", got)
	}
	if got := e.Similarities("p-0002", []string{"w0"}); len(got) != 0 {
		t.Fatalf("a single visit has no similarity: %v", got)
	}
}
