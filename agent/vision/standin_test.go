package vision

import (
	"fmt"
	"image"
	"image/color"
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/internal/testenv/standin"
)

// pattern is a deterministic picture of w x h coloured blocks (seeded), a
// stand-in for a face: what matters is that it is not flat gray.
func pattern(seed uint64, w, h int) gocv.Mat {
	rng := rand.New(rand.NewPCG(seed, 1))
	m := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(0, 0, 0, 0), h, w, gocv.MatTypeCV8UC3)
	for y := 0; y < h; y += 12 {
		for x := 0; x < w; x += 12 {
			c := color.RGBA{uint8(rng.IntN(256)), uint8(rng.IntN(256)), uint8(rng.IntN(256)), 255}
			gocv.Rectangle(&m, image.Rect(x, y, x+12, y+12), c, -1)
		}
	}
	return m
}

// onCanvas pastes pic on a w x h gray canvas over the rectangle r.
func onCanvas(pic gocv.Mat, w, h int, r [4]int) gocv.Mat {
	c := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(standin.Gray, standin.Gray, standin.Gray, 0), h, w, gocv.MatTypeCV8UC3)
	fit := gocv.NewMat()
	defer fit.Close()
	gocv.Resize(pic, &fit, image.Pt(r[2]-r[0], r[3]-r[1]), 0, 0, gocv.InterpolationArea)
	roi := c.Region(image.Rect(r[0], r[1], r[2], r[3]))
	fit.CopyTo(&roi)
	roi.Close()
	return c
}

func encodePNG(t *testing.T, m gocv.Mat) []byte {
	t.Helper()
	buf, err := gocv.IMEncode(gocv.PNGFileExt, m)
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Close()
	return append([]byte(nil), buf.GetBytes()...)
}

// The original project's model formats run through the project's own
// Caffe and Torch paths (LoadNet, the opencv-ssd decoder, the original
// crop, the embedder) with the stand-ins written by internal/testenv/standin:
// the detector's box is the pasted picture's rectangle in image pixels, and
// the templates are 128-d, unit length, the same for the same crop and
// different for another picture.
func TestStandinOriginalModels(t *testing.T) {
	checkMats(t)
	dir := t.TempDir()
	man, err := standin.WriteModelsDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	// The stand-in detector boxes cells of a grid laid over the whole
	// image, so the padded second pass of an image file would box a cell
	// of the padded image: no padding here.
	cfg := DefaultConfig()
	cfg.PadTight = 0
	p, err := New(dir, man, "", "", cfg)
	if err != nil {
		t.Fatalf("load the Caffe detector and the Torch embedder: %v", err)
	}
	defer p.Close()

	const w, h = 800, 600
	face := func(seed uint64, col, row int, gain float64) ([4]int, Face) {
		t.Helper()
		pic := pattern(seed, 120, 150)
		defer pic.Close()
		if gain != 1 {
			pic.ConvertToWithParams(&pic, gocv.MatTypeCV8UC3, float32(gain), 0)
		}
		r := standin.Canvas(w, h, col, row)
		img := onCanvas(pic, w, h, r)
		defer img.Close()
		f, err := p.FaceInImage(encodePNG(t, img), FaceOptions{Thumb: 32}, nil)
		if err != nil {
			t.Fatalf("picture %d at cell (%d,%d): %v", seed, col, row, err)
		}
		return r, f
	}
	r, a := face(1, 2, 1, 1)
	box := [4]float64{a.Det.X0, a.Det.Y0, a.Det.X1, a.Det.Y1}
	for i := range box {
		if math.Abs(box[i]-float64(r[i])) > 0.5 {
			t.Fatalf("box %v, want the picture's rectangle %v", box, r)
		}
	}
	if a.Det.Score < 0.5 {
		t.Errorf("score %.3f", a.Det.Score)
	}
	if len(a.Embedding) != 128 {
		t.Fatalf("template of %d values, want 128", len(a.Embedding))
	}
	if n := math.Sqrt(cosine(a.Embedding, a.Embedding)); math.Abs(n-1) > 1e-5 {
		t.Errorf("template norm %v", n)
	}
	_, moved := face(1, 6, 1, 1)    // the same row: the same original crop
	_, darker := face(1, 2, 1, 0.6) // the projection ignores the scale
	_, other := face(2, 2, 1, 1)
	t.Logf("cosine to the same picture moved %.4f, darker %.4f, another picture %.4f",
		cosine(a.Embedding, moved.Embedding), cosine(a.Embedding, darker.Embedding), cosine(a.Embedding, other.Embedding))
	if c := cosine(a.Embedding, moved.Embedding); c < 0.99 {
		t.Errorf("same picture, moved: cosine %.4f", c)
	}
	if c := cosine(a.Embedding, darker.Embedding); c < 0.99 {
		t.Errorf("same picture, darker: cosine %.4f", c)
	}
	if c := cosine(a.Embedding, other.Embedding); c > 0.5 {
		t.Errorf("another picture: cosine %.4f", c)
	}

	// The preprocessing is res10's and OpenFace's: the detector's score
	// of flat gray and of a flat colour over exactly 3x3 cells is the one
	// computed in Go for BGR minus the mean 104,177,123 (its weights are
	// unequal per channel: the colours in the wrong order or another mean
	// give another score).
	blank := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(standin.Gray, standin.Gray, standin.Gray, 0), h, w, gocv.MatTypeCV8UC3)
	defer blank.Close()
	dets, err := p.det.Detect(blank)
	if err != nil || len(dets) != 1 || math.Abs(dets[0].Score-standin.Score(128, 128, 128)) > 1e-4 {
		t.Errorf("flat gray: %v %+v, want one box scoring %.4f", err, dets, standin.Score(128, 128, 128))
	}
	if _, err := p.FaceInImage(encodePNG(t, blank), FaceOptions{}, nil); err != ErrNoFace {
		t.Errorf("flat gray: %v, want no face", err)
	}
	r = standin.Canvas(w, h, 4, 5)
	patch := blank.Region(image.Rect(r[0], r[1], r[2], r[3]))
	patch.SetTo(gocv.NewScalar(150, 128, 100, 0))
	patch.Close()
	dets, err = p.det.Detect(blank)
	want, swapped := standin.Score(150, 128, 100), standin.Score(100, 128, 150)
	if err != nil || len(dets) != 1 || math.Abs(dets[0].Score-want) > 1e-4 {
		t.Errorf("flat colour: %v %+v, want one box scoring %.4f (%.4f with the colours swapped)", err, dets, want, swapped)
	} else if d := dets[0]; math.Abs(d.X0-float64(r[0])) > 0.5 || math.Abs(d.Y1-float64(r[3])) > 0.5 {
		t.Errorf("flat colour: box %+v, want %v", d, r)
	}

	// The .t7 run by OpenCV's Torch importer gives the template computed
	// in Go from the crop fed RGB / 255 (nn4.small2.v1's input).
	crop := pattern(3, 96, 96)
	defer crop.Close()
	got, _, err := p.emb.EmbedCrop(crop, 0)
	if err != nil {
		t.Fatal(err)
	}
	px := crop.ToBytes()
	rgb, bgr := make([]float32, 3*96*96), make([]float32, 3*96*96)
	for i := 0; i < 96*96; i++ {
		for c := 0; c < 3; c++ {
			rgb[c*96*96+i] = float32(px[3*i+2-c]) / 255
			bgr[c*96*96+i] = float32(px[3*i+c]) / 255
		}
	}
	diff := func(a, b []float32) float64 {
		var m float64
		for i := range a {
			m = math.Max(m, math.Abs(float64(a[i]-b[i])))
		}
		return m
	}
	ref := standin.OpenFaceReference(rgb)
	t.Logf("template vs Go reference: max abs diff %.2g (%.2g with the colours swapped)", diff(got, ref), diff(got, standin.OpenFaceReference(bgr)))
	if d := diff(got, ref); d > 1e-5 {
		t.Errorf("template differs from the Go reference by %g", d)
	}
}

