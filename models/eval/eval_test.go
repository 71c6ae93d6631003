package eval

import (
	"context"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/agent/visit"
)

// synthRun makes a run of nIDs people, each with masked and unmasked
// samples around a person-specific direction.
func synthRun(nIDs, per int) *Run {
	rng := rand.New(rand.NewPCG(7, 8))
	dim := 32
	r := &Run{Embedder: "synthetic"}
	for id := 0; id < nIDs; id++ {
		center := make([]float64, dim)
		for i := range center {
			center[i] = rng.NormFloat64()
		}
		for k := 0; k < per; k++ {
			v := make([]float32, dim)
			var n float64
			for i := range v {
				x := center[i] + 0.15*rng.NormFloat64()
				v[i] = float32(x)
				n += x * x
			}
			l2normalize32(v, n)
			m := k%2 == 1
			ms := visit.Unmasked
			if m {
				ms = visit.Masked
			}
			r.Samples = append(r.Samples, Sample{Rel: "x", Identity: string(rune('a' + id)), Masked: m, Found: true, Embedding: v, Mask: ms})
		}
	}
	r.Samples = append(r.Samples, Sample{Rel: "noface", Identity: "a"})
	return r
}

func l2normalize32(v []float32, n float64) {
	inv := 1 / float32(math.Sqrt(n))
	for i := range v {
		v[i] *= inv
	}
}

func TestVerifyContract(t *testing.T) {
	run := synthRun(6, 6)
	rep := Verify(run, "synthetic", false)
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(b, &m)
	for _, k := range []string{"identities", "images", "detection", "pairs", "threshold_at_far_1e-3"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q", k)
		}
	}
	pairs := m["pairs"].(map[string]any)
	for _, k := range []string{"all", "uu", "mm", "mu"} {
		p, ok := pairs[k].(map[string]any)
		if !ok {
			t.Fatalf("pairs lacks %q", k)
		}
		for _, f := range []string{"auc", "tar_at_far_1e-2", "tar_at_far_1e-3"} {
			if _, ok := p[f]; !ok {
				t.Errorf("pairs.%s lacks %s", k, f)
			}
		}
	}
	if _, ok := pairs["ms"]; ok {
		t.Error("ms pairs without synthetic masks")
	}
	if rep.Identities != 6 || rep.Images != 37 || float64(rep.Detection.Unmasked) != 18.0/19 {
		t.Errorf("counts: %d ids, %d images, unmasked detection %v", rep.Identities, rep.Images, rep.Detection.Unmasked)
	}
	if rep.Pairs["all"].AUC < 0.99 || rep.MaskAccuracy != 1 {
		t.Errorf("separable people: AUC %v, mask accuracy %v", rep.Pairs["all"].AUC, rep.MaskAccuracy)
	}
	png := filepath.Join(t.TempDir(), "roc.png")
	if err := rep.WriteROC(png); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(png); err != nil || st.Size() < 1000 {
		t.Fatalf("ROC plot: %v", err)
	}
}

func TestClusterEvalAndCalibrate(t *testing.T) {
	run := synthRun(5, 6)
	th, tar := Calibrate(run, 1e-2)
	if th.UU <= 0 || th.MM <= 0 || th.MU <= 0 || tar["uu"] < 0.9 {
		t.Fatalf("calibration %+v %v", th, tar)
	}
	rep, err := ClusterEval(context.Background(), run, "synthetic", ClusterOptions{Thresholds: th,
		Algorithms: []identity.Algorithm{identity.Average, identity.DBSCAN}, Eps: 0.5, MinSamples: 2})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Default != "average" || len(rep.Algorithms) != 2 || rep.Clustered != 30 {
		t.Fatalf("report %+v", rep)
	}
	avg := rep.Algorithms[0]
	if avg.Pairwise.Precision < 0.99 || avg.IdentitiesTrue != 5 {
		t.Errorf("average linkage on separable people: %+v", avg.ClusterScores)
	}
	// Three masked and three unmasked faces a person: without masked <->
	// unmasked links recall is at most 3/6; these people are separable, so
	// the links are made.
	bm := avg.ByMask
	if bm == nil || bm.UU == nil || bm.MM == nil || bm.MU == nil {
		t.Fatalf("no recall by mask state: %+v", bm)
	}
	if rep.SameStateCeiling == nil {
		t.Fatal("no same-state ceiling")
	}
	if *bm.MU < 0.99 || *bm.UU < 0.99 || math.Abs(*rep.SameStateCeiling-0.5) > 1e-9 {
		t.Errorf("recall by mask state %v %v %v, ceiling %v", *bm.UU, *bm.MM, *bm.MU, *rep.SameStateCeiling)
	}
	var md strings.Builder
	rep.Markdown(&md)
	if !strings.Contains(md.String(), "| average | 1.000 | 1.000 | 1.000 |") || !strings.Contains(md.String(), "BCubed recall is at most 0.500") {
		t.Errorf("markdown:\n%s", md.String())
	}
}
