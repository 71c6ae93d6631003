package tfgraph

import (
	"encoding/base64"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/periocular/atm-agent/models/onnx"
	"github.com/periocular/atm-agent/models/tfjs"
)

func decodeB64(s string) (string, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	return string(b), err
}

// value is one TF tensor during conversion: a constant (c != nil) or an ONNX
// value name. shape is always the TF (logical) shape; nchw says a rank-4
// dynamic tensor is stored NCHW.
type value struct {
	shape []int
	c     []float64
	name  string
	nchw  bool
}

func (v *value) isConst() bool { return v.c != nil }

type builder struct {
	g         *onnx.Graph
	nodes     map[string]*Node
	weights   map[string]*tfjs.Tensor
	vals      map[string]*value // key: "node" (output 0) or "node:i"
	consumers map[string][]*Node
	opts      Options
	busy      map[string]bool
}

type handler func(b *builder, n *Node, in []*value) (*value, error)

var handlers map[string]handler

// constOnly ops are folded when all inputs are constant and rejected otherwise.
var constOnly = map[string]bool{
	"Shape": true, "StridedSlice": true, "Pack": true, "Cast": true,
}

func key(in string) string {
	in = strings.TrimPrefix(in, "^")
	if strings.HasSuffix(in, ":0") {
		return strings.TrimSuffix(in, ":0")
	}
	return in
}

func nodeName(in string) string {
	in = strings.TrimPrefix(in, "^")
	if i := strings.LastIndexByte(in, ':'); i > 0 {
		if _, err := strconv.Atoi(in[i+1:]); err == nil {
			return in[:i]
		}
	}
	return in
}

func build(m *Model, w map[string]*tfjs.Tensor, opts Options, name string) (*onnx.Graph, error) {
	b := &builder{
		g: onnx.NewGraph(name), nodes: map[string]*Node{}, weights: w,
		vals: map[string]*value{}, consumers: map[string][]*Node{}, opts: opts, busy: map[string]bool{},
	}
	if b.opts.InputName == "" {
		b.opts.InputName = "input"
	}
	for _, n := range m.ModelTopology.Node {
		b.nodes[n.Name] = n
	}
	for _, n := range m.ModelTopology.Node {
		for _, in := range n.Input {
			if strings.HasPrefix(in, "^") {
				continue
			}
			src := nodeName(in)
			b.consumers[src] = append(b.consumers[src], n)
		}
	}
	outs := opts.Outputs
	if len(outs) == 0 {
		outs = defaultOutputs(m, b)
	}
	// Check coverage over everything the outputs depend on, before building.
	if err := b.checkOps(outs); err != nil {
		return nil, err
	}
	placeholders := 0
	for _, n := range m.ModelTopology.Node {
		if n.Op == "Placeholder" {
			placeholders++
		}
	}
	if placeholders != 1 {
		return nil, fmt.Errorf("%d placeholders: only single-input graphs are supported", placeholders)
	}
	for _, o := range outs {
		v, err := b.eval(key(o))
		if err != nil {
			return nil, err
		}
		oname := nodeName(o)
		if mapped, ok := opts.OutputNames[o]; ok {
			oname = mapped
		}
		if v.isConst() {
			return nil, fmt.Errorf("output %s is a constant", o)
		}
		if v.nchw {
			b.g.Node("Transpose", []string{v.name}, []string{oname}, onnx.Ints("perm", 0, 2, 3, 1))
		} else {
			sh := b.g.InitInt64(oname+"_shape", []int64{int64(len(v.shape))}, i64s(v.shape))
			b.g.Node("Reshape", []string{v.name, sh}, []string{oname})
		}
		b.g.Output(oname, i64s(v.shape)...)
	}
	return b.g, nil
}

// defaultOutputs: the signature's outputs, else nodes without consumers.
func defaultOutputs(m *Model, b *builder) []string {
	var outs []string
	if m.Signature != nil && len(m.Signature.Outputs) > 0 {
		for _, e := range m.Signature.Outputs {
			if _, ok := b.nodes[nodeName(e.Name)]; ok {
				outs = append(outs, key(e.Name))
			}
		}
		if len(outs) == len(m.Signature.Outputs) {
			sort.Strings(outs)
			return outs
		}
		outs = nil
	}
	for _, n := range m.ModelTopology.Node {
		if n.Op != "Const" && n.Op != "Placeholder" && len(b.consumers[n.Name]) == 0 {
			outs = append(outs, n.Name)
		}
	}
	sort.Strings(outs)
	return outs
}

