package tflite

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/periocular/atm-agent/models/tfgraph"
)

// A tiny model written with the flatbuffers library in the layout of
// tensorflow/lite/schema/schema.fbs, as TOCO writes a TF-Slim network:
// conv + bias, PReLU as relu(x) + a/2 (x - |x|), depthwise conv with a
// fused RELU6, reshape to [batch, 12].

type tTensor struct {
	name  string
	shape []int32
	typ   byte
	data  []byte // constant, or nil
	quant bool
}

type tOp struct {
	code     int32
	in, out  []int32
	optType  byte
	optional func(b *flatbuffers.Builder) flatbuffers.UOffsetT
}

func f32bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

func i32bytes(v []int32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(x))
	}
	return b
}

func i32vec(b *flatbuffers.Builder, v []int32) flatbuffers.UOffsetT {
	b.StartVector(4, len(v), 4)
	for i := len(v) - 1; i >= 0; i-- {
		b.PrependInt32(v[i])
	}
	return b.EndVector(len(v))
}

func offVec(b *flatbuffers.Builder, v []flatbuffers.UOffsetT) flatbuffers.UOffsetT {
	b.StartVector(4, len(v), 4)
	for i := len(v) - 1; i >= 0; i-- {
		b.PrependUOffsetT(v[i])
	}
	return b.EndVector(len(v))
}

func writeModel(tensors []tTensor, ops []tOp, inputs, outputs []int32) []byte {
	b := flatbuffers.NewBuilder(1024)
	var codes []int32
	codeIdx := map[int32]int32{}
	for _, o := range ops {
		if _, ok := codeIdx[o.code]; !ok {
			codeIdx[o.code] = int32(len(codes))
			codes = append(codes, o.code)
		}
	}
	// buffers: 0 is the empty sentinel
	var bufs []flatbuffers.UOffsetT
	b.StartObject(1)
	bufs = append(bufs, b.EndObject())
	bufIdx := make([]uint32, len(tensors))
	for i, t := range tensors {
		if t.data == nil {
			continue
		}
		d := b.CreateByteVector(t.data)
		b.StartObject(1)
		b.PrependUOffsetTSlot(0, d, 0)
		bufIdx[i] = uint32(len(bufs))
		bufs = append(bufs, b.EndObject())
	}
	var tens []flatbuffers.UOffsetT
	for i, t := range tensors {
		name := b.CreateString(t.name)
		shape := i32vec(b, t.shape)
		var q flatbuffers.UOffsetT
		if t.quant {
			b.StartVector(4, 1, 4)
			b.PrependFloat32(0.5)
			sc := b.EndVector(1)
			b.StartObject(4)
			b.PrependUOffsetTSlot(2, sc, 0)
			q = b.EndObject()
		}
		b.StartObject(5)
		b.PrependUOffsetTSlot(0, shape, 0)
		b.PrependByteSlot(1, t.typ, 0)
		b.PrependUint32Slot(2, bufIdx[i], 0)
		b.PrependUOffsetTSlot(3, name, 0)
		if q != 0 {
			b.PrependUOffsetTSlot(4, q, 0)
		}
		tens = append(tens, b.EndObject())
	}
	var opOffs []flatbuffers.UOffsetT
	for _, o := range ops {
		var opt flatbuffers.UOffsetT
		if o.optional != nil {
			opt = o.optional(b)
		}
		in, out := i32vec(b, o.in), i32vec(b, o.out)
		b.StartObject(5)
		b.PrependUint32Slot(0, uint32(codeIdx[o.code]), 0)
		b.PrependUOffsetTSlot(1, in, 0)
		b.PrependUOffsetTSlot(2, out, 0)
		b.PrependByteSlot(3, o.optType, 0)
		if opt != 0 {
			b.PrependUOffsetTSlot(4, opt, 0)
		}
		opOffs = append(opOffs, b.EndObject())
	}
	tv, ov := offVec(b, tens), offVec(b, opOffs)
	iv, outv := i32vec(b, inputs), i32vec(b, outputs)
	b.StartObject(5)
	b.PrependUOffsetTSlot(0, tv, 0)
	b.PrependUOffsetTSlot(1, iv, 0)
	b.PrependUOffsetTSlot(2, outv, 0)
	b.PrependUOffsetTSlot(3, ov, 0)
	sub := b.EndObject()
	var codeOffs []flatbuffers.UOffsetT
	for _, c := range codes {
		b.StartObject(4)
		dep := c
		if dep > 127 {
			dep = 127
		}
		b.PrependByteSlot(0, byte(dep), 0)
		b.PrependInt32Slot(2, 1, 0)
		b.PrependInt32Slot(3, c, 0)
		codeOffs = append(codeOffs, b.EndObject())
	}
	cv := offVec(b, codeOffs)
	sv := offVec(b, []flatbuffers.UOffsetT{sub})
	bv := offVec(b, bufs)
	desc := b.CreateString("test model")
	b.StartObject(5)
	b.PrependUint32Slot(0, 3, 0)
	b.PrependUOffsetTSlot(1, cv, 0)
	b.PrependUOffsetTSlot(2, sv, 0)
	b.PrependUOffsetTSlot(3, desc, 0)
	b.PrependUOffsetTSlot(4, bv, 0)
	b.FinishWithFileIdentifier(b.EndObject(), []byte("TFL3"))
	return b.FinishedBytes()
}

