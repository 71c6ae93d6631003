package learn

import (
	"errors"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"
)

// MLP is a residual nonlinear head over frozen templates:
//
//	y = normalise(base(x) + W2 relu(W1 (x - Mean) Scale + B1) + B2)
//
// where base(x) is a fixed, already L2-normalised projection (a Linear head)
// and the residual starts at zero, so training starts from the base head.
type MLP struct {
	Base  *Linear
	Mean  []float32 // input-sized
	Scale float32
	W1    [][]float32 // hidden x in
	B1    []float32
	W2    [][]float32 // out x hidden
	B2    []float32
}

// MLPOptions controls FitMLP.
type MLPOptions struct {
	Hidden      int     // hidden units (512)
	Margin      float64 // CosFace additive cosine margin (0.25)
	LogitScale  float64 // CosFace scale (30)
	LR          float64 // Adam step (1e-3)
	WeightDecay float64 // decoupled weight decay, per unit step (0.05)
	Batch       int     // samples per step (128)
	MaxEpochs   int     // (60)
	Patience    int     // epochs without a better Validate before stopping (8)
	// Validate, when set, scores the head after each epoch (higher is
	// better); the best epoch's weights are kept.
	Validate func(m *MLP) float64
	Seed     uint64
}

// MLPResult says how training went.
type MLPResult struct {
	Epochs    int       // epochs run
	BestEpoch int       // 1-based epoch whose weights were kept (0: the start)
	Loss      []float64 // mean training loss per epoch
	Score     []float64 // Validate per epoch (nil without Validate)
}

// Apply returns the L2-normalised output for x.
func (m *MLP) Apply(x []float32) []float32 {
	var f mlpFwd
	m.forward(x, m.Base.Apply(x), &f)
	return f.y
}

type mlpFwd struct {
	xs, h, u, y []float32
	un          float64
}

func (m *MLP) forward(x, base []float32, f *mlpFwd) {
	in, hid, out := len(m.Mean), len(m.B1), len(m.B2)
	f.xs = grow(f.xs, in)
	f.h = grow(f.h, hid)
	f.u = grow(f.u, out)
	f.y = grow(f.y, out)
	for i := range f.xs {
		f.xs[i] = (x[i] - m.Mean[i]) * m.Scale
	}
	for j, w := range m.W1 {
		f.h[j] = m.B1[j] + dot32(w, f.xs)
	}
	var n float64
	for o, w := range m.W2 {
		var acc float32
		for j, v := range w {
			if h := f.h[j]; h > 0 {
				acc += v * h
			}
		}
		f.u[o] = base[o] + m.B2[o] + acc
		n += float64(f.u[o]) * float64(f.u[o])
	}
	f.un = math.Sqrt(n) + 1e-12
	for o := range f.u {
		f.y[o] = float32(float64(f.u[o]) / f.un)
	}
}

func grow(s []float32, n int) []float32 {
	if cap(s) >= n {
		return s[:n]
	}
	return make([]float32, n)
}

func dot32(a, b []float32) float32 {
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return s0 + s1 + s2 + s3
}

func axpy(a float32, x, y []float32) {
	for i, v := range x {
		y[i] += a * v
	}
}

