package tfgraph

import (
	b64std "encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSamePads(t *testing.T) {
	tests := []struct {
		in, k, s      int
		mode          string
		out, beg, end int
	}{
		{128, 5, 2, "SAME", 64, 1, 2}, // stride 2, even size: extra pad bottom/right
		{128, 3, 1, "SAME", 128, 1, 1},
		{64, 2, 2, "SAME", 32, 0, 0},
		{7, 3, 2, "SAME", 4, 1, 1},
		{9, 3, 2, "VALID", 4, 0, 0},
	}
	for _, tc := range tests {
		out, b, e := samePads(tc.in, tc.k, tc.s, 1, tc.mode)
		if out != tc.out || b != tc.beg || e != tc.end {
			t.Errorf("%+v: got %d %d %d", tc, out, b, e)
		}
	}
}

func TestTranspose(t *testing.T) {
	// HWIO [1,2,2,3] -> OIHW [3,2,1,2]
	data := make([]float64, 12)
	for i := range data {
		data[i] = float64(i)
	}
	out, shape := transpose(data, []int{1, 2, 2, 3}, []int{3, 2, 0, 1})
	if want := []int{3, 2, 1, 2}; !equalInts(shape, want) {
		t.Fatalf("shape %v", shape)
	}
	// out[o,i,0,w] = in[0,w,i,o] = w*6 + i*3 + o
	for o := 0; o < 3; o++ {
		for i := 0; i < 2; i++ {
			for w := 0; w < 2; w++ {
				if got := out[(o*2+i)*2+w]; got != float64(w*6+i*3+o) {
					t.Errorf("out[%d,%d,0,%d] = %v", o, i, w, got)
				}
			}
		}
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestFoldShapeArithmetic(t *testing.T) {
	shape := &value{shape: []int{4}, c: []float64{1, 8, 8, 6}}
	idx := func(v float64) *value { return &value{shape: []int{1}, c: []float64{v}} }
	n := &Node{Op: "StridedSlice", Attr: map[string]*Attr{"shrink_axis_mask": {I: "1"}}}
	v, err := foldStridedSlice(n, []*value{shape, idx(0), idx(1), idx(1)})
	if err != nil || len(v.shape) != 0 || v.c[0] != 1 {
		t.Fatalf("batch = %+v, %v", v, err)
	}
	p, err := foldPack(&Node{Op: "Pack", Attr: map[string]*Attr{}}, []*value{v, {shape: []int{}, c: []float64{-1}}, {shape: []int{}, c: []float64{16}}})
	if err != nil || !equalInts(ints(p.c), []int{1, -1, 16}) {
		t.Fatalf("pack = %+v, %v", p, err)
	}
	if got := resolveShape(ints(p.c), 8*8*6*16/16*16); !equalInts(got, []int{1, 384, 16}) {
		t.Errorf("resolved %v", got)
	}
}

// writeModel writes a tiny graph model: input [1,8,8,3] -> Conv2D 3x3 stride
// 2 SAME (+BiasAdd, Relu6 fused) -> extra op -> output.
func writeModel(t *testing.T, extraOp string) string {
	t.Helper()
	dir := t.TempDir()
	enc := base64Std
	nodes := []map[string]any{
		{"name": "input", "op": "Placeholder", "attr": map[string]any{"shape": map[string]any{"shape": map[string]any{"dim": []any{map[string]any{"size": "-1"}, map[string]any{"size": "8"}, map[string]any{"size": "8"}, map[string]any{"size": "3"}}}}}},
		{"name": "w", "op": "Const"},
		{"name": "b", "op": "Const"},
		{"name": "conv", "op": "_FusedConv2D", "input": []string{"input", "w", "b"}, "attr": map[string]any{
			"strides":   map[string]any{"list": map[string]any{"i": []string{"1", "2", "2", "1"}}},
			"padding":   map[string]any{"s": enc("SAME")},
			"fused_ops": map[string]any{"list": map[string]any{"s": []string{enc("BiasAdd"), enc("Relu6")}}},
		}},
		{"name": "out", "op": extraOp, "input": []string{"conv"}},
	}
	weights := []map[string]any{
		{"name": "w", "shape": []int{3, 3, 3, 4}, "dtype": "float32"},
		{"name": "b", "shape": []int{4}, "dtype": "float32"},
	}
	m := map[string]any{
		"format":          "graph-model",
		"modelTopology":   map[string]any{"node": nodes},
		"weightsManifest": []any{map[string]any{"paths": []string{"m.bin"}, "weights": weights}},
	}
	js, _ := json.Marshal(m)
	path := filepath.Join(dir, "m.json")
	if err := os.WriteFile(path, js, 0o644); err != nil {
		t.Fatal(err)
	}
	bin := make([]byte, 4*(3*3*3*4+4))
	for i := 0; i < len(bin)/4; i++ {
		binary.LittleEndian.PutUint32(bin[4*i:], math.Float32bits(float32(i%7)/10))
	}
	if err := os.WriteFile(filepath.Join(dir, "m.bin"), bin, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestConvertSmallGraph(t *testing.T) {
	b, err := Convert(writeModel(t, "Sigmoid"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{"Conv", "Clip", "Sigmoid", "Transpose", "out", "input"} {
		if !strings.Contains(s, want) {
			t.Errorf("ONNX lacks %q", want)
		}
	}
	if strings.Contains(s, "Relu6") {
		t.Error("Relu6 must be written as Clip")
	}
}

func TestConvertUnsupportedOps(t *testing.T) {
	_, err := Convert(writeModel(t, "TensorArrayV3"), Options{})
	if err == nil || !strings.Contains(err.Error(), "unsupported ops: TensorArrayV3") {
		t.Fatalf("error = %v", err)
	}
}

func TestConvertBadInputShape(t *testing.T) {
	if _, err := Convert(writeModel(t, "Relu"), Options{InputShape: []int{1, -1, 8, 3}}); err == nil {
		t.Fatal("dynamic input shape accepted")
	}
	if _, err := Convert(filepath.Join(t.TempDir(), "missing.json"), Options{}); err == nil {
		t.Fatal("missing model accepted")
	}
}

func TestSupportedOpsListed(t *testing.T) {
	ops := strings.Join(SupportedOps(), ",")
	for _, op := range []string{"_FusedConv2D", "DepthwiseConv2dNative", "Pad", "Mean", "_FusedMatMul", "Prelu"} {
		if !strings.Contains(ops, op) {
			t.Errorf("SupportedOps lacks %s", op)
		}
	}
}

func base64Std(s string) string { return b64std.StdEncoding.EncodeToString([]byte(s)) }