// Pipelines loaded while others run forwards (cluster's workers load
// theirs lazily, with allocations that make the collector run): every
// forward gives the same result as alone. It caught two bugs of every
// model, not only these: Net.Forward's input Mat wrapped the blob's memory
// (gocv's FromBytes constructors do not copy) and nothing kept the blob
// alive, so the collector could free it mid-forward for another goroutine
// to overwrite (6 of 8 runs had a wrong score, e.g. 0.684 or 0.949 for
// 0.982; the cluster test once found no face in a photo); and each load's
// cv::setNumThreads tore down OpenCV's TBB arena under the running
// forwards (1 run in 15 crashed with SIGSEGV). With the blob kept alive
// and an unchanged thread count not set again: 25 runs of 25 clean.
func TestPipelinesLoadWhileOthersRun(t *testing.T) {
	dir := t.TempDir()
	man, err := standin.WriteModelsDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	const w, h = 600, 800
	pic := pattern(1, 120, 150)
	img := onCanvas(pic, w, h, standin.Canvas(w, h, 1, 1))
	png := encodePNG(t, img)
	pic.Close()
	img.Close()
	p, err := New(dir, man, "", "", DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	ref, err := p.FaceInImage(png, FaceOptions{}, nil)
	p.Close()
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		bad []string
	)
	for round := 0; round < 100; round++ {
		var wg sync.WaitGroup
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p, err := New(dir, man, "", "", DefaultConfig())
				if err != nil {
					t.Error(err)
					return
				}
				defer p.Close()
				for range 3 {
					f, err := p.FaceInImage(png, FaceOptions{}, nil)
					if err != nil || f.Det.Score != ref.Det.Score || cosine(f.Embedding, ref.Embedding) < 0.99999 {
						mu.Lock()
						bad = append(bad, fmt.Sprintf("round %d: %v, score %.4f (alone %.4f)", round, err, f.Det.Score, ref.Det.Score))
						mu.Unlock()
					}
				}
			}()
		}
		wg.Wait()
	}
	if len(bad) > 0 {
		t.Errorf("%d of 600 forwards differ from the same forward alone: %v", len(bad), bad)
	}
}