func convOptions(depthwise bool, padding byte, stride, act int32) func(*flatbuffers.Builder) flatbuffers.UOffsetT {
	return func(b *flatbuffers.Builder) flatbuffers.UOffsetT {
		if depthwise {
			b.StartObject(7)
			b.PrependByteSlot(0, padding, 0)
			b.PrependInt32Slot(1, stride, 0)
			b.PrependInt32Slot(2, stride, 0)
			b.PrependInt32Slot(3, 1, 0)
			b.PrependByteSlot(4, byte(act), 0)
			return b.EndObject()
		}
		b.StartObject(6)
		b.PrependByteSlot(0, padding, 0)
		b.PrependInt32Slot(1, stride, 0)
		b.PrependInt32Slot(2, stride, 0)
		b.PrependByteSlot(3, byte(act), 0)
		return b.EndObject()
	}
}

func noActivation(b *flatbuffers.Builder) flatbuffers.UOffsetT {
	b.StartObject(1)
	return b.EndObject()
}

type tinyNet struct {
	w, bias, alphaHalf, dw, dbias []float32
}

func newTinyNet(seed uint64) tinyNet {
	r := rand.New(rand.NewPCG(seed, 1))
	f := func(n int, s float64) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32((r.Float64()*2 - 1) * s)
		}
		return v
	}
	return tinyNet{w: f(3*3*3*2, 0.5), bias: f(3, 0.2), alphaHalf: f(3, 0.2), dw: f(3*3*3, 0.6), dbias: f(3, 0.3)}
}

// model writes the net for a batch of n.
func (tn tinyNet) model(n int32, reshapeOp bool) []byte {
	ts := []tTensor{
		{name: "input", shape: []int32{n, 5, 5, 2}},
		{name: "conv/weights", shape: []int32{3, 3, 3, 2}, data: f32bytes(tn.w)},
		{name: "conv/bias", shape: []int32{3}, data: f32bytes(tn.bias)},
		{name: "conv/out", shape: []int32{n, 5, 5, 3}},
		{name: "prelu/relu", shape: []int32{n, 5, 5, 3}},
		{name: "prelu/abs", shape: []int32{n, 5, 5, 3}},
		{name: "prelu/sub", shape: []int32{n, 5, 5, 3}},
		{name: "prelu/alpha_half", shape: []int32{3}, data: f32bytes(tn.alphaHalf)},
		{name: "prelu/mul", shape: []int32{n, 5, 5, 3}},
		{name: "prelu/add", shape: []int32{n, 5, 5, 3}},
		{name: "dw/weights", shape: []int32{1, 3, 3, 3}, data: f32bytes(tn.dw)},
		{name: "dw/bias", shape: []int32{3}, data: f32bytes(tn.dbias)},
		{name: "dw/out", shape: []int32{n, 2, 2, 3}},
		{name: "shape", shape: []int32{2}, typ: 2, data: i32bytes([]int32{n, 12})},
		{name: "embeddings", shape: []int32{n, 12}},
	}
	ops := []tOp{
		{code: OpConv2D, in: []int32{0, 1, 2}, out: []int32{3}, optType: optConv2D, optional: convOptions(false, 0, 1, 0)},
		{code: OpRelu, in: []int32{3}, out: []int32{4}},
		{code: OpAbs, in: []int32{3}, out: []int32{5}},
		{code: OpSub, in: []int32{3, 5}, out: []int32{6}, optType: optSub, optional: noActivation},
		{code: OpMul, in: []int32{7, 6}, out: []int32{8}, optType: optMul, optional: noActivation},
		{code: OpAdd, in: []int32{4, 8}, out: []int32{9}, optType: optAdd, optional: noActivation},
		{code: OpDepthwiseConv, in: []int32{9, 10, 11}, out: []int32{12}, optType: optDepthwise, optional: convOptions(true, 1, 2, 3)},
		{code: OpReshape, in: []int32{12, 13}, out: []int32{14}},
	}
	if reshapeOp {
		return writeModel(ts, ops, []int32{0}, []int32{14})
	}
	return writeModel(ts, ops, []int32{0}, []int32{12})
}

