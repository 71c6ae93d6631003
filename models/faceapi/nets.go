// Package faceapi converts the networks of the npm package
// @vladmandic/face-api (TF.js weights-manifest models) to ONNX graphs that
// OpenCV 4.6 DNN runs, and decodes their outputs. It is pure Go.
//
// Every graph takes one NCHW float32 input named "input": RGB (not BGR),
// values 0..255, at the fixed size given below. The network's own
// normalisation is inside the graph, exactly as face-api applies it:
//
//	tiny_face_detector  (x - [117.001,114.697,97.404]) / 255
//	ssd_mobilenetv1     x/127.5 - 1
//	face_landmark_68    (x - [122.782,117.001,104.298]) / 255
//	face_recognition    (x - [122.782,117.001,104.298]) / 255
//
// Resizing, letterboxing and colour conversion are the caller's job.
package faceapi

import (
	"fmt"
	"strconv"

	"github.com/periocular/atm-agent/models/onnx"
)

// Input sizes (square side in pixels) of the converted networks.
const (
	TinyFaceDetectorDefaultSize = 416
	SSDMobilenetV1Size          = 512
	FaceLandmark68Size          = 112
	FaceRecognitionSize         = 150
)

// Graph input and output names.
const (
	InputName = "input"
	// TinyOutput is [1, 5*5, S/32, S/32]: for anchor a, channels a*5+0..4
	// are tx, ty, tw, th and the objectness logit (see DecodeTinyFaceDetector).
	TinyOutput = "output"
	// SSDBoxEncodings is [1, 5118, 4] (ty, tx, th, tw per anchor, TF order).
	SSDBoxEncodings = "box_encodings"
	// SSDClassLogits is [1, 5118, 3] (background, face, unused logits).
	SSDClassLogits = "class_logits"
	// LandmarkOutput is [1, 136]: x0,y0,x1,y1,... relative to the 112 input.
	LandmarkOutput = "landmarks"
	// DescriptorOutput is [1, 128], the face descriptor (euclidean metric).
	DescriptorOutput = "descriptor"
)

func newBuilder(pkgDir, model, graph string, size int) (*builder, value, error) {
	w, err := loadModel(pkgDir, model)
	if err != nil {
		return nil, value{}, err
	}
	b := &builder{g: onnx.NewGraph(graph), w: w}
	in := b.g.Input(InputName, 1, 3, int64(size), int64(size))
	return b, value{in, 3, size, size}, nil
}

func (b *builder) output(x value, name string, dims ...int64) {
	b.g.Node("Identity", []string{x.name}, []string{name})
	b.g.Output(name, dims...)
}

// TinyFaceDetector converts tiny_face_detector at the default 416 input.
func TinyFaceDetector(pkgDir string) ([]byte, error) {
	return TinyFaceDetectorSize(pkgDir, TinyFaceDetectorDefaultSize)
}

// TinyFaceDetectorSize converts tiny_face_detector for a square input side
// that is a multiple of 32 (face-api's rule), e.g. 160, 224, 320, 416, 608.
func TinyFaceDetectorSize(pkgDir string, size int) ([]byte, error) {
	if size < 64 || size%32 != 0 {
		return nil, fmt.Errorf("faceapi: tiny_face_detector input size %d is not a multiple of 32 (>= 64)", size)
	}
	b, x, err := newBuilder(pkgDir, "tiny_face_detector_model", "tiny_face_detector", size)
	if err != nil {
		return nil, err
	}
	x = b.normalizeInput(x, [3]float32{117.001, 114.697, 97.404}, 255)
	// face-api runMobilenet with isFirstLayerConv2d: conv0 is VALID.
	x = b.conv(x, "conv0/filters", "conv0/bias", 1, false)
	x = b.leaky(x)
	for i := 1; i <= 5; i++ {
		x = b.pool("MaxPool", x, 2, 2, true)
		// tinyYolov2 depthwiseSeparableConv: pad 1 on every side, then VALID.
		x = b.separablePadded(x, "conv"+strconv.Itoa(i))
		x = b.leaky(x)
	}
	x = b.pool("MaxPool", x, 2, 1, true)
	x = b.conv(x, "conv8/filters", "conv8/bias", 1, false)
	b.output(x, TinyOutput, 1, int64(x.c), int64(x.h), int64(x.w))
	return b.finish()
}

