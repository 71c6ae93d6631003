// Package standin writes tiny stand-ins for the original project's two
// models, in the original files' formats and under their names, so that the
// project's Caffe and Torch paths run in tests without the real files
// (which cannot be had here):
//
//   - deploy.prototxt + res10_300x300_ssd_iter_140000.caffemodel: a Caffe
//     SSD with the res10 face detector's input ("data", 1x3x300x300, fed
//     BGR minus the mean 104,177,123) and output ("detection_out", a
//     DetectionOutput layer of [1,1,N,7] rows: image, label, confidence,
//     x0, y0, x1, y1 normalised), built from the layer types res10 ends
//     with (Convolution, ReLU, Pooling, Permute, Flatten, PriorBox,
//     Reshape, Softmax, DetectionOutput);
//   - nn4.small2.v1.t7: a Torch7 nn.Sequential with OpenFace nn4.small2.v1's
//     contract (96x96 RGB scaled by 1/255 in, a 128-d L2-normalised
//     template out), ending as nn4.small2.v1 does (SpatialConvolutionMM,
//     ReLU, SpatialAveragePooling, View, Linear, Normalize).
//
// They prove that files of these formats load, run and are decoded, not
// accuracy: the detector is not a face detector. It fires where the image
// differs from flat gray (128,128,128): its score for each cell of a 10x10
// grid over the 300x300 input is the mean absolute deviation from gray over
// the 3x3 cells around it, and its box is that cell's 90x90 prior, unmoved
// (the location outputs are zero). A picture pasted on a gray canvas over
// exactly 3x3 cells (Canvas) therefore gives one box, exactly the picture's
// rectangle, so a test knows where the face must be found. The embedder is
// a fixed random projection of the crop downsampled to 3x8x8, each row of
// the projection zero-mean per colour channel: the same crop gives the same
// template (also darker or brighter), different crops different ones.
//
// Everything is written by this package's own code (protowire for the
// caffemodel, the Torch7 File serialisation for the .t7); nothing binary is
// committed. The package is pure Go.
package standin

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/periocular/atm-agent/models"
)

// The original files' names: the manifest entries are the ones an operator
// writes for the real files.
const (
	Res10Prototxt   = "deploy.prototxt"
	Res10Caffemodel = "res10_300x300_ssd_iter_140000.caffemodel"
	OpenFaceT7      = "nn4.small2.v1.t7"

	Res10Name    = "res10-ssd"
	OpenFaceName = "openface-nn4-small2-v1"
)

// The stand-in detector's geometry, in network input pixels (300x300,
// stretched from the image): a Grid x Grid lattice of Cell-pixel cells,
// each with one Prior x Prior box centred on it.
const (
	NetSide = 300
	Grid    = 10
	Cell    = NetSide / Grid
	Prior   = 3 * Cell
	// Gray is the background the detector ignores.
	Gray = 128
)

// Score weights of the detector: the face logit is ScoreGain x D -
// ScoreBias for D the mean over a prior's 3x3 cells of the absolute
// deviation from gray (0..255) weighted per channel by ChannelWeights (B,
// G, R: unequal, so that feeding the colours in the wrong order changes the
// score); the background logit is 0. Flat gray scores sigmoid(-2) = 0.12,
// below the pipeline's 0.3 gate; a photo's D of 30..80 scores 0.73..1.
const (
	ScoreGain = 0.1
	ScoreBias = 2.0
)

// ChannelWeights weigh the deviation from gray of the B, G and R channels.
var ChannelWeights = [3]float64{0.5, 0.3, 0.2}

// Score is the detector's score for a flat patch of colour b, g, r that
// covers a prior's 3x3 cells exactly, when the image is fed as res10 is
// (BGR, mean 104,177,123 subtracted, scale 1).
func Score(b, g, r uint8) float64 {
	var d float64
	for i, v := range []uint8{b, g, r} {
		d += ChannelWeights[i] * math.Abs(float64(v)-Gray)
	}
	return 1 / (1 + math.Exp(-(ScoreGain*d - ScoreBias)))
}

