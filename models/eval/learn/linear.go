package learn

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
)

// Linear is a learned linear head: y = W (x - Mean), L2-normalised. Its
// output may have fewer dimensions than its input.
type Linear struct {
	Mean []float32   // input-sized; nil means zero
	W    [][]float32 // out x in
}

// Apply returns the projected, L2-normalised template (x is not changed).
func (l *Linear) Apply(x []float32) []float32 {
	c := x
	if l.Mean != nil {
		c = make([]float32, len(x))
		for i := range x {
			c[i] = x[i] - l.Mean[i]
		}
	}
	y := make([]float32, len(l.W))
	var n float64
	for o, w := range l.W {
		var acc float64
		for i, v := range w {
			acc += float64(v) * float64(c[i])
		}
		y[o] = float32(acc)
		n += acc * acc
	}
	if n > 0 {
		inv := 1 / math.Sqrt(n)
		for i := range y {
			y[i] = float32(float64(y[i]) * inv)
		}
	}
	return y
}

// AfterNAP composes a head fitted on NAP-projected templates (P x with
// P = I - U U^T, not renormalised; see Projection.Remove) into one head over
// the raw templates: W (P x - Mean) = (W P)(x - Mean), as Mean = P mean(x)
// and P is idempotent.
func (l *Linear) AfterNAP(p *Projection) {
	for _, w := range l.W {
		for _, u := range p.U {
			var d float64
			for i := range w {
				d += float64(w[i]) * float64(u[i])
			}
			for i := range w {
				w[i] -= float32(d) * u[i]
			}
		}
	}
}

// PCA is the principal subspace of a set of templates.
type PCA struct {
	Mean []float64
	Vals []float64   // descending
	Vecs [][]float64 // unit rows, matching Vals
}

// FitPCA centres x on its mean and returns the top maxK principal
// directions (all of them when maxK <= 0).
func FitPCA(x [][]float32, maxK int) (*PCA, error) {
	if len(x) < 2 {
		return nil, errors.New("learn: pca: need two or more samples")
	}
	dim := len(x[0])
	mean := make([]float64, dim)
	for _, v := range x {
		for i, f := range v {
			mean[i] += float64(f)
		}
	}
	for i := range mean {
		mean[i] /= float64(len(x))
	}
	cov := make([]float64, dim*dim)
	c := make([]float64, dim)
	for _, v := range x {
		for i, f := range v {
			c[i] = float64(f) - mean[i]
		}
		for i := 0; i < dim; i++ {
			ci := c[i]
			row := cov[i*dim : i*dim+i+1]
			for j := range row {
				row[j] += ci * c[j]
			}
		}
	}
	for i := 0; i < dim; i++ {
		for j := 0; j <= i; j++ {
			cov[i*dim+j] /= float64(len(x) - 1)
			cov[j*dim+i] = cov[i*dim+j]
		}
	}
	var vals []float64
	var vecs [][]float64
	if maxK > 0 && 2*maxK < dim {
		vals, vecs = topEig(cov, dim, maxK)
	} else {
		vals, vecs = SymEig(cov, dim)
	}
	if maxK > 0 && maxK < len(vals) {
		vals, vecs = vals[:maxK], vecs[:maxK]
	}
	return &PCA{Mean: mean, Vals: vals, Vecs: vecs}, nil
}

// topEig returns the top k eigenpairs of the symmetric positive
// semi-definite n x n matrix c by subspace iteration on k+oversample seeded
// random vectors followed by a Rayleigh-Ritz step: O(n^2 k) per iteration
// against O(n^3) (and cache-hostile column sweeps) for the full solver.
func topEig(c []float64, n, k int) ([]float64, [][]float64) {
	const oversample, iters = 24, 5
	m := min(n, k+oversample)
	rng := rand.New(rand.NewPCG(3, 5))
	q := make([][]float64, m)
	for i := range q {
		q[i] = make([]float64, n)
		for j := range q[i] {
			q[i][j] = rng.NormFloat64()
		}
	}
	orthonormalise(q)
	for it := 0; it < iters; it++ {
		q = symMulRows(c, n, q)
		orthonormalise(q)
	}
	// Rayleigh-Ritz: eigenpairs of Q C Q^T (m x m).
	cq := symMulRows(c, n, q)
	t := make([]float64, m*m)
	for i := 0; i < m; i++ {
		for j := 0; j < m; j++ {
			var acc float64
			for x, v := range q[i] {
				acc += v * cq[j][x]
			}
			t[i*m+j] = acc
		}
	}
	for i := 0; i < m; i++ { // symmetrise rounding
		for j := 0; j < i; j++ {
			a := (t[i*m+j] + t[j*m+i]) / 2
			t[i*m+j], t[j*m+i] = a, a
		}
	}
	vals, small := SymEig(t, m)
	vecs := make([][]float64, m)
	for r := range vecs {
		v := make([]float64, n)
		for i, w := range small[r] {
			for x, qv := range q[i] {
				v[x] += w * qv
			}
		}
		vecs[r] = v
	}
	return vals, vecs
}

