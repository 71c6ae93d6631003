package faceapi

import (
	"fmt"
	"path/filepath"

	"github.com/periocular/atm-agent/models/onnx"
	"github.com/periocular/atm-agent/models/tfjs"
)

// value is an NCHW activation of the graph being built (batch 1).
type value struct {
	name    string
	c, h, w int
}

// builder adds TF.js layers to an ONNX graph, translating layouts
// (NHWC/HWIO -> NCHW/OIHW) and TF padding rules into explicit pads.
type builder struct {
	g   *onnx.Graph
	w   map[string]*tfjs.Tensor
	err error
}

func loadModel(pkgDir, model string) (map[string]*tfjs.Tensor, error) {
	w, err := tfjs.LoadWeightsManifest(filepath.Join(pkgDir, "model", model+"-weights_manifest.json"))
	if err != nil {
		return nil, fmt.Errorf("faceapi: load %s: %w", model, err)
	}
	return w, nil
}

// tensor returns a weight, checking its shape; a missing or misshapen weight
// is recorded as the builder's error (checked once at the end).
func (b *builder) tensor(name string, shape ...int) *tfjs.Tensor {
	t := b.w[name]
	if t == nil {
		b.fail(fmt.Errorf("weight %q missing", name))
		return &tfjs.Tensor{Name: name, Shape: shape, Data: make([]float32, prod(shape))}
	}
	if len(shape) > 0 && !sameShape(t.Shape, shape) {
		b.fail(fmt.Errorf("weight %q has shape %v, want %v", name, t.Shape, shape))
		return &tfjs.Tensor{Name: name, Shape: shape, Data: make([]float32, prod(shape))}
	}
	return t
}

// dims returns the shape of a weight (nil and an error if missing).
func (b *builder) dims(name string) []int {
	t := b.w[name]
	if t == nil {
		b.fail(fmt.Errorf("weight %q missing", name))
		return nil
	}
	return t.Shape
}

func (b *builder) fail(err error) {
	if b.err == nil {
		b.err = err
	}
}

func prod(s []int) int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}