// Res10Entry is the manifest entry of the res10 SSD detector, as an operator
// writes it for the real files (checksums and sizes left empty).
func Res10Entry() models.Model {
	return models.Model{
		Name: Res10Name, Task: models.TaskDetector, Format: models.FormatCaffe,
		File: Res10Caffemodel, Config: Res10Prototxt,
		Input: models.Input{Width: 300, Height: 300, Layout: "NCHW", Color: "BGR",
			Mean: []float64{104, 177, 123}, Scale: models.PerChannel{1}, Resize: "stretch"},
		Outputs:    []models.Output{{Name: "detection_out", Shape: []int{1, 1, -1, 7}}},
		Decode:     "opencv-ssd",
		License:    "operator-provided",
		Provenance: "OpenCV face detector sample model (res10 300x300 SSD, Caffe)",
	}
}

// OpenFaceEntry is the manifest entry of OpenFace nn4.small2.v1, as an
// operator writes it for the real file (checksum and size left empty).
func OpenFaceEntry() models.Model {
	return models.Model{
		Name: OpenFaceName, Task: models.TaskEmbedder, Format: models.FormatTorch,
		File: OpenFaceT7,
		Input: models.Input{Width: 96, Height: 96, Layout: "NCHW", Color: "RGB",
			Mean: []float64{0}, Scale: models.PerChannel{1.0 / 255}, Resize: "stretch"},
		Decode:     "embedding",
		Embedding:  &models.Embedding{Dim: 128, Metric: "euclidean", Crop: "original"},
		License:    "operator-provided",
		Provenance: "OpenFace nn4.small2.v1 (Torch7)",
	}
}

// Write writes both stand-ins into dir under the original files' names and
// returns their manifest entries with checksums and sizes filled in.
func Write(dir string) (detector, embedder models.Model, err error) {
	detector, embedder = Res10Entry(), OpenFaceEntry()
	for _, f := range []struct {
		name string
		b    []byte
		sha  *string
		size *int64
	}{
		{Res10Prototxt, []byte(Res10Deploy()), &detector.ConfigSHA256, &detector.ConfigSize},
		{Res10Caffemodel, Res10Weights(), &detector.SHA256, &detector.Size},
		{OpenFaceT7, OpenFace(), &embedder.SHA256, &embedder.Size},
	} {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.b, 0o644); err != nil {
			return models.Model{}, models.Model{}, err
		}
		sum := sha256.Sum256(f.b)
		*f.sha, *f.size = hex.EncodeToString(sum[:]), int64(len(f.b))
	}
	return detector, embedder, nil
}

// WriteModelsDir writes both stand-ins and a manifest.yaml naming them as
// the pipeline into dir: a models dir for --models-dir.
func WriteModelsDir(dir string) (*models.Manifest, error) {
	det, emb, err := Write(dir)
	if err != nil {
		return nil, err
	}
	man := &models.Manifest{Schema: 1, Pipeline: models.Pipeline{Detector: det.Name, Embedder: emb.Name},
		Models: []models.Model{det, emb}}
	if err := man.Validate(); err != nil {
		return nil, err
	}
	return man, man.Save(filepath.Join(dir, "manifest.yaml"))
}

// Canvas says where to paste a picture on a w x h gray canvas so that the
// stand-in detector's box is exactly its rectangle: over the 3x3 cells from
// cell (col, row) of the grid (0..Grid-3 each). The rectangle is in image
// pixels, x0, y0, x1, y1; w and h should be multiples of Grid.
func Canvas(w, h, col, row int) [4]int {
	cw, ch := w/Grid, h/Grid
	return [4]int{col * cw, row * ch, (col + 3) * cw, (row + 3) * ch}
}

// caffeLayer is one layer of the stand-in detector: its prototxt text and
// its weights.
type caffeLayer struct {
	name, typ   string
	bottom, top []string
	param       string // the layer's parameter block, "" for none
	blobs       []blob
}

type blob struct {
	shape []int64
	data  []float32
}

