package learn

import (
	"math"
	"math/rand/v2"
	"strconv"
	"testing"
)

// toyMasks builds identities whose unmasked templates are noisy copies of a
// centre c, while a "mask" replaces the template by a nonlinear function of
// c (tanh of a random mix) in another region of the space (flag
// dimension): the best linear head (WCCN) aligns masked with unmasked
// templates of the same identity only in part, a small residual MLP on top
// of it does better (held-out MU AUC about 0.85 -> 0.93).
func toyMasks(rng *rand.Rand, mix [][]float64, ids, per int, offset int) (x [][]float32, labels []int, masked []bool) {
	d := len(mix)
	for id := 0; id < ids; id++ {
		c := make([]float64, d)
		for i := range c {
			c[i] = rng.NormFloat64()
		}
		mc := make([]float64, d)
		for i := range mc {
			var a float64
			for j, v := range c {
				a += mix[i][j] * v
			}
			mc[i] = math.Tanh(1.5 * a)
		}
		for k := 0; k < per; k++ {
			m := k%2 == 1
			v := make([]float32, d+1)
			src := c
			if m {
				src = mc
				v[d] = 2
			}
			for i := range src {
				v[i] = float32(src[i] + 0.25*rng.NormFloat64())
			}
			normalise32(v)
			x, labels, masked = append(x, v), append(labels, offset+id), append(masked, m)
		}
	}
	return
}

// muAUC is the probability that a masked<->unmasked genuine pair scores
// above such an impostor pair.
func muAUC(y [][]float32, labels []int, masked []bool) float64 {
	var g, im []float64
	for i := range y {
		for j := i + 1; j < len(y); j++ {
			if masked[i] == masked[j] {
				continue
			}
			s := float64(dot32(y[i], y[j]))
			if labels[i] == labels[j] {
				g = append(g, s)
			} else {
				im = append(im, s)
			}
		}
	}
	var wins float64
	for _, a := range g {
		for _, b := range im {
			switch {
			case a > b:
				wins++
			case a == b:
				wins += 0.5
			}
		}
	}
	return wins / float64(len(g)*len(im))
}

func TestFitMLPLearnsNonlinearMaskMap(t *testing.T) {
	const d = 12
	rng := rand.New(rand.NewPCG(3, 4))
	mix := make([][]float64, d)
	for i := range mix {
		mix[i] = make([]float64, d)
		for j := range mix[i] {
			mix[i][j] = rng.NormFloat64() / math.Sqrt(d)
		}
	}
	tx, tl, _ := toyMasks(rng, mix, 60, 6, 0)
	hx, hl, hm := toyMasks(rng, mix, 30, 6, 1000)
	// Base: the best linear head of this package on this data, WCCN.
	ids := make([]string, len(tl))
	for i, l := range tl {
		ids[i] = strconv.Itoa(l)
	}
	pca, err := FitPCA(tx, d+1)
	if err != nil {
		t.Fatal(err)
	}
	wc, err := NewWithinClass(pca, tx, ids, d+1)
	if err != nil {
		t.Fatal(err)
	}
	base, err := wc.WCCN(d+1, 0.01)
	if err != nil {
		t.Fatal(err)
	}
	apply := func(f func([]float32) []float32) [][]float32 {
		out := make([][]float32, len(hx))
		for i, v := range hx {
			out[i] = f(v)
		}
		return out
	}
	before := muAUC(apply(base.Apply), hl, hm)

	m, res, err := FitMLP(tx, tl, 60, base, MLPOptions{Hidden: 64, MaxEpochs: 150, Batch: 32, LR: 3e-3, Margin: 0.2, LogitScale: 16, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.Epochs != 150 || res.BestEpoch != 150 || len(res.Loss) != 150 {
		t.Fatalf("without Validate all epochs run and the last is kept: %+v", res)
	}
	first, last := res.Loss[0], res.Loss[len(res.Loss)-1]
	if !(last < 0.5*first) {
		t.Errorf("training loss %.3f -> %.3f: want it at least halved", first, last)
	}
	after := muAUC(apply(m.Apply), hl, hm)
	t.Logf("held-out MU AUC %.3f -> %.3f, loss %.3f -> %.3f", before, after, first, last)
	if after < before+0.05 {
		t.Errorf("held-out MU AUC %.3f -> %.3f: want +0.05 over the linear head", before, after)
	}

	// Early stopping keeps the best validated epoch.
	calls := 0
	_, res, err = FitMLP(tx, tl, 60, base, MLPOptions{Hidden: 16, MaxEpochs: 30, Patience: 3, Seed: 1,
		Validate: func(*MLP) float64 {
			calls++
			return -math.Abs(float64(calls) - 4) // best after epoch 3
		}})
	if err != nil {
		t.Fatal(err)
	}
	if res.BestEpoch != 3 || res.Epochs != 6 {
		t.Errorf("early stopping: best %d after %d epochs, want 3 after 6", res.BestEpoch, res.Epochs)
	}
}

func TestFitMLPStartsAtBase(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	mix := [][]float64{{1, 0}, {0, 1}}
	x, l, _ := toyMasks(rng, mix, 4, 2, 0)
	base := &Linear{W: [][]float32{{1, 0, 0}, {0, 1, 0}}}
	m, _, err := FitMLP(x, l, 4, base, MLPOptions{Hidden: 8, MaxEpochs: 1, LR: 1e-12, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range x {
		a, b := m.Apply(v), base.Apply(v)
		for i := range a {
			if math.Abs(float64(a[i]-b[i])) > 1e-5 {
				t.Fatalf("untrained residual changes the base output: %v vs %v", a, b)
			}
		}
	}
	if _, _, err := FitMLP(nil, nil, 0, base, MLPOptions{}); err == nil {
		t.Error("empty input: want an error")
	}
}
