package identity

import (
	"context"
	"errors"
	"math"
	"slices"
	"testing"

	"github.com/periocular/atm-agent/agent/visit"
)

// pairCounts returns pairwise true positives, predicted pairs and true pairs
// (noise labels -1 are singletons).
func pairCounts(truth, pred []int) (tp, pp, tpairs int) {
	for i := range truth {
		for j := i + 1; j < len(truth); j++ {
			same := pred[i] >= 0 && pred[i] == pred[j]
			if same {
				pp++
			}
			if truth[i] == truth[j] {
				tpairs++
				if same {
					tp++
				}
			}
		}
	}
	return
}

func clusterOpts(a Algorithm) ClusterOptions {
	return ClusterOptions{Algorithm: a, Config: testConfig(), ConsolidateEvery: 25}
}

func TestClusterRecoversSeparatedPeople(t *testing.T) {
	s := newSynth(64, 0.06, 11) // within-person distance ~0.19, threshold 0.4
	samples, truth := s.dataset(40, 5)
	for _, a := range []Algorithm{Average, Complete, Online} {
		t.Run(string(a), func(t *testing.T) {
			labels, err := Cluster(context.Background(), samples, clusterOpts(a))
			if err != nil {
				t.Fatal(err)
			}
			tp, pp, tpairs := pairCounts(truth, labels)
			if tp != pp {
				t.Fatalf("%d false pairs", pp-tp)
			}
			if float64(tp)/float64(tpairs) < 0.95 {
				t.Fatalf("recall %d/%d", tp, tpairs)
			}
		})
	}
}

func TestClusterDeterministic(t *testing.T) {
	s := newSynth(32, 0.09, 12) // noisy: ~0.2-0.3 within person
	samples, _ := s.dataset(60, 4)
	for _, a := range Algorithms() {
		t.Run(string(a), func(t *testing.T) {
			o := clusterOpts(a)
			o.Config.Workers = 1
			one, err := Cluster(context.Background(), samples, o)
			if err != nil {
				t.Fatal(err)
			}
			o.Config.Workers = 3
			three, err := Cluster(context.Background(), samples, o)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(one, three) {
				t.Fatal("labels depend on the number of workers")
			}
			again, _ := Cluster(context.Background(), samples, o)
			if !slices.Equal(one, again) {
				t.Fatal("labels differ between runs")
			}
			// Numbered by first appearance.
			next := 0
			for _, l := range one {
				if l >= next {
					if l != next {
						t.Fatalf("label %d before %d", l, next)
					}
					next++
				}
			}
		})
	}
}

func TestSketchPrefilterMatchesExact(t *testing.T) {
	s := newSynth(128, 0.045, 13) // ~0.2 within person
	samples, _ := s.dataset(80, 5)
	o := clusterOpts(Average)
	fast, err := Cluster(context.Background(), samples, o)
	if err != nil {
		t.Fatal(err)
	}
	o.Config.Exact = true
	exact, err := Cluster(context.Background(), samples, o)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(fast, exact) {
		t.Fatal("sketch prefilter changed the clustering")
	}
}

func TestSketchCutoff(t *testing.T) {
	if sketchCutoff(0, false) != -1 || sketchCutoff(0.3, true) != sketchBits {
		t.Fatal("disabled/exact cutoffs")
	}
	// A pair exactly at the threshold angle must pass: its expected sketch
	// distance is well below the cutoff.
	for _, th := range []float64{0.2, 0.4, 0.6} {
		if c := sketchCutoff(th, false); c <= 0 || c >= sketchBits/2+60 {
			t.Fatalf("cutoff(%v) = %d", th, c)
		}
	}
	// Sketch distance tracks the angle: identical vectors 0, opposite all bits.
	sk := newSketcher(100)
	buf := make([]float32, sk.pad)
	g := newSynth(100, 0, 15)
	x, z := g.unit(), g.unit()
	y := make([]float32, 100)
	for i := range x {
		y[i] = -x[i]
	}
	// Make z orthogonal to x.
	d := dot(x, z)
	for i := range z {
		z[i] -= d * x[i]
	}
	var a, b, c [sketchWords]uint64
	sk.sketch(x, a[:], buf)
	sk.sketch(y, b[:], buf)
	sk.sketch(z, c[:], buf)
	if h := hamming(a[:], a[:]); h != 0 {
		t.Fatalf("self distance %d", h)
	}
	if h := hamming(a[:], b[:]); h != sketchBits {
		t.Fatalf("opposite vectors differ in %d bits", h)
	}
	if h := hamming(a[:], c[:]); h < 200 || h > 312 {
		t.Fatalf("orthogonal vectors differ in %d bits, want ~256", h)
	}
}

func TestClusterMaskAware(t *testing.T) {
	// The same person masked and unmasked: apart when MU is disabled.
	x := onCircle(8, 0, 0)
	samples := []Sample{
		{Embedding: x, Mask: visit.Unmasked}, {Embedding: x, Mask: visit.Unmasked},
		{Embedding: x, Mask: visit.Masked}, {Embedding: x, Mask: visit.Masked},
	}
	o := clusterOpts(Average)
	o.Config.Thresholds.MU = 0
	labels, err := Cluster(context.Background(), samples, o)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(labels, []int{0, 0, 1, 1}) {
		t.Fatalf("labels %v", labels)
	}
	o.Config.Thresholds.MU = 0.2
	labels, _ = Cluster(context.Background(), samples, o)
	if !slices.Equal(labels, []int{0, 0, 0, 0}) {
		t.Fatalf("labels with MU enabled %v", labels)
	}
}

