// Package tfgraph converts TF.js graph models (model.json with
// modelTopology.node and a weightsManifest, as tfjs-converter writes them) to
// ONNX that OpenCV 4.6's DNN importer runs, in pure Go.
//
// The whole graph is converted to NCHW: the ONNX input of a rank-4 placeholder
// is declared [N,C,H,W], convolution kernels are transposed (HWIO -> OIHW,
// depthwise [kh,kw,C,M] -> [C*M,1,kh,kw] with group=C), and every rank-4
// tensor flows in NCHW. Axes of Concat, Pad, Mean, Softmax and the
// broadcasting constants of element-wise ops are remapped; a Transpose back to
// NHWC is inserted only where a rank-4 tensor leaves the 4-D world (Reshape,
// Squeeze, a rank-4 graph output). Graph outputs therefore have the same shape
// and element order as in TF.js.
//
// Shapes are static: dynamic dimensions (batch -1) are fixed by
// Options.InputShape (default: -1 -> 1), so shape arithmetic (Shape,
// StridedSlice, Pack, ConcatV2 of shapes, ...) is folded to constants at
// conversion time. Bias adds and per-channel scales that follow a
// convolution are folded into its weights.
//
// TF "SAME" padding is written as explicit, possibly asymmetric pads (TF pads
// bottom/right on stride 2). Relu6 and Minimum/Maximum against a scalar
// constant become Clip with min/max attributes: the form OpenCV 4.6 accepts
// (its importer maps Clip to ReLU6 and rejects min/max given as inputs).
//
// Op coverage (dynamic tensors): see SupportedOps. Control flow (Enter,
// Merge, Switch, TensorArray*, NonMaxSuppression: e.g. human-models
// faceboxes) is not supported; Convert returns an error listing every
// unsupported op by name.
package tfgraph

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/periocular/atm-agent/models/tfjs"
)

// Options controls a conversion.
type Options struct {
	// InputShape fixes the input's TF shape (NHWC for images), e.g.
	// [1,256,256,3]. Nil: the placeholder's shape with -1 replaced by 1.
	InputShape []int
	// Outputs lists the TF tensors to expose ("node" or "node:index").
	// Empty: the signature's outputs if the model has one, else every node
	// nobody consumes.
	Outputs []string
	// InputName is the ONNX input name; default "input".
	InputName string
	// OutputNames maps a TF output (as given in Outputs) to its ONNX name;
	// unmapped outputs keep the TF node name.
	OutputNames map[string]string
	// Opset is the ONNX opset written; 0 means onnx.DefaultOpset.
	Opset int
}

// SupportedOps lists the TF ops the converter handles, for documentation and
// error messages. Shape-only ops are folded when their inputs are constant.
func SupportedOps() []string {
	var ops []string
	for op := range handlers {
		ops = append(ops, op)
	}
	for op := range constOnly {
		ops = append(ops, op+" (constant inputs only)")
	}
	sort.Strings(ops)
	return ops
}

// Model is the parsed model.json.
type Model struct {
	Format        string `json:"format"`
	ModelTopology struct {
		Node []*Node `json:"node"`
	} `json:"modelTopology"`
	WeightsManifest []tfjs.ManifestGroup `json:"weightsManifest"`
	Signature       *struct {
		Inputs  map[string]sigEntry `json:"inputs"`
		Outputs map[string]sigEntry `json:"outputs"`
	} `json:"signature"`
}

type sigEntry struct {
	Name string `json:"name"`
}

// Node is one TF graph node.
type Node struct {
	Name  string           `json:"name"`
	Op    string           `json:"op"`
	Input []string         `json:"input"`
	Attr  map[string]*Attr `json:"attr"`
}

// Attr is a TF AttrValue as tfjs-converter serialises it.
type Attr struct {
	S    string      `json:"s"`
	I    json.Number `json:"i"`
	F    json.Number `json:"f"`
	B    bool        `json:"b"`
	Type string      `json:"type"`
	List *struct {
		S []string      `json:"s"`
		I []json.Number `json:"i"`
		F []json.Number `json:"f"`
	} `json:"list"`
	Shape *struct {
		Dim []struct {
			Size json.Number `json:"size"`
		} `json:"dim"`
	} `json:"shape"`
}

