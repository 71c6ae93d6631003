package vision

import (
	"math"
	"testing"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/models"
)

// Mean and scale per channel apply in the input's colour order: here the
// torchvision form (x/255 - mean)/std the foamliu MobileFaceNet expects.
func TestBlobPerChannelMeanAndScale(t *testing.T) {
	checkMats(t)
	img := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(10, 20, 30, 0), 2, 2, gocv.MatTypeCV8UC3) // B, G, R
	defer img.Close()
	for _, tc := range []struct {
		color string
		want  [3]float64 // first pixel of each plane
	}{
		{"RGB", [3]float64{(30 - 1) * 0.1, (20 - 2) * 0.2, (10 - 3) * 0.3}},
		{"BGR", [3]float64{(10 - 1) * 0.1, (20 - 2) * 0.2, (30 - 3) * 0.3}},
	} {
		in := models.Input{Width: 2, Height: 2, Layout: "NCHW", Color: tc.color, Mean: []float64{1, 2, 3},
			Scale: models.PerChannel{0.1, 0.2, 0.3}, Resize: "stretch"}
		blob, _, err := makeBlob(img, in)
		if err != nil {
			t.Fatal(err)
		}
		for c := 0; c < 3; c++ {
			if got := float64(blob[c*4]); math.Abs(got-tc.want[c]) > 1e-5 {
				t.Errorf("%s channel %d: %v, want %v", tc.color, c, got, tc.want[c])
			}
		}
	}
	// One scale for all channels is unchanged.
	in := models.Input{Width: 2, Height: 2, Layout: "NCHW", Color: "RGB", Mean: []float64{127.5}, Scale: models.PerChannel{1 / 127.5}, Resize: "stretch"}
	blob, _, _ := makeBlob(img, in)
	if got, want := float64(blob[0]), (30-127.5)/127.5; math.Abs(got-want) > 1e-6 {
		t.Errorf("scalar scale: %v, want %v", got, want)
	}
}

// The ArcFace-style MobileFaceNets (ONNX as published, ONNX rewritten,
// TFLite converted) run through the pipeline from their manifest entries alone. foamliu comes from a URL source that a machine
// without its mirror or network cannot fetch: then `models build` leaves it
// out and this test skips it, saying so.
func TestArcFaceEmbedders(t *testing.T) {
	checkMats(t)
	_, man := modelsDir(t)
	for _, name := range []string{"faceplugin", "foamliu", "expo-mobilefacenet"} {
		t.Run(name, func(t *testing.T) {
			_, ok := man.Find(name)
			if !ok {
				t.Skipf("model %s is not in the built models dir: its source was not fetched (`make models` with the file in a --mirror directory, or network access, provisions it)", name)
			}
			p := newTestPipeline(t, "", name)
			embed := func(jpg []byte) []float32 {
				f, err := p.FaceInImage(jpg, FaceOptions{}, nil)
				if err != nil {
					t.Fatal(err)
				}
				if len(f.Embedding) != p.TemplateDim { // after the projection head, if any
					t.Fatalf("template of %d values, want %d", len(f.Embedding), p.TemplateDim)
				}
				return f.Embedding
			}
			a := embed(sample(t, "sample1.jpg"))
			m, _ := gocv.IMDecode(sample(t, "sample1.jpg"), gocv.IMReadColor)
			flipped := gocv.NewMat()
			gocv.Flip(m, &flipped, 1)
			buf, err := gocv.IMEncode(gocv.JPEGFileExt, flipped)
			m.Close()
			flipped.Close()
			if err != nil {
				t.Fatal(err)
			}
			mirrored := embed(buf.GetBytes())
			buf.Close()
			same := cosine(a, mirrored)
			for _, other := range []string{"sample2.jpg", "sample3.jpg", "sample4.jpg"} {
				if c := cosine(a, embed(sample(t, other))); c > same-0.2 {
					t.Errorf("%s: another person at cosine %.3f, the same face mirrored at %.3f", other, c, same)
				}
			}
			t.Logf("%s: same face mirrored cosine %.3f", name, same)
		})
	}
}

// Landmark alignment (manifest embedding.align) puts the five points where
// the detector's keypoints roughly are, and changes the crop: the eyes of the
// 68-point net lie within a fifth of the box of BlazeFace's, and the template
// of the same face stays close to the detector-aligned one without being it.
func TestLandmarkAlignment(t *testing.T) {
	checkMats(t)
	dir, man := modelsDir(t)
	if _, ok := man.Find("faceplugin"); !ok {
		t.Skip("faceplugin is not in the built models dir")
	}
	if _, ok := man.Find("faceapi-landmarks68"); !ok {
		t.Skip("faceapi-landmarks68 is not in the built models dir")
	}
	open := func(align string) *Pipeline {
		m := *man
		m.Models = append([]models.Model(nil), man.Models...)
		m.Pipeline.Landmarks = "faceapi-landmarks68"
		for i := range m.Models {
			if m.Models[i].Name == "faceplugin" {
				e := *m.Models[i].Embedding
				e.Align = align
				m.Models[i].Embedding = &e
			}
		}
		p, err := New(dir, &m, "", "faceplugin", DefaultConfig())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	det, lm := open(AlignDetector), open(AlignLandmarks)
	if lm.lm == nil || det.lm != nil {
		t.Fatal("only the landmark-aligned pipeline loads the landmark net")
	}
	for _, name := range []string{"sample1.jpg", "sample2.jpg", "sample3.jpg"} {
		a, err := det.FaceInImage(sample(t, name), FaceOptions{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := lm.FaceInImage(sample(t, name), FaceOptions{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(b.Det.Five) != 5 {
			t.Fatalf("%s: %d alignment points, want 5", name, len(b.Det.Five))
		}
		side := a.Det.W()
		for i, eye := range b.Det.Five[:2] {
			ref := a.Det.Points[i] // KpRightEye is image-left, as Five[0]
			if d := math.Hypot(eye[0]-ref[0], eye[1]-ref[1]); d > side/5 {
				t.Errorf("%s: landmark eye %d at %.0f px from the detector's (box %.0f px)", name, i, d, side)
			}
		}
		c := cosine(a.Embedding, b.Embedding)
		if c < 0.6 || c > 0.9999 {
			t.Errorf("%s: detector- and landmark-aligned templates at cosine %.4f, want close but distinct", name, c)
		}
		t.Logf("%s: cosine between alignments %.3f", name, c)
	}
}