func res10Layers() []caffeLayer {
	// Deviation from gray per channel: the input is pixel - mean, so
	// pixel - 128 = input + (mean - 128); +/- pairs then ReLU give
	// |pixel - 128| per channel.
	mean := [3]float32{104, 177, 123}
	devW, devB := make([]float32, 6*3), make([]float32, 6)
	for c := 0; c < 3; c++ {
		devW[(2*c)*3+c], devB[2*c] = 1, mean[c]-Gray
		devW[(2*c+1)*3+c], devB[2*c+1] = -1, Gray-mean[c]
	}
	var absW []float32
	for _, w := range ChannelWeights {
		absW = append(absW, float32(w), float32(w))
	}
	ninth := make([]float32, 9)
	for i := range ninth {
		ninth[i] = 1. / 9
	}
	perm := "permute_param {\n    order: 0\n    order: 2\n    order: 3\n    order: 1\n  }"
	flat := "flatten_param {\n    axis: 1\n  }"
	return []caffeLayer{
		{"gray_dev", "Convolution", []string{"data"}, []string{"gray_dev"},
			"convolution_param {\n    num_output: 6\n    kernel_size: 1\n  }",
			[]blob{{[]int64{6, 3, 1, 1}, devW}, {[]int64{6}, devB}}},
		{"gray_dev_relu", "ReLU", []string{"gray_dev"}, []string{"gray_dev"}, "", nil},
		{"gray_absdev", "Convolution", []string{"gray_dev"}, []string{"gray_absdev"},
			"convolution_param {\n    num_output: 1\n    bias_term: false\n    kernel_size: 1\n  }",
			[]blob{{[]int64{1, 6, 1, 1}, absW}}},
		{"cell_pool", "Pooling", []string{"gray_absdev"}, []string{"cell_pool"},
			fmt.Sprintf("pooling_param {\n    pool: AVE\n    kernel_size: %d\n    stride: %d\n  }", Cell, Cell), nil},
		{"window", "Convolution", []string{"cell_pool"}, []string{"window"},
			"convolution_param {\n    num_output: 1\n    bias_term: false\n    pad: 1\n    kernel_size: 3\n  }",
			[]blob{{[]int64{1, 1, 3, 3}, ninth}}},
		{"window_mbox_loc", "Convolution", []string{"window"}, []string{"window_mbox_loc"},
			"convolution_param {\n    num_output: 4\n    kernel_size: 1\n  }",
			[]blob{{[]int64{4, 1, 1, 1}, make([]float32, 4)}, {[]int64{4}, make([]float32, 4)}}},
		{"window_mbox_loc_perm", "Permute", []string{"window_mbox_loc"}, []string{"window_mbox_loc_perm"}, perm, nil},
		{"mbox_loc", "Flatten", []string{"window_mbox_loc_perm"}, []string{"mbox_loc"}, flat, nil},
		{"window_mbox_conf", "Convolution", []string{"window"}, []string{"window_mbox_conf"},
			"convolution_param {\n    num_output: 2\n    kernel_size: 1\n  }",
			[]blob{{[]int64{2, 1, 1, 1}, []float32{0, ScoreGain}}, {[]int64{2}, []float32{0, -ScoreBias}}}},
		{"window_mbox_conf_perm", "Permute", []string{"window_mbox_conf"}, []string{"window_mbox_conf_perm"}, perm, nil},
		{"mbox_conf", "Flatten", []string{"window_mbox_conf_perm"}, []string{"mbox_conf"}, flat, nil},
		{"mbox_priorbox", "PriorBox", []string{"window", "data"}, []string{"mbox_priorbox"},
			fmt.Sprintf("prior_box_param {\n    min_size: %d\n    clip: false\n    variance: 0.1\n    variance: 0.1\n    variance: 0.2\n    variance: 0.2\n    step: %d\n    offset: 0.5\n  }", Prior, Cell), nil},
		{"mbox_conf_reshape", "Reshape", []string{"mbox_conf"}, []string{"mbox_conf_reshape"},
			"reshape_param {\n    shape {\n      dim: 0\n      dim: -1\n      dim: 2\n    }\n  }", nil},
		{"mbox_conf_softmax", "Softmax", []string{"mbox_conf_reshape"}, []string{"mbox_conf_softmax"},
			"softmax_param {\n    axis: 2\n  }", nil},
		{"mbox_conf_flatten", "Flatten", []string{"mbox_conf_softmax"}, []string{"mbox_conf_flatten"}, flat, nil},
		// res10's own DetectionOutput but for keep_top_k: the best box only
		// (the cells around a picture score too, lower).
		{"detection_out", "DetectionOutput", []string{"mbox_loc", "mbox_conf_flatten", "mbox_priorbox"}, []string{"detection_out"},
			"include {\n    phase: TEST\n  }\n  detection_output_param {\n    num_classes: 2\n    share_location: true\n    background_label_id: 0\n" +
				"    nms_param {\n      nms_threshold: 0.45\n      top_k: 400\n    }\n    code_type: CENTER_SIZE\n    keep_top_k: 1\n    confidence_threshold: 0.01\n  }", nil},
	}
}

