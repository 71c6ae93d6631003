// Package learn fits the small heads the project trains on top of frozen
// embeddings: a logistic mask classifier and a nuisance-attribute projection
// that removes the directions along which a mask moves a face's template.
// Pure Go, deterministic, small enough to run in the evaluation harness.
package learn

import (
	"errors"
	"math"
	"math/rand/v2"
	"sort"
)

// Logistic is p(y=1|x) = sigmoid(W.x + B).
type Logistic struct {
	W []float32
	B float64
}

// Prob returns p(y=1|x).
func (l *Logistic) Prob(x []float32) float64 {
	z := l.B
	for i, w := range l.W {
		z += float64(w) * float64(x[i])
	}
	return 1 / (1 + math.Exp(-z))
}

// FitLogistic fits a class-balanced, L2-regularised logistic regression by
// full-batch gradient descent (Adam). Deterministic for the same input.
func FitLogistic(x [][]float32, y []bool, l2 float64, iters int) (*Logistic, error) {
	if len(x) == 0 || len(x) != len(y) {
		return nil, errors.New("learn: logistic: no data or label count mismatch")
	}
	npos := 0
	for _, v := range y {
		if v {
			npos++
		}
	}
	if npos == 0 || npos == len(y) {
		return nil, errors.New("learn: logistic: need both classes")
	}
	wpos := float64(len(y)) / (2 * float64(npos))
	wneg := float64(len(y)) / (2 * float64(len(y)-npos))
	sw := make([]float64, len(y))
	for n, v := range y {
		sw[n] = wneg
		if v {
			sw[n] = wpos
		}
	}
	return FitLogisticWeighted(x, y, sw, l2, iters)
}

// FitLogisticWeighted is FitLogistic with a weight per sample (their mean
// should be 1 for l2 to mean the same as in FitLogistic).
func FitLogisticWeighted(x [][]float32, y []bool, sw []float64, l2 float64, iters int) (*Logistic, error) {
	if len(x) == 0 || len(x) != len(y) || len(sw) != len(y) {
		return nil, errors.New("learn: logistic: no data or label/weight count mismatch")
	}
	dim := len(x[0])
	w := make([]float64, dim+1) // last is the bias
	m := make([]float64, dim+1)
	v := make([]float64, dim+1)
	g := make([]float64, dim+1)
	const lr, b1, b2, eps = 0.05, 0.9, 0.999, 1e-8
	for it := 1; it <= iters; it++ {
		for i := range g {
			g[i] = 0
		}
		for n, xi := range x {
			z := w[dim]
			for i, f := range xi {
				z += w[i] * float64(f)
			}
			p := 1 / (1 + math.Exp(-z))
			t, cw := 0.0, sw[n]
			if y[n] {
				t = 1
			}
			d := cw * (p - t)
			for i, f := range xi {
				g[i] += d * float64(f)
			}
			g[dim] += d
		}
		for i := range g {
			g[i] /= float64(len(x))
			if i < dim {
				g[i] += l2 * w[i]
			}
			m[i] = b1*m[i] + (1-b1)*g[i]
			v[i] = b2*v[i] + (1-b2)*g[i]*g[i]
			mh := m[i] / (1 - math.Pow(b1, float64(it)))
			vh := v[i] / (1 - math.Pow(b2, float64(it)))
			w[i] -= lr * mh / (math.Sqrt(vh) + eps)
		}
	}
	out := &Logistic{W: make([]float32, dim), B: w[dim]}
	for i := 0; i < dim; i++ {
		out.W[i] = float32(w[i])
	}
	return out, nil
}

// Projection removes K orthonormal directions: x' = x - U(U^T x), then
// L2-normalises. It is nuisance attribute projection (NAP): the directions
// are the principal components of the differences between a person's masked
// and unmasked templates, i.e. what a mask changes, not who the person is.
type Projection struct {
	U [][]float32 // K x dim, orthonormal rows
}

// Apply projects x in place and renormalises it.
func (p *Projection) Apply(x []float32) {
	for _, u := range p.U {
		var d float64
		for i := range x {
			d += float64(u[i]) * float64(x[i])
		}
		for i := range x {
			x[i] -= float32(d) * u[i]
		}
	}
	var n float64
	for _, v := range x {
		n += float64(v) * float64(v)
	}
	if n > 0 {
		inv := float32(1 / math.Sqrt(n))
		for i := range x {
			x[i] *= inv
		}
	}
}

