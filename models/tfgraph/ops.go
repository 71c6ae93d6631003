package tfgraph

import (
	"fmt"
	"math"
	"slices"

	"github.com/periocular/atm-agent/models/onnx"
)

func init() {
	handlers = map[string]handler{
		"Identity": passThrough, "Snapshot": passThrough, "StopGradient": passThrough,
		"Conv2D": convOp, "_FusedConv2D": convOp,
		"DepthwiseConv2dNative": convOp, "FusedDepthwiseConv2dNative": convOp,
		"MatMul": matMulOp, "_FusedMatMul": matMulOp,
		"Add": binaryOp, "AddV2": binaryOp, "BiasAdd": binaryOp, "Sub": binaryOp,
		"Mul": binaryOp, "RealDiv": binaryOp, "Maximum": binaryOp, "Minimum": binaryOp,
		"Relu": unaryOp, "Relu6": unaryOp, "Sigmoid": unaryOp, "Tanh": unaryOp,
		"Elu": unaryOp, "Exp": unaryOp, "LeakyRelu": unaryOp, "Abs": unaryOp,
		"Square": squareOp, "Rsqrt": rsqrtOp,
		"Prelu":   preluOp,
		"Softmax": softmaxOp,
		"MaxPool": poolOp, "AvgPool": poolOp,
		"Pad": padOp, "PadV2": padOp,
		"Reshape": reshapeOp, "Squeeze": reshapeOp, "ExpandDims": reshapeOp,
		"ConcatV2": concatOp,
		"Mean":     meanOp, "Sum": meanOp,
		"FusedBatchNorm": batchNormOp, "FusedBatchNormV3": batchNormOp,
	}
}

func passThrough(b *builder, n *Node, in []*value) (*value, error) { return in[0], nil }

// toNCHW returns the ONNX name of a rank-4 dynamic value in NCHW.
func (b *builder) toNCHW(v *value) (string, error) {
	if v.isConst() || len(v.shape) != 4 {
		return "", fmt.Errorf("expected a rank-4 dynamic input, got shape %v", v.shape)
	}
	if v.nchw {
		return v.name, nil
	}
	return b.g.Op("Transpose", []string{v.name}, onnx.Ints("perm", 0, 3, 1, 2)), nil
}

// samePads computes TF padding for one spatial dimension.
func samePads(in, k, stride, dil int, mode string) (out, begin, end int) {
	ek := (k-1)*dil + 1
	if mode == "VALID" {
		return (in-ek)/stride + 1, 0, 0
	}
	out = (in + stride - 1) / stride
	total := (out-1)*stride + ek - in
	if total < 0 {
		total = 0
	}
	return out, total / 2, total - total/2
}

func spatial(n *Node, in []int, k [2]int) (out [2]int, pads []int64, strides, dils [2]int, err error) {
	if f := n.Attr["data_format"].str(); f != "" && f != "NHWC" {
		return out, nil, strides, dils, fmt.Errorf("data_format %s not supported", f)
	}
	st := n.Attr["strides"].ints()
	if len(st) != 4 {
		st = []int{1, 1, 1, 1}
	}
	dl := n.Attr["dilations"].ints()
	if len(dl) != 4 {
		dl = []int{1, 1, 1, 1}
	}
	strides, dils = [2]int{st[1], st[2]}, [2]int{dl[1], dl[2]}
	mode := n.Attr["padding"].str()
	var b, e [2]int
	switch mode {
	case "SAME", "VALID":
		for i := 0; i < 2; i++ {
			out[i], b[i], e[i] = samePads(in[1+i], k[i], strides[i], dils[i], mode)
		}
	case "EXPLICIT":
		ep := n.Attr["explicit_paddings"].ints()
		if len(ep) != 8 {
			return out, nil, strides, dils, fmt.Errorf("explicit_paddings %v", ep)
		}
		for i := 0; i < 2; i++ {
			b[i], e[i] = ep[2+2*i], ep[3+2*i]
			ek := (k[i]-1)*dils[i] + 1
			out[i] = (in[1+i]+b[i]+e[i]-ek)/strides[i] + 1
		}
	default:
		return out, nil, strides, dils, fmt.Errorf("padding %q not supported", mode)
	}
	return out, []int64{int64(b[0]), int64(b[1]), int64(e[0]), int64(e[1])}, strides, dils, nil
}

