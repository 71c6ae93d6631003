package golden

import (
	"math"
	"testing"

	"github.com/periocular/atm-agent/agent/vision/facedecode"
	"github.com/periocular/atm-agent/models/faceapi"
)

// Tolerances on the maximum absolute difference against TF.js.
const (
	faTolDetector  = 1e-4
	faTolLandmarks = 1e-4
	faTolEmbedding = 1e-5
)

type faDet struct {
	Score, X, Y, Width, Height float64
}

// faCompareDets compares Go-decoded detections (relative boxes scaled by
// size) with face-api's, in order.
func faCompareDets(t *testing.T, got []facedecode.Detection, want []faDet, size float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d detections, face-api has %d", len(got), len(want))
	}
	maxScore, maxPix := 0.0, 0.0
	for i, g := range got {
		w := want[i]
		b := g.Box.Scale(size, size)
		maxScore = math.Max(maxScore, math.Abs(g.Score-w.Score))
		for _, d := range []float64{b.X1 - w.X, b.Y1 - w.Y, b.Width() - w.Width, b.Height() - w.Height} {
			maxPix = math.Max(maxPix, math.Abs(d))
		}
	}
	t.Logf("%d detections: max abs diff score %.3g, box %.3g px", len(got), maxScore, maxPix)
	if maxScore > faTolDetector {
		t.Errorf("detection scores differ by %g > %g", maxScore, faTolDetector)
	}
	// Box sides come from exp() of logits; allow 1e-4 of the input side.
	if maxPix > faTolDetector*size {
		t.Errorf("detection boxes differ by %g px > %g", maxPix, faTolDetector*size)
	}
}

func TestFaceAPITinyFaceDetectorGolden(t *testing.T) {
	pkg := faPkgDir(t)
	var g struct {
		Cases []struct {
			Seed           uint32
			Size           int
			OutputShape    []int
			Output         string
			ScoreThreshold float64
			Detections     []faDet
		}
	}
	faLoadGolden(t, "tiny_face_detector", &g)
	if len(g.Cases) == 0 {
		t.Fatal("no golden cases")
	}
	for _, c := range g.Cases {
		model, err := faceapi.TinyFaceDetectorSize(pkg, c.Size)
		if err != nil {
			t.Fatal(err)
		}
		net := faNet(t, model)
		outs, shapes := faForward(t, &net, c.Size, faRandomNCHW(c.Seed, c.Size), faceapi.TinyOutput)
		net.Close()
		gr := c.OutputShape[1]
		if !faSameShape(shapes[0], []int{1, 25, gr, gr}) {
			t.Fatalf("size %d: output shape %v, want [1 25 %d %d]", c.Size, shapes[0], gr, gr)
		}
		// Golden is NHWC; ours NCHW.
		want := faFloats(t, c.Output)
		nchw := make([]float32, len(want))
		for y := 0; y < gr; y++ {
			for x := 0; x < gr; x++ {
				for ch := 0; ch < 25; ch++ {
					nchw[(ch*gr+y)*gr+x] = want[(y*gr+x)*25+ch]
				}
			}
		}
		d := faMaxAbs(t, outs[0], nchw)
		t.Logf("tiny_face_detector %d seed %d: max abs diff %.3g over %d values", c.Size, c.Seed, d, len(nchw))
		if d > faTolDetector {
			t.Errorf("tiny_face_detector %d: max abs diff %g > %g", c.Size, d, faTolDetector)
		}
		dets, err := facedecode.DecodeTinyFaceDetector(outs[0], shapes[0], c.ScoreThreshold, facedecode.TinyIOUThreshold)
		if err != nil {
			t.Fatal(err)
		}
		faCompareDets(t, dets, c.Detections, float64(c.Size))
	}
	faCheckMats(t)
}

