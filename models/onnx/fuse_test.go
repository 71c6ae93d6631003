package onnx

import (
	"math"
	"testing"
)

func ops(g *Graph) []string {
	var out []string
	for _, n := range g.nodes {
		out = append(out, n.op)
	}
	return out
}

func TestFuseClamps(t *testing.T) {
	tests := []struct {
		name    string
		build   func(g *Graph)
		removed int
		ops     []string
		lo, hi  float64 // range of the last node
	}{
		{
			name: "relu min max chain becomes one relu6",
			build: func(g *Graph) {
				x := g.Input("x", 1, 4)
				y := g.Op("Relu", []string{x})
				y = g.Op("Clip", []string{y}, Float32("max", 6))
				y = g.Op("Clip", []string{y}, Float32("min", 0))
				g.Node("Identity", []string{y}, []string{"out"})
				g.Output("out", 1, 4)
			},
			removed: 2, ops: []string{"Clip", "Identity"}, lo: 0, hi: 6,
		},
		{
			name: "two relus become one relu",
			build: func(g *Graph) {
				x := g.Input("x", 1, 4)
				y := g.Op("Relu", []string{x})
				y = g.Op("Relu", []string{y})
				g.Node("Identity", []string{y}, []string{"out"})
				g.Output("out", 1, 4)
			},
			removed: 1, ops: []string{"Relu", "Identity"}, lo: 0, hi: math.Inf(1),
		},
		{
			name: "an intermediate read twice is kept",
			build: func(g *Graph) {
				x := g.Input("x", 1, 4)
				r := g.Op("Relu", []string{x})
				c := g.Op("Clip", []string{r}, Float32("max", 6))
				g.Node("Add", []string{r, c}, []string{"out"})
				g.Output("out", 1, 4)
			},
			removed: 0, ops: []string{"Relu", "Clip", "Add"},
		},
		{
			name: "a graph output is kept",
			build: func(g *Graph) {
				x := g.Input("x", 1, 4)
				g.Node("Relu", []string{x}, []string{"r"})
				g.Node("Clip", []string{"r"}, []string{"out"}, Float32("max", 6))
				g.Output("r", 1, 4)
				g.Output("out", 1, 4)
			},
			removed: 0, ops: []string{"Relu", "Clip"},
		},
		{
			name: "disjoint ranges are kept",
			build: func(g *Graph) {
				x := g.Input("x", 1, 4)
				y := g.Op("Clip", []string{x}, Float32("max", -1))
				g.Node("Relu", []string{y}, []string{"out"})
				g.Output("out", 1, 4)
			},
			removed: 0, ops: []string{"Clip", "Relu"},
		},
		{
			name: "a clip with a non-range attribute is kept",
			build: func(g *Graph) {
				x := g.Input("x", 1, 4)
				y := g.Op("Relu", []string{x})
				g.Node("Clip", []string{y}, []string{"out"}, Float32("max", 6), Int("other", 1))
				g.Output("out", 1, 4)
			},
			removed: 0, ops: []string{"Relu", "Clip"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := NewGraph("t")
			tc.build(g)
			if got := g.FuseClamps(); got != tc.removed {
				t.Fatalf("removed %d nodes, want %d", got, tc.removed)
			}
			if got := ops(g); len(got) != len(tc.ops) {
				t.Fatalf("ops %v, want %v", got, tc.ops)
			} else {
				for i := range got {
					if got[i] != tc.ops[i] {
						t.Fatalf("ops %v, want %v", got, tc.ops)
					}
				}
			}
			if tc.removed == 0 {
				return
			}
			first := g.nodes[0]
			if len(first.inputs) != 1 || first.inputs[0] != "x" {
				t.Errorf("merged node reads %v, want the graph input", first.inputs)
			}
			lo, hi, ok := clampRange(first)
			if !ok || lo != tc.lo || hi != tc.hi {
				t.Errorf("merged range [%v, %v] ok=%v, want [%v, %v]", lo, hi, ok, tc.lo, tc.hi)
			}
		})
	}
}
