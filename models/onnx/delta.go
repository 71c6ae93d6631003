package onnx

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sort"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/periocular/atm-agent/models/tfjs"
)

// DeltaMagic starts a weight delta file (ReadDelta).
const DeltaMagic = "ATM-ONNX-DELTA-F16\n"

// Delta is a fine-tuning's change to a model's float initializers, by name.
type Delta map[string][]float32

// ReadDelta parses a weight delta file: DeltaMagic, then for each
// initializer its name (uvarint length, bytes), its element count (uvarint)
// and that many IEEE half-precision values, little-endian. It is what
// scripts/maskft writes: the fine-tuned weights minus the base model's.
func ReadDelta(b []byte) (Delta, error) {
	if !bytes.HasPrefix(b, []byte(DeltaMagic)) {
		return nil, errors.New("weight delta: bad magic")
	}
	b = b[len(DeltaMagic):]
	d := Delta{}
	for len(b) > 0 {
		l, n := protowire.ConsumeVarint(b)
		if n < 0 || l == 0 || l > uint64(len(b)-n) {
			return nil, errors.New("weight delta: truncated name")
		}
		name := string(b[n : n+int(l)])
		b = b[n+int(l):]
		c, n := protowire.ConsumeVarint(b)
		if n < 0 || c == 0 || c > uint64(len(b)-n)/2 {
			return nil, fmt.Errorf("weight delta: %s: truncated values", name)
		}
		b = b[n:]
		if _, dup := d[name]; dup {
			return nil, fmt.Errorf("weight delta: %s listed twice", name)
		}
		v := make([]float32, c)
		for i := range v {
			v[i] = tfjs.Float16(binary.LittleEndian.Uint16(b[2*i:]))
		}
		d[name] = v
		b = b[2*c:]
	}
	if len(d) == 0 {
		return nil, errors.New("weight delta: empty")
	}
	return d, nil
}

// ApplyDelta adds d to the model's float32 initializers of the same names
// and returns the model with those initializers stored as raw data; every
// other byte is written back unchanged, so the result is deterministic.
// Every name in d must be an initializer with exactly as many elements.
func ApplyDelta(model []byte, d Delta) ([]byte, error) {
	top, err := parseFields(model)
	if err != nil {
		return nil, fmt.Errorf("read model: %w", err)
	}
	gi := -1
	for i, f := range top {
		if f.num == modelGraph && f.typ == protowire.BytesType {
			gi = i
		}
	}
	if gi < 0 {
		return nil, errors.New("read model: no graph")
	}
	graph, err := parseFields(top[gi].val)
	if err != nil {
		return nil, fmt.Errorf("read graph: %w", err)
	}
	done := map[string]bool{}
	var g []byte
	for _, f := range graph {
		if f.num != graphInit {
			g = append(g, f.raw...)
			continue
		}
		tf, err := parseFields(f.val)
		if err != nil {
			return nil, fmt.Errorf("read initializer: %w", err)
		}
		name, vals, ok := floatTensor(tf)
		add, want := d[name]
		if !want {
			g = append(g, f.raw...)
			continue
		}
		if !ok {
			return nil, fmt.Errorf("weight delta: initializer %s is not a float32 tensor", name)
		}
		if len(vals) != len(add) {
			return nil, fmt.Errorf("weight delta: initializer %s has %d values, the delta %d", name, len(vals), len(add))
		}
		raw := make([]byte, 4*len(vals))
		for i, v := range vals {
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v+add[i]))
		}
		var t []byte
		for _, x := range tf {
			if x.num == tensorFloat || x.num == tensorRaw {
				continue
			}
			t = append(t, x.raw...)
		}
		t = append(t, bytesField(tensorRaw, raw)...)
		g = append(g, bytesField(graphInit, t)...)
		done[name] = true
	}
	if len(done) != len(d) {
		var missing []string
		for k := range d {
			if !done[k] {
				missing = append(missing, k)
			}
		}
		sort.Strings(missing)
		return nil, fmt.Errorf("weight delta: no initializer named %v", missing)
	}
	var out []byte
	for i, f := range top {
		if i == gi {
			out = append(out, bytesField(modelGraph, g)...)
		} else {
			out = append(out, f.raw...)
		}
	}
	return out, nil
}

// floatTensor reads a float32 tensor's name and values (raw or float_data).
func floatTensor(tf []field) (string, []float32, bool) {
	name := ""
	dtype := uint64(0)
	var raw []byte
	var floats []float32
	for _, x := range tf {
		switch x.num {
		case tensorName:
			name = string(x.val)
		case tensorType:
			dtype, _ = protowire.ConsumeVarint(x.val)
		case tensorRaw:
			raw = x.val
		case tensorFloat:
			if x.typ == protowire.Fixed32Type {
				v, _ := protowire.ConsumeFixed32(x.val)
				floats = append(floats, math.Float32frombits(v))
			} else {
				for b := x.val; len(b) >= 4; b = b[4:] {
					floats = append(floats, math.Float32frombits(binary.LittleEndian.Uint32(b)))
				}
			}
		}
	}
	if dtype != Float {
		return name, nil, false
	}
	if raw != nil {
		if len(raw)%4 != 0 {
			return name, nil, false
		}
		floats = make([]float32, len(raw)/4)
		for i := range floats {
			floats[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		}
	}
	return name, floats, true
}
