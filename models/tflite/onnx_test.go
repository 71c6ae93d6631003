//go:build cgo

package tflite

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/models/tfgraph"
)

// These tests run the converted ONNX in OpenCV (cgo); the reader's tests in
// tflite_test.go also run with CGO_ENABLED=0.

func runONNX(t *testing.T, model []byte, x []float32) []float32 {
	t.Helper()
	net, err := gocv.ReadNetFromONNXBytes(model)
	if err != nil {
		t.Fatalf("OpenCV refuses the converted model: %v", err)
	}
	defer net.Close()
	// NHWC values -> NCHW blob
	nchw := make([]float32, len(x))
	for y := 0; y < 5; y++ {
		for xx := 0; xx < 5; xx++ {
			for c := 0; c < 2; c++ {
				nchw[(c*5+y)*5+xx] = x[(y*5+xx)*2+c]
			}
		}
	}
	blob, err := gocv.NewMatWithSizesFromBytes([]int{1, 2, 5, 5}, gocv.MatTypeCV32F, f32bytes(nchw))
	if err != nil {
		t.Fatal(err)
	}
	defer blob.Close()
	net.SetInput(blob, "input")
	out := net.Forward("embeddings")
	defer out.Close()
	v, err := out.DataPtrFloat32()
	if err != nil {
		t.Fatal(err)
	}
	return append([]float32(nil), v...)
}

func TestConvertMatchesReference(t *testing.T) {
	tn := newTinyNet(7)
	r := rand.New(rand.NewPCG(3, 4))
	x := make([]float32, 5*5*2)
	for i := range x {
		x[i] = float32(r.Float64()*4 - 2)
	}
	want := tn.reference(x)
	for _, batch := range []int32{1, 2} {
		model, err := Convert(tn.model(batch, true), tfgraph.Options{})
		if err != nil {
			t.Fatalf("batch %d: %v", batch, err)
		}
		got := runONNX(t, model, x)
		if len(got) != len(want) {
			t.Fatalf("batch %d: %d values, want %d", batch, len(got), len(want))
		}
		var worst float64
		for i := range got {
			worst = max(worst, math.Abs(float64(got[i])-want[i]))
		}
		if worst > 1e-5 {
			t.Errorf("batch %d: max abs diff %.3g from the float64 reference (%v vs %v)", batch, worst, got, want)
		}
		// PReLU came out as one op, not relu/abs/sub/mul/add.
		if !strings.Contains(string(model), "PRelu") || strings.Contains(string(model), "Abs") {
			t.Errorf("batch %d: the PReLU pattern was not folded", batch)
		}
	}
}
