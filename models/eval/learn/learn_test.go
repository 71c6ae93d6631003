package learn

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestFitLogisticSeparates(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var x [][]float32
	var y []bool
	for i := 0; i < 400; i++ {
		pos := i%3 == 0 // unbalanced on purpose
		v := make([]float32, 8)
		for j := range v {
			v[j] = float32(rng.NormFloat64() * 0.3)
		}
		if pos {
			v[2] += 1
		} else {
			v[2] -= 1
		}
		x, y = append(x, v), append(y, pos)
	}
	lg, err := FitLogistic(x, y, 1e-3, 300)
	if err != nil {
		t.Fatal(err)
	}
	var scores []float64
	right := 0
	for i, v := range x {
		p := lg.Prob(v)
		scores = append(scores, p)
		if (p >= 0.5) == y[i] {
			right++
		}
	}
	if acc := float64(right) / float64(len(x)); acc < 0.97 {
		t.Fatalf("accuracy %.3f on separable data", acc)
	}
	if _, ba := Threshold(scores, y); ba < 0.97 {
		t.Fatalf("balanced accuracy %.3f", ba)
	}
	if _, err := FitLogistic(x, make([]bool, len(x)), 1e-3, 10); err == nil {
		t.Fatal("one-class data accepted")
	}
}

// NAP must find and remove the direction along which the differences lie,
// and leave an orthogonal direction untouched.
func TestFitNAPRemovesNuisance(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	dim := 16
	var diffs [][]float32
	for i := 0; i < 50; i++ {
		d := make([]float32, dim)
		d[3] = float32(1 + rng.NormFloat64()*0.1)
		d[7] = float32(rng.NormFloat64() * 0.01)
		diffs = append(diffs, d)
	}
	p, vals, err := FitNAP(diffs, 1)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(math.Abs(float64(p.U[0][3]))-1) > 1e-3 || vals[0] <= 0 {
		t.Fatalf("direction %v", p.U[0])
	}
	x := make([]float32, dim)
	x[3], x[5] = 0.6, 0.8
	p.Apply(x)
	if math.Abs(float64(x[3])) > 1e-3 || math.Abs(float64(x[5])-1) > 1e-3 {
		t.Fatalf("projected %v", x)
	}
}