// ReadModel parses a model.json file.
func ReadModel(path string) (*Model, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tfgraph: read model: %w", err)
	}
	var m Model
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("tfgraph: parse %s: %w", path, err)
	}
	if len(m.ModelTopology.Node) == 0 {
		return nil, fmt.Errorf("tfgraph: %s: no modelTopology.node (not a graph model?)", path)
	}
	return &m, nil
}

// Ops counts the op types of the model's nodes.
func (m *Model) Ops() map[string]int {
	c := map[string]int{}
	for _, n := range m.ModelTopology.Node {
		c[n.Op]++
	}
	return c
}

// Convert reads model.json and its weight shards and returns ONNX bytes.
func Convert(modelJSONPath string, opts Options) ([]byte, error) {
	m, err := ReadModel(modelJSONPath)
	if err != nil {
		return nil, err
	}
	w, err := tfjs.LoadGroups(filepath.Dir(modelJSONPath), m.WeightsManifest)
	if err != nil {
		return nil, fmt.Errorf("tfgraph: weights of %s: %w", modelJSONPath, err)
	}
	b, err := ConvertModel(m, w, opts, strings.TrimSuffix(filepath.Base(modelJSONPath), ".json"))
	if err != nil {
		return nil, fmt.Errorf("tfgraph: %s: %w", modelJSONPath, err)
	}
	return b, nil
}

// ConvertModel converts a graph already in memory (nodes and the constants'
// values by node name) to ONNX bytes: the path for models that arrive in
// another container than model.json (models/tflite).
func ConvertModel(m *Model, w map[string]*tfjs.Tensor, opts Options, name string) ([]byte, error) {
	g, err := build(m, w, opts, name)
	if err != nil {
		return nil, err
	}
	g.FuseClamps()
	return g.Marshal(opts.Opset), nil
}

// StringAttr is a string attribute (base64, as tfjs-converter writes it).
func StringAttr(s string) *Attr { return &Attr{S: base64.StdEncoding.EncodeToString([]byte(s))} }

// IntsAttr is a list-of-ints attribute.
func IntsAttr(v ...int) *Attr {
	a := &Attr{}
	a.List = &struct {
		S []string      `json:"s"`
		I []json.Number `json:"i"`
		F []json.Number `json:"f"`
	}{}
	for _, x := range v {
		a.List.I = append(a.List.I, json.Number(strconv.Itoa(x)))
	}
	return a
}

// StringsAttr is a list-of-strings attribute (each base64).
func StringsAttr(v ...string) *Attr {
	a := IntsAttr()
	for _, x := range v {
		a.List.S = append(a.List.S, base64.StdEncoding.EncodeToString([]byte(x)))
	}
	return a
}

func (a *Attr) str() string {
	if a == nil {
		return ""
	}
	b, err := decodeB64(a.S)
	if err != nil {
		return a.S
	}
	return b
}

func (a *Attr) ints() []int {
	if a == nil || a.List == nil {
		return nil
	}
	out := make([]int, len(a.List.I))
	for i, v := range a.List.I {
		x, _ := v.Int64()
		out[i] = int(x)
	}
	return out
}

func (a *Attr) strs() []string {
	if a == nil || a.List == nil {
		return nil
	}
	out := make([]string, len(a.List.S))
	for i, v := range a.List.S {
		s, err := decodeB64(v)
		if err != nil {
			s = v
		}
		out[i] = s
	}
	return out
}

func (a *Attr) int() int {
	if a == nil || a.I == "" {
		return 0
	}
	x, _ := strconv.ParseInt(string(a.I), 10, 64)
	return int(x)
}

func (a *Attr) float() float64 {
	if a == nil || a.F == "" {
		return 0
	}
	x, _ := strconv.ParseFloat(string(a.F), 64)
	return x
}

func numel(s []int) int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}

func f32(v []float64) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = float32(x)
	}
	return out
}

func i64s(v []int) []int64 {
	out := make([]int64, len(v))
	for i, x := range v {
		out[i] = int64(x)
	}
	return out
}

func isScalarLike(s []int) bool { return numel(s) == 1 }