// reference computes the net in float64, NHWC, batch 1.
func (tn tinyNet) reference(x []float32) []float64 {
	at := func(y, xx, c int) float64 {
		if y < 0 || y >= 5 || xx < 0 || xx >= 5 {
			return 0
		}
		return float64(x[(y*5+xx)*2+c])
	}
	p := make([]float64, 5*5*3)
	for y := 0; y < 5; y++ {
		for xx := 0; xx < 5; xx++ {
			for o := 0; o < 3; o++ {
				s := float64(tn.bias[o])
				for ky := 0; ky < 3; ky++ {
					for kx := 0; kx < 3; kx++ {
						for c := 0; c < 2; c++ {
							s += float64(tn.w[((o*3+ky)*3+kx)*2+c]) * at(y+ky-1, xx+kx-1, c)
						}
					}
				}
				if s < 0 {
					s *= 2 * float64(tn.alphaHalf[o])
				}
				p[(y*5+xx)*3+o] = s
			}
		}
	}
	out := make([]float64, 2*2*3)
	for y := 0; y < 2; y++ {
		for xx := 0; xx < 2; xx++ {
			for c := 0; c < 3; c++ {
				s := float64(tn.dbias[c])
				for ky := 0; ky < 3; ky++ {
					for kx := 0; kx < 3; kx++ {
						s += float64(tn.dw[(ky*3+kx)*3+c]) * p[((2*y+ky)*5+2*xx+kx)*3+c]
					}
				}
				out[(y*2+xx)*3+c] = math.Min(math.Max(s, 0), 6)
			}
		}
	}
	return out
}

func TestReadFields(t *testing.T) {
	m, err := Read(newTinyNet(1).model(2, true))
	if err != nil {
		t.Fatal(err)
	}
	if m.Version != 3 || m.Description != "test model" || len(m.Tensors) != 15 || len(m.Ops) != 8 {
		t.Fatalf("read %+v", m)
	}
	dw := m.Ops[6]
	if dw.Code != OpDepthwiseConv || dw.Options.Padding != 1 || dw.Options.StrideH != 2 || dw.Options.Activation != 3 || dw.Options.DepthMultiplier != 1 {
		t.Errorf("depthwise op read as %+v", dw)
	}
	if s, err := m.Tensors[13].Int32s(); err != nil || len(s) != 2 || s[0] != 2 || s[1] != 12 {
		t.Errorf("reshape target %v %v", s, err)
	}
	if _, err := m.Tensors[13].Float32s(); err == nil {
		t.Error("an int32 tensor decoded as float32")
	}
}

func TestConvertRefuses(t *testing.T) {
	tn := newTinyNet(2)
	good := tn.model(1, true)
	if _, err := Read(good[:len(good)/2]); err == nil {
		t.Error("half a model read without error")
	}
	if _, err := Read([]byte("not a model at all")); err == nil || !strings.Contains(err.Error(), "TFL3") {
		t.Errorf("junk: %v", err)
	}
	// An op the converter does not know (MEAN, code 40) is named.
	m, _ := Read(good)
	m.Ops[7].Code = 40
	if _, _, err := m.Graph(); err == nil || !strings.Contains(err.Error(), "builtin operator 40") {
		t.Errorf("unknown op: %v", err)
	}
	// A convolution without its filter, or any op without its input.
	for _, c := range []struct{ op, in int }{{0, 1}, {6, 0}, {1, 0}} {
		m, _ := Read(good)
		m.Ops[c.op].Inputs[c.in] = -1
		if _, _, err := m.Graph(); err == nil || !strings.Contains(err.Error(), "missing") {
			t.Errorf("op %d without input %d: %v", c.op, c.in, err)
		}
	}
	// Quantised models are refused, not converted to garbage.
	ts := []tTensor{{name: "input", shape: []int32{1, 2}, quant: true}, {name: "y", shape: []int32{1, 2}}}
	q := writeModel(ts, []tOp{{code: OpRelu, in: []int32{0}, out: []int32{1}}}, []int32{0}, []int32{1})
	if _, err := Convert(q, tfgraph.Options{}); err == nil || !strings.Contains(err.Error(), "float32") {
		t.Errorf("quantised input: %v", err)
	}
}

// TestReadDamaged: every truncation and many byte flips of a model give an
// error or a model, never a panic.
func TestReadDamaged(t *testing.T) {
	good := newTinyNet(3).model(2, true)
	for n := 0; n < len(good); n++ {
		if m, err := Read(good[:n]); err == nil {
			if _, _, err := m.Graph(); err != nil {
				continue
			}
		}
	}
	r := rand.New(rand.NewPCG(5, 6))
	bad := make([]byte, len(good))
	for k := 0; k < 3000; k++ {
		copy(bad, good)
		for j := 0; j < 1+r.IntN(4); j++ {
			bad[r.IntN(len(bad))] = byte(r.IntN(256))
		}
		if m, err := Read(bad); err == nil {
			_, _, _ = m.Graph()
		}
	}
}
