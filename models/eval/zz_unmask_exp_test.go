package eval

import (
	"fmt"
	"hash/fnv"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/models/eval/metrics"
)

// expRun returns the newest cached run whose raw (512-d) templates cover
// the dataset whose first image is first, with or without painted masks.
func expRun(t *testing.T, first string, synth bool) *Run {
	dir := os.Getenv("EXP_CACHE")
	files, _ := filepath.Glob(filepath.Join(dir, "*.gob"))
	var best *Run
	var bestT int64
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil || st.ModTime().UnixNano() < bestT {
			continue
		}
		r, err := loadCache(dir, strings.TrimSuffix(filepath.Base(f), ".gob"))
		if err != nil || len(r.Samples) == 0 || r.Samples[0].Rel != first || r.Embedder != "faceplugin" {
			continue
		}
		dim, ns := 0, 0
		for _, s := range r.Samples {
			if s.Found && dim == 0 {
				dim = len(s.Embedding)
			}
			if s.Synthetic {
				ns++
			}
		}
		if dim == 512 && (ns > 0) == synth && (first != "Aaron_Eckhart/Aaron_Eckhart_0001.jpg" || len(r.Samples) > 6000) {
			best, bestT = r, st.ModTime().UnixNano()
		}
	}
	if best == nil {
		t.Fatalf("no raw faceplugin run of %s (synthetic %v) in %s: run atm-tools eval verify --raw first", first, synth, dir)
	}
	return best
}

func nrm(x []float32) []float64 {
	y := make([]float64, len(x))
	var s float64
	for i, v := range x {
		y[i] = float64(v)
		s += y[i] * y[i]
	}
	s = math.Sqrt(s)
	for i := range y {
		y[i] /= s
	}
	return y
}

func expFold(id string) int {
	h := fnv.New32a()
	h.Write([]byte(id))
	return int(h.Sum32() % 2)
}

// unmaskMap: y = x + D^T (x - mx) + (mu - mx) ... fitted as y ~ A x + b with A = I + D.
type unmaskMap struct {
	A  [][]float64
	b  []float64
	mx []float64
}

func (m *unmaskMap) apply(x []float64) []float64 {
	n := len(x)
	y := make([]float64, n)
	for i := 0; i < n; i++ {
		s := m.b[i]
		for j := 0; j < n; j++ {
			s += m.A[i][j] * x[j]
		}
		y[i] = s
	}
	var q float64
	for _, v := range y {
		q += v * v
	}
	q = math.Sqrt(q)
	for i := range y {
		y[i] /= q
	}
	return y
}

func fitUnmask(xs, ys [][]float64, lambda float64) *unmaskMap {
	n := len(xs[0])
	N := float64(len(xs))
	mx := make([]float64, n)
	my := make([]float64, n)
	for k := range xs {
		for i := 0; i < n; i++ {
			mx[i] += xs[k][i] / N
			my[i] += ys[k][i] / N
		}
	}
	// G = Xc^T Xc + lambda I ; R = Xc^T (Yc - Xc)
	G := make([]float64, n*n)
	R := make([]float64, n*n)
	xc := make([]float64, n)
	rc := make([]float64, n)
	for k := range xs {
		for i := 0; i < n; i++ {
			xc[i] = xs[k][i] - mx[i]
			rc[i] = (ys[k][i] - my[i]) - xc[i]
		}
		for i := 0; i < n; i++ {
			gi, ri := G[i*n:(i+1)*n], R[i*n:(i+1)*n]
			a := xc[i]
			for j := 0; j < n; j++ {
				gi[j] += a * xc[j]
				ri[j] += a * rc[j]
			}
		}
	}
	for i := 0; i < n; i++ {
		G[i*n+i] += lambda
	}
	// Cholesky G = L L^T
	L := make([]float64, n*n)
	for i := 0; i < n; i++ {
		for j := 0; j <= i; j++ {
			s := G[i*n+j]
			for k := 0; k < j; k++ {
				s -= L[i*n+k] * L[j*n+k]
			}
			if i == j {
				L[i*n+i] = math.Sqrt(s)
			} else {
				L[i*n+j] = s / L[j*n+j]
			}
		}
	}
	// Solve G Dt = R column by column: Dt is n x n with Dt[:,c]; D = Dt^T
	Dt := make([]float64, n*n)
	z := make([]float64, n)
	for c := 0; c < n; c++ {
		for i := 0; i < n; i++ {
			s := R[i*n+c]
			for k := 0; k < i; k++ {
				s -= L[i*n+k] * z[k]
			}
			z[i] = s / L[i*n+i]
		}
		for i := n - 1; i >= 0; i-- {
			s := z[i]
			for k := i + 1; k < n; k++ {
				s -= L[k*n+i] * Dt[k*n+c]
			}
			Dt[i*n+c] = s / L[i*n+i]
		}
	}
	A := make([][]float64, n)
	for i := range A {
		A[i] = make([]float64, n)
		for j := 0; j < n; j++ {
			A[i][j] = Dt[j*n+i]
		}
		A[i][i] += 1
	}
	b := make([]float64, n)
	for i := 0; i < n; i++ {
		s := my[i]
		for j := 0; j < n; j++ {
			s -= A[i][j] * mx[j]
		}
		b[i] = s
	}
	return &unmaskMap{A: A, b: b, mx: mx}
}

