package tflite

import (
	"fmt"
	"strings"

	"github.com/periocular/atm-agent/models/tfgraph"
	"github.com/periocular/atm-agent/models/tfjs"
)

// Convert turns a TFLite model into ONNX bytes OpenCV 4.6 runs: the
// operators become the TF graph nodes they were converted from (CONV_2D ->
// _FusedConv2D with its bias, DEPTHWISE_CONV_2D -> FusedDepthwiseConv2dNative,
// ADD / SUB / MUL / RELU / RELU6 / ABS / PRELU / RESHAPE -> their TF ops) and
// models/tfgraph does the rest (NCHW layout, explicit SAME pads, PReLU written
// as relu(x) + a (x - |x|) folded back into one PRelu). The batch is fixed to
// 1: opts.InputShape defaults to the input's shape with batch 1, and a
// reshape target that names the model's own batch size gets -1 instead.
func Convert(b []byte, opts tfgraph.Options) ([]byte, error) {
	m, err := Read(b)
	if err != nil {
		return nil, err
	}
	g, w, err := m.Graph()
	if err != nil {
		return nil, err
	}
	in := m.Tensors[m.Inputs[0]]
	if opts.InputShape == nil && len(in.Shape) > 0 {
		opts.InputShape = append([]int{1}, in.Shape[1:]...)
	}
	if len(opts.Outputs) == 0 {
		for _, o := range m.Outputs {
			opts.Outputs = append(opts.Outputs, nodeNames(m)[o])
		}
	}
	out, err := tfgraph.ConvertModel(g, w, opts, "tflite")
	if err != nil {
		return nil, fmt.Errorf("tflite: %w", err)
	}
	return out, nil
}

// nodeNames gives every tensor a TF node name: its own, made safe for the
// "node:output" syntax, with its index appended when names repeat.
func nodeNames(m *Model) []string {
	names := make([]string, len(m.Tensors))
	seen := map[string]bool{}
	for i, t := range m.Tensors {
		n := strings.NewReplacer(":", "_", "^", "_").Replace(t.Name)
		if n == "" || seen[n] {
			n = fmt.Sprintf("%s_t%d", n, i)
		}
		seen[n] = true
		names[i] = n
	}
	return names
}