// separablePadded is tinyYolov2's separable conv: explicit 1-pixel zero pad
// on all sides, then a VALID 3x3 separable conv and bias.
func (b *builder) separablePadded(x value, prefix string) value {
	d := b.dims(prefix + "/depthwise_filter")
	if len(d) != 4 || d[2] != x.c {
		b.fail(fmt.Errorf("%s: depthwise shape %v on %d channels", prefix, d, x.c))
		return x
	}
	f := b.tensor(prefix + "/depthwise_filter")
	w := b.g.Init(prefix+"/depthwise_filter", []int64{int64(x.c), 1, int64(d[0]), int64(d[1])}, depthwiseToOIHW(f))
	out := b.g.Op("Conv", []string{x.name, w},
		onnx.Ints("kernel_shape", int64(d[0]), int64(d[1])),
		onnx.Ints("strides", 1, 1),
		onnx.Ints("pads", 1, 1, 1, 1),
		onnx.Ints("dilations", 1, 1),
		onnx.Int("group", int64(x.c)))
	y := value{out, x.c, x.h + 2 - d[0] + 1, x.w + 2 - d[1] + 1}
	return b.conv(y, prefix+"/pointwise_filter", prefix+"/bias", 1, false)
}

// leaky is face-api's leaky ReLU, relu(x - 0.1x) + 0.1x, i.e. LeakyRelu(0.1).
func (b *builder) leaky(x value) value {
	return b.unary("LeakyRelu", x, onnx.Float32("alpha", 0.10000000149011612))
}

// SSDMobilenetV1 converts ssd_mobilenetv1 (512x512 input). The graph ends
// before face-api's box decoding: DecodeSSD applies the anchors (SSDAnchors)
// and the sigmoid in Go.
func SSDMobilenetV1(pkgDir string) ([]byte, error) {
	b, x, err := newBuilder(pkgDir, "ssd_mobilenetv1_model", "ssd_mobilenetv1", SSDMobilenetV1Size)
	if err != nil {
		return nil, err
	}
	x = b.binary("Div", x, b.g.Init("div", nil, []float32{127.5}))
	x = b.binary("Sub", x, b.g.Init("one", nil, []float32{1}))
	pointwise := func(x value, prefix string, idx, stride int) value {
		p := fmt.Sprintf("%s/Conv2d_%d_pointwise", prefix, idx)
		return b.clip6(b.conv(x, p+"/weights", p+"/convolution_bn_offset", stride, true))
	}
	x = pointwise(x, "MobilenetV1", 0, 2)
	var conv11 value
	for i := 1; i <= 13; i++ {
		stride := 1
		if i == 2 || i == 4 || i == 6 || i == 12 {
			stride = 2
		}
		p := fmt.Sprintf("MobilenetV1/Conv2d_%d_depthwise", i)
		x = b.depthwise(x, p+"/depthwise_weights", stride, true)
		x = b.batchNorm(x, p+"/BatchNorm")
		x = b.clip6(x)
		x = pointwise(x, "MobilenetV1", i, 1)
		if i == 11 {
			conv11 = x
		}
	}
	c0 := pointwise(x, "Prediction", 0, 1)
	c1 := pointwise(c0, "Prediction", 1, 2)
	c2 := pointwise(c1, "Prediction", 2, 1)
	c3 := pointwise(c2, "Prediction", 3, 2)
	c4 := pointwise(c3, "Prediction", 4, 1)
	c5 := pointwise(c4, "Prediction", 5, 2)
	c6 := pointwise(c5, "Prediction", 6, 1)
	c7 := pointwise(c6, "Prediction", 7, 2)
	var boxes, classes []string
	n := 0
	for i, f := range []value{conv11, x, c1, c3, c5, c7} {
		p := fmt.Sprintf("Prediction/BoxPredictor_%d", i)
		be := b.conv(f, p+"/BoxEncodingPredictor/weights", p+"/BoxEncodingPredictor/biases", 1, true)
		cl := b.conv(f, p+"/ClassPredictor/weights", p+"/ClassPredictor/biases", 1, true)
		boxes = append(boxes, b.nhwcRows(be, 4))
		classes = append(classes, b.nhwcRows(cl, 3))
		n += be.h * be.w * be.c / 4
	}
	b.g.Node("Concat", boxes, []string{SSDBoxEncodings}, onnx.Int("axis", 1))
	b.g.Output(SSDBoxEncodings, 1, int64(n), 4)
	b.g.Node("Concat", classes, []string{SSDClassLogits}, onnx.Int("axis", 1))
	b.g.Output(SSDClassLogits, 1, int64(n), 3)
	if n != SSDNumAnchors {
		b.fail(fmt.Errorf("ssd: %d anchors, want %d", n, SSDNumAnchors))
	}
	return b.finish()
}

