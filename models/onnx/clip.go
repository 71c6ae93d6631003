package onnx

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers of onnx.proto used by the rewriter.
const (
	modelGraph  = 7
	modelOpset  = 8
	opsetDomain = 1
	opsetVer    = 2

	graphNode  = 1
	graphInit  = 5
	graphInput = 11

	nodeInput  = 1
	nodeOutput = 2
	nodeOp     = 4
	nodeAttr   = 5

	attrName = 1
	attrT    = 5

	tensorDims  = 1
	tensorType  = 2
	tensorFloat = 4
	tensorName  = 8
	tensorRaw   = 9

	valueName = 1
)

// field is one protobuf field kept as its raw bytes (tag included) so that
// everything the rewriter does not touch is written back unchanged.
type field struct {
	num protowire.Number
	typ protowire.Type
	val []byte // the value: bytes for BytesType, else the encoded scalar
	raw []byte // tag and value as read
}

func parseFields(b []byte) ([]field, error) {
	var out []field
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return nil, protowire.ParseError(m)
		}
		f := field{num: num, typ: typ, raw: b[:n+m], val: b[n : n+m]}
		if typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(b[n:])
			f.val = v
		}
		out = append(out, f)
		b = b[n+m:]
	}
	return out, nil
}

func bytesField(num protowire.Number, v []byte) []byte {
	b := protowire.AppendTag(nil, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

// ClipStats says what ClipToAttributes changed.
type ClipStats struct {
	Clips     int // Clip nodes rewritten to the attribute form
	Constants int // Constant nodes and initializers no longer read, removed
	OldOpset  int // the default-domain opset the file declared
}

// ClipToAttributes rewrites an ONNX model for readers that know Clip only in
// its opset-6 form, such as OpenCV 4.6's importer: every Clip whose min and
// max are inputs (opset 11 and later) becomes a one-input Clip with min and
// max attributes, the constants that fed only those inputs are removed, and
// the default operator set is declared as opset. The min and max must be
// scalar float constants (initializers or Constant nodes); anything else is
// an error, as is a model with no such Clip. Every other field is written
// back byte for byte, so the graph computes exactly what it did.
func ClipToAttributes(model []byte, opset int) ([]byte, ClipStats, error) {
	var st ClipStats
	top, err := parseFields(model)
	if err != nil {
		return nil, st, fmt.Errorf("read model: %w", err)
	}
	gi := -1
	for i, f := range top {
		if f.num == modelGraph && f.typ == protowire.BytesType {
			gi = i
		}
	}
	if gi < 0 {
		return nil, st, errors.New("read model: no graph")
	}
	graph, err := parseFields(top[gi].val)
	if err != nil {
		return nil, st, fmt.Errorf("read graph: %w", err)
	}

	// Scalar float constants by value name, from initializers and Constant nodes.
	consts := map[string]float32{}
	type nodeInfo struct {
		op      string
		inputs  []string
		outputs []string
		fields  []field
	}
	nodes := map[int]*nodeInfo{}
	for i, f := range graph {
		switch f.num {
		case graphInit:
			tf, err := parseFields(f.val)
			if err != nil {
				return nil, st, fmt.Errorf("read initializer: %w", err)
			}
			if name, v, ok := scalarTensor(tf); ok {
				consts[name] = v
			}
		case graphNode:
			nf, err := parseFields(f.val)
			if err != nil {
				return nil, st, fmt.Errorf("read node: %w", err)
			}
			n := &nodeInfo{fields: nf}
			for _, x := range nf {
				switch x.num {
				case nodeOp:
					n.op = string(x.val)
				case nodeInput:
					n.inputs = append(n.inputs, string(x.val))
				case nodeOutput:
					n.outputs = append(n.outputs, string(x.val))
				}
			}
			nodes[i] = n
			if n.op == "Constant" && len(n.outputs) == 1 {
				for _, x := range nf {
					if x.num != nodeAttr {
						continue
					}
					af, err := parseFields(x.val)
					if err != nil {
						return nil, st, fmt.Errorf("read attribute: %w", err)
					}
					var tensor []byte
					name := ""
					for _, a := range af {
						switch a.num {
						case attrName:
							name = string(a.val)
						case attrT:
							tensor = a.val
						}
					}
					if name == "value" && tensor != nil {
						tf, err := parseFields(tensor)
						if err != nil {
							return nil, st, fmt.Errorf("read constant: %w", err)
						}
						if _, v, ok := scalarTensor(tf); ok {
							consts[n.outputs[0]] = v
						}
					}
				}
			}
		}
	}

	// Rewrite the Clips.
	newNode := map[int][]byte{}
	for i, n := range nodes {
		if n.op != "Clip" || len(n.inputs) <= 1 {
			continue
		}
		var attrs []Attr
		for k, an := range []string{"min", "max"} {
			if k+1 >= len(n.inputs) || n.inputs[k+1] == "" {
				continue
			}
			v, ok := consts[n.inputs[k+1]]
			if !ok {
				return nil, st, fmt.Errorf("Clip %v: %s input %q is not a scalar float constant", n.outputs, an, n.inputs[k+1])
			}
			attrs = append(attrs, Float32(an, v))
		}
		var b []byte
		inputs := 0
		for _, x := range n.fields {
			if x.num == nodeInput {
				inputs++
				if inputs > 1 {
					continue
				}
			}
			b = append(b, x.raw...)
		}
		for _, a := range attrs {
			b = append(b, bytesField(nodeAttr, marshalAttr(a))...)
		}
		newNode[i] = b
		st.Clips++
	}
	if st.Clips == 0 {
		return nil, st, errors.New("no Clip with min/max inputs to rewrite")
	}

	// Values still read by a node (after the rewrite) or by the graph's outputs.
	read := map[string]bool{}
	for i, n := range nodes {
		ins := n.inputs
		if _, ok := newNode[i]; ok {
			ins = ins[:1]
		}
		for _, in := range ins {
			read[in] = true
		}
	}
	for _, f := range graph {
		if f.num == 12 { // graph output
			vf, err := parseFields(f.val)
			if err != nil {
				return nil, st, err
			}
			for _, v := range vf {
				if v.num == valueName {
					read[string(v.val)] = true
				}
			}
		}
	}
	dropped := map[string]bool{}
	var g []byte
	for i, f := range graph {
		switch {
		case newNode[i] != nil:
			g = append(g, bytesField(graphNode, newNode[i])...)
			continue
		case f.num == graphNode && nodes[i].op == "Constant" && len(nodes[i].outputs) == 1 && !read[nodes[i].outputs[0]]:
			if _, ok := consts[nodes[i].outputs[0]]; ok {
				st.Constants++
				continue
			}
		case f.num == graphInit:
			tf, _ := parseFields(f.val)
			if name, _, ok := scalarTensor(tf); ok && !read[name] {
				dropped[name] = true
				st.Constants++
				continue
			}
		case f.num == graphInput:
			// Old exporters list initializers as graph inputs too.
			vf, _ := parseFields(f.val)
			if dropped[valueInfoName(vf)] {
				continue
			}
		}
		g = append(g, f.raw...)
	}

	var out []byte
	for i, f := range top {
		switch {
		case i == gi:
			out = append(out, bytesField(modelGraph, g)...)
		case f.num == modelOpset && f.typ == protowire.BytesType:
			of, err := parseFields(f.val)
			if err != nil {
				return nil, st, fmt.Errorf("read opset: %w", err)
			}
			domain := ""
			for _, x := range of {
				switch x.num {
				case opsetDomain:
					domain = string(x.val)
				case opsetVer:
					v, _ := protowire.ConsumeVarint(x.val)
					if domain == "" {
						st.OldOpset = int(v)
					}
				}
			}
			if domain != "" && domain != "ai.onnx" {
				out = append(out, f.raw...)
				continue
			}
			var ob []byte
			ob = append(ob, bytesField(opsetDomain, []byte(domain))...)
			ob = protowire.AppendTag(ob, opsetVer, protowire.VarintType)
			ob = protowire.AppendVarint(ob, uint64(opset))
			out = append(out, bytesField(modelOpset, ob)...)
		default:
			out = append(out, f.raw...)
		}
	}
	return out, st, nil
}

func valueInfoName(vf []field) string {
	for _, v := range vf {
		if v.num == valueName {
			return string(v.val)
		}
	}
	return ""
}

// scalarTensor reads a float32 tensor with one element (rank 0 or all dims 1).
func scalarTensor(tf []field) (string, float32, bool) {
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
		case tensorDims:
			if x.typ == protowire.VarintType {
				if d, _ := protowire.ConsumeVarint(x.val); d != 1 {
					return "", 0, false
				}
			} else { // packed
				for b := x.val; len(b) > 0; {
					d, n := protowire.ConsumeVarint(b)
					if n < 0 || d != 1 {
						return "", 0, false
					}
					b = b[n:]
				}
			}
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
		return "", 0, false
	}
	switch {
	case len(raw) == 4 && floats == nil:
		return name, math.Float32frombits(binary.LittleEndian.Uint32(raw)), true
	case len(floats) == 1 && raw == nil:
		return name, floats[0], true
	}
	return "", 0, false
}