// FitMLP trains the residual MLP on top of base with a CosFace loss over
// the training identities (labels 0..classes-1): every template is pulled
// towards its identity's learned proxy and away from the others by a
// cosine margin. Mini-batch Adam with decoupled weight decay; the batch is
// split over the CPUs. Deterministic for the same input and options when
// run with the same GOMAXPROCS.
func FitMLP(x [][]float32, labels []int, classes int, base *Linear, o MLPOptions) (*MLP, *MLPResult, error) {
	if len(x) == 0 || len(x) != len(labels) || base == nil || len(base.W) == 0 {
		return nil, nil, errors.New("fit mlp: empty or mismatched input")
	}
	def := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	if o.Hidden == 0 {
		o.Hidden = 512
	}
	def(&o.Margin, 0.25)
	def(&o.LogitScale, 30)
	def(&o.LR, 1e-3)
	def(&o.WeightDecay, 0.05)
	if o.Batch == 0 {
		o.Batch = 128
	}
	if o.MaxEpochs == 0 {
		o.MaxEpochs = 60
	}
	if o.Patience == 0 {
		o.Patience = 8
	}
	in, out, hid := len(x[0]), len(base.W), o.Hidden
	rng := rand.New(rand.NewPCG(o.Seed, 0x6d6c70))

	m := &MLP{Base: base, Mean: make([]float32, in), B1: make([]float32, hid), B2: make([]float32, out)}
	for _, v := range x {
		for i := range v {
			m.Mean[i] += v[i] / float32(len(x))
		}
	}
	var ss float64
	for _, v := range x {
		for i := range v {
			d := float64(v[i] - m.Mean[i])
			ss += d * d
		}
	}
	m.Scale = float32(1 / math.Sqrt(ss/float64(len(x)*in)+1e-12)) // unit variance per input
	std := math.Sqrt(2 / float64(in))
	m.W1 = make([][]float32, hid)
	for j := range m.W1 {
		m.W1[j] = make([]float32, in)
		for i := range m.W1[j] {
			m.W1[j][i] = float32(rng.NormFloat64() * std)
		}
	}
	m.W2 = make([][]float32, out) // zero: training starts at the base head
	for o := range m.W2 {
		m.W2[o] = make([]float32, hid)
	}
	bases := make([][]float32, len(x))
	for i, v := range x {
		bases[i] = base.Apply(v)
	}
	// Proxies start at each identity's mean base output.
	prox := make([][]float32, classes)
	for c := range prox {
		prox[c] = make([]float32, out)
	}
	for i, b := range bases {
		axpy(1, b, prox[labels[i]])
	}
	for c := range prox {
		normalise32(prox[c])
	}

	// Parameters as flat views for Adam.
	params := [][]float32{m.B1, m.B2}
	decay := []bool{false, false}
	for _, w := range m.W1 {
		params, decay = append(params, w), append(decay, true)
	}
	for _, w := range m.W2 {
		params, decay = append(params, w), append(decay, true)
	}
	for _, p := range prox {
		params, decay = append(params, p), append(decay, false)
	}
	newLike := func() [][]float32 {
		g := make([][]float32, len(params))
		for i, p := range params {
			g[i] = make([]float32, len(p))
		}
		return g
	}
	m1, m2 := newLike(), newLike()
	workers := max(1, runtime.GOMAXPROCS(0))
	grads := make([][][]float32, workers)
	for w := range grads {
		grads[w] = newLike()
	}

	snapshot := func() *MLP {
		c := &MLP{Base: base, Mean: m.Mean, Scale: m.Scale, B1: clone32(m.B1), B2: clone32(m.B2)}
		c.W1 = make([][]float32, hid)
		for j := range c.W1 {
			c.W1[j] = clone32(m.W1[j])
		}
		c.W2 = make([][]float32, out)
		for k := range c.W2 {
			c.W2[k] = clone32(m.W2[k])
		}
		return c
	}
	res := &MLPResult{}
	best, bestScore, since := snapshot(), math.Inf(-1), 0
	if o.Validate != nil {
		bestScore = o.Validate(best)
	}
	order := make([]int, len(x))
	for i := range order {
		order[i] = i
	}
	step := 0
	for ep := 1; ep <= o.MaxEpochs; ep++ {
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		var epLoss float64
		for b0 := 0; b0 < len(order); b0 += o.Batch {
			batch := order[b0:min(b0+o.Batch, len(order))]
			// Normalised proxies, shared read-only by the workers.
			pn := make([][]float32, classes)
			pnorm := make([]float64, classes)
			for c, p := range prox {
				pnorm[c] = math.Sqrt(float64(dot32(p, p))) + 1e-12
				pn[c] = make([]float32, out)
				for k := range p {
					pn[c][k] = float32(float64(p[k]) / pnorm[c])
				}
			}
			losses := make([]float64, workers)
			var wg sync.WaitGroup
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					g := grads[w]
					for _, gi := range g {
						clear(gi)
					}
					losses[w] = m.backward(x, bases, labels, batch, w, workers, pn, g, o)
				}(w)
			}
			wg.Wait()
			g := grads[0]
			for w := 1; w < workers; w++ {
				for i := range g {
					axpy(1, grads[w][i], g[i])
				}
			}
			for _, l := range losses {
				epLoss += l
			}
			// Proxy gradients were taken with respect to the normalised
			// proxies; map them back through the normalisation.
			np := 2 + hid + out
			for c := range prox {
				gp := g[np+c]
				d := dot32(gp, pn[c])
				for k := range gp {
					gp[k] = (gp[k] - d*pn[c][k]) / float32(pnorm[c])
				}
			}
			step++
			inv := 1 / float64(len(batch))
			b1c := 1 - math.Pow(0.9, float64(step))
			b2c := 1 - math.Pow(0.999, float64(step))
			lr := o.LR * math.Sqrt(b2c) / b1c
			for i, p := range params {
				gi, mi, vi := g[i], m1[i], m2[i]
				wd := float32(0)
				if decay[i] {
					wd = float32(o.LR * o.WeightDecay)
				}
				for k := range p {
					gk := float64(gi[k]) * inv
					mi[k] = float32(0.9*float64(mi[k]) + 0.1*gk)
					vi[k] = float32(0.999*float64(vi[k]) + 0.001*gk*gk)
					p[k] -= float32(lr*float64(mi[k])/(math.Sqrt(float64(vi[k]))+1e-8)) + wd*p[k]
				}
			}
		}
		res.Epochs = ep
		res.Loss = append(res.Loss, epLoss/float64(len(x)))
		if o.Validate == nil {
			best, res.BestEpoch = m, ep
			continue
		}
		sc := o.Validate(m)
		res.Score = append(res.Score, sc)
		if sc > bestScore {
			best, bestScore, res.BestEpoch, since = snapshot(), sc, ep, 0
		} else if since++; since >= o.Patience {
			break
		}
	}
	if best == m {
		best = snapshot()
	}
	return best, res, nil
}

