// Package tflite reads TensorFlow Lite flatbuffer models (the subset a
// float32 face network uses) and turns them into the TF graph form that
// models/tfgraph converts to ONNX for OpenCV 4.6, which has no TFLite
// importer of its own. Build-time code: the daemon links none of it.
//
// The reader follows the TFLite schema (tensorflow/lite/schema/schema.fbs):
// Model.operator_codes, .subgraphs[0] (tensors, inputs, outputs,
// operators), .buffers; every offset and length is checked against the file,
// so a truncated or hostile file gives an error, never a panic.
package tflite

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// TensorType is a TFLite tensor element type.
type TensorType uint8

// The element types this reader knows (schema.fbs TensorType).
const (
	Float32 TensorType = 0
	Float16 TensorType = 1
	Int32   TensorType = 2
	Uint8   TensorType = 3
	Int64   TensorType = 4
	Int8    TensorType = 9
)

func (t TensorType) String() string {
	switch t {
	case Float32:
		return "float32"
	case Float16:
		return "float16"
	case Int32:
		return "int32"
	case Uint8:
		return "uint8"
	case Int64:
		return "int64"
	case Int8:
		return "int8"
	}
	return fmt.Sprintf("type%d", uint8(t))
}

// Tensor is one tensor of the subgraph.
type Tensor struct {
	Name      string
	Shape     []int
	Type      TensorType
	Data      []byte // the constant's bytes (little endian); nil for activations
	Quantized bool   // has quantisation parameters (scale or zero point)
}

// Op is one operator: its builtin code, tensor indices (-1: optional input
// left out) and its options table.
type Op struct {
	Code    int // BuiltinOperator
	Custom  string
	Inputs  []int
	Outputs []int
	Options Options
}

// Options are the builtin options the converter reads (zero when absent).
type Options struct {
	Type            int // BuiltinOptions union type
	Padding         int // 0 SAME, 1 VALID
	StrideW         int
	StrideH         int
	DilationW       int
	DilationH       int
	DepthMultiplier int
	Activation      int // fused activation: 0 none, 1 RELU, 3 RELU6
	NewShape        []int
}

// Builtin operator codes used by the converter (schema.fbs BuiltinOperator).
const (
	OpAdd           = 0
	OpConv2D        = 3
	OpDepthwiseConv = 4
	OpMul           = 18
	OpRelu          = 19
	OpRelu6         = 21
	OpReshape       = 22
	OpSub           = 41
	OpPrelu         = 54
	OpAbs           = 101
)

// Model is the first subgraph of a TFLite file.
type Model struct {
	Version     int
	Description string
	Tensors     []Tensor
	Inputs      []int
	Outputs     []int
	Ops         []Op
}

var errRange = errors.New("offset out of range")

// fb reads a flatbuffer; every accessor panics with errRange on a bad
// offset and Read recovers it into an error.
type fb []byte

func (f fb) check(p, n int) {
	if p < 0 || n < 0 || p > len(f) || n > len(f)-p {
		panic(errRange)
	}
}

func (f fb) u8(p int) int  { f.check(p, 1); return int(f[p]) }
func (f fb) u16(p int) int { f.check(p, 2); return int(binary.LittleEndian.Uint16(f[p:])) }
func (f fb) u32(p int) int { f.check(p, 4); return int(binary.LittleEndian.Uint32(f[p:])) }
func (f fb) i32(p int) int { f.check(p, 4); return int(int32(binary.LittleEndian.Uint32(f[p:]))) }
func (f fb) ref(p int) int { q := p + f.u32(p); f.check(q, 0); return q }
func (f fb) root() int     { return f.ref(0) }

// field returns the position of field i of the table at t, or 0 if absent.
func (f fb) field(t, i int) int {
	vt := t - f.i32(t)
	vsz := f.u16(vt)
	if 4+2*i+2 > vsz {
		return 0
	}
	o := f.u16(vt + 4 + 2*i)
	if o == 0 {
		return 0
	}
	f.check(t+o, 1)
	return t + o
}

