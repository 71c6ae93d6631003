package onnx

import (
	"math"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

type parsedNode struct {
	op     string
	inputs []string
	attrs  map[string]float32
}

// parseModel reads back what the rewriter wrote: default opset, nodes and
// initializer names.
func parseModel(t *testing.T, b []byte) (opset int, nodes []parsedNode, inits []string) {
	t.Helper()
	top, err := parseFields(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range top {
		switch f.num {
		case modelOpset:
			of, _ := parseFields(f.val)
			for _, x := range of {
				if x.num == opsetVer {
					v, _ := protowire.ConsumeVarint(x.val)
					opset = int(v)
				}
			}
		case modelGraph:
			gf, _ := parseFields(f.val)
			for _, g := range gf {
				switch g.num {
				case graphNode:
					nf, _ := parseFields(g.val)
					n := parsedNode{attrs: map[string]float32{}}
					for _, x := range nf {
						switch x.num {
						case nodeOp:
							n.op = string(x.val)
						case nodeInput:
							n.inputs = append(n.inputs, string(x.val))
						case nodeAttr:
							af, _ := parseFields(x.val)
							name := ""
							for _, a := range af {
								if a.num == attrName {
									name = string(a.val)
								}
								if a.num == 2 {
									v, _ := protowire.ConsumeFixed32(a.val)
									n.attrs[name] = math.Float32frombits(v)
								}
							}
						}
					}
					nodes = append(nodes, n)
				case graphInit:
					tf, _ := parseFields(g.val)
					for _, x := range tf {
						if x.num == tensorName {
							inits = append(inits, string(x.val))
						}
					}
				}
			}
		}
	}
	return opset, nodes, inits
}

func TestClipToAttributes(t *testing.T) {
	g := NewGraph("clips")
	x := g.Input("x", 1, 4)
	lo := g.Init("lo", nil, []float32{0})
	hi := g.Init("hi", nil, []float32{6})
	six := g.Init("six", []int64{1}, []float32{6}) // also read by a Min: must stay
	w := g.Init("w", []int64{4}, []float32{1, 2, 3, 4})
	y := g.Op("Clip", []string{x, lo, hi})
	y = g.Op("Mul", []string{y, w})
	y = g.Op("Clip", []string{y, "", six}) // max only
	y = g.Op("Min", []string{y, six})
	g.Node("Identity", []string{y}, []string{"out"})
	g.Output("out", 1, 4)

	out, st, err := ClipToAttributes(g.Marshal(11), 10)
	if err != nil {
		t.Fatal(err)
	}
	if st.Clips != 2 || st.Constants != 2 || st.OldOpset != 11 {
		t.Errorf("stats %+v, want 2 clips, 2 constants (lo, hi) removed, old opset 11", st)
	}
	opset, nodes, inits := parseModel(t, out)
	if opset != 10 {
		t.Errorf("opset %d, want 10", opset)
	}
	if strings.Join(inits, ",") != "six_3,w_4" {
		t.Errorf("initializers %v: want lo and hi gone, six and w kept", inits)
	}
	var clips []parsedNode
	for _, n := range nodes {
		if n.op == "Clip" {
			clips = append(clips, n)
		}
	}
	if len(clips) != 2 || len(nodes) != 5 {
		t.Fatalf("nodes %+v", nodes)
	}
	if c := clips[0]; len(c.inputs) != 1 || c.inputs[0] != "x" || c.attrs["min"] != 0 || c.attrs["max"] != 6 || len(c.attrs) != 2 {
		t.Errorf("first clip %+v, want input x, min 0, max 6", c)
	}
	if c := clips[1]; len(c.inputs) != 1 || len(c.attrs) != 1 || c.attrs["max"] != 6 {
		t.Errorf("second clip %+v, want one input and max 6 only", c)
	}
	// Every other node is written back unchanged.
	if n := nodes[3]; n.op != "Min" || len(n.inputs) != 2 || n.inputs[1] != "six_3" {
		t.Errorf("Min node changed: %+v", n)
	}
}

func TestClipToAttributesRefuses(t *testing.T) {
	g := NewGraph("dyn")
	x := g.Input("x", 1, 4)
	m := g.Input("m", 1, 4)
	g.Node("Clip", []string{x, m}, []string{"out"})
	g.Output("out", 1, 4)
	if _, _, err := ClipToAttributes(g.Marshal(11), 10); err == nil || !strings.Contains(err.Error(), "not a scalar float constant") {
		t.Errorf("a Clip bound by a dynamic tensor: %v", err)
	}
	g = NewGraph("none")
	x = g.Input("x", 1, 4)
	g.Node("Relu", []string{x}, []string{"out"})
	g.Output("out", 1, 4)
	if _, _, err := ClipToAttributes(g.Marshal(11), 10); err == nil || !strings.Contains(err.Error(), "no Clip") {
		t.Errorf("nothing to rewrite: %v", err)
	}
	if _, _, err := ClipToAttributes([]byte("\xff\xff junk"), 10); err == nil {
		t.Error("junk accepted")
	}
}
