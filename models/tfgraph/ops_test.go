package tfgraph

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"
)

// tw is one weight of a test graph.
type tw struct {
	name  string
	shape []int
	data  []float32
}

// writeGraph writes a graph model with the given nodes (Const nodes are
// added for every weight) and returns the model.json path.
func writeGraph(t *testing.T, nodes []map[string]any, weights []tw) string {
	t.Helper()
	dir := t.TempDir()
	var specs []map[string]any
	var bin []byte
	for _, w := range weights {
		nodes = append([]map[string]any{{"name": w.name, "op": "Const"}}, nodes...)
		specs = append(specs, map[string]any{"name": w.name, "shape": w.shape, "dtype": "float32"})
		for _, x := range w.data {
			bin = binary.LittleEndian.AppendUint32(bin, math.Float32bits(x))
		}
	}
	m := map[string]any{
		"format":          "graph-model",
		"modelTopology":   map[string]any{"node": nodes},
		"weightsManifest": []any{map[string]any{"paths": []string{"m.bin"}, "weights": specs}},
	}
	js, _ := json.Marshal(m)
	path := filepath.Join(dir, "m.json")
	if err := os.WriteFile(path, js, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "m.bin"), bin, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func placeholder(dims ...int) map[string]any {
	var d []any
	for _, x := range dims {
		d = append(d, map[string]any{"size": json.Number(itoa(x))})
	}
	return map[string]any{"name": "x", "op": "Placeholder", "attr": map[string]any{"shape": map[string]any{"shape": map[string]any{"dim": d}}}}
}

func itoa(x int) string { b, _ := json.Marshal(x); return string(b) }

func node(name, op string, inputs ...string) map[string]any {
	return map[string]any{"name": name, "op": op, "input": inputs}
}

// hasOp reports whether the ONNX bytes contain a node of op type op
// (NodeProto field 4).
func hasOp(onnx []byte, op string) bool {
	return bytes.Contains(onnx, append([]byte{0x22, byte(len(op))}, op...))
}

// hasFloats reports whether the ONNX bytes contain vs as consecutive
// little-endian float32 (an initializer's raw data).
func hasFloats(onnx []byte, vs ...float32) bool {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return bytes.Contains(onnx, b)
}

func convert(t *testing.T, path string) []byte {
	t.Helper()
	b, err := Convert(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConvertAbsSquareSumRsqrt(t *testing.T) {
	// Abs alone and tf.nn.l2_normalize: x * rsqrt(max(sum(x^2, 1), eps)).
	path := writeGraph(t, []map[string]any{
		placeholder(-1, 6),
		node("a", "Abs", "x"),
		node("sq", "Square", "a"),
		{"name": "sum", "op": "Sum", "input": []string{"sq", "axis"}, "attr": map[string]any{"keep_dims": map[string]any{"b": true}}},
		node("max", "Maximum", "sum", "eps"),
		node("rs", "Rsqrt", "max"),
		node("out", "Mul", "a", "rs"),
	}, []tw{{"axis", []int{}, []float32{1}}, {"eps", []int{}, []float32{1e-10}}})
	b := convert(t, path)
	for _, op := range []string{"Abs", "Mul", "ReduceSum", "Clip", "Pow", "Gemm"} {
		if !hasOp(b, op) {
			t.Errorf("no %s node", op)
		}
	}
	if !hasFloats(b, -0.5) {
		t.Error("Rsqrt must be Pow(x, -0.5)")
	}
	// The [1,1] inverse norm is repeated to [1,6] by a Gemm with six ones.
	if !hasFloats(b, 1, 1, 1, 1, 1, 1) {
		t.Error("no column of ones for the broadcast")
	}
}

func TestConvertBroadcastUnsupported(t *testing.T) {
	path := writeGraph(t, []map[string]any{
		placeholder(-1, 6),
		node("r", "Reshape", "x", "shape"),
		node("out", "Mul", "x", "r"),
	}, []tw{{"shape", []int{2}, []float32{6, 1}}})
	if _, err := Convert(path, Options{}); err == nil {
		t.Fatal("[1,6] x [6,1] accepted")
	}
}

func TestConvertSumAxesNCHW(t *testing.T) {
	// Sum over H,W of an NHWC tensor, kept dims: ReduceSum over NCHW axes 2,3.
	path := writeGraph(t, []map[string]any{
		placeholder(-1, 4, 4, 3),
		{"name": "out", "op": "Sum", "input": []string{"x", "axes"}, "attr": map[string]any{"keep_dims": map[string]any{"b": true}}},
	}, []tw{{"axes", []int{2}, []float32{1, 2}}})
	b := convert(t, path)
	if !hasOp(b, "ReduceSum") || hasOp(b, "ReduceMean") {
		t.Fatal("Sum must be ReduceSum")
	}
	// attribute "axes" = [2,3]: name, then field 8 varints 2 and 3.
	if !bytes.Contains(b, []byte{'a', 'x', 'e', 's', 0x40, 0x02, 0x40, 0x03}) {
		t.Error("axes not remapped to NCHW [2,3]")
	}
}

func TestFusePreluSlimForm(t *testing.T) {
	// relu(x) + (x-|x|)*c  ->  PRelu(x, 2c); and x + (x-|x|)*c -> PRelu(x, 1+2c).
	c := []float32{0.25, -0.5}
	for _, tc := range []struct {
		name  string
		first string
		slope []float32
	}{
		{"relu", "relu", []float32{0.5, -1}},
		{"identity", "x", []float32{1.5, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nodes := []map[string]any{
				placeholder(-1, 4, 4, 2),
				node("abs", "Abs", "x"),
				node("sub", "Sub", "x", "abs"),
				node("mul", "Mul", "sub", "c"),
				node("out", "Add", tc.first, "mul"),
			}
			if tc.first == "relu" {
				nodes = append(nodes, node("relu", "Relu", "x"))
			}
			b := convert(t, writeGraph(t, nodes, []tw{{"c", []int{2}, c}}))
			if !hasOp(b, "PRelu") {
				t.Fatal("not fused to PRelu")
			}
			for _, op := range []string{"Abs", "Sub", "Relu", "Add"} {
				if hasOp(b, op) {
					t.Errorf("%s left in the graph", op)
				}
			}
			if !hasFloats(b, tc.slope...) {
				t.Errorf("slope %v not written", tc.slope)
			}
		})
	}
}

func TestFusePreluNotWhenShared(t *testing.T) {
	// |x| is also a graph output: the chain must stay as written.
	path := writeGraph(t, []map[string]any{
		placeholder(-1, 4, 4, 2),
		node("relu", "Relu", "x"),
		node("abs", "Abs", "x"),
		node("sub", "Sub", "x", "abs"),
		node("mul", "Mul", "sub", "c"),
		node("add", "Add", "relu", "mul"),
		node("out", "Mul", "add", "abs"),
	}, []tw{{"c", []int{2}, []float32{0.25, 0.5}}})
	b := convert(t, path)
	if hasOp(b, "PRelu") || !hasOp(b, "Abs") {
		t.Fatal("fused although |x| has another consumer")
	}
}

func TestFusePreluMaxMinForm(t *testing.T) {
	// max(0,x) + g*min(0,x)  ->  PRelu(x, g).
	g := []float32{0.125, 0.375, -0.25}
	path := writeGraph(t, []map[string]any{
		placeholder(-1, 4, 4, 3),
		node("max", "Maximum", "zero", "x"),
		node("min", "Minimum", "zero2", "x"),
		node("mul", "Mul", "g", "min"),
		node("out", "AddV2", "max", "mul"),
	}, []tw{{"zero", []int{}, []float32{0}}, {"zero2", []int{}, []float32{0}}, {"g", []int{3}, g}})
	b := convert(t, path)
	if !hasOp(b, "PRelu") || hasOp(b, "Clip") || hasOp(b, "Mul") {
		t.Fatal("not fused to a single PRelu")
	}
	if !hasFloats(b, g...) {
		t.Error("slope not written")
	}
	// A non-zero bound is a clamp, not a PReLU.
	path = writeGraph(t, []map[string]any{
		placeholder(-1, 4, 4, 3),
		node("max", "Maximum", "one", "x"),
		node("min", "Minimum", "zero2", "x"),
		node("mul", "Mul", "g", "min"),
		node("out", "AddV2", "max", "mul"),
	}, []tw{{"one", []int{}, []float32{1}}, {"zero2", []int{}, []float32{0}}, {"g", []int{3}, g}})
	if b := convert(t, path); hasOp(b, "PRelu") {
		t.Error("max(1,x) fused as PReLU")
	}
}

func TestMatMulFoldsAffine(t *testing.T) {
	// dense -> *s -> +t (a folded batch norm) becomes one Gemm with scaled
	// weights and bias.
	path := writeGraph(t, []map[string]any{
		placeholder(-1, 2),
		node("mm", "MatMul", "x", "w"),
		node("mul", "Mul", "mm", "s"),
		node("out", "AddV2", "mul", "t"),
	}, []tw{{"w", []int{2, 2}, []float32{1, 2, 3, 4}}, {"s", []int{2}, []float32{10, 100}}, {"t", []int{2}, []float32{0.5, 0.75}}})
	b := convert(t, path)
	if !hasOp(b, "Gemm") || hasOp(b, "Mul") || hasOp(b, "Add") {
		t.Fatal("affine not folded into the Gemm")
	}
	// W^T rows scaled per output: [[1*10, 3*10], [2*100, 4*100]], bias [0.5, 0.75].
	if !hasFloats(b, 10, 30, 200, 400) || !hasFloats(b, 0.5, 0.75) {
		t.Error("folded weights or bias wrong")
	}
}
