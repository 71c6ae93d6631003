package onnx

import "math"

// FuseClamps merges chains of clamping activations (Relu, and Clip with
// min/max attributes) into one node: clamp(clamp(x, a1, b1), a2, b2) is
// clamp(x, max(a1, a2), min(b1, b2)) whenever the two ranges overlap. A node
// is merged into its consumer only when that consumer is its only reader and
// its output is not a graph output, so the graph computes exactly the same
// values. TF graphs often spell ReLU6 as Relu -> Minimum(6) -> Maximum(0);
// OpenCV fuses one ReLU/ReLU6 into the preceding convolution but runs a chain
// of them as separate layers over the whole tensor. It returns the number of
// nodes removed.
func (g *Graph) FuseClamps() int {
	readers := map[string]int{}
	for _, n := range g.nodes {
		for _, in := range n.inputs {
			readers[in]++
		}
	}
	for _, o := range g.outputs {
		readers[o.name] += 2 // never fold away a graph output
	}
	producer := map[string]int{}
	for i, n := range g.nodes {
		for _, o := range n.outputs {
			producer[o] = i
		}
	}
	removed := map[int]bool{}
	for i := range g.nodes {
		n := &g.nodes[i]
		lo, hi, ok := clampRange(*n)
		if !ok || len(n.inputs) != 1 {
			continue
		}
		p, found := producer[n.inputs[0]]
		if !found || removed[p] || readers[n.inputs[0]] != 1 {
			continue
		}
		plo, phi, pok := clampRange(g.nodes[p])
		if !pok || len(g.nodes[p].inputs) != 1 {
			continue
		}
		nlo, nhi := math.Max(lo, plo), math.Min(hi, phi)
		if nlo > nhi {
			continue
		}
		// The consumer takes over the producer's input and the merged range.
		n.inputs = []string{g.nodes[p].inputs[0]}
		n.op, n.attrs = clampNode(nlo, nhi)
		removed[p] = true
	}
	if len(removed) == 0 {
		return 0
	}
	kept := g.nodes[:0]
	for i, n := range g.nodes {
		if !removed[i] {
			kept = append(kept, n)
		}
	}
	g.nodes = kept
	return len(removed)
}

// clampRange reports the range a Relu or attribute-form Clip node clamps to.
func clampRange(n node) (lo, hi float64, ok bool) {
	switch n.op {
	case "Relu":
		return 0, math.Inf(1), true
	case "Clip":
		lo, hi = math.Inf(-1), math.Inf(1)
		for _, a := range n.attrs {
			switch {
			case a.name == "min" && a.typ == 1:
				lo = float64(a.f)
			case a.name == "max" && a.typ == 1:
				hi = float64(a.f)
			default:
				return 0, 0, false
			}
		}
		return lo, hi, true
	}
	return 0, 0, false
}

func clampNode(lo, hi float64) (string, []Attr) {
	if lo == 0 && math.IsInf(hi, 1) {
		return "Relu", nil
	}
	var attrs []Attr
	if !math.IsInf(lo, -1) {
		attrs = append(attrs, Float32("min", float32(lo)))
	}
	if !math.IsInf(hi, 1) {
		attrs = append(attrs, Float32("max", float32(hi)))
	}
	return "Clip", attrs
}