func TestFaceAPISSDMobilenetV1Golden(t *testing.T) {
	pkg := faPkgDir(t)
	var g struct {
		Cases []struct {
			Seed          uint32
			Size          int
			Boxes, Scores string
			MinConfidence float64
			MaxResults    int
			Detections    []faDet
		}
	}
	faLoadGolden(t, "ssd_mobilenetv1", &g)
	if len(g.Cases) == 0 {
		t.Fatal("no golden cases")
	}
	model, err := faceapi.SSDMobilenetV1(pkg)
	if err != nil {
		t.Fatal(err)
	}
	anchors, err := faceapi.SSDAnchors(pkg)
	if err != nil {
		t.Fatal(err)
	}
	net := faNet(t, model)
	defer net.Close()
	for _, c := range g.Cases {
		outs, shapes := faForward(t, &net, c.Size, faRandomNCHW(c.Seed, c.Size), faceapi.SSDBoxEncodings, faceapi.SSDClassLogits)
		n := faceapi.SSDNumAnchors
		if !faSameShape(shapes[0], []int{1, n, 4}) || !faSameShape(shapes[1], []int{1, n, 3}) {
			t.Fatalf("output shapes %v %v", shapes[0], shapes[1])
		}
		boxes, err := facedecode.SSDDecodeBoxes(outs[0], anchors)
		if err != nil {
			t.Fatal(err)
		}
		scores, err := facedecode.SSDScores(outs[1])
		if err != nil {
			t.Fatal(err)
		}
		db := faMaxAbs(t, boxes, faFloats(t, c.Boxes))
		ds := faMaxAbs(t, scores, faFloats(t, c.Scores))
		t.Logf("ssd_mobilenetv1 seed %d: max abs diff boxes %.3g, scores %.3g", c.Seed, db, ds)
		if db > faTolDetector || ds > faTolDetector {
			t.Errorf("ssd_mobilenetv1: max abs diff boxes %g, scores %g > %g", db, ds, faTolDetector)
		}
		dets, err := facedecode.DecodeSSD(outs[0], outs[1], anchors, c.MinConfidence, facedecode.SSDIOUThreshold, c.MaxResults)
		if err != nil {
			t.Fatal(err)
		}
		faCompareDets(t, dets, c.Detections, float64(c.Size))
	}
	net.Close()
	faCheckMats(t)
}

func TestFaceAPIFaceLandmark68Golden(t *testing.T) {
	pkg := faPkgDir(t)
	var g struct {
		Cases []struct {
			Seed      uint32
			Size      int
			Landmarks []float32
		}
	}
	faLoadGolden(t, "face_landmark_68", &g)
	if len(g.Cases) == 0 {
		t.Fatal("no golden cases")
	}
	model, err := faceapi.FaceLandmark68(pkg)
	if err != nil {
		t.Fatal(err)
	}
	net := faNet(t, model)
	defer net.Close()
	for _, c := range g.Cases {
		outs, shapes := faForward(t, &net, c.Size, faRandomNCHW(c.Seed, c.Size), faceapi.LandmarkOutput)
		if !faSameShape(shapes[0], []int{1, 136}) {
			t.Fatalf("output shape %v", shapes[0])
		}
		d := faMaxAbs(t, outs[0], c.Landmarks)
		pts, err := facedecode.Landmarks68(outs[0], c.Size, c.Size)
		if err != nil {
			t.Fatal(err)
		}
		dp := 0.0
		for i, p := range pts {
			dp = math.Max(dp, math.Max(math.Abs(p.X-float64(c.Landmarks[2*i])*float64(c.Size)), math.Abs(p.Y-float64(c.Landmarks[2*i+1])*float64(c.Size))))
		}
		t.Logf("face_landmark_68 seed %d: max abs diff %.3g (relative), %.3g px at %d", c.Seed, d, dp, c.Size)
		if d > faTolLandmarks {
			t.Errorf("face_landmark_68: max abs diff %g > %g", d, faTolLandmarks)
		}
		if dp > faTolLandmarks*float64(c.Size) {
			t.Errorf("face_landmark_68: points differ by %g px", dp)
		}
	}
	net.Close()
	faCheckMats(t)
}

func TestFaceAPIFaceRecognitionGolden(t *testing.T) {
	pkg := faPkgDir(t)
	var g struct {
		Cases []struct {
			Seed       uint32
			Size       int
			Descriptor []float32
		}
	}
	faLoadGolden(t, "face_recognition", &g)
	if len(g.Cases) == 0 {
		t.Fatal("no golden cases")
	}
	model, err := faceapi.FaceRecognition(pkg)
	if err != nil {
		t.Fatal(err)
	}
	net := faNet(t, model)
	defer net.Close()
	for _, c := range g.Cases {
		outs, shapes := faForward(t, &net, c.Size, faRandomNCHW(c.Seed, c.Size), faceapi.DescriptorOutput)
		if !faSameShape(shapes[0], []int{1, 128}) {
			t.Fatalf("output shape %v", shapes[0])
		}
		d := faMaxAbs(t, outs[0], c.Descriptor)
		t.Logf("face_recognition seed %d: max abs diff %.3g", c.Seed, d)
		if d > faTolEmbedding {
			t.Errorf("face_recognition: max abs diff %g > %g", d, faTolEmbedding)
		}
	}
	net.Close()
	faCheckMats(t)
}