func TestAverageVersusComplete(t *testing.T) {
	// Three points on an arc: 0, 35, 70 degrees. Ends are 0.66 apart, neighbours
	// 0.18. Average: {0,35} first, then 70 joins at (0.66+0.18)/2 = 0.42 > 0.4
	// so it stays alone; with UU 0.45 it joins. Complete never joins it.
	samples := []Sample{{Embedding: onCircle(4, 0, 0)}, {Embedding: onCircle(4, 0, 35)}, {Embedding: onCircle(4, 0, 70)}}
	tests := []struct {
		algo Algorithm
		uu   float64
		want []int
	}{
		{Average, 0.4, []int{0, 0, 1}},
		{Average, 0.45, []int{0, 0, 0}},
		{Complete, 0.45, []int{0, 0, 1}},
		{Complete, 0.7, []int{0, 0, 0}},
	}
	for _, tc := range tests {
		o := clusterOpts(tc.algo)
		o.Config.Thresholds.UU = tc.uu
		labels, err := Cluster(context.Background(), samples, o)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(labels, tc.want) {
			t.Errorf("%s uu=%v: %v, want %v", tc.algo, tc.uu, labels, tc.want)
		}
	}
}

func TestDBSCAN(t *testing.T) {
	// Raw (unnormalised) 1-d points: chain 0, 0.4, 0.8 forms one cluster at
	// eps 0.5; 5 is noise; 10, 10.3 a second cluster.
	pts := []float32{0, 10, 0.4, 5, 0.8, 10.3}
	var samples []Sample
	for _, p := range pts {
		samples = append(samples, Sample{Embedding: []float32{p, 0}})
	}
	labels, err := Cluster(context.Background(), samples, ClusterOptions{Algorithm: DBSCAN})
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{0, 1, 0, -1, 0, 1}; !slices.Equal(labels, want) {
		t.Fatalf("labels %v, want %v", labels, want)
	}
	labels, _ = Cluster(context.Background(), samples, ClusterOptions{Algorithm: DBSCAN, MinSamples: 3})
	if want := []int{0, -1, 0, -1, 0, -1}; !slices.Equal(labels, want) {
		t.Fatalf("min_samples 3: labels %v, want %v", labels, want)
	}
}

func TestClusterErrors(t *testing.T) {
	samples := []Sample{{Embedding: []float32{1, 0}}, {Embedding: []float32{1}}}
	if _, err := Cluster(context.Background(), samples, clusterOpts(Average)); err == nil {
		t.Fatal("ragged dimensions accepted")
	}
	if _, err := Cluster(context.Background(), samples[:1], ClusterOptions{Algorithm: "kmeans"}); err == nil {
		t.Fatal("unknown algorithm accepted")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s := newSynth(16, 0.1, 14)
	many, _ := s.dataset(100, 3)
	if _, err := Cluster(ctx, many, clusterOpts(Average)); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}

func TestSketchRecallAtThreshold(t *testing.T) {
	// Pairs of dense vectors exactly at the threshold distance must nearly
	// always pass the prefilter; pairs at distance 1 (orthogonal) rarely.
	const th = 0.4
	g := newSynth(512, 0, 16)
	sk := newSketcher(512)
	buf := make([]float32, sk.pad)
	cut := sketchCutoff(th, false)
	miss, pass := 0, 0
	var a, b [sketchWords]uint64
	for k := 0; k < 500; k++ {
		x, r := g.unit(), g.unit()
		d := dot(x, r)
		for i := range r {
			r[i] -= d * x[i]
		}
		r, _ = normalized(r)
		c := float32(1 - th)
		s := float32(math.Sqrt(1 - float64(c*c)))
		y := make([]float32, 512)
		for i := range y {
			y[i] = c*x[i] + s*r[i]
		}
		sk.sketch(x, a[:], buf)
		sk.sketch(y, b[:], buf)
		if hamming(a[:], b[:]) > cut {
			miss++
		}
		sk.sketch(r, b[:], buf)
		if hamming(a[:], b[:]) <= cut {
			pass++
		}
	}
	if miss > 0 {
		t.Fatalf("%d/500 pairs at the threshold missed by the prefilter", miss)
	}
	if pass > 5 {
		t.Fatalf("%d/500 orthogonal pairs passed the prefilter", pass)
	}
}

func TestPairClass(t *testing.T) {
	u, m, x := visit.Unmasked, visit.Masked, visit.MaskUnknown
	for _, c := range []struct {
		a, b visit.MaskState
		want string
	}{{u, u, "uu"}, {m, m, "mm"}, {u, m, "mu"}, {m, u, "mu"}, {x, m, "mu"}, {x, x, "uu"}, {x, u, "uu"}} {
		if got := PairClass(c.a, c.b); got != c.want {
			t.Errorf("PairClass(%v, %v) = %q, want %q (unknown counts as unmasked)", c.a, c.b, got, c.want)
		}
	}
}