// Res10Deploy is the stand-in detector's deploy.prototxt.
func Res10Deploy() string {
	var b strings.Builder
	b.WriteString("name: \"res10-standin\"\n")
	fmt.Fprintf(&b, "input: \"data\"\ninput_shape {\n  dim: 1\n  dim: 3\n  dim: %d\n  dim: %d\n}\n", NetSide, NetSide)
	for _, l := range res10Layers() {
		fmt.Fprintf(&b, "\nlayer {\n  name: %q\n  type: %q\n", l.name, l.typ)
		for _, s := range l.bottom {
			fmt.Fprintf(&b, "  bottom: %q\n", s)
		}
		for _, s := range l.top {
			fmt.Fprintf(&b, "  top: %q\n", s)
		}
		if l.param != "" {
			fmt.Fprintf(&b, "  %s\n", l.param)
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// Field numbers of caffe.proto.
const (
	netName       = 1 // NetParameter.name
	netLayer      = 100
	layerName     = 1 // LayerParameter
	layerType     = 2
	layerBottom   = 3
	layerTop      = 4
	layerBlobs    = 7
	blobData      = 5 // BlobProto, packed float
	blobShape     = 7
	blobShapeDims = 1 // BlobShape, packed int64
)

// Res10Weights is the stand-in detector's caffemodel: a binary
// NetParameter whose layers carry their names, types, connections and
// weights (BlobProto shape + data), as Caffe writes them.
func Res10Weights() []byte {
	var net []byte
	net = appendBytes(net, netName, []byte("res10-standin"))
	for _, l := range res10Layers() {
		var lb []byte
		lb = appendBytes(lb, layerName, []byte(l.name))
		lb = appendBytes(lb, layerType, []byte(l.typ))
		for _, s := range l.bottom {
			lb = appendBytes(lb, layerBottom, []byte(s))
		}
		for _, s := range l.top {
			lb = appendBytes(lb, layerTop, []byte(s))
		}
		for _, bl := range l.blobs {
			var data, dims, shape, bp []byte
			for _, f := range bl.data {
				data = protowire.AppendFixed32(data, math.Float32bits(f))
			}
			for _, d := range bl.shape {
				dims = protowire.AppendVarint(dims, uint64(d))
			}
			shape = appendBytes(shape, blobShapeDims, dims)
			bp = appendBytes(bp, blobData, data)
			bp = appendBytes(bp, blobShape, shape)
			lb = appendBytes(lb, layerBlobs, bp)
		}
		net = appendBytes(net, netLayer, lb)
	}
	return net
}

func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

// Torch7 File serialisation (torch7 File.lua, binary mode, little-endian,
// 8-byte longs): every value is a type tag (int32) and its payload; tables
// and torch objects carry an object index, torch objects a version and a
// class name, tensors their sizes, strides, offset and storage.
const (
	t7Nil     = 0
	t7Number  = 1
	t7String  = 2
	t7Table   = 3
	t7Torch   = 4
	t7Boolean = 5
)

type t7Writer struct {
	b    []byte
	next int32 // object index, as File.lua counts: 1, 2, ... in writing order
}

type t7Value func(w *t7Writer)

// t7Field is a table entry: a string key (a module's field) or, with key
// "", the number idx (a list's element).
type t7Field struct {
	key string
	idx int
	v   t7Value
}

func (w *t7Writer) i32(v int32)   { w.b = binary.LittleEndian.AppendUint32(w.b, uint32(v)) }
func (w *t7Writer) i64(v int64)   { w.b = binary.LittleEndian.AppendUint64(w.b, uint64(v)) }
func (w *t7Writer) f64(v float64) { w.b = binary.LittleEndian.AppendUint64(w.b, math.Float64bits(v)) }
func (w *t7Writer) raw(s string)  { w.i32(int32(len(s))); w.b = append(w.b, s...) }

func (w *t7Writer) object(class string) {
	w.i32(t7Torch)
	w.next++
	w.i32(w.next)
	w.raw("V 1")
	w.raw(class)
}

func t7Num(f float64) t7Value { return func(w *t7Writer) { w.i32(t7Number); w.f64(f) } }
func t7Str(s string) t7Value  { return func(w *t7Writer) { w.i32(t7String); w.raw(s) } }
func t7Bool(b bool) t7Value {
	return func(w *t7Writer) {
		w.i32(t7Boolean)
		if b {
			w.i32(1)
		} else {
			w.i32(0)
		}
	}
}

func t7Tab(fields ...t7Field) t7Value {
	return func(w *t7Writer) {
		w.i32(t7Table)
		w.next++
		w.i32(w.next)
		w.i32(int32(len(fields)))
		for _, f := range fields {
			if f.key != "" {
				t7Str(f.key)(w)
			} else {
				t7Num(float64(f.idx))(w)
			}
			f.v(w)
		}
	}
}

// t7Tensor is a contiguous torch.FloatTensor over its own FloatStorage; no
// shape is an empty tensor (no storage), as a module's output is saved.
func t7Tensor(shape []int, data []float32) t7Value {
	return func(w *t7Writer) {
		w.object("torch.FloatTensor")
		w.i32(int32(len(shape)))
		stride := make([]int64, len(shape))
		s := int64(1)
		for i := len(shape) - 1; i >= 0; i-- {
			stride[i] = s
			s *= int64(shape[i])
		}
		for _, d := range shape {
			w.i64(int64(d))
		}
		for _, st := range stride {
			w.i64(st)
		}
		w.i64(1) // storage offset, 1-based
		if len(shape) == 0 {
			w.i32(t7Nil)
			return
		}
		w.object("torch.FloatStorage")
		w.i64(int64(len(data)))
		for _, f := range data {
			w.b = binary.LittleEndian.AppendUint32(w.b, math.Float32bits(f))
		}
	}
}

func t7LongStorage(v ...int64) t7Value {
	return func(w *t7Writer) {
		w.object("torch.LongStorage")
		w.i64(int64(len(v)))
		for _, x := range v {
			w.i64(x)
		}
	}
}

// t7Module is an nn module: its class and its fields, with the empty
// output and gradInput and the evaluation flag every saved module has.
func t7Module(class string, fields ...t7Field) t7Value {
	fields = append(fields,
		t7Field{key: "output", v: t7Tensor(nil, nil)},
		t7Field{key: "gradInput", v: t7Tensor(nil, nil)},
		t7Field{key: "train", v: t7Bool(false)},
		t7Field{key: "_type", v: t7Str("torch.FloatTensor")})
	return func(w *t7Writer) {
		w.object(class)
		t7Tab(fields...)(w)
	}
}

func num(key string, f float64) t7Field { return t7Field{key: key, v: t7Num(f)} }

// OpenFace embedder geometry: a 6x6 stride-6 per-channel mean (96 -> 16),
// a 2x2 average pool (16 -> 8), 3x8x8 = 192 values projected to 128.
const (
	ofConv = 6
	ofPool = 2
	ofSide = 96 / ofConv / ofPool
	ofIn   = 3 * ofSide * ofSide
	ofDim  = 128
	ofSeed = 0x0f_ace // the projection's fixed seed
)

// openFaceWeights are the stand-in embedder's convolution (SpatialConvolutionMM
// layout, [out, in*kH*kW]: output channel c averages input channel c over
// the kernel) and projection ([128, 192]: Gaussian rows, each zero-mean over
// every colour channel's 64 values, as View flattens C, H, W, so that a
// uniform brightness or colour offset does not move the template).
func openFaceWeights() (convW, linW []float32) {
	k := ofConv * ofConv
	convW = make([]float32, 3*3*k)
	for c := 0; c < 3; c++ {
		for i := 0; i < k; i++ {
			convW[c*3*k+c*k+i] = 1 / float32(k)
		}
	}
	rng := rand.New(rand.NewPCG(ofSeed, ofSeed))
	linW = make([]float32, ofDim*ofIn)
	plane := ofSide * ofSide
	for r := 0; r < ofDim; r++ {
		row := linW[r*ofIn : (r+1)*ofIn]
		for c := 0; c < 3; c++ {
			p := row[c*plane : (c+1)*plane]
			var mean float64
			v := make([]float64, plane)
			for i := range v {
				v[i] = rng.NormFloat64()
				mean += v[i]
			}
			mean /= float64(plane)
			for i := range p {
				p[i] = float32((v[i] - mean) / math.Sqrt(ofIn))
			}
		}
	}
	return convW, linW
}

// OpenFaceReference computes in Go what the stand-in embedder computes, on
// its input blob (3x96x96, planes R, G, B, scaled to 0..1): the reference a
// test compares OpenCV's forward of the .t7 with.
func OpenFaceReference(blob []float32) []float32 {
	_, linW := openFaceWeights()
	const in = 96
	x := make([]float64, ofIn)
	n := float64(ofConv * ofPool * ofConv * ofPool)
	for c := 0; c < 3; c++ {
		for y := 0; y < in; y++ {
			for xx := 0; xx < in; xx++ {
				// A 6x6 mean then a 2x2 mean is a 12x12 mean (ReLU is a
				// no-op on 0..1).
				x[c*ofSide*ofSide+(y/(ofConv*ofPool))*ofSide+xx/(ofConv*ofPool)] += float64(blob[c*in*in+y*in+xx]) / n
			}
		}
	}
	out := make([]float32, ofDim)
	var norm float64
	for r := 0; r < ofDim; r++ {
		var s float64
		for i, v := range x {
			s += float64(linW[r*ofIn+i]) * v
		}
		out[r] = float32(s)
		norm += s * s
	}
	norm = math.Sqrt(norm)
	for i := range out {
		out[i] = float32(float64(out[i]) / norm)
	}
	return out
}

// OpenFace is the stand-in embedder's .t7 file.
func OpenFace() []byte {
	k := ofConv * ofConv
	convW, linW := openFaceWeights()
	seq := t7Module("nn.Sequential", t7Field{key: "modules", v: t7Tab(
		t7Field{idx: 1, v: t7Module("nn.SpatialConvolutionMM",
			num("nInputPlane", 3), num("nOutputPlane", 3),
			num("kW", ofConv), num("kH", ofConv), num("dW", ofConv), num("dH", ofConv),
			num("padW", 0), num("padH", 0),
			t7Field{key: "weight", v: t7Tensor([]int{3, 3 * k}, convW)},
			t7Field{key: "bias", v: t7Tensor([]int{3}, make([]float32, 3))})},
		t7Field{idx: 2, v: t7Module("nn.ReLU",
			num("threshold", 0), num("val", 0), t7Field{key: "inplace", v: t7Bool(false)})},
		t7Field{idx: 3, v: t7Module("nn.SpatialAveragePooling",
			num("kW", ofPool), num("kH", ofPool), num("dW", ofPool), num("dH", ofPool),
			num("padW", 0), num("padH", 0),
			t7Field{key: "ceil_mode", v: t7Bool(false)},
			t7Field{key: "count_include_pad", v: t7Bool(true)},
			t7Field{key: "divide", v: t7Bool(true)})},
		t7Field{idx: 4, v: t7Module("nn.View",
			t7Field{key: "size", v: t7LongStorage(ofIn)}, num("numElements", ofIn), num("numInputDims", 3))},
		t7Field{idx: 5, v: t7Module("nn.Linear",
			t7Field{key: "weight", v: t7Tensor([]int{ofDim, ofIn}, linW)},
			t7Field{key: "bias", v: t7Tensor([]int{ofDim}, make([]float32, ofDim))})},
		t7Field{idx: 6, v: t7Module("nn.Normalize", num("p", 2), num("eps", 1e-10))},
	)})
	w := &t7Writer{}
	seq(w)
	return w.b
}