// symMulRows returns the rows of (C Q^T)^T = Q C for symmetric C.
func symMulRows(c []float64, n int, q [][]float64) [][]float64 {
	out := make([][]float64, len(q))
	for r, row := range q {
		o := make([]float64, n)
		for i, v := range row {
			if v == 0 {
				continue
			}
			crow := c[i*n : (i+1)*n]
			for j, cv := range crow {
				o[j] += v * cv
			}
		}
		out[r] = o
	}
	return out
}

// orthonormalise applies modified Gram-Schmidt to the rows of q (twice, for
// stability); a row that vanishes is left at zero.
func orthonormalise(q [][]float64) {
	for pass := 0; pass < 2; pass++ {
		for i := range q {
			for j := 0; j < i; j++ {
				var d float64
				for x := range q[i] {
					d += q[i][x] * q[j][x]
				}
				for x := range q[i] {
					q[i][x] -= d * q[j][x]
				}
			}
			var nn float64
			for _, v := range q[i] {
				nn += v * v
			}
			if nn > 0 {
				inv := 1 / math.Sqrt(nn)
				for x := range q[i] {
					q[i][x] *= inv
				}
			}
		}
	}
}

// project returns the centred coordinates of x in the top p directions.
func (p *PCA) project(x []float32, k int) []float64 {
	out := make([]float64, k)
	for j := 0; j < k; j++ {
		var acc float64
		for i, f := range x {
			acc += p.Vecs[j][i] * (float64(f) - p.Mean[i])
		}
		out[j] = acc
	}
	return out
}

// WithinClass is the PCA-reduced training data grouped by identity, from
// which WCCN and LDA heads of any size up to its dimension are fitted.
type WithinClass struct {
	pca *PCA
	z   [][]float64 // samples in PCA coordinates
	ids []int       // class index per sample
	nc  int
}

// NewWithinClass reduces x to the top p principal directions of pca and
// groups the samples by label.
func NewWithinClass(pca *PCA, x [][]float32, labels []string, p int) (*WithinClass, error) {
	if len(x) != len(labels) || len(x) == 0 {
		return nil, errors.New("learn: within-class: no data or label count mismatch")
	}
	if p <= 0 || p > len(pca.Vecs) {
		return nil, fmt.Errorf("learn: within-class: %d dims asked, PCA has %d", p, len(pca.Vecs))
	}
	w := &WithinClass{pca: pca}
	idx := map[string]int{}
	for i, v := range x {
		c, ok := idx[labels[i]]
		if !ok {
			c = len(idx)
			idx[labels[i]] = c
		}
		w.z = append(w.z, pca.project(v, p))
		w.ids = append(w.ids, c)
	}
	w.nc = len(idx)
	return w, nil
}

// scatter returns the within-class covariance Sw (pooled over classes with
// two or more samples) and the between-class scatter Sb of the class means
// (weighted by class size), both p x p, in the first p PCA coordinates.
func (w *WithinClass) scatter(p int) (sw, sb []float64, err error) {
	means := make([][]float64, w.nc)
	counts := make([]int, w.nc)
	for i := range means {
		means[i] = make([]float64, p)
	}
	for n, z := range w.z {
		c := w.ids[n]
		counts[c]++
		for i := 0; i < p; i++ {
			means[c][i] += z[i]
		}
	}
	for c := range means {
		for i := range means[c] {
			means[c][i] /= float64(counts[c])
		}
	}
	sw = make([]float64, p*p)
	dof := 0
	d := make([]float64, p)
	for n, z := range w.z {
		c := w.ids[n]
		if counts[c] < 2 {
			continue
		}
		for i := 0; i < p; i++ {
			d[i] = z[i] - means[c][i]
		}
		addOuter(sw, d, 1)
	}
	for _, k := range counts {
		if k >= 2 {
			dof += k - 1
		}
	}
	if dof == 0 {
		return nil, nil, errors.New("learn: within-class: no class has two samples")
	}
	for i := range sw {
		sw[i] /= float64(dof)
	}
	sb = make([]float64, p*p)
	for c, m := range means {
		addOuter(sb, m, float64(counts[c])/float64(len(w.z)))
	}
	return sw, sb, nil
}