type activation struct {
	kind  string
	alpha *value  // Prelu
	f     float64 // LeakyRelu alpha
}

// activate applies an activation to an ONNX value with the given channel
// count (for PRelu slopes) and layout.
func (b *builder) activate(x string, a activation, v *value) (string, error) {
	switch a.kind {
	case "", "Identity":
		return x, nil
	case "Relu":
		return b.g.Op("Relu", []string{x}), nil
	case "Relu6":
		return b.g.Op("Clip", []string{x}, onnx.Float32("min", 0), onnx.Float32("max", 6)), nil
	case "Sigmoid", "Tanh", "Elu", "Exp", "Abs":
		return b.g.Op(a.kind, []string{x}), nil
	case "LeakyRelu":
		return b.g.Op("LeakyRelu", []string{x}, onnx.Float32("alpha", float32(a.f))), nil
	case "Prelu":
		if a.alpha == nil || !a.alpha.isConst() {
			return "", fmt.Errorf("Prelu alpha must be constant")
		}
		c := v.shape[len(v.shape)-1]
		al := a.alpha.c
		if len(al) == 1 {
			al = repeat(al[0], c)
		}
		if len(al) != c {
			return "", fmt.Errorf("Prelu alpha shape %v for %d channels", a.alpha.shape, c)
		}
		var s string
		if v.nchw {
			s = b.g.Init("prelu_slope", []int64{int64(c), 1, 1}, f32(al))
		} else {
			s = b.g.Init("prelu_slope", []int64{int64(c)}, f32(al))
		}
		return b.g.Op("PRelu", []string{x, s}), nil
	}
	return "", fmt.Errorf("activation %s not supported", a.kind)
}

func repeat(x float64, n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = x
	}
	return out
}

// perChannel expands a constant to one value per channel, if it is one.
func perChannel(c *value, ch int) ([]float64, bool) {
	if len(c.c) == 1 {
		return repeat(c.c[0], ch), true
	}
	if len(c.c) != ch || len(c.shape) == 0 || c.shape[len(c.shape)-1] != ch {
		return nil, false
	}
	return c.c, true
}

