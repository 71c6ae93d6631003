package vision

import (
	"context"
	"image"
	"math"
	"os"
	"path/filepath"
	"testing"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/internal/testenv/mats"
	"github.com/periocular/atm-agent/models"
)

// modelsDir is the models dir built by `make models` (ATM_MODELS_DIR).
func modelsDir(t testing.TB) (string, *models.Manifest) {
	t.Helper()
	dir := testenv.ModelsDir(t)
	man, err := models.LoadManifest(filepath.Join(dir, "manifest.yaml"))
	if err != nil {
		t.Fatalf("built models needed (run `make models`): %v", err)
	}
	return dir, man
}

// sample reads one of face-api's demo photos (extracted by `make models`).
func sample(t testing.TB, n string) []byte {
	t.Helper()
	src := testenv.ModelSrc()
	b, err := os.ReadFile(filepath.Join(src, "face-api", "demo", n))
	if err != nil {
		t.Fatalf("demo photo (run `make models`): %v", err)
	}
	return b
}

func checkMats(t *testing.T) {
	t.Helper()
	t.Cleanup(func() {
		if n := mats.Live(); n != 0 {
			t.Errorf("%d gocv Mats leaked", n)
		}
	})
}

func newTestPipeline(t *testing.T, det, emb string) *Pipeline {
	t.Helper()
	dir, man := modelsDir(t)
	p, err := New(dir, man, det, emb, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func cosine(a, b []float32) float64 {
	var s float64
	for i := range a {
		s += float64(a[i]) * float64(b[i])
	}
	return s
}

func TestFaceInImage(t *testing.T) {
	checkMats(t)
	p := newTestPipeline(t, "", "")
	img := sample(t, "sample1.jpg")
	f, err := p.FaceInImage(img, FaceOptions{Thumb: 48}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, v := range f.Embedding {
		n += float64(v) * float64(v)
	}
	if math.Abs(n-1) > 1e-4 {
		t.Errorf("embedding norm^2 %v, want 1", n)
	}
	if f.Quality <= 0 || f.Det.Score < 0.5 || len(f.Thumb) == 0 {
		t.Errorf("face %+v: want positive quality, score >= 0.5 and a thumbnail", f.Det)
	}
	g, err := p.FaceInImage(img, FaceOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c := cosine(f.Embedding, g.Embedding); c < 0.99999 {
		t.Errorf("same image twice: cosine %v", c)
	}
	// A different person in another photo is further away than the same
	// face re-encoded.
	h, err := p.FaceInImage(sample(t, "sample3.jpg"), FaceOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c := cosine(f.Embedding, h.Embedding); c > 0.95 {
		t.Errorf("faces of two photos nearly identical: cosine %v", c)
	}
}

func TestUnreadableImage(t *testing.T) {
	checkMats(t)
	p := newTestPipeline(t, "", "")
	if _, err := p.FaceInImage([]byte("not an image"), FaceOptions{}, nil); err == nil {
		t.Fatal("garbage decoded")
	}
	jpg := sample(t, "sample1.jpg")
	if _, err := p.FaceInImage(jpg[:len(jpg)/3], FaceOptions{}, nil); err == nil {
		// A truncated JPEG may decode partially; then it must not crash.
		t.Log("truncated JPEG decoded partially")
	}
}

// decodeFrame turns a photo into a camera frame.
func decodeFrame(t *testing.T, jpg []byte) visit.Frame {
	t.Helper()
	m, err := gocv.IMDecode(jpg, gocv.IMReadColor)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	return visit.Frame{W: m.Cols(), H: m.Rows(), BGR: m.ToBytes()}
}

func TestPerceiveBurst(t *testing.T) {
	checkMats(t)
	p := newTestPipeline(t, "", "")
	fr := decodeFrame(t, sample(t, "sample1.jpg"))
	blank := visit.Frame{W: 64, H: 48, BGR: make([]byte, 64*48*3)}
	d, err := p.Perceive(context.Background(), []visit.Frame{fr, blank, fr})
	if err != nil {
		t.Fatal(err)
	}
	if d.Outcome != visit.FaceFound || d.Frames != 3 || d.Used != 2 || len(d.Embedding) == 0 {
		t.Fatalf("descriptor %+v", d)
	}
	d, err = p.Perceive(context.Background(), []visit.Frame{blank, blank})
	if err != nil || d.Outcome != visit.NoFace || d.Embedding != nil {
		t.Fatalf("blank burst: %+v %v", d, err)
	}
	d, _ = p.Perceive(context.Background(), nil)
	if d.Outcome != visit.CameraError {
		t.Fatalf("empty burst: %v", d.Outcome)
	}
	if _, err := p.Perceive(context.Background(), []visit.Frame{{W: 10, H: 10, BGR: []byte{1}}}); err == nil {
		t.Fatal("malformed frame accepted")
	}
}

// A burst runs the landmark net only on the frames it embeds, and their
// crops are cut by the net's points, not by the detector's keypoints that
// ranked them.
func TestBurstAlignsEmbeddedFramesOnly(t *testing.T) {
	checkMats(t)
	p := newTestPipeline(t, "", "")
	if p.lm == nil {
		t.Skip("default pipeline has no landmark net")
	}
	fr := closeFrame640(t)
	burst := []visit.Frame{fr, fr, fr, fr, fr}
	for _, best := range []int{1, 3} {
		p.cfg.BestFrames = best
		var tt Timings
		d, err := p.PerceiveTimed(context.Background(), burst, &tt)
		if err != nil || d.Outcome != visit.FaceFound {
			t.Fatalf("best %d: %v %v", best, d.Outcome, err)
		}
		if tt.Aligned != best || d.Used != best {
			t.Errorf("best %d: landmark net ran on %d faces, %d used", best, tt.Aligned, d.Used)
		}
	}
	// A one-frame visit's template is the single image's, aligned by the
	// net; a crop aligned by the detector's keypoints differs.
	d, err := p.Perceive(context.Background(), burst[:1])
	if err != nil {
		t.Fatal(err)
	}
	f, err := p.FaceInFrame(fr, FaceOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	img, release, err := frameMat(fr)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	m, err := p.measureIn(img, nil, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.crop.Close()
	if err := p.embed(&m, 0, nil); err != nil {
		t.Fatal(err)
	}
	aligned, coarse := cosine(d.Embedding, f.Embedding), cosine(d.Embedding, m.face.Embedding)
	t.Logf("burst template vs single frame aligned by the net %.5f, by detector keypoints %.5f", aligned, coarse)
	if aligned < 0.9999 || coarse > 0.999 {
		t.Errorf("burst template at cosine %.5f of the net-aligned face, %.5f of the keypoint-aligned one", aligned, coarse)
	}
}

// A face that fills the whole image (a tight crop) is found by padding.
func TestTightCrop(t *testing.T) {
	checkMats(t)
	p := newTestPipeline(t, "", "")
	img, _ := gocv.IMDecode(sample(t, "sample1.jpg"), gocv.IMReadColor)
	defer img.Close()
	f, err := p.faceInMat(img, FaceOptions{}, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := image.Rect(int(f.Det.X0), int(f.Det.Y0), int(f.Det.X1), int(f.Det.Y1)).Intersect(image.Rect(0, 0, img.Cols(), img.Rows()))
	roi := img.Region(r)
	tight := roi.Clone()
	roi.Close()
	defer tight.Close()
	g, err := p.faceInMat(tight, FaceOptions{}, true, nil)
	if err != nil {
		t.Fatalf("tight crop %v: %v", r, err)
	}
	// The tight crop loses the hair and background the 1.8x crop sees, so
	// it is not identical; it must still be nearer to its own face than any
	// other person's face in the demo photos.
	same := cosine(f.Embedding, g.Embedding)
	for _, n := range []string{"sample2.jpg", "sample3.jpg", "sample4.jpg", "sample5.jpg", "sample6.jpg"} {
		h, err := p.FaceInImage(sample(t, n), FaceOptions{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if o := cosine(g.Embedding, h.Embedding); o >= same {
			t.Errorf("tight crop nearer to %s (cosine %.3f) than to its own face (%.3f)", n, o, same)
		}
	}
}

func TestCustomerIsLargestCentral(t *testing.T) {
	dets := []Detection{
		{X0: 0, Y0: 300, X1: 60, Y1: 360, Score: 0.9},    // small, corner
		{X0: 250, Y0: 150, X1: 390, Y1: 290, Score: 0.7}, // large, central
		{X0: 500, Y0: 0, X1: 640, Y1: 140, Score: 0.95},  // large, corner
	}
	d, ok := customer(dets, 640, 480)
	if !ok || d.X0 != 250 {
		t.Fatalf("customer %+v", d)
	}
	if _, ok := customer(nil, 640, 480); ok {
		t.Fatal("customer from no detections")
	}
}

func TestPaintMaskCoversLowerFace(t *testing.T) {
	checkMats(t)
	img := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(0, 0, 0, 0), 200, 200, gocv.MatTypeCV8UC3)
	defer img.Close()
	d := Detection{X0: 50, Y0: 40, X1: 150, Y1: 160, Score: 1, Points: [][2]float64{{80, 80}, {120, 80}, {100, 105}, {100, 125}}}
	if err := PaintMask(&img, d, 0); err != nil {
		t.Fatal(err)
	}
	at := func(x, y int) bool { v := img.GetVecbAt(y, x); return v[0]+v[1]+v[2] > 0 }
	if !at(100, 125) || !at(100, 135) {
		t.Error("mouth and chin not covered")
	}
	if at(80, 80) || at(120, 80) || at(100, 60) {
		t.Error("eyes or forehead covered")
	}
	if err := PaintMask(&img, Detection{X1: 10, Y1: 10}, 0); err == nil {
		t.Error("a detection without keypoints was painted")
	}
}

func TestNMS(t *testing.T) {
	dets := []Detection{{X0: 0, Y0: 0, X1: 10, Y1: 10, Score: 0.5}, {X0: 1, Y0: 1, X1: 11, Y1: 11, Score: 0.9}, {X0: 50, Y0: 50, X1: 60, Y1: 60, Score: 0.6}}
	k := nms(dets, 0.3)
	if len(k) != 2 || k[0].Score != 0.9 || k[1].Score != 0.6 {
		t.Fatalf("nms %+v", k)
	}
}

// The manifest's detection stage is a cascade: the 128-input detector
// decides a close, confident face; a wide scene with small faces goes to the
// 256-input detector, which then picks the same customer as it does alone.
func TestFastDetectorCascade(t *testing.T) {
	checkMats(t)
	_, man := modelsDir(t)
	if man.Pipeline.FastDetector == "" {
		t.Skip("the manifest's pipeline has no fast detector")
	}
	p := newTestPipeline(t, "", "")
	single := newTestPipeline(t, man.Pipeline.Detector, "")
	if want := man.Pipeline.FastDetector + ">" + man.Pipeline.Detector; p.Detector != want || single.Detector != man.Pipeline.Detector {
		t.Fatalf("detector stages %q and %q, want %q and %q", p.Detector, single.Detector, want, man.Pipeline.Detector)
	}

	wide := sample(t, "sample1.jpg") // six people, small faces
	var tw Timings
	f, err := p.FaceInImage(wide, FaceOptions{}, &tw)
	if err != nil {
		t.Fatal(err)
	}
	if tw.Full != 1 || tw.Fast != 0 {
		t.Errorf("wide photo: fast %d, full %d passes; want the main detector to decide", tw.Fast, tw.Full)
	}
	g, err := single.FaceInImage(wide, FaceOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if o := iou(f.Det, g.Det); o < 0.99 {
		t.Errorf("wide photo: cascade customer %+v differs from the main detector's %+v (IoU %.2f)", f.Det, g.Det, o)
	}

	// The same customer framed as an ATM camera sees him: the face fills
	// about 40% of the frame.
	img, _ := gocv.IMDecode(wide, gocv.IMReadColor)
	defer img.Close()
	side := 2.5 * math.Max(g.Det.W(), g.Det.H())
	cx, cy := (g.Det.X0+g.Det.X1)/2, (g.Det.Y0+g.Det.Y1)/2
	r := image.Rect(int(cx-side/2), int(cy-side/2), int(cx+side/2), int(cy+side/2)).Intersect(image.Rect(0, 0, img.Cols(), img.Rows()))
	roi := img.Region(r)
	close := roi.Clone()
	roi.Close()
	defer close.Close()
	var tc Timings
	h, err := p.faceInMat(close, FaceOptions{}, false, &tc)
	if err != nil {
		t.Fatal(err)
	}
	if tc.Fast != 1 || tc.Full != 0 {
		t.Errorf("close-up: fast %d, full %d passes; want the fast detector to decide", tc.Fast, tc.Full)
	}
	k, err := single.faceInMat(close, FaceOptions{}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if o := iou(h.Det, k.Det); o < 0.6 {
		t.Errorf("close-up: the two detectors found different faces (IoU %.2f)", o)
	}
	if c := cosine(h.Embedding, k.Embedding); c < 0.9 {
		t.Errorf("close-up: templates from the two detectors' boxes differ: cosine %.3f", c)
	}
}
