package learn

import (
	"math"
	"sort"
)

// SymEig returns the eigenvalues of the symmetric n x n matrix a (row-major;
// a is overwritten) in descending order, with the matching unit eigenvectors
// as rows. Householder tridiagonalisation and the implicit QL algorithm
// (tred2/tql2, as in EISPACK and JAMA); O(n^3), deterministic.
func SymEig(a []float64, n int) ([]float64, [][]float64) {
	if n == 0 {
		return nil, nil
	}
	v := make([][]float64, n)
	for i := range v {
		v[i] = a[i*n : (i+1)*n]
	}
	d := make([]float64, n)
	e := make([]float64, n)
	tred2(v, d, e)
	// tql2 rotates columns; work on the transpose so rotations touch rows.
	vt := make([][]float64, n)
	for i := range vt {
		vt[i] = make([]float64, n)
		for k := 0; k < n; k++ {
			vt[i][k] = v[k][i]
		}
	}
	tql2(vt, d, e)
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(i, j int) bool { return d[idx[i]] > d[idx[j]] })
	vals := make([]float64, n)
	vecs := make([][]float64, n)
	for r, i := range idx {
		vals[r], vecs[r] = d[i], vt[i]
	}
	return vals, vecs
}

func tred2(v [][]float64, d, e []float64) {
	n := len(d)
	copy(d, v[n-1])
	for i := n - 1; i > 0; i-- {
		scale, h := 0.0, 0.0
		for k := 0; k < i; k++ {
			scale += math.Abs(d[k])
		}
		if scale == 0 {
			e[i] = d[i-1]
			for j := 0; j < i; j++ {
				d[j] = v[i-1][j]
				v[i][j] = 0
				v[j][i] = 0
			}
		} else {
			for k := 0; k < i; k++ {
				d[k] /= scale
				h += d[k] * d[k]
			}
			f := d[i-1]
			g := math.Sqrt(h)
			if f > 0 {
				g = -g
			}
			e[i] = scale * g
			h -= f * g
			d[i-1] = f - g
			for j := 0; j < i; j++ {
				e[j] = 0
			}
			for j := 0; j < i; j++ {
				f = d[j]
				v[j][i] = f
				g = e[j] + v[j][j]*f
				for k := j + 1; k <= i-1; k++ {
					g += v[k][j] * d[k]
					e[k] += v[k][j] * f
				}
				e[j] = g
			}
			f = 0
			for j := 0; j < i; j++ {
				e[j] /= h
				f += e[j] * d[j]
			}
			hh := f / (h + h)
			for j := 0; j < i; j++ {
				e[j] -= hh * d[j]
			}
			for j := 0; j < i; j++ {
				f, g = d[j], e[j]
				for k := j; k <= i-1; k++ {
					v[k][j] -= f*e[k] + g*d[k]
				}
				d[j] = v[i-1][j]
				v[i][j] = 0
			}
		}
		d[i] = h
	}
	for i := 0; i < n-1; i++ {
		v[n-1][i] = v[i][i]
		v[i][i] = 1
		h := d[i+1]
		if h != 0 {
			for k := 0; k <= i; k++ {
				d[k] = v[k][i+1] / h
			}
			for j := 0; j <= i; j++ {
				g := 0.0
				for k := 0; k <= i; k++ {
					g += v[k][i+1] * v[k][j]
				}
				for k := 0; k <= i; k++ {
					v[k][j] -= g * d[k]
				}
			}
		}
		for k := 0; k <= i; k++ {
			v[k][i+1] = 0
		}
	}
	for j := 0; j < n; j++ {
		d[j] = v[n-1][j]
		v[n-1][j] = 0
	}
	v[n-1][n-1] = 1
	e[0] = 0
}

// tql2 diagonalises the tridiagonal (d, e); vt holds the transposed
// eigenvector matrix (row i is eigenvector i on return).
func tql2(vt [][]float64, d, e []float64) {
	n := len(d)
	for i := 1; i < n; i++ {
		e[i-1] = e[i]
	}
	e[n-1] = 0
	f, tst1 := 0.0, 0.0
	eps := math.Pow(2, -52)
	for l := 0; l < n; l++ {
		tst1 = math.Max(tst1, math.Abs(d[l])+math.Abs(e[l]))
		m := l
		for m < n-1 && math.Abs(e[m]) > eps*tst1 {
			m++
		}
		if m > l {
			for iter := 0; iter < 100; iter++ {
				g := d[l]
				p := (d[l+1] - g) / (2 * e[l])
				r := math.Hypot(p, 1)
				if p < 0 {
					r = -r
				}
				d[l] = e[l] / (p + r)
				d[l+1] = e[l] * (p + r)
				dl1 := d[l+1]
				h := g - d[l]
				for i := l + 2; i < n; i++ {
					d[i] -= h
				}
				f += h
				p = d[m]
				c, c2, c3 := 1.0, 1.0, 1.0
				el1 := e[l+1]
				s, s2 := 0.0, 0.0
				for i := m - 1; i >= l; i-- {
					c3 = c2
					c2 = c
					s2 = s
					g = c * e[i]
					h = c * p
					r = math.Hypot(p, e[i])
					e[i+1] = s * r
					s = e[i] / r
					c = p / r
					p = c*d[i] - s*g
					d[i+1] = h + s*(c*g+s*d[i])
					a, b := vt[i], vt[i+1]
					for k := range a {
						hk := b[k]
						b[k] = s*a[k] + c*hk
						a[k] = c*a[k] - s*hk
					}
				}
				p = -s * s2 * c3 * el1 * e[l] / dl1
				e[l] = s * p
				d[l] = c * p
				if math.Abs(e[l]) <= eps*tst1 {
					break
				}
			}
		}
		d[l] += f
		e[l] = 0
	}
}