func convOp(b *builder, n *Node, in []*value) (*value, error) {
	if len(in) < 2 || !in[1].isConst() || len(in[1].shape) != 4 {
		return nil, fmt.Errorf("needs a constant rank-4 filter")
	}
	x, err := b.toNCHW(in[0])
	if err != nil {
		return nil, err
	}
	f := in[1]
	kh, kw, ci, co := f.shape[0], f.shape[1], f.shape[2], f.shape[3]
	depthwise := n.Op == "DepthwiseConv2dNative" || n.Op == "FusedDepthwiseConv2dNative"
	var w []float64
	var wshape []int
	group := 1
	if depthwise {
		// [kh,kw,C,M] -> [C*M,1,kh,kw]; output channel c*M+m.
		w, wshape = transpose(f.c, f.shape, []int{2, 3, 0, 1})
		wshape = []int{ci * co, 1, kh, kw}
		group = ci
		co = ci * co
	} else {
		if in[0].shape[3] != ci {
			return nil, fmt.Errorf("input has %d channels, filter expects %d", in[0].shape[3], ci)
		}
		w, wshape = transpose(f.c, f.shape, []int{3, 2, 0, 1})
	}
	out, pads, strides, dils, err := spatial(n, in[0].shape, [2]int{kh, kw})
	if err != nil {
		return nil, err
	}
	bias := make([]float64, co)
	perOut := len(w) / co
	scale := func(s []float64) {
		for o := 0; o < co; o++ {
			for i := 0; i < perOut; i++ {
				w[o*perOut+i] *= s[o]
			}
			bias[o] *= s[o]
		}
	}
	var act activation
	if ops := n.Attr["fused_ops"].strs(); len(ops) > 0 {
		args := in[2:]
		argAt := func(i int) ([]float64, error) {
			if i >= len(args) || !args[i].isConst() {
				return nil, fmt.Errorf("fused arg %d missing or not constant", i)
			}
			v, ok := perChannel(args[i], co)
			if !ok {
				return nil, fmt.Errorf("fused arg %d shape %v for %d channels", i, args[i].shape, co)
			}
			return v, nil
		}
		used := 0
		switch ops[0] {
		case "BiasAdd":
			bv, err := argAt(0)
			if err != nil {
				return nil, err
			}
			for o := range bias {
				bias[o] += bv[o]
			}
			used = 1
		case "FusedBatchNorm":
			var p [4][]float64
			for i := range p {
				if p[i], err = argAt(i); err != nil {
					return nil, err
				}
			}
			eps := n.Attr["epsilon"].float()
			k := make([]float64, co)
			for o := range k {
				k[o] = float64(float32(p[0][o] / math.Sqrt(p[3][o]+eps)))
			}
			scale(k)
			for o := range bias {
				bias[o] += p[1][o] - p[2][o]*k[o]
			}
			used = 4
		default:
			return nil, fmt.Errorf("fused op %s not supported", ops[0])
		}
		if len(ops) > 2 {
			return nil, fmt.Errorf("fused ops %v not supported", ops)
		}
		if len(ops) == 2 {
			act.kind = ops[1]
			if act.kind == "Prelu" {
				if used >= len(args) {
					return nil, fmt.Errorf("Prelu alpha missing")
				}
				act.alpha = args[used]
			}
			act.f = n.Attr["leakyrelu_alpha"].float()
		}
	}
	res := &value{shape: []int{in[0].shape[0], out[0], out[1], co}, nchw: true}
	if act.kind == "" {
		if err := b.foldAffine(n.Name, res, co, scale, bias); err != nil {
			return nil, err
		}
	}
	wn := b.g.Init(n.Name+"/W", i64s(wshape), f32(w))
	bn := b.g.Init(n.Name+"/B", []int64{int64(co)}, f32(bias))
	y := b.g.Op("Conv", []string{x, wn, bn},
		onnx.Ints("kernel_shape", int64(kh), int64(kw)),
		onnx.Ints("strides", int64(strides[0]), int64(strides[1])),
		onnx.Ints("dilations", int64(dils[0]), int64(dils[1])),
		onnx.Ints("pads", pads...),
		onnx.Int("group", int64(group)))
	if y, err = b.activate(y, act, res); err != nil {
		return nil, err
	}
	res.name = y
	return res, nil
}

// foldAffine folds the per-channel Add/Sub/Mul by constants that follow node
// name (each the sole consumer of the previous) into a layer's weights and
// bias: scale multiplies weights and bias by one factor per output channel.
// The folded nodes resolve to res.
func (b *builder) foldAffine(name string, res *value, co int, scale func([]float64), bias []float64) error {
	last := name
	for {
		y := b.soleConsumer(last)
		if y == nil || len(y.Input) != 2 || nodeName(y.Input[0]) != last {
			return nil
		}
		const ci = 1
		switch y.Op {
		case "Add", "AddV2", "BiasAdd", "Sub", "Mul":
		default:
			return nil
		}
		cn := b.nodes[nodeName(y.Input[ci])]
		if cn == nil || cn.Op != "Const" {
			return nil
		}
		cv, err := b.eval(key(y.Input[ci]))
		if err != nil {
			return err
		}
		s, ok := perChannel(cv, co)
		if !ok {
			return nil
		}
		switch y.Op {
		case "Mul":
			scale(s)
		case "Sub":
			for o := range bias {
				bias[o] -= s[o]
			}
		default:
			for o := range bias {
				bias[o] += s[o]
			}
		}
		b.vals[y.Name] = res
		last = y.Name
	}
}

