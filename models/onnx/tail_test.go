package onnx

import (
	"strings"
	"testing"
)

// tailGraph is a feature map (a Relu's output) read by a depthwise
// convolution over the whole map and a 1x1 convolution, as in an
// ArcFace-style MobileFaceNet's last layers.
func tailGraph(depthwise bool) []byte {
	g := NewGraph("tail")
	x := g.Input("x", 1, 2, 3, 3)
	g.Node("Relu", []string{x}, []string{"fm"})
	gw := make([]float32, 2*9)
	for i := range gw {
		gw[i] = float32(i) / 10
	}
	gshape := []int64{2, 1, 3, 3}
	attrs := []Attr{Int("group", 2)}
	if !depthwise {
		gw = make([]float32, 2*2*9)
		gshape = []int64{2, 2, 3, 3}
		attrs = nil
	}
	w := g.Init("gdc_w", gshape, gw)
	b := g.Init("gdc_b", []int64{2}, []float32{0.5, -0.5})
	y := g.Op("Conv", []string{"fm", w, b}, attrs...)
	lw := g.Init("lin_w", []int64{4, 2, 1, 1}, []float32{1, 2, 3, 4, 5, 6, 7, 8})
	lb := g.Init("lin_b", []int64{4}, []float32{-1, -2, -3, -4})
	z := g.Op("Conv", []string{y, lw, lb})
	shape := g.InitInt64("shape", []int64{2}, []int64{1, 4})
	g.Node("Reshape", []string{z, shape}, []string{"out"})
	g.Output("out", 1, 4)
	return g.Marshal(11)
}

func TestReadPoolingTail(t *testing.T) {
	tl, err := ReadPoolingTail(tailGraph(true), "fm")
	if err != nil {
		t.Fatal(err)
	}
	if tl.C != 2 || tl.H != 3 || tl.W != 3 || tl.Out != 4 {
		t.Fatalf("shape C %d H %d W %d Out %d, want 2 3 3 4", tl.C, tl.H, tl.W, tl.Out)
	}
	if tl.GDC[17] != 1.7 || tl.GDCBias[1] != -0.5 || tl.Lin[7] != 8 || tl.LinBias[3] != -4 {
		t.Errorf("weights read wrong: %v %v %v %v", tl.GDC, tl.GDCBias, tl.Lin, tl.LinBias)
	}
	if tl.Layer != "onnx_node!Relu_0" {
		t.Errorf("layer %q, want OpenCV's name for the node that writes fm", tl.Layer)
	}
}

func TestReadPoolingTailRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, fmap string
		model      []byte
		want       string
	}{
		{"no conv reads the tensor", "x_missing", tailGraph(true), "no Conv"},
		{"full convolution, not depthwise", "fm", tailGraph(false), "not depthwise"},
		{"not a model", "fm", []byte{0xff, 0xff, 0xff}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadPoolingTail(tc.model, tc.fmap)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one saying %q", err, tc.want)
			}
		})
	}
}
