package blazeface

import (
	"math"
	"testing"
)

func TestAnchors(t *testing.T) {
	for _, size := range []int{128, 256} {
		a := Anchors(size)
		if len(a) != NumAnchors {
			t.Fatalf("size %d: %d anchors", size, len(a))
		}
		s := float32(size)
		tests := []struct {
			i    int
			x, y float32
		}{
			{0, s / 32, s / 32}, {1, s / 32, s / 32}, {2, 3 * s / 32, s / 32},
			{511, 31 * s / 32, 31 * s / 32}, {512, s / 16, s / 16}, {517, s / 16, s / 16},
			{518, 3 * s / 16, s / 16}, {895, 15 * s / 16, 15 * s / 16},
		}
		for _, tc := range tests {
			if a[tc.i] != (Anchor{tc.x, tc.y}) {
				t.Errorf("size %d anchor %d = %v, want (%v,%v)", size, tc.i, a[tc.i], tc.x, tc.y)
			}
		}
	}
}

// synth writes one anchor's raw output for a face centred at (cx, cy) input
// pixels with size w x h.
func synth(out []float32, i int, logit, cx, cy, w, h float32, size int) {
	a := Anchors(size)[i]
	r := out[i*Stride : (i+1)*Stride]
	r[0] = logit
	r[1], r[2], r[3], r[4] = cx-a.X, cy-a.Y, w, h
	for k := 0; k < NumKeypoints; k++ {
		r[5+2*k] = cx + float32(k) - a.X
		r[6+2*k] = cy - float32(k) - a.Y
	}
}

func near(a, b float32) bool { return math.Abs(float64(a-b)) < 1e-5 }

func TestDecodeAndNMS(t *testing.T) {
	const size = 128
	out := make([]float32, NumAnchors*Stride)
	for i := range out {
		if i%Stride == 0 {
			out[i] = -10 // background
		}
	}
	// Face A seen by three neighbouring anchors, face B by one, one low score.
	synth(out, 100, 3, 64, 48, 40, 40, size)
	synth(out, 101, 2, 66, 48, 40, 40, size)
	synth(out, 600, 1, 62, 50, 44, 44, size)
	synth(out, 800, 4, 110, 110, 20, 20, size)
	synth(out, 300, -1, 20, 20, 10, 10, size) // sigmoid 0.27: below 0.5

	dets, err := Decode(out, size, 0.5)
	if err != nil {
		t.Fatal(err)
	}
	if len(dets) != 4 {
		t.Fatalf("decoded %d, want 4", len(dets))
	}
	for _, weighted := range []bool{false, true} {
		got := NMS(dets, 0.3, weighted, 0)
		if len(got) != 2 {
			t.Fatalf("weighted=%v: %d faces, want 2", weighted, len(got))
		}
		b := got[0] // highest score: face B
		if !near(b.Score, Sigmoid(4)) || !near(b.X1, 100./size) || !near(b.X2, 120./size) {
			t.Errorf("weighted=%v: first = %+v", weighted, b)
		}
		if !near(b.Keypoints[2].X, 112./size) || !near(b.Keypoints[2].Y, 108./size) {
			t.Errorf("keypoint 2 = %+v", b.Keypoints[2])
		}
		a := got[1]
		cx := (a.X1 + a.X2) / 2 * size
		if !weighted && !near(cx, 64) {
			t.Errorf("plain NMS moved the box: centre x %v", cx)
		}
		if weighted {
			w0, w1, w2 := Sigmoid(3), Sigmoid(2), Sigmoid(1)
			want := (64*w0 + 66*w1 + 62*w2) / (w0 + w1 + w2)
			if math.Abs(float64(cx-want)) > 1e-3 {
				t.Errorf("weighted centre x %v, want %v", cx, want)
			}
			if !near(a.Score, w0) {
				t.Errorf("weighted score %v, want the best %v", a.Score, w0)
			}
		}
	}
	if got := NMS(dets, 0.3, true, 1); len(got) != 1 {
		t.Errorf("maxFaces 1: %d", len(got))
	}
	if _, err := Decode(out[:10], size, 0.5); err == nil {
		t.Error("short output accepted")
	}
}

func TestMerge(t *testing.T) {
	s16, s8 := make([]float32, 512), make([]float32, 384)
	r16, r8 := make([]float32, 512*16), make([]float32, 384*16)
	s16[5], s8[7] = 1, 2
	r16[5*16+3], r8[7*16+15] = 3, 4
	m, err := Merge(s16, s8, r16, r8)
	if err != nil {
		t.Fatal(err)
	}
	if m[5*Stride] != 1 || m[5*Stride+4] != 3 || m[519*Stride] != 2 || m[519*Stride+16] != 4 {
		t.Errorf("merge misplaced values")
	}
	if _, err := Merge(s8, s16, r16, r8); err == nil {
		t.Error("swapped inputs accepted")
	}
}

func TestLetterbox(t *testing.T) {
	tests := []struct {
		w, h, size     int
		rw, rh, px, py int
		in             Point
		wantX, wantY   float32
	}{
		{640, 480, 128, 128, 96, 0, 16, Point{0.5, 0.5}, 320, 240},
		{640, 480, 128, 128, 96, 0, 16, Point{0, 16. / 128}, 0, 0},
		{480, 640, 256, 192, 256, 32, 0, Point{1 - 32./256, 1}, 480, 640},
		{100, 100, 256, 256, 256, 0, 0, Point{0.25, 0.75}, 25, 75},
	}
	for _, tc := range tests {
		lb, err := NewLetterbox(tc.w, tc.h, tc.size)
		if err != nil {
			t.Fatal(err)
		}
		if lb.ResizedW != tc.rw || lb.ResizedH != tc.rh || lb.PadX != tc.px || lb.PadY != tc.py {
			t.Errorf("%dx%d->%d: %+v", tc.w, tc.h, tc.size, lb)
		}
		p := lb.ToImage(tc.in)
		if math.Abs(float64(p.X-tc.wantX)) > 1e-3 || math.Abs(float64(p.Y-tc.wantY)) > 1e-3 {
			t.Errorf("%dx%d->%d: %v -> %v, want (%v,%v)", tc.w, tc.h, tc.size, tc.in, p, tc.wantX, tc.wantY)
		}
	}
	if _, err := NewLetterbox(0, 10, 128); err == nil {
		t.Error("empty image accepted")
	}
}

func TestInputNCHW(t *testing.T) {
	pix := []byte{0, 255, 51, 255, 0, 102}
	x, err := InputNCHW(pix[:6], 1, false)
	if err == nil {
		t.Fatalf("2 pixels accepted as 1x1: %v", x)
	}
	x, err = InputNCHW(pix[:3], 1, true)
	if err != nil {
		t.Fatal(err)
	}
	if !near(x[0], 51/127.5-1) || !near(x[1], 1) || !near(x[2], -1) {
		t.Errorf("BGR->RGB [-1,1] = %v", x)
	}
}