// SSDNumAnchors is the number of anchor boxes of ssd_mobilenetv1 at 512.
const SSDNumAnchors = 5118

// nhwcRows turns an NCHW prediction map into TF's [1, H*W*C/k, k] rows
// (NHWC order), as face-api's reshape of the NHWC conv output does.
func (b *builder) nhwcRows(x value, k int) string {
	t := b.g.Op("Transpose", []string{x.name}, onnx.Ints("perm", 0, 2, 3, 1))
	shape := b.g.InitInt64("shape", []int64{3}, []int64{1, -1, int64(k)})
	return b.g.Op("Reshape", []string{t, shape})
}

// batchNorm is tf.batchNorm with face-api's epsilon.
func (b *builder) batchNorm(x value, prefix string) value {
	g := b.tensor(prefix+"/gamma", x.c)
	be := b.tensor(prefix+"/beta", x.c)
	m := b.tensor(prefix+"/moving_mean", x.c)
	v := b.tensor(prefix+"/moving_variance", x.c)
	c := []int64{int64(x.c)}
	ins := []string{x.name, b.g.Init(prefix+"/gamma", c, g.Data), b.g.Init(prefix+"/beta", c, be.Data),
		b.g.Init(prefix+"/moving_mean", c, m.Data), b.g.Init(prefix+"/moving_variance", c, v.Data)}
	x.name = b.g.Op("BatchNormalization", ins, onnx.Float32("epsilon", 0.0010000000474974513))
	return x
}

// FaceLandmark68 converts face_landmark_68 (112x112 input, 136 outputs).
func FaceLandmark68(pkgDir string) ([]byte, error) {
	b, x, err := newBuilder(pkgDir, "face_landmark_68_model", "face_landmark_68", FaceLandmark68Size)
	if err != nil {
		return nil, err
	}
	x = b.normalizeInput(x, [3]float32{122.782, 117.001, 104.298}, 255)
	for i := 0; i < 4; i++ {
		x = b.denseBlock4(x, fmt.Sprintf("dense%d", i), i == 0)
	}
	x = b.pool("AveragePool", x, 7, 2, false)
	if x.h != 1 || x.w != 1 {
		b.fail(fmt.Errorf("landmarks: feature map %dx%d before fc, want 1x1", x.h, x.w))
	}
	out := b.fc(x, "fc/weights", "fc/bias")
	b.g.Node("Identity", []string{out}, []string{LandmarkOutput})
	b.g.Output(LandmarkOutput, 1, 136)
	return b.finish()
}

// denseBlock4 is face-api's faceFeatureExtractor dense block (scale down).
func (b *builder) denseBlock4(x value, prefix string, first bool) value {
	var out1 value
	if first {
		out1 = b.conv(x, prefix+"/conv0/filters", prefix+"/conv0/bias", 2, true)
	} else {
		out1 = b.separable(x, prefix+"/conv0", 2, true)
	}
	out1 = b.relu(out1)
	out2 := b.separable(out1, prefix+"/conv1", 1, true)
	in3 := b.relu(b.add(out1, out2))
	out3 := b.separable(in3, prefix+"/conv2", 1, true)
	in4 := b.relu(b.add(out1, b.add(out2, out3)))
	out4 := b.separable(in4, prefix+"/conv3", 1, true)
	return b.relu(b.add(out1, b.add(out2, b.add(out3, out4))))
}

// fc is a dense layer on a 1x1 feature map: Flatten + Gemm (weights [in,out]
// transposed to [out,in], transB=1). bias "" means no bias (zeros).
func (b *builder) fc(x value, weights, bias string) string {
	d := b.dims(weights)
	if len(d) != 2 || d[0] != x.c*x.h*x.w {
		b.fail(fmt.Errorf("fc %s: shape %v on %d inputs", weights, d, x.c*x.h*x.w))
		return x.name
	}
	w := b.tensor(weights)
	in, out := d[0], d[1]
	wt := make([]float32, in*out)
	for i := 0; i < in; i++ {
		for o := 0; o < out; o++ {
			wt[o*in+i] = w.Data[i*out+o]
		}
	}
	bv := make([]float32, out)
	if bias != "" {
		copy(bv, b.tensor(bias, out).Data)
	}
	flat := b.g.Op("Flatten", []string{x.name}, onnx.Int("axis", 1))
	return b.g.Op("Gemm", []string{flat, b.g.Init(weights, []int64{int64(out), int64(in)}, wt), b.g.Init("fc_bias", []int64{int64(out)}, bv)},
		onnx.Int("transB", 1))
}

