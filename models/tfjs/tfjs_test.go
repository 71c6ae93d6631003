package tfjs

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t *testing.T, dir, name string, b []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoadGroupsMixedUnaligned(t *testing.T) {
	dir := t.TempDir()
	// uint8 [3] (3 bytes, leaves the next entry unaligned), float32 [2],
	// int32 quantized scalar, uint16 [2], float16 [3], int32 [1]; split
	// over two shards at an odd offset.
	var b []byte
	b = append(b, 0, 1, 255)
	b = binary.LittleEndian.AppendUint32(b, math.Float32bits(1.5))
	b = binary.LittleEndian.AppendUint32(b, math.Float32bits(-2.25))
	b = append(b, 7)
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = binary.LittleEndian.AppendUint16(b, 65535)
	b = binary.LittleEndian.AppendUint16(b, 0x3c00) // 1
	b = binary.LittleEndian.AppendUint16(b, 0xc000) // -2
	b = binary.LittleEndian.AppendUint16(b, 0x0001) // smallest subnormal
	b = binary.LittleEndian.AppendUint32(b, uint32(0xfffffffe))
	writeFile(t, dir, "a.bin", b[:5])
	writeFile(t, dir, "b.bin", b[5:])
	groups := []ManifestGroup{{
		Paths: []string{"a.bin", "b.bin"},
		Weights: []WeightEntry{
			{Name: "u8", Shape: []int{3}, Dtype: "float32", Quantization: &Quantization{Dtype: "uint8", Scale: 0.1, Min: -1}},
			{Name: "f32", Shape: []int{1, 2}, Dtype: "float32"},
			{Name: "i32q", Shape: []int{}, Dtype: "int32", Quantization: &Quantization{Dtype: "uint8", Scale: 1, Min: 3}},
			{Name: "u16", Shape: []int{2}, Dtype: "float32", Quantization: &Quantization{Dtype: "uint16", Scale: 0.5, Min: 2}},
			{Name: "f16", Shape: []int{3}, Dtype: "float32", Quantization: &Quantization{Dtype: "float16"}},
			{Name: "i32", Shape: []int{1}, Dtype: "int32"},
		},
	}}
	got, err := LoadGroups(dir, groups)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]float32{
		"u8":   {float32(0*0.1 - 1), float32(1*0.1 - 1), float32(255*0.1 - 1)},
		"f32":  {1.5, -2.25},
		"i32q": {10},
		"u16":  {2, float32(65535*0.5 + 2)},
		"f16":  {1, -2, float32(math.Ldexp(1, -24))},
		"i32":  {-2},
	}
	for name, w := range want {
		tt := got[name]
		if tt == nil {
			t.Fatalf("%s missing", name)
		}
		if len(tt.Data) != len(w) {
			t.Fatalf("%s: %d values, want %d", name, len(tt.Data), len(w))
		}
		for i := range w {
			if tt.Data[i] != w[i] {
				t.Errorf("%s[%d] = %v, want %v", name, i, tt.Data[i], w[i])
			}
		}
	}
	if got["i32"].Dtype != "int32" {
		t.Errorf("dtype not kept: %q", got["i32"].Dtype)
	}
}

func TestLoadGroupsErrors(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "s.bin", []byte{1, 2, 3})
	cases := []struct {
		name   string
		groups []ManifestGroup
		want   string
	}{
		{"missing shard", []ManifestGroup{{Paths: []string{"nope.bin"}}}, "nope.bin"},
		{"short shard", []ManifestGroup{{Paths: []string{"s.bin"}, Weights: []WeightEntry{{Name: "w", Shape: []int{1}, Dtype: "float32"}}}}, "too short"},
		{"unknown dtype", []ManifestGroup{{Paths: []string{"s.bin"}, Weights: []WeightEntry{{Name: "w", Shape: []int{1}, Dtype: "complex64"}}}}, "unsupported dtype"},
		{"unknown quantization", []ManifestGroup{{Paths: []string{"s.bin"}, Weights: []WeightEntry{{Name: "w", Shape: []int{1}, Dtype: "float32", Quantization: &Quantization{Dtype: "int4"}}}}}, "unsupported quantization"},
		{"trailing bytes", []ManifestGroup{{Paths: []string{"s.bin"}, Weights: []WeightEntry{{Name: "w", Shape: []int{2}, Dtype: "float32", Quantization: &Quantization{Dtype: "uint8", Scale: 1}}}}}, "manifest describes 2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := LoadGroups(dir, c.groups)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
		})
	}
}

func TestLoadWeightsManifest(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "m.bin", []byte{0, 10})
	writeFile(t, dir, "m-weights_manifest.json", []byte(`[{"paths":["m.bin"],"weights":[{"name":"x","shape":[2],"dtype":"float32","quantization":{"dtype":"uint8","scale":0.5,"min":1}}]}]`))
	got, err := LoadWeightsManifest(filepath.Join(dir, "m-weights_manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if x := got["x"]; x == nil || x.Data[0] != 1 || x.Data[1] != 6 {
		t.Fatalf("x = %+v", got["x"])
	}
	if _, err := LoadWeightsManifest(filepath.Join(dir, "absent.json")); err == nil {
		t.Fatal("missing manifest: no error")
	}
}
