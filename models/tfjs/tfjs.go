// Package tfjs reads TF.js weights (a weights manifest and its binary shards)
// into dequantized float32 tensors, as the project's ONNX converters need them.
//
// Decoding follows tfjs-core's io.decodeWeights: shards of a group are
// concatenated, entries follow one another in manifest order without padding,
// and quantized values are q*scale+min computed in float64 then stored as
// float32 (rounded to the nearest integer, half up, for int32 tensors).
package tfjs

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
)

// WeightEntry is one entry of a TF.js weights manifest group.
type WeightEntry struct {
	Name         string        `json:"name"`
	Shape        []int         `json:"shape"`
	Dtype        string        `json:"dtype"`
	Quantization *Quantization `json:"quantization,omitempty"`
}

// Quantization describes how an entry is stored: uint8 or uint16 affine
// quantization (Scale, Min) or float16 (no scale).
type Quantization struct {
	Dtype         string  `json:"dtype"`
	Scale         float64 `json:"scale"`
	Min           float64 `json:"min"`
	OriginalDtype string  `json:"original_dtype"`
}

// ManifestGroup is one group of a weights manifest: shard paths and entries.
type ManifestGroup struct {
	Paths   []string      `json:"paths"`
	Weights []WeightEntry `json:"weights"`
}

// Tensor is a dequantized weight: float32 values (int32 and bool tensors are
// converted to float32 too; Dtype keeps the declared type).
type Tensor struct {
	Name  string
	Shape []int
	Dtype string
	Data  []float32
}

// Size is the number of elements the shape holds.
func (t *Tensor) Size() int { return numel(t.Shape) }

func numel(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

// LoadGroups reads the shard files of the groups (paths relative to dir) and
// decodes every weight in manifest order.
func LoadGroups(dir string, groups []ManifestGroup) (map[string]*Tensor, error) {
	out := map[string]*Tensor{}
	for gi, g := range groups {
		var buf []byte
		for _, p := range g.Paths {
			b, err := os.ReadFile(filepath.Join(dir, p))
			if err != nil {
				return nil, fmt.Errorf("tfjs: read shard of group %d: %w", gi, err)
			}
			buf = append(buf, b...)
		}
		off := 0
		for _, w := range g.Weights {
			t, n, err := decode(w, buf[off:])
			if err != nil {
				return nil, fmt.Errorf("tfjs: group %d (%v): weight %q at byte %d: %w", gi, g.Paths, w.Name, off, err)
			}
			off += n
			if _, dup := out[w.Name]; dup {
				return nil, fmt.Errorf("tfjs: duplicate weight name %q", w.Name)
			}
			out[w.Name] = t
		}
		if off != len(buf) {
			return nil, fmt.Errorf("tfjs: group %d (%v): %d bytes of shards, manifest describes %d", gi, g.Paths, len(buf), off)
		}
	}
	return out, nil
}

// LoadWeightsManifest reads a face-api style *-weights_manifest.json (a JSON
// array of groups); shard paths are relative to the manifest's directory.
func LoadWeightsManifest(path string) (map[string]*Tensor, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tfjs: read manifest: %w", err)
	}
	var groups []ManifestGroup
	if err := json.Unmarshal(b, &groups); err != nil {
		return nil, fmt.Errorf("tfjs: parse manifest %s: %w", path, err)
	}
	return LoadGroups(filepath.Dir(path), groups)
}

// decode decodes one entry from the start of b and returns the bytes used.
func decode(w WeightEntry, b []byte) (*Tensor, int, error) {
	for _, d := range w.Shape {
		if d < 0 {
			return nil, 0, fmt.Errorf("negative dimension in shape %v", w.Shape)
		}
	}
	n := numel(w.Shape)
	t := &Tensor{Name: w.Name, Shape: append([]int(nil), w.Shape...), Dtype: w.Dtype, Data: make([]float32, n)}
	isInt := false
	switch w.Dtype {
	case "float32":
	case "int32":
		isInt = true
	case "bool":
		if w.Quantization != nil {
			return nil, 0, fmt.Errorf("quantized bool tensor")
		}
	default:
		return nil, 0, fmt.Errorf("unsupported dtype %q", w.Dtype)
	}
	short := func(need int) error {
		return fmt.Errorf("shard data too short: need %d bytes, have %d", need, len(b))
	}
	if q := w.Quantization; q != nil {
		switch q.Dtype {
		case "uint8":
			if len(b) < n {
				return nil, 0, short(n)
			}
			for i := 0; i < n; i++ {
				t.Data[i] = affine(float64(b[i]), q, isInt)
			}
			return t, n, nil
		case "uint16":
			if len(b) < 2*n {
				return nil, 0, short(2 * n)
			}
			for i := 0; i < n; i++ {
				t.Data[i] = affine(float64(binary.LittleEndian.Uint16(b[2*i:])), q, isInt)
			}
			return t, 2 * n, nil
		case "float16":
			if len(b) < 2*n {
				return nil, 0, short(2 * n)
			}
			for i := 0; i < n; i++ {
				t.Data[i] = Float16(binary.LittleEndian.Uint16(b[2*i:]))
			}
			return t, 2 * n, nil
		default:
			return nil, 0, fmt.Errorf("unsupported quantization dtype %q", q.Dtype)
		}
	}
	switch w.Dtype {
	case "bool":
		if len(b) < n {
			return nil, 0, short(n)
		}
		for i := 0; i < n; i++ {
			if b[i] != 0 {
				t.Data[i] = 1
			}
		}
		return t, n, nil
	case "int32":
		if len(b) < 4*n {
			return nil, 0, short(4 * n)
		}
		for i := 0; i < n; i++ {
			t.Data[i] = float32(int32(binary.LittleEndian.Uint32(b[4*i:])))
		}
	default:
		if len(b) < 4*n {
			return nil, 0, short(4 * n)
		}
		for i := 0; i < n; i++ {
			t.Data[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
	}
	return t, 4 * n, nil
}

func affine(q float64, p *Quantization, isInt bool) float32 {
	v := q*p.Scale + p.Min
	if isInt {
		return float32(math.Floor(v + 0.5)) // JS Math.round
	}
	return float32(v)
}

// Float16 converts an IEEE 754 half-precision value to float32.
func Float16(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0 && mant == 0:
		return math.Float32frombits(sign)
	case exp == 0: // subnormal: normalise
		e := uint32(127 - 15 + 1)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		mant &= 0x3ff
		return math.Float32frombits(sign | e<<23 | mant<<13)
	case exp == 0x1f:
		return math.Float32frombits(sign | 0xff<<23 | mant<<13)
	default:
		return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
	}
}