// backward accumulates the CosFace loss gradients of the batch samples
// w, w+workers, ... into g (laid out as FitMLP's params) and returns their
// summed loss.
func (m *MLP) backward(x, bases [][]float32, labels []int, batch []int, w, workers int, pn [][]float32, g [][]float32, o MLPOptions) float64 {
	hid, out := len(m.B1), len(m.B2)
	gB1, gB2 := g[0], g[1]
	gW1, gW2, gP := g[2:2+hid], g[2+hid:2+hid+out], g[2+hid+out:]
	var f mlpFwd
	logits := make([]float64, len(pn))
	dy := make([]float32, out)
	du := make([]float32, out)
	dh := make([]float32, hid)
	s, mg := o.LogitScale, o.Margin
	var loss float64
	for bi := w; bi < len(batch); bi += workers {
		i := batch[bi]
		m.forward(x[i], bases[i], &f)
		y := labels[i]
		mx := math.Inf(-1)
		for c, p := range pn {
			l := s * float64(dot32(p, f.y))
			if c == y {
				l -= s * mg
			}
			logits[c] = l
			mx = math.Max(mx, l)
		}
		var z float64
		for c := range logits {
			logits[c] = math.Exp(logits[c] - mx)
			z += logits[c]
		}
		loss += -math.Log(logits[y]/z + 1e-300)
		clear(dy)
		for c, p := range pn {
			d := logits[c] / z
			if c == y {
				d--
			}
			d *= s
			if math.Abs(d) < 1e-7 {
				continue
			}
			axpy(float32(d), p, dy)
			axpy(float32(d), f.y, gP[c])
		}
		// Through the normalisation y = u/|u|.
		yd := dot32(f.y, dy)
		for k := range du {
			du[k] = float32(float64(dy[k]-yd*f.y[k]) / f.un)
		}
		clear(dh)
		for k, d := range du {
			gB2[k] += d
			row := m.W2[k]
			gr := gW2[k]
			for j, h := range f.h {
				if h > 0 {
					gr[j] += d * h
					dh[j] += d * row[j]
				}
			}
		}
		for j, d := range dh {
			if d == 0 || f.h[j] <= 0 {
				continue
			}
			gB1[j] += d
			axpy(d, f.xs, gW1[j])
		}
	}
	return loss
}

func clone32(s []float32) []float32 { return append([]float32(nil), s...) }

func normalise32(v []float32) {
	n := math.Sqrt(float64(dot32(v, v)))
	if n == 0 {
		return
	}
	for i := range v {
		v[i] = float32(float64(v[i]) / n)
	}
}
