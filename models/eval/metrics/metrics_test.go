package metrics

import (
	"math"
	"math/rand/v2"
	"testing"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 || (math.IsNaN(a) && math.IsNaN(b)) }

func TestAUC(t *testing.T) {
	tests := []struct {
		name     string
		gen, imp []float64
		want     float64
	}{
		{"separated", []float64{0.9, 0.8}, []float64{0.1, 0.2}, 1},
		{"reversed", []float64{0.1}, []float64{0.5, 0.9}, 0},
		{"all tied", []float64{0.5, 0.5}, []float64{0.5}, 0.5},
		{"one tie", []float64{0.9, 0.8}, []float64{0.1, 0.8}, 0.875},
		{"empty", nil, []float64{1}, math.NaN()},
	}
	for _, tc := range tests {
		if got := AUC(tc.gen, tc.imp); !near(got, tc.want) {
			t.Errorf("%s: AUC = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestAUCMatchesBruteForce(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for trial := 0; trial < 20; trial++ {
		var g, im []float64
		for i := 0; i < 1+r.IntN(40); i++ {
			g = append(g, float64(r.IntN(10))) // coarse values: many ties
		}
		for i := 0; i < 1+r.IntN(40); i++ {
			im = append(im, float64(r.IntN(8)))
		}
		var u float64
		for _, x := range g {
			for _, y := range im {
				switch {
				case x > y:
					u++
				case x == y:
					u += 0.5
				}
			}
		}
		want := u / float64(len(g)*len(im))
		if got := AUC(g, im); !near(got, want) {
			t.Fatalf("trial %d: AUC %v, brute force %v", trial, got, want)
		}
	}
}

func TestThresholdAndTARAtFAR(t *testing.T) {
	imp := []float64{0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0}
	gen := []float64{0.95, 0.85, 1.0}
	tar, th := TARAtFAR(gen, imp, 0.1)
	if !(th > 0.9 && th <= 0.9+1e-12) || !near(tar, 2.0/3) {
		t.Fatalf("FAR 0.1: threshold %v TAR %v", th, tar)
	}
	if th := ThresholdAtFAR(imp, 0); !(th > 1.0) {
		t.Fatalf("FAR 0: threshold %v, want just above 1", th)
	}
	if th := ThresholdAtFAR(imp, 1); !math.IsInf(th, -1) {
		t.Fatalf("FAR 1: threshold %v", th)
	}
	// Ties: three impostors at 0.5 cannot be half accepted.
	tied := []float64{0.5, 0.5, 0.5, 0.1}
	th = ThresholdAtFAR(tied, 0.5)
	acc := 0
	for _, x := range tied {
		if x >= th {
			acc++
		}
	}
	if acc != 0 || th > 0.5+1e-12 {
		t.Fatalf("tied: threshold %v accepts %d", th, acc)
	}
	// FAR 0.75 accepts the three tied ones: the threshold is just above 0.1.
	if th := ThresholdAtFAR(tied, 0.75); !(th > 0.1 && th < 0.1+1e-12) {
		t.Fatalf("tied FAR 0.75: threshold %v, want just above 0.1", th)
	}
}

func TestROC(t *testing.T) {
	pts := ROC([]float64{0.9, 0.8}, []float64{0.8, 0.1})
	want := []ROCPoint{{0.9, 0, 0.5}, {0.8, 0.5, 1}, {0.1, 1, 1}}
	if len(pts) != len(want) {
		t.Fatalf("ROC %v", pts)
	}
	for i := range want {
		if pts[i] != want[i] {
			t.Fatalf("point %d: %v, want %v", i, pts[i], want[i])
		}
	}
}

func TestClustering(t *testing.T) {
	truth := []string{"a", "a", "a", "b", "b"}
	tests := []struct {
		name                 string
		truth                []string
		pred                 []int
		pair, bc             PRF
		nmi, mae             float64
		found, identitiesTru int
	}{
		{"perfect", truth, []int{7, 7, 7, 3, 3}, PRF{1, 1, 1}, PRF{1, 1, 1}, 1, 0, 2, 2},
		{"singletons", truth, []int{0, 1, 2, 3, 4},
			PRF{1, 0, 0}, PRF{1, 0.4, 2 * 0.4 / 1.4}, -1, 1.5, 5, 2},
		{"one cluster", truth, []int{0, 0, 0, 0, 0},
			PRF{0.4, 1, 2 * 0.4 / 1.4}, PRF{0.52, 1, 2 * 0.52 / 1.52}, 0, 2.5, 1, 2},
		{"split a", truth, []int{0, 0, 1, 2, 2},
			// pairs: tp = 1+1 = 2, pp = 2, true pairs 4.
			// bcubed R: a items 2/3,2/3,1/3; b items 1,1 -> (5/3+2)/5.
			// count: a -> cluster of 2 (|2-3|), b -> 2 (0).
			PRF{1, 0.5, 2 * 0.5 / 1.5}, PRF{1, (5.0/3 + 2) / 5, 2 * (11.0 / 15) / (1 + 11.0/15)}, -1, 0.5, 3, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Clustering(tc.truth, tc.pred)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				what      string
				got, want float64
			}{
				{"pairwise precision", s.Pairwise.Precision, tc.pair.Precision},
				{"pairwise recall", s.Pairwise.Recall, tc.pair.Recall},
				{"pairwise f1", s.Pairwise.F1, tc.pair.F1},
				{"bcubed precision", s.BCubed.Precision, tc.bc.Precision},
				{"bcubed recall", s.BCubed.Recall, tc.bc.Recall},
				{"bcubed f1", s.BCubed.F1, tc.bc.F1},
				{"count mae", s.CountMAE, tc.mae},
			} {
				if !near(c.got, c.want) {
					t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
				}
			}
			if tc.nmi >= 0 && !near(s.NMI, tc.nmi) {
				t.Errorf("NMI = %v, want %v", s.NMI, tc.nmi)
			}
			if s.IdentitiesFound != tc.found || s.IdentitiesTrue != tc.identitiesTru || s.Items != 5 {
				t.Errorf("found %d true %d items %d", s.IdentitiesFound, s.IdentitiesTrue, s.Items)
			}
		})
	}
}