type expSample struct {
	id     string
	masked bool // predicted masked (product would map it)
	gtMask bool
	x      []float64
}

func scoreMU(ss []expSample, tf func(expSample) []float64) (auc, t2, t3 float64, gMM, iMM []float64) {
	var g, im []float64
	v := make([][]float64, len(ss))
	for i, s := range ss {
		v[i] = tf(s)
	}
	for i := range ss {
		for j := i + 1; j < len(ss); j++ {
			if ss[i].gtMask == ss[j].gtMask {
				if ss[i].gtMask {
					d := dot64(v[i], v[j])
					if ss[i].id == ss[j].id {
						gMM = append(gMM, d)
					} else {
						iMM = append(iMM, d)
					}
				}
				continue
			}
			d := dot64(v[i], v[j])
			if ss[i].id == ss[j].id {
				g = append(g, d)
			} else {
				im = append(im, d)
			}
		}
	}
	auc = metrics.AUC(g, im)
	t2, _ = metrics.TARAtFAR(g, im, 1e-2)
	t3, _ = metrics.TARAtFAR(g, im, 1e-3)
	return
}

func dot64(a, b []float64) float64 {
	var s float64
	for i := range a {
		s += a[i] * b[i]
	}
	return s
}

func TestZZUnmaskExp(t *testing.T) {
	if os.Getenv("EXP_CACHE") == "" {
		t.Skip()
	}
	plain := expRun(t, "Aaron_Eckhart/Aaron_Eckhart_0001.jpg", false)
	synth := expRun(t, "Aaron_Eckhart/Aaron_Eckhart_0001.jpg", true)
	rm := expRun(t, "aidai/0_0_0.jpg", false)
	lambda, _ := strconv.ParseFloat(os.Getenv("EXP_LAMBDA"), 64)
	hb, err := os.ReadFile(filepath.Join(os.Getenv("ATM_MODELS_DIR"), "faceplugin-linear256.f32"))
	if err != nil {
		t.Fatal(err)
	}
	head, err := vision.DecodeProjection(hb)
	if err != nil {
		t.Fatal(err)
	}
	byRel := map[string][]float32{}
	for _, s := range plain.Samples {
		if s.Found {
			byRel[s.Rel] = s.Embedding
		}
	}
	// pairs per fold
	var px, py [2][][]float64
	var lfws [2][]expSample
	for _, s := range synth.Samples {
		if !s.Found {
			continue
		}
		f := expFold(s.Identity)
		x := nrm(s.Embedding)
		lfws[f] = append(lfws[f], expSample{id: s.Identity, masked: s.Mask == visit.Masked, gtMask: s.Masked, x: x})
		if s.Synthetic {
			if u, ok := byRel[s.Rel]; ok {
				px[f] = append(px[f], x)
				py[f] = append(py[f], nrm(u))
			}
		}
	}
	var rms []expSample
	for _, s := range rm.Samples {
		if s.Found {
			rms = append(rms, expSample{id: s.Identity, masked: s.Mask == visit.Masked, gtMask: s.Masked, x: nrm(s.Embedding)})
		}
	}
	if os.Getenv("EXP_REAL") != "" {
		realExp(t, px, py, rm, lambda, withHeadF(head))
		return
	}
	fmt.Printf("pairs fold0 %d fold1 %d; lfw synth samples %d/%d; rmfrd %d\n", len(px[0]), len(px[1]), len(lfws[0]), len(lfws[1]), len(rms))
	withHead := func(x []float64) []float64 {
		f := make([]float32, len(x))
		for i := range x {
			f[i] = float32(x[i])
		}
		y := head.Apply(f)
		return nrm(y)
	}
	for _, lam := range []float64{lambda} {
		for tf := 0; tf < 2; tf++ {
			m := fitUnmask(px[tf], py[tf], lam)
			ev := 1 - tf
			mapped := func(s expSample) []float64 {
				if s.masked {
					return m.apply(s.x)
				}
				return s.x
			}
			rawf := func(s expSample) []float64 { return s.x }
			report := func(name string, ss []expSample) {
				for _, v := range []struct {
					n string
					f func(expSample) []float64
				}{
					{"raw", rawf},
					{"map", mapped},
					{"head", func(s expSample) []float64 { return withHead(s.x) }},
					{"map+head", func(s expSample) []float64 { return withHead(mapped(s)) }},
				} {
					auc, t2, t3, gm, im := scoreMU(ss, v.f)
					mmA := metrics.AUC(gm, im)
					mm3, _ := metrics.TARAtFAR(gm, im, 1e-3)
					fmt.Printf("lambda %g train fold %d  %-10s %-9s MU AUC %.3f TAR@1e-2 %.3f @1e-3 %.3f | MM AUC %.3f TAR@1e-3 %.3f\n", lam, tf, name, v.n, auc, t2, t3, mmA, mm3)
				}
			}
			report("lfw-synth", lfws[ev])
			if tf == 0 {
				report("rmfrd", rms)
			}
		}
	}
}