// Remove returns x - U U^T x without renormalising it.
func (p *Projection) Remove(x []float32) []float32 {
	y := append([]float32(nil), x...)
	for _, u := range p.U {
		var d float64
		for i := range y {
			d += float64(u[i]) * float64(y[i])
		}
		for i := range y {
			y[i] -= float32(d) * u[i]
		}
	}
	return y
}

// FitNAP returns the top k principal directions of the given difference
// vectors (uncentred: the mean shift a mask causes is itself a nuisance
// direction), by power iteration with deflation. Deterministic (seeded).
func FitNAP(diffs [][]float32, k int) (*Projection, []float64, error) {
	if len(diffs) == 0 {
		return nil, nil, errors.New("learn: nap: no difference vectors")
	}
	dim := len(diffs[0])
	if k <= 0 || k > dim {
		return nil, nil, errors.New("learn: nap: k out of range")
	}
	// Scatter matrix S = sum d d^T (dim x dim, float64).
	s := make([]float64, dim*dim)
	for _, d := range diffs {
		for i := 0; i < dim; i++ {
			di := float64(d[i])
			if di == 0 {
				continue
			}
			row := s[i*dim : (i+1)*dim]
			for j := 0; j < dim; j++ {
				row[j] += di * float64(d[j])
			}
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var us [][]float64
	var vals []float64
	tmp := make([]float64, dim)
	for c := 0; c < k; c++ {
		u := make([]float64, dim)
		for i := range u {
			u[i] = rng.NormFloat64()
		}
		var lambda float64
		for it := 0; it < 200; it++ {
			// tmp = S u, then deflate against earlier components.
			for i := 0; i < dim; i++ {
				var acc float64
				row := s[i*dim : (i+1)*dim]
				for j, uj := range u {
					acc += row[j] * uj
				}
				tmp[i] = acc
			}
			for _, q := range us {
				var d float64
				for i := range tmp {
					d += q[i] * tmp[i]
				}
				for i := range tmp {
					tmp[i] -= d * q[i]
				}
			}
			var n float64
			for _, v := range tmp {
				n += v * v
			}
			n = math.Sqrt(n)
			if n == 0 {
				break
			}
			delta := 0.0
			for i := range u {
				nv := tmp[i] / n
				delta += math.Abs(nv - u[i])
				u[i] = nv
			}
			lambda = n
			if delta < 1e-9*float64(dim) {
				break
			}
		}
		us = append(us, u)
		vals = append(vals, lambda)
	}
	p := &Projection{}
	for _, u := range us {
		f := make([]float32, dim)
		for i, v := range u {
			f[i] = float32(v)
		}
		p.U = append(p.U, f)
	}
	return p, vals, nil
}

// Threshold picks the score cut that maximises balanced accuracy, and
// reports that accuracy.
func Threshold(scores []float64, y []bool) (float64, float64) {
	type sy struct {
		s float64
		y bool
	}
	all := make([]sy, len(scores))
	npos := 0
	for i := range scores {
		all[i] = sy{scores[i], y[i]}
		if y[i] {
			npos++
		}
	}
	nneg := len(all) - npos
	sort.Slice(all, func(i, j int) bool { return all[i].s < all[j].s })
	best, bestT := -1.0, 0.5
	negBelow, posBelow := 0, 0
	for i := 0; i <= len(all); i++ {
		if i == len(all) || i == 0 || all[i].s != all[i-1].s {
			// cut before all[i]: predict positive for s >= cut
			tpr := float64(npos-posBelow) / math.Max(1, float64(npos))
			tnr := float64(negBelow) / math.Max(1, float64(nneg))
			if ba := (tpr + tnr) / 2; ba > best {
				best = ba
				if i < len(all) {
					bestT = all[i].s
				} else {
					bestT = math.Inf(1)
				}
			}
		}
		if i < len(all) {
			if all[i].y {
				posBelow++
			} else {
				negBelow++
			}
		}
	}
	return bestT, best
}