func TestNMIKnownValue(t *testing.T) {
	// MI = ln 2, H(T) = ln 2, H(P) = 1.5 ln 2: NMI = 1/1.25 = 0.8
	// (scikit-learn normalized_mutual_info_score gives 0.8).
	s, err := Clustering([]int{0, 0, 1, 1}, []int{0, 0, 1, 2})
	if err != nil {
		t.Fatal(err)
	}
	if !near(s.NMI, 0.8) {
		t.Fatalf("NMI %v, want 0.8", s.NMI)
	}
	// Independent labelings: NMI 0.
	s, _ = Clustering([]int{0, 0, 1, 1}, []int{0, 1, 0, 1})
	if !near(s.NMI, 0) {
		t.Fatalf("independent NMI %v", s.NMI)
	}
}

func TestClusteringPairwiseMatchesBruteForce(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	truth := make([]int, 60)
	pred := make([]int, 60)
	for i := range truth {
		truth[i], pred[i] = r.IntN(8), r.IntN(10)
	}
	var tp, pp, tpairs, bp float64
	for i := range truth {
		same, inCluster := 0.0, 0.0
		for j := range truth {
			if pred[i] == pred[j] {
				inCluster++
				if truth[i] == truth[j] {
					same++
				}
			}
			if j <= i {
				continue
			}
			if pred[i] == pred[j] {
				pp++
				if truth[i] == truth[j] {
					tp++
				}
			}
			if truth[i] == truth[j] {
				tpairs++
			}
		}
		bp += same / inCluster
	}
	s, _ := Clustering(truth, pred)
	if !near(s.Pairwise.Precision, tp/pp) || !near(s.Pairwise.Recall, tp/tpairs) || !near(s.BCubed.Precision, bp/60) {
		t.Fatalf("got %+v, brute force P %v R %v BP %v", s, tp/pp, tp/tpairs, bp/60)
	}
}

func TestNoiseToSingletons(t *testing.T) {
	got := NoiseToSingletons([]int{-1, 0, -1, 1, 0})
	want := []int{2, 0, 3, 1, 0}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("%v, want %v", got, want)
		}
	}
	if _, err := Clustering([]int{1}, []int{1, 2}); err == nil {
		t.Fatal("length mismatch accepted")
	}
}

func TestRecallByMask(t *testing.T) {
	truth := []string{"a", "a", "a", "b", "b"}
	masked := []bool{false, false, true, false, true}
	get := func(p *float64) float64 {
		if p == nil {
			return -1
		}
		return *p
	}
	for _, tc := range []struct {
		name       string
		pred       []int
		uu, mm, mu float64 // -1: undefined
	}{
		// a's unmasked faces together, its masked face alone, b split.
		{"states apart", []int{0, 0, 1, 2, 3}, 1, -1, 0},
		{"one cluster", []int{0, 0, 0, 0, 0}, 1, -1, 1},
		// a's masked face with one of its unmasked faces: MU 1/2 for a,
		// 0 for b; UU 0 (a's unmasked faces apart).
		{"one link", []int{0, 1, 1, 2, 3}, 0, -1, 0.25},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := RecallByMask(truth, tc.pred, masked)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				what      string
				got, want float64
			}{{"uu", get(r.UU), tc.uu}, {"mm", get(r.MM), tc.mm}, {"mu", get(r.MU), tc.mu}} {
				if !near(c.got, c.want) {
					t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
				}
			}
		})
	}
	// a: 2/3, 2/3, 1/3; b: 1/2, 1/2.
	if c := SameStateCeiling(truth, masked); !near(c, 8.0/15) {
		t.Errorf("ceiling %v, want 8/15", c)
	}
	// Two masked faces of one person apart: MM 0.
	r, err := RecallByMask([]int{1, 1}, []int{0, 1}, []bool{true, true})
	if err != nil || get(r.MM) != 0 || r.UU != nil || r.MU != nil || !near(SameStateCeiling([]int{1, 1}, []bool{true, true}), 1) {
		t.Fatalf("two masked apart: %+v %v", r, err)
	}
	if _, err := RecallByMask(truth, []int{0}, masked); err == nil {
		t.Fatal("length mismatch accepted")
	}
}
