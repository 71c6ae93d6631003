package learn

import (
	"math"
	"math/rand/v2"
	"strconv"
	"testing"
)

func TestSymEig(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, n := range []int{1, 2, 5, 40} {
		a := make([]float64, n*n)
		for i := 0; i < n; i++ {
			for j := 0; j <= i; j++ {
				v := rng.NormFloat64()
				a[i*n+j], a[j*n+i] = v, v
			}
		}
		orig := append([]float64(nil), a...)
		vals, vecs := SymEig(a, n)
		for k := range vals {
			if k > 0 && vals[k] > vals[k-1] {
				t.Fatalf("n=%d: eigenvalues not descending: %v", n, vals)
			}
			// A v = lambda v
			for i := 0; i < n; i++ {
				var av float64
				for j := 0; j < n; j++ {
					av += orig[i*n+j] * vecs[k][j]
				}
				if math.Abs(av-vals[k]*vecs[k][i]) > 1e-9 {
					t.Fatalf("n=%d: A v != lambda v for eigenpair %d", n, k)
				}
			}
			for l := 0; l <= k; l++ {
				var d float64
				for i := 0; i < n; i++ {
					d += vecs[k][i] * vecs[l][i]
				}
				want := 0.0
				if l == k {
					want = 1
				}
				if math.Abs(d-want) > 1e-9 {
					t.Fatalf("n=%d: eigenvectors %d,%d dot %g", n, k, l, d)
				}
			}
		}
	}
}

// synthetic identities in 12 dims: identity signal in dims 0..3, a large
// shared nuisance ("mask") along dim 5 that flips per sample, small noise
// elsewhere.
func synthIdentities(rng *rand.Rand, ids, per int) ([][]float32, []string, []bool) {
	var x [][]float32
	var lab []string
	var masked []bool
	for c := 0; c < ids; c++ {
		centre := make([]float64, 4)
		for i := range centre {
			centre[i] = rng.NormFloat64()
		}
		for s := 0; s < per; s++ {
			v := make([]float32, 12)
			for i := range v {
				v[i] = float32(rng.NormFloat64() * 0.05)
			}
			for i := range centre {
				v[i] += float32(centre[i] * 0.3)
			}
			m := s%2 == 1
			if m {
				v[5] += 1.5
			}
			v[6] += float32(rng.NormFloat64() * 0.8) // within-class noise
			x, lab, masked = append(x, v), append(lab, strconv.Itoa(c)), append(masked, m)
		}
	}
	return x, lab, masked
}

func cos(a, b []float32) float64 {
	var d, na, nb float64
	for i := range a {
		d += float64(a[i]) * float64(b[i])
		na += float64(a[i]) * float64(a[i])
		nb += float64(b[i]) * float64(b[i])
	}
	return d / math.Sqrt(na*nb)
}

// margin is the mean genuine minus the mean impostor cosine.
func margin(x [][]float32, lab []string) float64 {
	var g, im float64
	var ng, ni int
	for i := range x {
		for j := i + 1; j < len(x); j++ {
			c := cos(x[i], x[j])
			if lab[i] == lab[j] {
				g, ng = g+c, ng+1
			} else {
				im, ni = im+c, ni+1
			}
		}
	}
	return g/float64(ng) - im/float64(ni)
}

