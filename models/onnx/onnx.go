// Package onnx writes ONNX model files without generated protobuf types: a
// small graph builder serialised with protowire. It covers what the project's
// TF.js converters need (float32 and int64 initializers, node attributes,
// typed graph inputs and outputs) and nothing more; ClipToAttributes
// rewrites an existing file for OpenCV 4.6 at the wire level.
//
// Field numbers follow onnx/onnx.proto (IR version 7, opset 11 by default, the
// newest opset Debian 12's OpenCV 4.6 accepts for the operators used here).
package onnx

import (
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// DefaultOpset is the operator set version written when none is given.
const DefaultOpset = 11

// Element types (TensorProto.DataType).
const (
	Float = 1
	Int32 = 6
	Int64 = 7
)

// Attr is one node attribute. Build it with Int, Ints, Float32, Floats or String.
type Attr struct {
	name   string
	typ    int // AttributeProto.AttributeType
	i      int64
	f      float32
	s      string
	ints   []int64
	floats []float32
}

// Int is an INT attribute.
func Int(name string, v int64) Attr { return Attr{name: name, typ: 2, i: v} }

// Ints is an INTS attribute.
func Ints(name string, v ...int64) Attr { return Attr{name: name, typ: 7, ints: v} }

// Float32 is a FLOAT attribute.
func Float32(name string, v float32) Attr { return Attr{name: name, typ: 1, f: v} }

// Floats is a FLOATS attribute.
func Floats(name string, v ...float32) Attr { return Attr{name: name, typ: 6, floats: v} }

// String is a STRING attribute.
func String(name, v string) Attr { return Attr{name: name, typ: 3, s: v} }

type node struct {
	op      string
	name    string
	inputs  []string
	outputs []string
	attrs   []Attr
}

type tensor struct {
	name string
	dims []int64
	typ  int
	f32  []float32
	i64  []int64
}

type valueInfo struct {
	name string
	typ  int
	dims []int64 // a dimension < 0 is written as a symbolic one
}

// Graph accumulates nodes, initializers and typed inputs and outputs.
type Graph struct {
	Name     string
	nodes    []node
	inits    []tensor
	inputs   []valueInfo
	outputs  []valueInfo
	names    map[string]bool
	counter  int
	Producer string
}

// NewGraph starts an empty graph.
func NewGraph(name string) *Graph {
	return &Graph{Name: name, names: map[string]bool{}, Producer: "atm-agent"}
}

// Input declares a float32 graph input; a negative dimension is symbolic.
func (g *Graph) Input(name string, dims ...int64) string {
	g.claim(name)
	g.inputs = append(g.inputs, valueInfo{name: name, typ: Float, dims: dims})
	return name
}

// Output declares a float32 graph output; dims may be empty (shape unknown).
func (g *Graph) Output(name string, dims ...int64) {
	g.outputs = append(g.outputs, valueInfo{name: name, typ: Float, dims: dims})
}

// Init adds a float32 initializer and returns its name. The data is copied.
func (g *Graph) Init(name string, dims []int64, data []float32) string {
	if n := numel(dims); n != len(data) {
		panic(fmt.Sprintf("onnx: initializer %s: %d values for shape %v", name, len(data), dims))
	}
	name = g.unique(name)
	g.inits = append(g.inits, tensor{name: name, dims: append([]int64(nil), dims...), typ: Float, f32: append([]float32(nil), data...)})
	return name
}

// InitInt64 adds an int64 initializer (shapes, axes, pads) and returns its name.
func (g *Graph) InitInt64(name string, dims []int64, data []int64) string {
	if n := numel(dims); n != len(data) {
		panic(fmt.Sprintf("onnx: initializer %s: %d values for shape %v", name, len(data), dims))
	}
	name = g.unique(name)
	g.inits = append(g.inits, tensor{name: name, dims: append([]int64(nil), dims...), typ: Int64, i64: append([]int64(nil), data...)})
	return name
}

// Node adds a node with explicit output names.
func (g *Graph) Node(op string, inputs, outputs []string, attrs ...Attr) {
	for _, o := range outputs {
		g.claim(o)
	}
	g.nodes = append(g.nodes, node{op: op, name: fmt.Sprintf("%s_%d", op, len(g.nodes)), inputs: inputs, outputs: outputs, attrs: attrs})
}

// Op adds a single-output node and returns the generated output name.
func (g *Graph) Op(op string, inputs []string, attrs ...Attr) string {
	out := g.unique(op)
	g.nodes = append(g.nodes, node{op: op, name: fmt.Sprintf("%s_%d", op, len(g.nodes)), inputs: inputs, outputs: []string{out}, attrs: attrs})
	return out
}

func (g *Graph) claim(name string) {
	if g.names[name] {
		panic(fmt.Sprintf("onnx: duplicate value name %q", name))
	}
	g.names[name] = true
}

func (g *Graph) unique(base string) string {
	for {
		g.counter++
		n := fmt.Sprintf("%s_%d", base, g.counter)
		if !g.names[n] {
			g.names[n] = true
			return n
		}
	}
}

func numel(dims []int64) int {
	n := int64(1)
	for _, d := range dims {
		n *= d
	}
	return int(n)
}

// Marshal serialises the graph as an ONNX ModelProto. opset 0 means DefaultOpset.
func (g *Graph) Marshal(opset int) []byte {
	if opset == 0 {
		opset = DefaultOpset
	}
	var graph []byte
	for _, n := range g.nodes {
		graph = protowire.AppendTag(graph, 1, protowire.BytesType)
		graph = protowire.AppendBytes(graph, marshalNode(n))
	}
	graph = appendString(graph, 2, g.Name)
	for _, t := range g.inits {
		graph = protowire.AppendTag(graph, 5, protowire.BytesType)
		graph = protowire.AppendBytes(graph, marshalTensor(t))
	}
	for _, v := range g.inputs {
		graph = protowire.AppendTag(graph, 11, protowire.BytesType)
		graph = protowire.AppendBytes(graph, marshalValueInfo(v))
	}
	for _, v := range g.outputs {
		graph = protowire.AppendTag(graph, 12, protowire.BytesType)
		graph = protowire.AppendBytes(graph, marshalValueInfo(v))
	}

	var m []byte
	m = protowire.AppendTag(m, 1, protowire.VarintType) // ir_version
	m = protowire.AppendVarint(m, 7)
	m = appendString(m, 2, g.Producer)
	m = appendString(m, 3, "1")
	m = protowire.AppendTag(m, 7, protowire.BytesType)
	m = protowire.AppendBytes(m, graph)
	var ops []byte
	ops = appendString(ops, 1, "")
	ops = protowire.AppendTag(ops, 2, protowire.VarintType)
	ops = protowire.AppendVarint(ops, uint64(opset))
	m = protowire.AppendTag(m, 8, protowire.BytesType)
	m = protowire.AppendBytes(m, ops)
	return m
}

func appendString(b []byte, field protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func marshalNode(n node) []byte {
	var b []byte
	for _, in := range n.inputs {
		b = appendString(b, 1, in)
	}
	for _, out := range n.outputs {
		b = appendString(b, 2, out)
	}
	b = appendString(b, 3, n.name)
	b = appendString(b, 4, n.op)
	for _, a := range n.attrs {
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		b = protowire.AppendBytes(b, marshalAttr(a))
	}
	return b
}

func marshalAttr(a Attr) []byte {
	var b []byte
	b = appendString(b, 1, a.name)
	switch a.typ {
	case 1:
		b = protowire.AppendTag(b, 2, protowire.Fixed32Type)
		b = protowire.AppendFixed32(b, math.Float32bits(a.f))
	case 2:
		b = protowire.AppendTag(b, 3, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(a.i))
	case 3:
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendString(b, a.s)
	case 6:
		for _, f := range a.floats {
			b = protowire.AppendTag(b, 7, protowire.Fixed32Type)
			b = protowire.AppendFixed32(b, math.Float32bits(f))
		}
	case 7:
		for _, i := range a.ints {
			b = protowire.AppendTag(b, 8, protowire.VarintType)
			b = protowire.AppendVarint(b, uint64(i))
		}
	}
	b = protowire.AppendTag(b, 20, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(a.typ))
	return b
}

func marshalTensor(t tensor) []byte {
	var b []byte
	for _, d := range t.dims {
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(d))
	}
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(t.typ))
	b = appendString(b, 8, t.name)
	var raw []byte
	switch t.typ {
	case Float:
		raw = make([]byte, 0, 4*len(t.f32))
		for _, f := range t.f32 {
			raw = protowire.AppendFixed32(raw, math.Float32bits(f))
		}
	case Int64:
		raw = make([]byte, 0, 8*len(t.i64))
		for _, i := range t.i64 {
			raw = protowire.AppendFixed64(raw, uint64(i))
		}
	}
	b = protowire.AppendTag(b, 9, protowire.BytesType)
	b = protowire.AppendBytes(b, raw)
	return b
}

func marshalValueInfo(v valueInfo) []byte {
	var shape []byte
	for i, d := range v.dims {
		var dim []byte
		if d >= 0 {
			dim = protowire.AppendTag(dim, 1, protowire.VarintType)
			dim = protowire.AppendVarint(dim, uint64(d))
		} else {
			dim = appendString(dim, 2, fmt.Sprintf("d%d", i))
		}
		shape = protowire.AppendTag(shape, 1, protowire.BytesType)
		shape = protowire.AppendBytes(shape, dim)
	}
	var tt []byte
	tt = protowire.AppendTag(tt, 1, protowire.VarintType)
	tt = protowire.AppendVarint(tt, uint64(v.typ))
	// OpenCV's importer asserts that every value info has a shape field,
	// even an empty (unknown rank) one.
	tt = protowire.AppendTag(tt, 2, protowire.BytesType)
	tt = protowire.AppendBytes(tt, shape)
	var typ []byte
	typ = protowire.AppendTag(typ, 1, protowire.BytesType)
	typ = protowire.AppendBytes(typ, tt)
	var b []byte
	b = appendString(b, 1, v.name)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, typ)
	return b
}