func (b *builder) checkOps(outs []string) error {
	seen := map[string]bool{}
	bad := map[string]bool{}
	var walk func(string)
	walk = func(name string) {
		if seen[name] {
			return
		}
		seen[name] = true
		n, ok := b.nodes[name]
		if !ok {
			bad["<missing node "+name+">"] = true
			return
		}
		if _, ok := handlers[n.Op]; !ok && !constOnly[n.Op] && n.Op != "Const" && n.Op != "Placeholder" {
			bad[n.Op] = true
		}
		for _, in := range n.Input {
			if !strings.HasPrefix(in, "^") {
				walk(nodeName(in))
			}
		}
	}
	for _, o := range outs {
		walk(nodeName(o))
	}
	if len(bad) == 0 {
		return nil
	}
	var list []string
	for op := range bad {
		list = append(list, op)
	}
	sort.Strings(list)
	return fmt.Errorf("unsupported ops: %s", strings.Join(list, ", "))
}

func (b *builder) eval(k string) (*value, error) {
	if v, ok := b.vals[k]; ok {
		return v, nil
	}
	name := nodeName(k)
	idx := 0
	if name != k {
		idx, _ = strconv.Atoi(k[len(name)+1:])
	}
	n, ok := b.nodes[name]
	if !ok {
		return nil, fmt.Errorf("no node %q", name)
	}
	if idx != 0 {
		return nil, fmt.Errorf("node %s (%s): output %d: multi-output ops are not supported", n.Name, n.Op, idx)
	}
	if b.busy[name] {
		return nil, fmt.Errorf("node %s: cycle", name)
	}
	b.busy[name] = true
	defer delete(b.busy, name)

	var v *value
	var err error
	switch n.Op {
	case "Const":
		t, ok := b.weights[n.Name]
		if !ok {
			return nil, fmt.Errorf("const %s: not in the weights manifest", n.Name)
		}
		c := make([]float64, len(t.Data))
		for i, x := range t.Data {
			c[i] = float64(x)
		}
		v = &value{shape: append([]int{}, t.Shape...), c: c}
	case "Placeholder":
		v, err = b.placeholder(n)
	default:
		for _, f := range fusions {
			fv, ok, ferr := f(b, n)
			if ok {
				v, err = fv, ferr
				break
			}
		}
		if v != nil || err != nil {
			break
		}
		var in []*value
		for _, s := range n.Input {
			if strings.HasPrefix(s, "^") {
				continue
			}
			iv, err := b.eval(key(s))
			if err != nil {
				return nil, err
			}
			in = append(in, iv)
		}
		// An input's conversion may have folded this node into it.
		if v, ok := b.vals[k]; ok {
			return v, nil
		}
		allConst := true
		for _, iv := range in {
			allConst = allConst && iv.isConst()
		}
		if allConst && len(in) > 0 {
			if f, ok := folders[n.Op]; ok {
				v, err = f(n, in)
				break
			}
		}
		if n.Op == "Shape" && len(in) == 1 {
			v = &value{shape: []int{len(in[0].shape)}, c: floats(in[0].shape)}
			break
		}
		h, ok := handlers[n.Op]
		if !ok {
			return nil, fmt.Errorf("node %s: op %s needs constant inputs", n.Name, n.Op)
		}
		v, err = h(b, n, in)
	}
	if err != nil {
		return nil, fmt.Errorf("node %s (%s): %w", n.Name, n.Op, err)
	}
	b.vals[k] = v
	return v, nil
}

func floats(s []int) []float64 {
	out := make([]float64, len(s))
	for i, x := range s {
		out[i] = float64(x)
	}
	return out
}

func ints(c []float64) []int {
	out := make([]int, len(c))
	for i, x := range c {
		out[i] = int(x)
	}
	return out
}

