package vision

import (
	"math"
	"testing"

	"github.com/periocular/atm-agent/models"
)

func TestProjectionHeadLinear(t *testing.T) {
	md := &models.Model{Name: "e", Embedding: &models.Embedding{Dim: 4}}
	h := &ProjectionHead{Mean: []float32{0.5, 0, 0, 0}, W: [][]float32{{1, 0, 0, 0}, {0, 2, 0, 0}}}
	if err := h.check(md); err != nil {
		t.Fatal(err)
	}
	if h.OutDim() != 2 {
		t.Fatalf("out dim %d", h.OutDim())
	}
	x := []float32{1, 0.25, 0, 0}
	y := h.Apply(x)
	// W(x - mean) = (0.5, 0.5), renormalised.
	want := float32(1 / math.Sqrt2)
	if len(y) != 2 || math.Abs(float64(y[0]-want)) > 1e-6 || math.Abs(float64(y[1]-want)) > 1e-6 {
		t.Errorf("Apply = %v, want [%v %v]", y, want, want)
	}
	if x[0] != 1 || x[1] != 0.25 {
		t.Errorf("the input template was changed: %v", x)
	}
	for name, bad := range map[string]*ProjectionHead{
		"both kinds":      {U: [][]float32{{1, 0, 0, 0}}, W: [][]float32{{1, 0, 0, 0}}},
		"neither":         {},
		"short row":       {W: [][]float32{{1, 0, 0}}},
		"short mean":      {Mean: []float32{1}, W: [][]float32{{1, 0, 0, 0}}},
		"short direction": {U: [][]float32{{1, 0}}},
	} {
		if err := bad.check(md); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Directions project in place and keep the length.
	n := &ProjectionHead{U: [][]float32{{1, 0, 0, 0}}}
	z := []float32{0.6, 0.8, 0, 0}
	if got := n.Apply(z); len(got) != 4 || got[0] != 0 || math.Abs(float64(got[1]-1)) > 1e-6 || n.OutDim() != 0 {
		t.Errorf("NAP Apply = %v", got)
	}
}
