package onnx

import (
	"bytes"
	"encoding/binary"
	"math"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

// deltaFile encodes entries as scripts/maskft/delta.py does: each value is
// given as its binary16 bits.
func deltaFile(entries ...any) []byte {
	b := []byte(DeltaMagic)
	for i := 0; i < len(entries); i += 2 {
		name, halves := entries[i].(string), entries[i+1].([]uint16)
		b = protowire.AppendVarint(b, uint64(len(name)))
		b = append(b, name...)
		b = protowire.AppendVarint(b, uint64(len(halves)))
		for _, h := range halves {
			b = binary.LittleEndian.AppendUint16(b, h)
		}
	}
	return b
}

func initializers(t *testing.T, model []byte) map[string][]float32 {
	t.Helper()
	top, err := parseFields(model)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]float32{}
	for _, f := range top {
		if f.num != modelGraph {
			continue
		}
		graph, err := parseFields(f.val)
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range graph {
			if g.num == graphInit {
				tf, _ := parseFields(g.val)
				if name, v, ok := floatTensor(tf); ok {
					out[name] = v
				}
			}
		}
	}
	return out
}

// deltaModel's initializers are named w_1, b_2 (float32) and shape_3 (int64).
func deltaModel() []byte {
	g := NewGraph("delta")
	x := g.Input("x", 1, 2)
	w := g.Init("w", []int64{2}, []float32{1, 2})
	b := g.Init("b", []int64{2}, []float32{3, 4})
	g.InitInt64("shape", []int64{2}, []int64{1, 2})
	y := g.Op("Mul", []string{x, w})
	g.Node("Add", []string{y, b}, []string{"out"})
	g.Output("out", 1, 2)
	return g.Marshal(9)
}

func TestApplyDelta(t *testing.T) {
	model := deltaModel()
	d, err := ReadDelta(deltaFile("w_1", []uint16{0x3800, 0xb400})) // +0.5, -0.25
	if err != nil {
		t.Fatal(err)
	}
	out, err := ApplyDelta(model, d)
	if err != nil {
		t.Fatal(err)
	}
	got := initializers(t, out)
	if w := got["w_1"]; len(w) != 2 || w[0] != 1.5 || w[1] != 1.75 {
		t.Fatalf("w = %v, want [1.5 1.75]", w)
	}
	if b := got["b_2"]; len(b) != 2 || b[0] != 3 || b[1] != 4 {
		t.Fatalf("b = %v, want it unchanged", b)
	}
	// Everything but the changed initializer is written back byte for byte.
	for _, part := range [][]byte{[]byte("Mul"), []byte("shape_3"), []byte("out")} {
		if !bytes.Contains(out, part) {
			t.Fatalf("output lost %q", part)
		}
	}
	// Negative and subnormal halves widen exactly.
	if d, err := ReadDelta(deltaFile("b_2", []uint16{0x8001, 0xc000})); err != nil || d["b_2"][0] != -float32(math.Ldexp(1, -24)) || d["b_2"][1] != -2 {
		t.Fatalf("halves read as %v (%v)", d["b_2"], err)
	}
	again, err := ApplyDelta(model, d)
	if err != nil || !bytes.Equal(again, out) {
		t.Fatal("applying the same delta twice gave different bytes")
	}
	if len(out) != len(model) {
		t.Fatalf("size %d, want %d (same tensors, raw data)", len(out), len(model))
	}
}

func TestApplyDeltaRefuses(t *testing.T) {
	model := deltaModel()
	for name, c := range map[string]struct {
		file []byte
		want string
	}{
		"bad magic":    {[]byte("not a delta"), "bad magic"},
		"empty":        {[]byte(DeltaMagic), "empty"},
		"truncated":    {deltaFile("w_1", []uint16{0x3800, 0x3800})[:len(DeltaMagic)+5], "truncated"},
		"twice":        {deltaFile("w_1", []uint16{0, 0}, "w_1", []uint16{0, 0}), "twice"},
		"unknown name": {deltaFile("w_1", []uint16{0, 0}, "nope", []uint16{0}), "no initializer named [nope]"},
		"wrong count":  {deltaFile("w_1", []uint16{0, 0, 0}), "has 2 values, the delta 3"},
		"int64 tensor": {deltaFile("shape_3", []uint16{0, 0}), "not a float32 tensor"},
	} {
		t.Run(name, func(t *testing.T) {
			d, err := ReadDelta(c.file)
			if err == nil {
				_, err = ApplyDelta(model, d)
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want %q", err, c.want)
			}
		})
	}
}