func matMulOp(b *builder, n *Node, in []*value) (*value, error) {
	x := in[0]
	if x.isConst() || len(x.shape) != 2 || !in[1].isConst() || len(in[1].shape) != 2 {
		return nil, fmt.Errorf("only dynamic [N,K] x constant [K,M] is supported")
	}
	if n.Attr["transpose_a"] != nil && n.Attr["transpose_a"].B {
		return nil, fmt.Errorf("transpose_a not supported")
	}
	w := in[1]
	var wt []float64
	var k, m int
	if n.Attr["transpose_b"] != nil && n.Attr["transpose_b"].B {
		wt, m, k = w.c, w.shape[0], w.shape[1]
	} else {
		wt, _ = transpose(w.c, w.shape, []int{1, 0})
		k, m = w.shape[0], w.shape[1]
	}
	if x.shape[1] != k {
		return nil, fmt.Errorf("input [%d,%d] x weights with K=%d", x.shape[0], x.shape[1], k)
	}
	bias := make([]float64, m)
	var act activation
	if ops := n.Attr["fused_ops"].strs(); len(ops) > 0 {
		if ops[0] != "BiasAdd" || len(ops) > 2 || len(in) < 3 || !in[2].isConst() {
			return nil, fmt.Errorf("fused ops %v not supported", ops)
		}
		bv, ok := perChannel(in[2], m)
		if !ok {
			return nil, fmt.Errorf("bias shape %v", in[2].shape)
		}
		copy(bias, bv)
		if len(ops) == 2 {
			act.kind = ops[1]
			if act.kind == "Prelu" && len(in) > 3 {
				act.alpha = in[3]
			}
			act.f = n.Attr["leakyrelu_alpha"].float()
		}
	}
	res := &value{shape: []int{x.shape[0], m}}
	if act.kind == "" {
		scale := func(s []float64) {
			for o := 0; o < m; o++ {
				for i := 0; i < k; i++ {
					wt[o*k+i] *= s[o]
				}
				bias[o] *= s[o]
			}
		}
		if err := b.foldAffine(n.Name, res, m, scale, bias); err != nil {
			return nil, err
		}
	}
	wn := b.g.Init(n.Name+"/W", []int64{int64(m), int64(k)}, f32(wt))
	bn := b.g.Init(n.Name+"/B", []int64{int64(m)}, f32(bias))
	y := b.g.Op("Gemm", []string{x.name, wn, bn}, onnx.Int("transB", 1))
	y, err := b.activate(y, act, res)
	if err != nil {
		return nil, err
	}
	res.name = y
	return res, nil
}

var binaryONNX = map[string]string{
	"Add": "Add", "AddV2": "Add", "BiasAdd": "Add", "Sub": "Sub", "Mul": "Mul",
	"RealDiv": "Div", "Maximum": "Max", "Minimum": "Min",
}

func binaryOp(b *builder, n *Node, in []*value) (*value, error) {
	if len(in) != 2 {
		return nil, fmt.Errorf("%d inputs", len(in))
	}
	x, y := in[0], in[1]
	shape, err := broadcastShape(x.shape, y.shape)
	if err != nil {
		return nil, err
	}
	op := binaryONNX[n.Op]
	// Minimum/Maximum against a scalar constant: Clip with attributes.
	if (n.Op == "Minimum" || n.Op == "Maximum") && (x.isConst() || y.isConst()) {
		d, c := x, y
		if x.isConst() {
			d, c = y, x
		}
		if isScalarLike(c.shape) && len(shape) == len(d.shape) {
			attr := onnx.Float32("max", float32(c.c[0]))
			if n.Op == "Maximum" {
				attr = onnx.Float32("min", float32(c.c[0]))
			}
			return &value{shape: shape, nchw: d.nchw, name: b.g.Op("Clip", []string{d.name}, attr)}, nil
		}
	}
	switch {
	case x.isConst() || y.isConst():
		d := x
		if x.isConst() {
			d = y
		}
		if len(shape) != len(d.shape) {
			d = &value{shape: d.shape, name: b.nhwc(d)}
		}
		var xs, ys string
		if x.isConst() {
			xs, ys = b.constFor(x, d), d.name
		} else {
			xs, ys = d.name, b.constFor(y, d)
		}
		return &value{shape: shape, nchw: d.nchw, name: b.g.Op(op, []string{xs, ys})}, nil
	case len(x.shape) == 2 && len(y.shape) == 2 && !slices.Equal(x.shape, y.shape) && !x.nchw && !y.nchw:
		// [N,C] op [N,1] (e.g. a vector times its inverse norm): OpenCV 4.6
		// cannot broadcast two dynamic inputs, so the column is first
		// repeated C times by a Gemm with ones.
		xs, ys := x.name, y.name
		switch {
		case x.shape[1] == 1 && y.shape[1] > 1 && x.shape[0] == y.shape[0]:
			xs = b.repeatColumn(x.name, y.shape[1])
		case y.shape[1] == 1 && x.shape[1] > 1 && x.shape[0] == y.shape[0]:
			ys = b.repeatColumn(y.name, x.shape[1])
		default:
			return nil, fmt.Errorf("dynamic broadcast of %v and %v not supported", x.shape, y.shape)
		}
		return &value{shape: shape, name: b.g.Op(op, []string{xs, ys})}, nil
	default:
		if x.nchw && y.nchw {
			return &value{shape: shape, nchw: true, name: b.g.Op(op, []string{x.name, y.name})}, nil
		}
		return &value{shape: shape, name: b.g.Op(op, []string{b.nhwc(x), b.nhwc(y)})}, nil
	}
}

