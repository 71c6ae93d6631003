package onnx

import (
	"encoding/binary"
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// PoolingTail is the end of an ArcFace-style embedder after its last
// feature map: a depthwise convolution whose kernel covers the whole map
// (global depthwise convolution, GDC) and a 1x1 convolution to the
// template (the linear layer, batch norm folded in).
type PoolingTail struct {
	C, H, W int       // feature map channels and size
	GDC     []float32 // C x H x W
	GDCBias []float32 // C
	Out     int
	Lin     []float32 // Out x C
	LinBias []float32 // Out
	// Layer is the name OpenCV's importer gives the node that writes the
	// feature map ("onnx_node!" and the node's name, or its output's name
	// when the node has none): what a forward asks for.
	Layer string
}

// ReadPoolingTail finds, in an ONNX model, the Conv that reads the tensor
// fmap and the Conv that reads its output, and returns their weights. Both
// must be plain Conv nodes with float32 initializers as weights and
// biases; the first depthwise (C x 1 x H x W), the second 1x1.
func ReadPoolingTail(model []byte, fmap string) (*PoolingTail, error) {
	mf, err := parseFields(model)
	if err != nil {
		return nil, err
	}
	var graph []field
	for _, f := range mf {
		if f.num == modelGraph {
			if graph, err = parseFields(f.val); err != nil {
				return nil, err
			}
		}
	}
	type tensor struct {
		dims []int
		data []float32
	}
	inits := map[string]tensor{}
	type nodeT struct {
		op, name string
		in, out  []string
	}
	var nodes []nodeT
	for _, g := range graph {
		switch g.num {
		case graphInit:
			tf, err := parseFields(g.val)
			if err != nil {
				return nil, err
			}
			name, t, ok := floatTensor(tf)
			if ok {
				inits[name] = tensor{t.dims, t.data}
			}
		case graphNode:
			nf, err := parseFields(g.val)
			if err != nil {
				return nil, err
			}
			var n nodeT
			for _, x := range nf {
				switch x.num {
				case nodeInput:
					n.in = append(n.in, string(x.val))
				case nodeOutput:
					n.out = append(n.out, string(x.val))
				case nodeOp:
					n.op = string(x.val)
				case nodeName:
					n.name = string(x.val)
				}
			}
			nodes = append(nodes, n)
		}
	}
	conv := func(input string) (w, b tensor, out string, err error) {
		for _, n := range nodes {
			if n.op != "Conv" || len(n.in) != 3 || n.in[0] != input || len(n.out) != 1 {
				continue
			}
			w, okw := inits[n.in[1]]
			b, okb := inits[n.in[2]]
			if !okw || !okb || len(w.dims) != 4 {
				return w, b, "", fmt.Errorf("conv reading %q has no float32 weights and bias", input)
			}
			return w, b, n.out[0], nil
		}
		return w, b, "", fmt.Errorf("no Conv with weights and bias reads %q", input)
	}
	gw, gb, gout, err := conv(fmap)
	if err != nil {
		return nil, err
	}
	lw, lb, _, err := conv(gout)
	if err != nil {
		return nil, err
	}
	c, h, w := gw.dims[0], gw.dims[2], gw.dims[3]
	if gw.dims[1] != 1 || len(gb.data) != c {
		return nil, fmt.Errorf("conv reading %q is not depthwise: weights %v", fmap, gw.dims)
	}
	if lw.dims[1] != c || lw.dims[2] != 1 || lw.dims[3] != 1 || len(lb.data) != lw.dims[0] {
		return nil, fmt.Errorf("conv after the depthwise one is not 1x1 from %d channels: weights %v", c, lw.dims)
	}
	layer := ""
	for _, n := range nodes {
		if len(n.out) > 0 && n.out[0] == fmap {
			layer = fmap
			if n.name != "" {
				layer = "onnx_node!" + n.name
			}
		}
	}
	if layer == "" {
		return nil, fmt.Errorf("no node writes %q", fmap)
	}
	return &PoolingTail{C: c, H: h, W: w, GDC: gw.data, GDCBias: gb.data, Out: lw.dims[0], Lin: lw.data, LinBias: lb.data, Layer: layer}, nil
}

// floatTensor reads a float32 initializer (raw or float_data).
func floatTensor(tf []field) (string, struct {
	dims []int
	data []float32
}, bool) {
	var t struct {
		dims []int
		data []float32
	}
	name, dtype := "", uint64(0)
	var raw []byte
	for _, x := range tf {
		switch x.num {
		case tensorName:
			name = string(x.val)
		case tensorType:
			dtype, _ = protowire.ConsumeVarint(x.val)
		case tensorDims:
			if x.typ == protowire.VarintType {
				d, _ := protowire.ConsumeVarint(x.val)
				t.dims = append(t.dims, int(d))
			} else {
				for b := x.val; len(b) > 0; {
					d, n := protowire.ConsumeVarint(b)
					if n < 0 {
						return "", t, false
					}
					t.dims = append(t.dims, int(d))
					b = b[n:]
				}
			}
		case tensorRaw:
			raw = x.val
		case tensorFloat:
			if x.typ == protowire.Fixed32Type {
				v, _ := protowire.ConsumeFixed32(x.val)
				t.data = append(t.data, math.Float32frombits(v))
			} else {
				for b := x.val; len(b) >= 4; b = b[4:] {
					t.data = append(t.data, math.Float32frombits(binary.LittleEndian.Uint32(b)))
				}
			}
		}
	}
	if dtype != 1 {
		return "", t, false
	}
	for ; len(raw) >= 4; raw = raw[4:] {
		t.data = append(t.data, math.Float32frombits(binary.LittleEndian.Uint32(raw)))
	}
	n := 1
	for _, d := range t.dims {
		n *= d
	}
	return name, t, len(t.data) == n
}