// FaceRecognition converts face_recognition (150x150 input, 128-d output).
func FaceRecognition(pkgDir string) ([]byte, error) {
	b, x, err := newBuilder(pkgDir, "face_recognition_model", "face_recognition", FaceRecognitionSize)
	if err != nil {
		return nil, err
	}
	x = b.normalizeInput(x, [3]float32{122.782, 117.001, 104.298}, 255)
	x = b.relu(b.resConv(x, "conv32_down", 2, false))
	x = b.pool("MaxPool", x, 3, 2, false)
	for _, l := range []string{"conv32_1", "conv32_2", "conv32_3"} {
		x = b.residual(x, l)
	}
	x = b.residualDown(x, "conv64_down")
	for _, l := range []string{"conv64_1", "conv64_2", "conv64_3"} {
		x = b.residual(x, l)
	}
	x = b.residualDown(x, "conv128_down")
	x = b.residual(x, "conv128_1")
	x = b.residual(x, "conv128_2")
	x = b.residualDown(x, "conv256_down")
	x = b.residual(x, "conv256_1")
	x = b.residual(x, "conv256_2")
	x = b.residualDown(x, "conv256_down_out")
	x = b.unary("GlobalAveragePool", x)
	x.h, x.w = 1, 1
	out := b.fc(x, "fc", "")
	b.g.Node("Identity", []string{out}, []string{DescriptorOutput})
	b.g.Output(DescriptorOutput, 1, 128)
	return b.finish()
}

// resConv is the recognition net's conv + bias + scale layer (x*w + b).
func (b *builder) resConv(x value, prefix string, stride int, same bool) value {
	y := b.conv(x, prefix+"/conv/filters", prefix+"/conv/bias", stride, same)
	s := b.tensor(prefix+"/scale/weights", y.c)
	sb := b.tensor(prefix+"/scale/biases", y.c)
	y = b.binary("Mul", y, b.channelConst(prefix+"/scale/weights", s.Data))
	return b.binary("Add", y, b.channelConst(prefix+"/scale/biases", sb.Data))
}

func (b *builder) residual(x value, prefix string) value {
	out := b.relu(b.resConv(x, prefix+"/conv1", 1, true))
	out = b.resConv(out, prefix+"/conv2", 1, true)
	return b.relu(b.add(out, x))
}

// residualDown: VALID stride-2 conv branch; the shortcut is a 2x2 average
// pool, zero-padded in channels when the branch is wider; when the branch
// is one pixel smaller, face-api appends a zero row and column to it.
func (b *builder) residualDown(x value, prefix string) value {
	out := b.relu(b.resConv(x, prefix+"/conv1", 2, false))
	out = b.resConv(out, prefix+"/conv2", 1, true)
	pooled := b.pool("AveragePool", x, 2, 2, false)
	if out.h != pooled.h || out.w != pooled.w {
		dh, dw := pooled.h-out.h, pooled.w-out.w
		pads := b.g.InitInt64("pads", []int64{8}, []int64{0, 0, 0, 0, 0, 0, int64(dh), int64(dw)})
		out.name = b.g.Op("Pad", []string{out.name, pads}, onnx.String("mode", "constant"))
		out.h, out.w = pooled.h, pooled.w
	}
	if pooled.c != out.c {
		pooled = b.zeroExtendChannels(pooled, out.c)
	}
	return b.relu(b.add(pooled, out))
}

// zeroExtendChannels appends zero channels with an identity 1x1 conv, which
// is exact (x*1 plus zeros) and avoids OpenCV's limits on channel padding.
func (b *builder) zeroExtendChannels(x value, c int) value {
	w := make([]float32, c*x.c)
	for i := 0; i < x.c; i++ {
		w[i*x.c+i] = 1
	}
	init := b.g.Init("channel_pad", []int64{int64(c), int64(x.c), 1, 1}, w)
	out := b.g.Op("Conv", []string{x.name, init}, onnx.Ints("kernel_shape", 1, 1))
	return value{out, c, x.h, x.w}
}