// Graph returns the model as TF graph nodes and the constants' values.
func (m *Model) Graph() (*tfgraph.Model, map[string]*tfjs.Tensor, error) {
	if len(m.Inputs) != 1 {
		return nil, nil, fmt.Errorf("tflite: %d inputs: only single-input models are supported", len(m.Inputs))
	}
	names := nodeNames(m)
	g := &tfgraph.Model{}
	w := map[string]*tfjs.Tensor{}
	add := func(n *tfgraph.Node) { g.ModelTopology.Node = append(g.ModelTopology.Node, n) }
	constant := func(name string, shape []int, data []float32) string {
		if _, ok := w[name]; !ok {
			w[name] = &tfjs.Tensor{Name: name, Shape: shape, Dtype: "float32", Data: data}
			add(&tfgraph.Node{Name: name, Op: "Const"})
		}
		return name
	}
	// Constant tensors: float32 values as they are, int32 (shapes) as floats.
	done := map[int]bool{}
	tensorConst := func(i int) (string, error) {
		t := &m.Tensors[i]
		if done[i] {
			return names[i], nil
		}
		var data []float32
		switch t.Type {
		case Float32:
			f, err := t.Float32s()
			if err != nil {
				return "", fmt.Errorf("tflite: %w", err)
			}
			data = f
		case Int32:
			v, err := t.Int32s()
			if err != nil {
				return "", fmt.Errorf("tflite: %w", err)
			}
			for _, x := range v {
				data = append(data, float32(x))
			}
		default:
			return "", fmt.Errorf("tflite: constant %s: %s tensors are not supported", t.Name, t.Type)
		}
		done[i] = true
		return constant(names[i], append([]int{}, t.Shape...), data), nil
	}
	ref := func(i int) (string, error) {
		if m.Tensors[i].Data != nil {
			return tensorConst(i)
		}
		return names[i], nil
	}
	in := m.Tensors[m.Inputs[0]]
	if in.Type != Float32 || in.Quantized {
		return nil, nil, fmt.Errorf("tflite: input %s is %s (quantised %v): only float32 models are supported", in.Name, in.Type, in.Quantized)
	}
	add(&tfgraph.Node{Name: names[m.Inputs[0]], Op: "Placeholder"})
	batch := 0
	if len(in.Shape) > 0 {
		batch = in.Shape[0]
	}

	for k, op := range m.Ops {
		if len(op.Outputs) != 1 {
			return nil, nil, fmt.Errorf("tflite: operator %d (code %d): %d outputs", k, op.Code, len(op.Outputs))
		}
		out := names[op.Outputs[0]]
		conv := op.Code == OpConv2D || op.Code == OpDepthwiseConv
		var inputs []string
		for j, i := range op.Inputs {
			if i < 0 || conv && j == 1 {
				continue // a filter is written re-laid-out below, not as it is
			}
			s, err := ref(i)
			if err != nil {
				return nil, nil, fmt.Errorf("operator %d: %w", k, err)
			}
			inputs = append(inputs, s)
		}
		if len(op.Inputs) == 0 || op.Inputs[0] < 0 || conv && (len(op.Inputs) < 2 || op.Inputs[1] < 0) {
			return nil, nil, fmt.Errorf("tflite: operator %d (code %d): a required input is missing", k, op.Code)
		}
		o := op.Options
		act, ok := map[int]string{0: "", 1: "Relu", 3: "Relu6"}[o.Activation]
		if !ok {
			return nil, nil, fmt.Errorf("tflite: operator %d: fused activation %d not supported", k, o.Activation)
		}
		node := &tfgraph.Node{Name: out, Input: inputs, Attr: map[string]*tfgraph.Attr{}}
		switch op.Code {
		case OpConv2D, OpDepthwiseConv:
			if len(op.Inputs) < 2 || len(op.Inputs) > 3 {
				return nil, nil, fmt.Errorf("tflite: operator %d: convolution with %d inputs", k, len(op.Inputs))
			}
			f := &m.Tensors[op.Inputs[1]]
			fw, err := f.Float32s()
			if err != nil || len(f.Shape) != 4 {
				return nil, nil, fmt.Errorf("tflite: operator %d: filter %s: shape %v, %v", k, f.Name, f.Shape, err)
			}
			var shape []int
			var data []float32
			if op.Code == OpConv2D {
				// [O,kh,kw,I] -> HWIO
				node.Op = "_FusedConv2D"
				oc, kh, kw, ic := f.Shape[0], f.Shape[1], f.Shape[2], f.Shape[3]
				shape = []int{kh, kw, ic, oc}
				data = make([]float32, len(fw))
				for a := 0; a < oc; a++ {
					for y := 0; y < kh; y++ {
						for x := 0; x < kw; x++ {
							for c := 0; c < ic; c++ {
								data[((y*kw+x)*ic+c)*oc+a] = fw[((a*kh+y)*kw+x)*ic+c]
							}
						}
					}
				}
			} else {
				// [1,kh,kw,C*M] is [kh,kw,C,M] in the same order.
				node.Op = "FusedDepthwiseConv2dNative"
				// The multiplier is the filter's channels over the input's
				// (depth_multiplier is left 0 by newer converters).
				x := m.Tensors[op.Inputs[0]].Shape
				if len(x) != 4 || x[3] <= 0 || f.Shape[0] != 1 || f.Shape[3]%x[3] != 0 {
					return nil, nil, fmt.Errorf("tflite: operator %d: depthwise filter %v for input %v", k, f.Shape, x)
				}
				shape, data = []int{f.Shape[1], f.Shape[2], x[3], f.Shape[3] / x[3]}, fw
			}
			fused := []string{"BiasAdd"}
			node.Input = []string{inputs[0], constant(names[op.Inputs[1]]+"/tf", shape, data)}
			if len(inputs) == 2 {
				node.Input = append(node.Input, inputs[1]) // the bias
			} else {
				oc := shape[3] // HWIO
				if op.Code == OpDepthwiseConv {
					oc = shape[2] * shape[3]
				}
				node.Input = append(node.Input, constant(out+"/zero_bias", []int{oc}, make([]float32, oc)))
			}
			if act != "" {
				fused = append(fused, act)
			}
			pad := map[int]string{0: "SAME", 1: "VALID"}[o.Padding]
			if pad == "" {
				return nil, nil, fmt.Errorf("tflite: operator %d: padding %d", k, o.Padding)
			}
			node.Attr["padding"] = tfgraph.StringAttr(pad)
			node.Attr["strides"] = tfgraph.IntsAttr(1, o.StrideH, o.StrideW, 1)
			node.Attr["dilations"] = tfgraph.IntsAttr(1, max(o.DilationH, 1), max(o.DilationW, 1), 1)
			node.Attr["fused_ops"] = tfgraph.StringsAttr(fused...)
			add(node)
			continue
		case OpAdd, OpSub, OpMul:
			node.Op = map[int]string{OpAdd: "AddV2", OpSub: "Sub", OpMul: "Mul"}[op.Code]
			if len(inputs) != 2 {
				return nil, nil, fmt.Errorf("tflite: operator %d: %s with %d inputs", k, node.Op, len(inputs))
			}
		case OpRelu, OpRelu6, OpAbs:
			node.Op = map[int]string{OpRelu: "Relu", OpRelu6: "Relu6", OpAbs: "Abs"}[op.Code]
			node.Input = inputs[:1]
		case OpPrelu:
			node.Op = "Prelu"
		case OpReshape:
			node.Op = "Reshape"
			target := o.NewShape
			if len(op.Inputs) > 1 && op.Inputs[1] >= 0 {
				v, err := m.Tensors[op.Inputs[1]].Int32s()
				if err != nil {
					return nil, nil, fmt.Errorf("tflite: operator %d: reshape target: %w", k, err)
				}
				target = v
			}
			if len(target) == 0 {
				return nil, nil, fmt.Errorf("tflite: operator %d: reshape without a constant target", k)
			}
			target = append([]int{}, target...)
			if batch > 1 && target[0] == batch {
				target[0] = -1
			}
			t := make([]float32, len(target))
			for i, x := range target {
				t[i] = float32(x)
			}
			node.Input = []string{inputs[0], constant(out+"/shape", []int{len(t)}, t)}
			add(node)
			continue
		default:
			return nil, nil, fmt.Errorf("tflite: operator %d: builtin operator %d%s not supported", k, op.Code, customName(op.Custom))
		}
		if act != "" {
			node.Name = out + "/pre_activation"
			add(node)
			add(&tfgraph.Node{Name: out, Op: act, Input: []string{node.Name}})
			continue
		}
		add(node)
	}
	return g, w, nil
}

func customName(s string) string {
	if s == "" {
		return ""
	}
	return " (custom " + s + ")"
}