// repeatColumn turns an [N,1] value into [N,c] (Gemm with a [c,1] of ones).
func (b *builder) repeatColumn(x string, c int) string {
	ones := b.g.Init("ones", []int64{int64(c), 1}, f32(repeat(1, c)))
	zero := b.g.Init("zeros", []int64{int64(c)}, make([]float32, c))
	return b.g.Op("Gemm", []string{x, ones, zero}, onnx.Int("transB", 1))
}

func unaryOp(b *builder, n *Node, in []*value) (*value, error) {
	x := in[0]
	a := activation{kind: n.Op, f: 0.2}
	if n.Attr["alpha"] != nil {
		a.f = n.Attr["alpha"].float()
	}
	y, err := b.activate(x.name, a, x)
	if err != nil {
		return nil, err
	}
	return &value{shape: x.shape, nchw: x.nchw, name: y}, nil
}

// squareOp: x*x.
func squareOp(b *builder, n *Node, in []*value) (*value, error) {
	x := in[0]
	return &value{shape: x.shape, nchw: x.nchw, name: b.g.Op("Mul", []string{x.name, x.name})}, nil
}

// rsqrtOp: 1/sqrt(x) as Pow(x, -0.5) with a constant exponent, which
// OpenCV 4.6 imports as its Power layer (ONNX has no Rsqrt).
func rsqrtOp(b *builder, n *Node, in []*value) (*value, error) {
	x := in[0]
	e := b.g.Init("rsqrt_exponent", nil, []float32{-0.5})
	return &value{shape: x.shape, nchw: x.nchw, name: b.g.Op("Pow", []string{x.name, e})}, nil
}

func preluOp(b *builder, n *Node, in []*value) (*value, error) {
	x := in[0]
	y, err := b.activate(x.name, activation{kind: "Prelu", alpha: in[1]}, x)
	if err != nil {
		return nil, err
	}
	return &value{shape: x.shape, nchw: x.nchw, name: y}, nil
}

func softmaxOp(b *builder, n *Node, in []*value) (*value, error) {
	x := in[0]
	name := b.nhwc(x)
	return &value{shape: x.shape, name: b.g.Op("Softmax", []string{name}, onnx.Int("axis", int64(len(x.shape)-1)))}, nil
}

func poolOp(b *builder, n *Node, in []*value) (*value, error) {
	x, err := b.toNCHW(in[0])
	if err != nil {
		return nil, err
	}
	k := n.Attr["ksize"].ints()
	if len(k) != 4 || k[0] != 1 || k[3] != 1 {
		return nil, fmt.Errorf("ksize %v not supported", k)
	}
	out, pads, strides, _, err := spatial(n, in[0].shape, [2]int{k[1], k[2]})
	if err != nil {
		return nil, err
	}
	op := "MaxPool"
	if n.Op == "AvgPool" {
		op = "AveragePool" // count_include_pad=0, as TF
	}
	y := b.g.Op(op, []string{x},
		onnx.Ints("kernel_shape", int64(k[1]), int64(k[2])),
		onnx.Ints("strides", int64(strides[0]), int64(strides[1])),
		onnx.Ints("pads", pads...))
	return &value{shape: []int{in[0].shape[0], out[0], out[1], in[0].shape[3]}, nchw: true, name: y}, nil
}