// vec returns the start and length of the vector in field i (elem bytes each).
func (f fb) vec(t, i, elem int) (int, int) {
	p := f.field(t, i)
	if p == 0 {
		return 0, 0
	}
	v := f.ref(p)
	n := f.u32(v)
	if n > (len(f)-v-4)/max(elem, 1) {
		panic(errRange)
	}
	return v + 4, n
}

func (f fb) str(t, i int) string {
	s, n := f.vec(t, i, 1)
	if s == 0 {
		return ""
	}
	return string(f[s : s+n])
}

func (f fb) int32Field(t, i, def int) int {
	if p := f.field(t, i); p != 0 {
		return f.i32(p)
	}
	return def
}

func (f fb) u8Field(t, i, def int) int {
	if p := f.field(t, i); p != 0 {
		return f.u8(p)
	}
	return def
}

func (f fb) ints(t, i int) []int {
	s, n := f.vec(t, i, 4)
	out := make([]int, n)
	for k := range out {
		out[k] = f.i32(s + 4*k)
	}
	return out
}

// tables returns the positions of the tables in the vector of field i.
func (f fb) tables(t, i int) []int {
	s, n := f.vec(t, i, 4)
	out := make([]int, n)
	for k := range out {
		out[k] = f.ref(s + 4*k)
	}
	return out
}

// Read parses a TFLite model.
func Read(b []byte) (m *Model, err error) {
	if len(b) < 8 || string(b[4:8]) != "TFL3" {
		return nil, fmt.Errorf("tflite: not a TFLite model (no TFL3 identifier)")
	}
	defer func() {
		if r := recover(); r != nil {
			if r != errRange {
				panic(r)
			}
			m, err = nil, fmt.Errorf("tflite: corrupt model: %w", errRange)
		}
	}()
	return read(fb(b))
}

func read(f fb) (*Model, error) {
	root := f.root()
	m := &Model{Version: f.int32Field(root, 0, 0), Description: f.str(root, 3)}
	var codes []int
	var customs []string
	for _, t := range f.tables(root, 1) {
		code := f.int32Field(t, 3, 0)
		if dep := f.u8Field(t, 0, 0); code == 0 && dep != 0 && dep != 127 {
			code = dep // files before builtin_code existed
		}
		codes = append(codes, code)
		customs = append(customs, f.str(t, 1))
	}
	subs := f.tables(root, 2)
	if len(subs) != 1 {
		return nil, fmt.Errorf("tflite: %d subgraphs: only single-subgraph models are supported", len(subs))
	}
	bufs := f.tables(root, 4)
	g := subs[0]
	for k, t := range f.tables(g, 0) {
		tn := Tensor{Name: f.str(t, 3), Shape: f.ints(t, 0), Type: TensorType(f.u8Field(t, 1, 0))}
		if q := f.field(t, 4); q != 0 {
			qt := f.ref(q)
			_, ns := f.vec(qt, 2, 4)
			_, nz := f.vec(qt, 3, 8)
			tn.Quantized = ns > 0 || nz > 0
		}
		bi := f.int32Field(t, 2, 0)
		if bi < 0 || bi >= len(bufs) && bi != 0 {
			return nil, fmt.Errorf("tflite: tensor %d (%s): buffer %d of %d", k, tn.Name, bi, len(bufs))
		}
		if bi > 0 {
			bt := bufs[bi]
			s, n := f.vec(bt, 0, 1)
			if n == 0 && f.field(bt, 1) != 0 {
				return nil, fmt.Errorf("tflite: tensor %s: data stored outside the flatbuffer (offset/size buffers) is not supported", tn.Name)
			}
			if n > 0 {
				tn.Data = f[s : s+n]
			}
		}
		m.Tensors = append(m.Tensors, tn)
	}
	m.Inputs, m.Outputs = f.ints(g, 1), f.ints(g, 2)
	for k, o := range f.tables(g, 3) {
		ci := f.int32Field(o, 0, 0)
		if ci < 0 || ci >= len(codes) {
			return nil, fmt.Errorf("tflite: operator %d: opcode index %d of %d", k, ci, len(codes))
		}
		op := Op{Code: codes[ci], Custom: customs[ci], Inputs: f.ints(o, 1), Outputs: f.ints(o, 2)}
		for _, i := range append(append([]int{}, op.Inputs...), op.Outputs...) {
			if i < -1 || i >= len(m.Tensors) {
				return nil, fmt.Errorf("tflite: operator %d: tensor index %d of %d", k, i, len(m.Tensors))
			}
		}
		op.Options.Type = f.u8Field(o, 3, 0)
		if p := f.field(o, 4); p != 0 {
			readOptions(f, f.ref(p), &op.Options)
		}
		m.Ops = append(m.Ops, op)
	}
	for _, i := range append(append([]int{}, m.Inputs...), m.Outputs...) {
		if i < 0 || i >= len(m.Tensors) {
			return nil, fmt.Errorf("tflite: graph input/output tensor %d of %d", i, len(m.Tensors))
		}
	}
	return m, nil
}

