package eval

import (
	"context"
	"testing"

	"github.com/periocular/atm-agent/agent/identity"
)

func TestHeldOutClustering(t *testing.T) {
	run := synthRun(40, 4)
	m, err := ParseMethod("nap0")
	if err != nil {
		t.Fatal(err)
	}
	sets := []Set{{Name: "s", Run: run}}
	loose := identity.Thresholds{UU: 1.9, MM: 1.9, MU: 1.9}
	tight := identity.Thresholds{UU: 0.3, MM: 0.3, MU: 0.3}
	rep, err := HeldOutClustering(context.Background(), sets, sets, HeldOutOptions{Method: m, Cuts: []identity.Thresholds{loose, tight}, Default: 0.9})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Rows) != 4 {
		t.Fatalf("%d rows, want 2 folds x 2 cut sets", len(rep.Rows))
	}
	perFold := map[int]int{}
	seen := map[string]bool{}
	for _, s := range run.Samples {
		if s.Found && !seen[s.Identity] {
			seen[s.Identity] = true
			perFold[fold(s.Identity)]++
		}
	}
	for _, x := range rep.Rows {
		if x.Chosen != (x.Cuts == tight) {
			t.Errorf("fold %d: cuts %v chosen %v (fitting P %.3f)", x.Fold, x.Cuts, x.Chosen, x.Fit.P)
		}
		if x.HeldOut.True != perFold[x.Fold] || x.Fit.True != 40-perFold[x.Fold] {
			t.Errorf("fold %d: held-out half has %d identities, fitting half %d; the fold has %d of 40", x.Fold, x.HeldOut.True, x.Fit.True, perFold[x.Fold])
		}
		if x.Cuts == tight && (x.HeldOut.P < 0.99 || x.HeldOut.F1 < 0.9) {
			t.Errorf("fold %d: well-separated identities clustered at P %.3f F1 %.3f", x.Fold, x.HeldOut.P, x.HeldOut.F1)
		}
		if x.Cuts == loose && x.HeldOut.P > 0.5 {
			t.Errorf("fold %d: one cluster for everyone scored precision %.3f", x.Fold, x.HeldOut.P)
		}
	}
	// When no cut set keeps the precision, the one that misses it by least.
	rep, err = HeldOutClustering(context.Background(), sets, sets, HeldOutOptions{Method: m, Cuts: []identity.Thresholds{loose, tight}, MinPrecision: map[string]float64{"s": 1.01}})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range rep.Rows {
		if x.Chosen != (x.Cuts == tight) {
			t.Errorf("unreachable precision: cuts %v chosen %v", x.Cuts, x.Chosen)
		}
	}
}