func padOp(b *builder, n *Node, in []*value) (*value, error) {
	x, p := in[0], in[1]
	r := len(x.shape)
	if !p.isConst() || len(p.c) != 2*r {
		return nil, fmt.Errorf("paddings must be a constant [%d,2]", r)
	}
	if n.Attr["mode"] != nil && n.Attr["mode"].str() != "" && n.Attr["mode"].str() != "CONSTANT" {
		return nil, fmt.Errorf("mode %s not supported", n.Attr["mode"].str())
	}
	shape := make([]int, r)
	pads := make([]int64, 2*r)
	for i := 0; i < r; i++ {
		bg, en := int(p.c[2*i]), int(p.c[2*i+1])
		shape[i] = x.shape[i] + bg + en
		j := i
		if x.nchw {
			j = nchwAxis(i)
		}
		pads[j], pads[r+j] = int64(bg), int64(en)
	}
	inputs := []string{x.name, b.g.InitInt64("pads", []int64{int64(2 * r)}, pads)}
	if n.Op == "PadV2" && len(in) > 2 && in[2].isConst() && in[2].c[0] != 0 {
		inputs = append(inputs, b.g.Init("pad_value", nil, []float32{float32(in[2].c[0])}))
	}
	return &value{shape: shape, nchw: x.nchw, name: b.g.Op("Pad", inputs, onnx.String("mode", "constant"))}, nil
}

func reshapeOp(b *builder, n *Node, in []*value) (*value, error) {
	x := in[0]
	var shape []int
	switch n.Op {
	case "Reshape":
		if len(in) < 2 || !in[1].isConst() {
			return nil, fmt.Errorf("target shape must be constant")
		}
		shape = resolveShape(ints(in[1].c), numel(x.shape))
	case "Squeeze":
		shape = squeeze(x.shape, n.Attr["squeeze_dims"].ints())
	case "ExpandDims":
		if len(in) < 2 || !in[1].isConst() {
			return nil, fmt.Errorf("axis must be constant")
		}
		shape = expandDims(x.shape, int(in[1].c[0]))
	}
	if numel(shape) != numel(x.shape) {
		return nil, fmt.Errorf("cannot reshape %v to %v", x.shape, shape)
	}
	sh := b.g.InitInt64("shape", []int64{int64(len(shape))}, i64s(shape))
	return &value{shape: shape, name: b.g.Op("Reshape", []string{b.nhwc(x), sh})}, nil
}

func resolveShape(s []int, total int) []int {
	out := append([]int{}, s...)
	known, neg := 1, -1
	for i, d := range out {
		if d < 0 {
			neg = i
		} else {
			known *= d
		}
	}
	if neg >= 0 && known > 0 {
		out[neg] = total / known
	}
	return out
}

func squeeze(s []int, dims []int) []int {
	drop := map[int]bool{}
	for _, d := range dims {
		if d < 0 {
			d += len(s)
		}
		drop[d] = true
	}
	var out []int
	for i, d := range s {
		if (len(dims) == 0 && d == 1) || drop[i] {
			continue
		}
		out = append(out, d)
	}
	return out
}

func expandDims(s []int, axis int) []int {
	if axis < 0 {
		axis += len(s) + 1
	}
	out := append([]int{}, s[:axis]...)
	out = append(out, 1)
	return append(out, s[axis:]...)
}