// The BuiltinOptions union types the reader decodes.
const (
	optConv2D    = 1
	optDepthwise = 2
	optAdd       = 11
	optReshape   = 17
	optMul       = 21
	optSub       = 28
)

func readOptions(f fb, t int, o *Options) {
	switch o.Type {
	case optConv2D:
		o.Padding, o.StrideW, o.StrideH = f.u8Field(t, 0, 0), f.int32Field(t, 1, 1), f.int32Field(t, 2, 1)
		o.Activation = f.u8Field(t, 3, 0)
		o.DilationW, o.DilationH = f.int32Field(t, 4, 1), f.int32Field(t, 5, 1)
	case optDepthwise:
		o.Padding, o.StrideW, o.StrideH = f.u8Field(t, 0, 0), f.int32Field(t, 1, 1), f.int32Field(t, 2, 1)
		o.DepthMultiplier, o.Activation = f.int32Field(t, 3, 0), f.u8Field(t, 4, 0)
		o.DilationW, o.DilationH = f.int32Field(t, 5, 1), f.int32Field(t, 6, 1)
	case optAdd, optMul, optSub:
		o.Activation = f.u8Field(t, 0, 0)
	case optReshape:
		o.NewShape = f.ints(t, 0)
	}
}

// Float32s decodes a float32 tensor's constant data.
func (t *Tensor) Float32s() ([]float32, error) {
	if t.Type != Float32 {
		return nil, fmt.Errorf("tensor %s: %s, want float32", t.Name, t.Type)
	}
	if t.Quantized {
		return nil, fmt.Errorf("tensor %s: quantised tensors are not supported", t.Name)
	}
	if len(t.Data) != 4*numel(t.Shape) {
		return nil, fmt.Errorf("tensor %s: %d bytes for shape %v", t.Name, len(t.Data), t.Shape)
	}
	out := make([]float32, len(t.Data)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:]))
	}
	return out, nil
}

// Int32s decodes an int32 tensor's constant data.
func (t *Tensor) Int32s() ([]int, error) {
	if t.Type != Int32 {
		return nil, fmt.Errorf("tensor %s: %s, want int32", t.Name, t.Type)
	}
	if len(t.Data) != 4*numel(t.Shape) {
		return nil, fmt.Errorf("tensor %s: %d bytes for shape %v", t.Name, len(t.Data), t.Shape)
	}
	out := make([]int, len(t.Data)/4)
	for i := range out {
		out[i] = int(int32(binary.LittleEndian.Uint32(t.Data[4*i:])))
	}
	return out, nil
}

func numel(s []int) int {
	n := 1
	for _, d := range s {
		if d < 0 || d > 0 && n > math.MaxInt32/d {
			return -1 // dynamic, or too large for any file
		}
		n *= d
	}
	return n
}