func TestWCCNAndLDA(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	x, lab, _ := synthIdentities(rng, 40, 4)
	pca, err := FitPCA(x, 0)
	if err != nil {
		t.Fatal(err)
	}
	wc, err := NewWithinClass(pca, x, lab, 10)
	if err != nil {
		t.Fatal(err)
	}
	wccn, err := wc.WCCN(10, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Unshrunk WCCN whitens the training within-class covariance: its
	// pooled covariance in the output (before renormalisation) is I.
	proj := func(l *Linear, v []float32) []float64 {
		out := make([]float64, len(l.W))
		for o, w := range l.W {
			for i := range v {
				out[o] += float64(w[i]) * (float64(v[i]) - float64(l.Mean[i]))
			}
		}
		return out
	}
	byID := map[string][][]float64{}
	for i, v := range x {
		byID[lab[i]] = append(byID[lab[i]], proj(wccn, v))
	}
	cov := make([]float64, 100)
	dof := 0
	for _, zs := range byID {
		m := make([]float64, 10)
		for _, z := range zs {
			for i := range m {
				m[i] += z[i] / float64(len(zs))
			}
		}
		for _, z := range zs {
			d := make([]float64, 10)
			for i := range d {
				d[i] = z[i] - m[i]
			}
			addOuter(cov, d, 1)
		}
		dof += len(zs) - 1
	}
	for i := 0; i < 10; i++ {
		for j := 0; j < 10; j++ {
			want := 0.0
			if i == j {
				want = 1
			}
			if got := cov[i*10+j] / float64(dof); math.Abs(got-want) > 1e-6 {
				t.Fatalf("within-class covariance [%d,%d] = %g after WCCN", i, j, got)
			}
		}
	}

	// On new identities from the same process, WCCN and LDA separate
	// people better than the raw cosine, and LDA's output has k dims.
	tx, tlab, _ := synthIdentities(rng, 30, 4)
	lda, err := wc.LDA(10, 0.1, 4)
	if err != nil {
		t.Fatal(err)
	}
	apply := func(l *Linear) [][]float32 {
		var out [][]float32
		for _, v := range tx {
			out = append(out, l.Apply(v))
		}
		return out
	}
	raw := margin(tx, tlab)
	mw := margin(apply(wccn), tlab)
	la := apply(lda)
	ml := margin(la, tlab)
	if len(la[0]) != 4 {
		t.Fatalf("lda output %d dims", len(la[0]))
	}
	if mw <= raw+0.1 || ml <= raw+0.1 {
		t.Fatalf("margins raw %.3f wccn %.3f lda %.3f", raw, mw, ml)
	}
	if _, err := wc.LDA(10, 0.1, 11); err == nil {
		t.Fatal("k > p accepted")
	}
}

// A head fitted after NAP and composed with it equals NAP then the head.
func TestAfterNAP(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	x, lab, masked := synthIdentities(rng, 30, 4)
	var diffs [][]float32
	for i := 0; i+1 < len(x); i += 2 {
		if masked[i+1] && !masked[i] {
			d := make([]float32, len(x[i]))
			for k := range d {
				d[k] = x[i+1][k] - x[i][k]
			}
			diffs = append(diffs, d)
		}
	}
	nap, _, err := FitNAP(diffs, 1)
	if err != nil {
		t.Fatal(err)
	}
	var px [][]float32
	for _, v := range x {
		px = append(px, nap.Remove(v))
	}
	pca, err := FitPCA(px, 8)
	if err != nil {
		t.Fatal(err)
	}
	wc, err := NewWithinClass(pca, px, lab, 8)
	if err != nil {
		t.Fatal(err)
	}
	head, err := wc.WCCN(8, 0.05)
	if err != nil {
		t.Fatal(err)
	}
	v := x[3]
	want := head.Apply(nap.Remove(v))
	head.AfterNAP(nap)
	got := head.Apply(v)
	for i := range want {
		if math.Abs(float64(got[i]-want[i])) > 1e-5 {
			t.Fatalf("composed %v, chained %v", got, want)
		}
	}
}

func BenchmarkSymEig256(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	n := 256
	base := make([]float64, n*n)
	for i := 0; i < n; i++ {
		for j := 0; j <= i; j++ {
			v := rng.NormFloat64()
			base[i*n+j], base[j*n+i] = v, v
		}
	}
	a := make([]float64, n*n)
	for b.Loop() {
		copy(a, base)
		SymEig(a, n)
	}
}

// The subspace-iteration PCA agrees with the full solver on the top of a
// spectrum that decays like real embeddings'.
func TestTopEigMatchesFull(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	n, k := 120, 10
	var x [][]float32
	for s := 0; s < 400; s++ {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64() / (1 + float64(i)/3))
		}
		x = append(x, v)
	}
	fast, err := FitPCA(x, k) // 2k < n: subspace iteration
	if err != nil {
		t.Fatal(err)
	}
	full, err := FitPCA(x, 0)
	if err != nil {
		t.Fatal(err)
	}
	for r := 0; r < k; r++ {
		if math.Abs(fast.Vals[r]-full.Vals[r]) > 1e-6*full.Vals[0] {
			t.Fatalf("eigenvalue %d: %g vs %g", r, fast.Vals[r], full.Vals[r])
		}
		var d float64
		for i := range fast.Vecs[r] {
			d += fast.Vecs[r][i] * full.Vecs[r][i]
		}
		if math.Abs(math.Abs(d)-1) > 1e-4 {
			t.Fatalf("eigenvector %d: |cos| %g", r, math.Abs(d))
		}
	}
}

func BenchmarkFitPCA1024(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	var x [][]float32
	for s := 0; s < 1800; s++ {
		v := make([]float32, 1024)
		for i := range v {
			v[i] = float32(rng.NormFloat64() / (1 + float64(i)/20))
		}
		x = append(x, v)
	}
	for b.Loop() {
		if _, err := FitPCA(x, 256); err != nil {
			b.Fatal(err)
		}
	}
}