func withHeadF(head *vision.ProjectionHead) func([]float64) []float64 {
	return func(x []float64) []float64 {
		f := make([]float32, len(x))
		for i := range x {
			f[i] = float32(x[i])
		}
		return nrm(head.Apply(f))
	}
}

func realExp(t *testing.T, px, py [2][][]float64, rm *Run, lambda float64, withHead func([]float64) []float64) {
	var rms [2][]expSample
	cent := map[string][]float64{}
	for _, s := range rm.Samples {
		if !s.Found {
			continue
		}
		e := expSample{id: s.Identity, masked: s.Mask == visit.Masked, gtMask: s.Masked, x: nrm(s.Embedding)}
		f := expFold(s.Identity)
		rms[f] = append(rms[f], e)
		if !s.Masked {
			c := cent[s.Identity]
			if c == nil {
				c = make([]float64, len(e.x))
				cent[s.Identity] = c
			}
			for i := range c {
				c[i] += e.x[i]
			}
		}
	}
	for _, c := range cent {
		var q float64
		for _, v := range c {
			q += v * v
		}
		q = math.Sqrt(q)
		for i := range c {
			c[i] /= q
		}
	}
	rw, _ := strconv.Atoi(os.Getenv("EXP_REAL"))
	for tf := 0; tf < 2; tf++ {
		xs := append(append([][]float64{}, px[0]...), px[1]...)
		ys := append(append([][]float64{}, py[0]...), py[1]...)
		nr := 0
		for _, s := range rms[tf] {
			if s.gtMask && cent[s.id] != nil {
				for k := 0; k < rw; k++ {
					xs = append(xs, s.x)
					ys = append(ys, cent[s.id])
				}
				nr++
			}
		}
		m := fitUnmask(xs, ys, lambda)
		ev := 1 - tf
		mapped := func(s expSample) []float64 {
			if s.masked {
				return m.apply(s.x)
			}
			return s.x
		}
		for _, v := range []struct {
			n string
			f func(expSample) []float64
		}{
			{"raw", func(s expSample) []float64 { return s.x }},
			{"map", mapped},
			{"head", func(s expSample) []float64 { return withHead(s.x) }},
			{"map+head", func(s expSample) []float64 { return withHead(mapped(s)) }},
		} {
			auc, t2, t3, gm, im := scoreMU(rms[ev], v.f)
			fmt.Printf("real w %d lambda %g train rmfrd fold %d (%d masked) eval fold %d %-9s MU AUC %.3f TAR@1e-2 %.3f @1e-3 %.3f | MM AUC %.3f\n", rw, lambda, tf, nr, ev, v.n, auc, t2, t3, metrics.AUC(gm, im))
		}
	}
}
