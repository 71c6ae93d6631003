package faceapi

import (
	"strings"
	"testing"

	"github.com/periocular/atm-agent/models/tfjs"
)

func TestTFPad(t *testing.T) {
	cases := []struct {
		in, k, s      int
		same          bool
		out, beg, end int
	}{
		{112, 3, 2, true, 56, 0, 1}, // even input, stride 2: bottom/right only
		{113, 3, 2, true, 57, 1, 1},
		{56, 3, 1, true, 56, 1, 1},
		{207, 2, 2, true, 104, 0, 1},
		{13, 2, 1, true, 13, 0, 1},
		{150, 7, 2, false, 72, 0, 0},
		{35, 3, 2, false, 17, 0, 0},
	}
	for _, c := range cases {
		out, b, e := tfPad(c.in, c.k, c.s, c.same)
		if out != c.out || b != c.beg || e != c.end {
			t.Errorf("tfPad(%d,%d,%d,%v) = %d,%d,%d want %d,%d,%d", c.in, c.k, c.s, c.same, out, b, e, c.out, c.beg, c.end)
		}
	}
}

func TestLayoutTransposes(t *testing.T) {
	// HWIO [2,1,2,3]: value encodes (y,x,i,o) as y*1000+x*100+i*10+o.
	f := &tfjs.Tensor{Shape: []int{2, 1, 2, 3}}
	for y := 0; y < 2; y++ {
		for i := 0; i < 2; i++ {
			for o := 0; o < 3; o++ {
				f.Data = append(f.Data, float32(y*1000+i*10+o))
			}
		}
	}
	got := hwioToOIHW(f)
	for o := 0; o < 3; o++ {
		for i := 0; i < 2; i++ {
			for y := 0; y < 2; y++ {
				if v := got[(o*2+i)*2+y]; v != float32(y*1000+i*10+o) {
					t.Fatalf("OIHW[%d,%d,%d,0] = %v", o, i, y, v)
				}
			}
		}
	}
	d := &tfjs.Tensor{Shape: []int{1, 2, 3, 1}, Data: []float32{0, 1, 2, 10, 11, 12}} // (x,c) = x*10+c
	dw := depthwiseToOIHW(d)
	want := []float32{0, 10, 1, 11, 2, 12}
	for i := range want {
		if dw[i] != want[i] {
			t.Fatalf("depthwise = %v, want %v", dw, want)
		}
	}
}

func TestConvertErrors(t *testing.T) {
	if _, err := FaceRecognition(t.TempDir()); err == nil || !strings.Contains(err.Error(), "face_recognition_model") {
		t.Errorf("missing package: %v", err)
	}
	if _, err := TinyFaceDetectorSize(t.TempDir(), 100); err == nil || !strings.Contains(err.Error(), "multiple of 32") {
		t.Errorf("bad size: %v", err)
	}
	b := &builder{w: map[string]*tfjs.Tensor{"w": {Name: "w", Shape: []int{2}}}}
	b.tensor("w", 3)
	b.tensor("absent")
	if b.err == nil || !strings.Contains(b.err.Error(), `"w" has shape`) {
		t.Errorf("builder error: %v", b.err)
	}
}