func addOuter(s []float64, d []float64, wgt float64) {
	p := len(d)
	for i := 0; i < p; i++ {
		di := wgt * d[i]
		row := s[i*p : (i+1)*p]
		for j, dj := range d {
			row[j] += di * dj
		}
	}
}

// whitener returns Sw^(-1/2) (p x p, symmetric) after shrinking Sw towards
// a multiple of the identity: (1-a) Sw + a (tr Sw / p) I.
func whitener(sw []float64, p int, shrink float64) []float64 {
	tr := 0.0
	for i := 0; i < p; i++ {
		tr += sw[i*p+i]
	}
	a := make([]float64, p*p)
	for i := range a {
		a[i] = (1 - shrink) * sw[i]
	}
	for i := 0; i < p; i++ {
		a[i*p+i] += shrink * tr / float64(p)
	}
	vals, vecs := SymEig(a, p)
	floor := 1e-9 * math.Max(vals[0], 1e-30)
	out := make([]float64, p*p)
	for k, v := range vecs {
		s := 1 / math.Sqrt(math.Max(vals[k], floor))
		for i := 0; i < p; i++ {
			for j := 0; j < p; j++ {
				out[i*p+j] += s * v[i] * v[j]
			}
		}
	}
	return out
}

// linear composes a map M (rows over the first p PCA coordinates) with the
// PCA into a head over the original templates.
func (w *WithinClass) linear(m [][]float64) *Linear {
	dim := len(w.pca.Mean)
	l := &Linear{Mean: make([]float32, dim)}
	for i, v := range w.pca.Mean {
		l.Mean[i] = float32(v)
	}
	for _, row := range m {
		out := make([]float64, dim)
		for j, c := range row {
			if c == 0 {
				continue
			}
			for i, v := range w.pca.Vecs[j] {
				out[i] += c * v
			}
		}
		f := make([]float32, dim)
		for i, v := range out {
			f[i] = float32(v)
		}
		l.W = append(l.W, f)
	}
	return l
}

// WCCN returns within-class covariance normalisation in the first p PCA
// dimensions: the within-identity covariance (shrunk towards the identity
// by shrink in [0,1]) becomes the identity, so directions along which one
// person's templates vary (a mask, light, pose) weigh less in a cosine.
func (w *WithinClass) WCCN(p int, shrink float64) (*Linear, error) {
	sw, _, err := w.scatter(p)
	if err != nil {
		return nil, err
	}
	wh := whitener(sw, p, shrink)
	m := make([][]float64, p)
	for i := range m {
		m[i] = wh[i*p : (i+1)*p]
	}
	return w.linear(m), nil
}

// LDA returns WCCN in the first p PCA dimensions followed by the k
// directions along which the whitened identity means spread most (Fisher's
// discriminant with a shrunk within-class covariance).
func (w *WithinClass) LDA(p int, shrink float64, k int) (*Linear, error) {
	if k <= 0 || k > p {
		return nil, fmt.Errorf("learn: lda: k %d out of 1..%d", k, p)
	}
	sw, sb, err := w.scatter(p)
	if err != nil {
		return nil, err
	}
	wh := whitener(sw, p, shrink)
	// Between-class scatter in the whitened space: Wh Sb Wh.
	t := matMul(matMul(wh, sb, p), wh, p)
	_, vecs := SymEig(t, p)
	m := make([][]float64, k)
	for r := 0; r < k; r++ {
		row := make([]float64, p)
		for j := 0; j < p; j++ {
			var acc float64
			for i := 0; i < p; i++ {
				acc += vecs[r][i] * wh[i*p+j]
			}
			row[j] = acc
		}
		m[r] = row
	}
	return w.linear(m), nil
}

func matMul(a, b []float64, p int) []float64 {
	out := make([]float64, p*p)
	for i := 0; i < p; i++ {
		for k := 0; k < p; k++ {
			aik := a[i*p+k]
			if aik == 0 {
				continue
			}
			brow := b[k*p : (k+1)*p]
			orow := out[i*p : (i+1)*p]
			for j, v := range brow {
				orow[j] += aik * v
			}
		}
	}
	return out
}