func concatOp(b *builder, n *Node, in []*value) (*value, error) {
	ax := in[len(in)-1]
	if !ax.isConst() {
		return nil, fmt.Errorf("axis must be constant")
	}
	parts := in[:len(in)-1]
	r := len(parts[0].shape)
	axis := int(ax.c[0])
	if axis < 0 {
		axis += r
	}
	shape := append([]int{}, parts[0].shape...)
	shape[axis] = 0
	allNCHW := r == 4
	for _, p := range parts {
		if len(p.shape) != r {
			return nil, fmt.Errorf("rank mismatch")
		}
		shape[axis] += p.shape[axis]
		if !p.isConst() && !p.nchw {
			allNCHW = false
		}
	}
	var names []string
	oaxis := axis
	if allNCHW {
		oaxis = nchwAxis(axis)
	}
	for _, p := range parts {
		switch {
		case p.isConst() && allNCHW:
			d, s := transpose(p.c, p.shape, []int{0, 3, 1, 2})
			names = append(names, b.g.Init("const", i64s(s), f32(d)))
		case allNCHW:
			names = append(names, p.name)
		default:
			names = append(names, b.nhwc(p))
		}
	}
	return &value{shape: shape, nchw: allNCHW, name: b.g.Op("Concat", names, onnx.Int("axis", int64(oaxis)))}, nil
}

// meanOp converts Mean and Sum (ReduceMean, ReduceSum; axes as attribute,
// opset 11).
func meanOp(b *builder, n *Node, in []*value) (*value, error) {
	x, ax := in[0], in[1]
	if !ax.isConst() {
		return nil, fmt.Errorf("axes must be constant")
	}
	r := len(x.shape)
	keep := n.Attr["keep_dims"] != nil && n.Attr["keep_dims"].B
	red := map[int]bool{}
	for _, a := range ints(ax.c) {
		if a < 0 {
			a += r
		}
		red[a] = true
	}
	var shape []int
	for i, d := range x.shape {
		switch {
		case !red[i]:
			shape = append(shape, d)
		case keep:
			shape = append(shape, 1)
		}
	}
	name := x.name
	nchw := x.nchw
	if nchw && !keep {
		// The kept axes must come out in TF order.
		var kept []int
		for _, p := range []int{0, 3, 1, 2} {
			if !red[p] {
				kept = append(kept, p)
			}
		}
		for i := 1; i < len(kept); i++ {
			if kept[i] < kept[i-1] {
				name, nchw = b.nhwc(x), false
				break
			}
		}
	}
	var axes []int64
	for a := range red {
		if nchw {
			axes = append(axes, int64(nchwAxis(a)))
		} else {
			axes = append(axes, int64(a))
		}
	}
	sortInt64(axes)
	k := int64(0)
	if keep {
		k = 1
	}
	op := "ReduceMean"
	if n.Op == "Sum" {
		op = "ReduceSum"
	}
	return &value{shape: shape, nchw: nchw && keep, name: b.g.Op(op, []string{name}, onnx.Ints("axes", axes...), onnx.Int("keepdims", k))}, nil
}

func sortInt64(a []int64) {
	for i := 1; i < len(a); i++ {
		for j := i; j > 0 && a[j] < a[j-1]; j-- {
			a[j], a[j-1] = a[j-1], a[j]
		}
	}
}

func batchNormOp(b *builder, n *Node, in []*value) (*value, error) {
	x := in[0]
	if len(in) < 5 {
		return nil, fmt.Errorf("needs scale, offset, mean, variance")
	}
	c := x.shape[len(x.shape)-1]
	var p [4][]float64
	for i := range p {
		v, ok := perChannel(in[1+i], c)
		if !in[1+i].isConst() || !ok {
			return nil, fmt.Errorf("parameter %d must be a constant per channel", i)
		}
		p[i] = v
	}
	eps := n.Attr["epsilon"].float()
	k := make([]float64, c)
	sh := make([]float64, c)
	for i := range k {
		k[i] = p[0][i] / math.Sqrt(p[3][i]+eps)
		sh[i] = p[1][i] - p[2][i]*k[i]
	}
	kv := &value{shape: []int{c}, c: k}
	sv := &value{shape: []int{c}, c: sh}
	m := b.g.Op("Mul", []string{x.name, b.constFor(kv, x)})
	return &value{shape: x.shape, nchw: x.nchw, name: b.g.Op("Add", []string{m, b.constFor(sv, x)})}, nil
}
