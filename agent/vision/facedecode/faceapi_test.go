package facedecode

import (
	"math"
	"testing"
)

func TestDecodeTinyFaceDetector(t *testing.T) {
	const g = 4
	out := make([]float32, 25*g*g)
	for i := range out {
		out[i] = -20 // every objectness ~0
	}
	set := func(a, k, row, col int, v float32) { out[((a*5+k)*g+row)*g+col] = v }
	// anchor 0 at cell (1,2): centred in the cell, size = anchor.
	for k := 0; k < 4; k++ {
		set(0, k, 1, 2, 0)
	}
	set(0, 4, 1, 2, logit(0.9))
	// anchor 0 at cell (1,2) duplicated by anchor 2 with a lower score and a
	// similar box: suppressed by NMS.
	set(2, 0, 1, 2, 0)
	set(2, 1, 1, 2, 0)
	set(2, 2, 1, 2, float32(math.Log(TinyAnchors[0].X/TinyAnchors[2].X)))
	set(2, 3, 1, 2, float32(math.Log(TinyAnchors[0].Y/TinyAnchors[2].Y)))
	set(2, 4, 1, 2, logit(0.8))
	// a separate box far away, below the first in score.
	for k := 0; k < 4; k++ {
		set(1, k, 3, 0, 0)
	}
	set(1, 4, 3, 0, logit(0.6))
	// under threshold.
	set(4, 4, 0, 0, logit(0.4))

	dets, err := DecodeTinyFaceDetector(out, []int{1, 25, g, g}, 0.5, TinyIOUThreshold)
	if err != nil {
		t.Fatal(err)
	}
	if len(dets) != 2 {
		t.Fatalf("%d detections, want 2: %+v", len(dets), dets)
	}
	if math.Abs(dets[0].Score-0.9) > 1e-6 || math.Abs(dets[1].Score-0.6) > 1e-6 {
		t.Errorf("scores %v %v", dets[0].Score, dets[1].Score)
	}
	cx, cy := (2+0.5)/g, (1+0.5)/g
	w, h := TinyAnchors[0].X/g, TinyAnchors[0].Y/g
	want := Box{cx - w/2, cy - h/2, cx + w/2, cy + h/2}
	b := dets[0].Box
	if math.Abs(b.X1-want.X1) > 1e-6 || math.Abs(b.Y2-want.Y2) > 1e-6 {
		t.Errorf("box %+v, want %+v", b, want)
	}
	if _, err := DecodeTinyFaceDetector(out, []int{1, 20, g, g}, 0.5, 0.4); err == nil {
		t.Error("wrong shape accepted")
	}
	if _, err := DecodeTinyFaceDetector(out[:10], []int{1, 25, g, g}, 0.5, 0.4); err == nil {
		t.Error("short data accepted")
	}
}

func TestDecodeSSD(t *testing.T) {
	anchors := []float32{
		0.1, 0.1, 0.3, 0.3,
		0.1, 0.12, 0.3, 0.32, // overlaps the first
		0.6, 0.6, 0.9, 0.8,
		-0.1, -0.1, 0.2, 0.2, // clamped at 0
	}
	enc := make([]float32, 16) // zero encodings decode to the anchors
	logits := []float32{0, logit(0.9), 0, 0, logit(0.8), 0, 0, logit(0.7), 0, 0, logit(0.2), 0}
	boxes, err := SSDDecodeBoxes(enc, anchors)
	if err != nil {
		t.Fatal(err)
	}
	for i := range anchors {
		if math.Abs(float64(boxes[i]-anchors[i])) > 1e-6 {
			t.Fatalf("zero encoding moved anchor: %v vs %v", boxes, anchors)
		}
	}
	// A shift of ty=10 moves the box by one anchor height.
	enc[0] = 10
	boxes, _ = SSDDecodeBoxes(enc, anchors)
	if math.Abs(float64(boxes[0])-0.3) > 1e-6 {
		t.Errorf("ty=10 gives ymin %v, want 0.3", boxes[0])
	}
	enc[0] = 0
	dets, err := DecodeSSD(enc, logits, anchors, 0.5, SSDIOUThreshold, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dets) != 2 || math.Abs(dets[0].Score-0.9) > 1e-6 || math.Abs(dets[1].Score-0.7) > 1e-6 {
		t.Fatalf("detections %+v, want scores 0.9 and 0.7", dets)
	}
	if b := dets[1].Box; math.Abs(b.X1-0.6) > 1e-6 || math.Abs(b.Y1-0.6) > 1e-6 || math.Abs(b.X2-0.8) > 1e-6 || math.Abs(b.Y2-0.9) > 1e-6 {
		t.Errorf("box %+v (x1,y1,x2,y2 from ymin,xmin,ymax,xmax)", b)
	}
	dets, _ = DecodeSSD(enc, logits, anchors, 0.1, SSDIOUThreshold, 10)
	if len(dets) != 3 || dets[2].Box.X1 != 0 || dets[2].Box.Y1 != 0 {
		t.Errorf("low threshold: %+v, want 3 with the last clamped at 0", dets)
	}
	if dets, _ := DecodeSSD(enc, logits, anchors, 0.1, SSDIOUThreshold, 1); len(dets) != 1 {
		t.Errorf("maxResults 1 gave %d", len(dets))
	}
	if _, err := DecodeSSD(enc[:8], logits, anchors, 0.5, 0.5, 10); err == nil {
		t.Error("mismatched lengths accepted")
	}
}

func TestLandmarks68(t *testing.T) {
	out := make([]float32, 136)
	for i := 0; i < 68; i++ {
		out[2*i], out[2*i+1] = 0.5, 0.25
	}
	// Square crop: plain scaling.
	pts, err := Landmarks68(out, 200, 200)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(pts[0].X-100) > 1e-9 || math.Abs(pts[0].Y-50) > 1e-9 {
		t.Errorf("square: %+v", pts[0])
	}
	// Portrait 100x200: padded by 50 px on the left and right in crop pixels.
	pts, _ = Landmarks68(out, 100, 200)
	if math.Abs(pts[0].X-50) > 1e-9 || math.Abs(pts[0].Y-50) > 1e-9 {
		t.Errorf("portrait: %+v, want (50,50)", pts[0])
	}
	out[0] = 0.25 // at the left edge of the padded square: x = -50+... = 0 px
	pts, _ = Landmarks68(out, 100, 200)
	if math.Abs(pts[0].X-0) > 1e-9 {
		t.Errorf("portrait edge: %+v, want x=0", pts[0])
	}
	if _, err := Landmarks68(out[:10], 1, 1); err == nil {
		t.Error("short output accepted")
	}
}
func logit(p float64) float32 { return float32(math.Log(p / (1 - p))) }