func (b *builder) placeholder(n *Node) (*value, error) {
	shape := b.opts.InputShape
	if shape == nil {
		if a := n.Attr["shape"]; a != nil && a.Shape != nil {
			for _, d := range a.Shape.Dim {
				x, _ := d.Size.Int64()
				if x < 0 {
					x = 1
				}
				shape = append(shape, int(x))
			}
		}
	}
	if len(shape) == 0 {
		return nil, fmt.Errorf("unknown input shape: set Options.InputShape")
	}
	for _, d := range shape {
		if d <= 0 {
			return nil, fmt.Errorf("input shape %v: every dimension must be fixed", shape)
		}
	}
	if len(shape) == 4 {
		b.g.Input(b.opts.InputName, int64(shape[0]), int64(shape[3]), int64(shape[1]), int64(shape[2]))
		return &value{shape: append([]int{}, shape...), name: b.opts.InputName, nchw: true}, nil
	}
	b.g.Input(b.opts.InputName, i64s(shape)...)
	return &value{shape: append([]int{}, shape...), name: b.opts.InputName}, nil
}

// soleConsumer returns the only consumer of node name, or nil.
func (b *builder) soleConsumer(name string) *Node {
	c := b.consumers[name]
	if len(c) != 1 {
		return nil
	}
	for _, o := range b.opts.Outputs {
		if nodeName(o) == name {
			return nil
		}
	}
	return c[0]
}

// nhwc returns the ONNX name of v in TF layout (transposing NCHW back).
func (b *builder) nhwc(v *value) string {
	if v.isConst() {
		return b.g.Init("const", i64s(v.shape), f32(v.c))
	}
	if !v.nchw {
		return v.name
	}
	return b.g.Op("Transpose", []string{v.name}, onnx.Ints("perm", 0, 2, 3, 1))
}

// constFor lays a constant out to broadcast against dynamic value d.
func (b *builder) constFor(c *value, d *value) string {
	if !d.nchw || len(c.shape) == 0 {
		shape := c.shape
		if len(shape) == 0 {
			shape = []int{1}
		}
		return b.g.Init("const", i64s(shape), f32(c.c))
	}
	s := c.shape
	for len(s) < 4 {
		s = append([]int{1}, s...)
	}
	data, shape := transpose(c.c, s, []int{0, 3, 1, 2})
	return b.g.Init("const", i64s(shape), f32(data))
}

// transpose permutes a dense row-major tensor: out dim i = in dim perm[i].
func transpose(data []float64, shape, perm []int) ([]float64, []int) {
	r := len(shape)
	out := make([]float64, len(data))
	oshape := make([]int, r)
	for i, p := range perm {
		oshape[i] = shape[p]
	}
	istr := make([]int, r)
	s := 1
	for i := r - 1; i >= 0; i-- {
		istr[i] = s
		s *= shape[i]
	}
	idx := make([]int, r)
	for o := range out {
		off := 0
		for i := 0; i < r; i++ {
			off += idx[i] * istr[perm[i]]
		}
		out[o] = data[off]
		for i := r - 1; i >= 0; i-- {
			idx[i]++
			if idx[i] < oshape[i] {
				break
			}
			idx[i] = 0
		}
	}
	return out, oshape
}

// broadcastShape is numpy broadcasting of two shapes.
func broadcastShape(a, b []int) ([]int, error) {
	n := len(a)
	if len(b) > n {
		n = len(b)
	}
	out := make([]int, n)
	for i := 0; i < n; i++ {
		x, y := 1, 1
		if j := len(a) - n + i; j >= 0 {
			x = a[j]
		}
		if j := len(b) - n + i; j >= 0 {
			y = b[j]
		}
		switch {
		case x == y || y == 1:
			out[i] = x
		case x == 1:
			out[i] = y
		default:
			return nil, fmt.Errorf("shapes %v and %v do not broadcast", a, b)
		}
	}
	return out, nil
}

// nchwAxis maps a TF axis of a rank-4 NHWC tensor to its NCHW position.
func nchwAxis(a int) int {
	if a < 0 {
		a += 4
	}
	return [4]int{0, 2, 3, 1}[a]
}
