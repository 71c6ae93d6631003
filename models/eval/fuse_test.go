package eval

import (
	"math"
	"strings"
	"testing"
)

// The cosine of two fused templates is the weighted sum of the two
// embedders' cosines; a face one embedder missed is not found.
func TestFuse(t *testing.T) {
	a := &Run{Embedder: "a", Samples: []Sample{
		{Rel: "x", Found: true, Embedding: []float32{1, 0}},
		{Rel: "y", Found: true, Embedding: []float32{0.6, 0.8}},
		{Rel: "z", Found: true, Embedding: []float32{0, 1}},
	}}
	b := &Run{Embedder: "b", Samples: []Sample{
		{Rel: "x", Found: true, Embedding: []float32{0, 2, 0}}, // not unit: normalised
		{Rel: "y", Found: true, Embedding: []float32{0, 0, 1}},
		{Rel: "z"},
	}}
	f, err := Fuse(a, b, 0.25)
	if err != nil {
		t.Fatal(err)
	}
	if f.Embedder != "a+b:0.25" {
		t.Errorf("embedder %q", f.Embedder)
	}
	x, y := f.Samples[0].Embedding, f.Samples[1].Embedding
	if len(x) != 5 {
		t.Fatalf("fused template of %d values, want 5", len(x))
	}
	// cos_a(x, y) = 0.6, cos_b(x, y) = 0.
	if got, want := dot(x, y), 0.75*0.6+0.25*0; math.Abs(got-want) > 1e-6 {
		t.Errorf("fused cosine %.6f, want %.6f", got, want)
	}
	if got := dot(x, x); math.Abs(got-1) > 1e-6 {
		t.Errorf("fused template norm² %.6f, want 1", got)
	}
	if f.Samples[2].Found || f.Samples[2].Embedding != nil {
		t.Error("a face the second embedder did not find counts as found")
	}
	if !a.Samples[2].Found || len(a.Samples[0].Embedding) != 2 {
		t.Error("Fuse changed its input")
	}
	b.Samples[1].Rel = "w"
	if _, err := Fuse(a, b, 0.25); err == nil || !strings.Contains(err.Error(), "sample 1") {
		t.Errorf("runs over different files: err %v", err)
	}
	if _, err := Fuse(a, b, 1); err == nil {
		t.Error("weight 1 accepted")
	}
}