func sameShape(a, b []int) bool {
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

// tfPad computes TF's output size and (begin, end) padding for one axis.
// SAME puts the odd pixel at the end (bottom/right).
func tfPad(in, k, s int, same bool) (out, begin, end int) {
	if !same {
		return (in-k)/s + 1, 0, 0
	}
	out = (in + s - 1) / s
	total := (out-1)*s + k - in
	if total < 0 {
		total = 0
	}
	return out, total / 2, total - total/2
}

// hwioToOIHW converts TF conv filters [kh,kw,in,out] to ONNX [out,in,kh,kw].
func hwioToOIHW(t *tfjs.Tensor) []float32 {
	kh, kw, ci, co := t.Shape[0], t.Shape[1], t.Shape[2], t.Shape[3]
	out := make([]float32, len(t.Data))
	for y := 0; y < kh; y++ {
		for x := 0; x < kw; x++ {
			for i := 0; i < ci; i++ {
				for o := 0; o < co; o++ {
					out[((o*ci+i)*kh+y)*kw+x] = t.Data[((y*kw+x)*ci+i)*co+o]
				}
			}
		}
	}
	return out
}

// depthwiseToOIHW converts TF depthwise filters [kh,kw,C,1] to [C,1,kh,kw].
func depthwiseToOIHW(t *tfjs.Tensor) []float32 {
	kh, kw, c := t.Shape[0], t.Shape[1], t.Shape[2]
	out := make([]float32, len(t.Data))
	for y := 0; y < kh; y++ {
		for x := 0; x < kw; x++ {
			for i := 0; i < c; i++ {
				out[(i*kh+y)*kw+x] = t.Data[(y*kw+x)*c+i]
			}
		}
	}
	return out
}

// conv adds a TF conv2d (filters HWIO) with optional bias.
func (b *builder) conv(x value, filters string, bias string, stride int, same bool) value {
	d := b.dims(filters)
	if len(d) != 4 || d[2] != x.c {
		b.fail(fmt.Errorf("conv %s: filter shape %v on %d channels", filters, d, x.c))
		return x
	}
	f := b.tensor(filters)
	kh, kw, co := d[0], d[1], d[3]
	oh, pt, pb := tfPad(x.h, kh, stride, same)
	ow, pl, pr := tfPad(x.w, kw, stride, same)
	ins := []string{x.name, b.g.Init(filters, []int64{int64(co), int64(x.c), int64(kh), int64(kw)}, hwioToOIHW(f))}
	if bias != "" {
		bt := b.tensor(bias, co)
		ins = append(ins, b.g.Init(bias, []int64{int64(co)}, bt.Data))
	}
	out := b.g.Op("Conv", ins,
		onnx.Ints("kernel_shape", int64(kh), int64(kw)),
		onnx.Ints("strides", int64(stride), int64(stride)),
		onnx.Ints("pads", int64(pt), int64(pl), int64(pb), int64(pr)),
		onnx.Ints("dilations", 1, 1),
		onnx.Int("group", 1))
	return value{out, co, oh, ow}
}

// depthwise adds a TF depthwiseConv2d (filters [kh,kw,C,1]) without bias.
func (b *builder) depthwise(x value, filters string, stride int, same bool) value {
	d := b.dims(filters)
	if len(d) != 4 || d[2] != x.c || d[3] != 1 {
		b.fail(fmt.Errorf("depthwise %s: filter shape %v on %d channels", filters, d, x.c))
		return x
	}
	f := b.tensor(filters)
	kh, kw := d[0], d[1]
	oh, pt, pb := tfPad(x.h, kh, stride, same)
	ow, pl, pr := tfPad(x.w, kw, stride, same)
	w := b.g.Init(filters, []int64{int64(x.c), 1, int64(kh), int64(kw)}, depthwiseToOIHW(f))
	out := b.g.Op("Conv", []string{x.name, w},
		onnx.Ints("kernel_shape", int64(kh), int64(kw)),
		onnx.Ints("strides", int64(stride), int64(stride)),
		onnx.Ints("pads", int64(pt), int64(pl), int64(pb), int64(pr)),
		onnx.Ints("dilations", 1, 1),
		onnx.Int("group", int64(x.c)))
	return value{out, x.c, oh, ow}
}

// separable adds TF separableConv2d followed by a bias add.
func (b *builder) separable(x value, prefix string, stride int, same bool) value {
	y := b.depthwise(x, prefix+"/depthwise_filter", stride, same)
	return b.conv(y, prefix+"/pointwise_filter", prefix+"/bias", 1, false)
}

// channelConst adds a [1,C,1,1] initializer for per-channel arithmetic.
func (b *builder) channelConst(name string, v []float32) string {
	return b.g.Init(name, []int64{1, int64(len(v)), 1, 1}, v)
}

func (b *builder) unary(op string, x value, attrs ...onnx.Attr) value {
	x.name = b.g.Op(op, []string{x.name}, attrs...)
	return x
}

func (b *builder) binary(op string, x value, y string) value {
	x.name = b.g.Op(op, []string{x.name, y})
	return x
}

func (b *builder) add(x, y value) value {
	if x.c != y.c || x.h != y.h || x.w != y.w {
		b.fail(fmt.Errorf("add: shapes %dx%dx%d and %dx%dx%d", x.c, x.h, x.w, y.c, y.h, y.w))
	}
	x.name = b.g.Op("Add", []string{x.name, y.name})
	return x
}

func (b *builder) relu(x value) value { return b.unary("Relu", x) }

// clip6 is TF clipByValue(x, 0, 6). OpenCV 4.6 aborts on the opset-11 Clip
// with min/max inputs but accepts the attribute form, which it maps to ReLU6.
func (b *builder) clip6(x value) value {
	return b.unary("Clip", x, onnx.Float32("min", 0), onnx.Float32("max", 6))
}

// pool adds a TF max or average pool with TF padding.
func (b *builder) pool(op string, x value, k, s int, same bool) value {
	oh, pt, pb := tfPad(x.h, k, s, same)
	ow, pl, pr := tfPad(x.w, k, s, same)
	out := b.g.Op(op, []string{x.name},
		onnx.Ints("kernel_shape", int64(k), int64(k)),
		onnx.Ints("strides", int64(s), int64(s)),
		onnx.Ints("pads", int64(pt), int64(pl), int64(pb), int64(pr)))
	return value{out, x.c, oh, ow}
}

// normalizeInput subtracts a per-channel mean then divides by div, as
// face-api does on RGB 0..255 input.
func (b *builder) normalizeInput(x value, mean [3]float32, div float32) value {
	if mean != [3]float32{} {
		x = b.binary("Sub", x, b.channelConst("mean_rgb", mean[:]))
	}
	return b.binary("Div", x, b.g.Init("div", nil, []float32{div}))
}

func (b *builder) finish(outputs ...string) ([]byte, error) {
	if b.err != nil {
		return nil, b.err
	}
	return b.g.Marshal(onnx.DefaultOpset), nil
}
