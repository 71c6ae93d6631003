package vision

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/periocular/atm-agent/internal/imagecheck"
	"github.com/periocular/atm-agent/models"
)

// The five alignment points come from the face mesh's own indices: each
// eye the mean of its corners and lids, in image pixels.
func TestMeshFive(t *testing.T) {
	o := make([]float32, 468*3)
	set := func(i int, x, y float32) { o[3*i], o[3*i+1] = x, y }
	for _, i := range []int{33, 133, 159, 145} {
		set(i, 40, 80)
	}
	set(33, 36, 80) // outer corner
	set(133, 44, 80)
	for _, i := range []int{263, 362, 386, 374} {
		set(i, 120, 82)
	}
	set(1, 80, 110)
	set(61, 55, 140)
	set(291, 105, 141)
	got, err := meshFive(o, 100, 200, 0.5)
	if err != nil {
		t.Fatal(err)
	}
	want := [][2]float64{{120, 240}, {160, 241}, {140, 255}, {127.5, 270}, {152.5, 270.5}}
	for i := range want {
		if math.Abs(got[i][0]-want[i][0]) > 1e-9 || math.Abs(got[i][1]-want[i][1]) > 1e-9 {
			t.Errorf("point %d: %v, want %v", i, got[i], want[i])
		}
	}
	if _, err := meshFive(o[:136], 0, 0, 1); err == nil || !strings.Contains(err.Error(), "1404") {
		t.Errorf("68-point output read as a mesh: err %v", err)
	}
}

// On real faces the mesh and the 68-point net put the eyes, nose and mouth
// in the same places: for the median face within a few hundredths of the
// box width (a turned head can be far off in either).
func TestMeshAgreesWith68(t *testing.T) {
	checkMats(t)
	dir, man := modelsDir(t)
	p := newTestPipeline(t, "", "")
	load := func(name string) *landmarker {
		md, ok := man.Find(name)
		if !ok {
			t.Fatalf("%s is not in the built models", name)
		}
		l, err := newLandmarker(dir, md)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return l
	}
	l68, mesh := load("faceapi-landmarks68"), load("facemesh")
	var errs []float64
	for _, f := range []string{"sample1.jpg", "sample2.jpg", "sample3.jpg"} {
		img, err := DecodeImage(sample(t, f), imagecheck.Limits{Formats: imagecheck.FormatsOpenCV})
		if err != nil {
			t.Fatal(err)
		}
		dets, err := p.det.Detect(img)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range dets {
			if d.Score < 0.7 {
				continue
			}
			a, err := l68.five(img, d)
			if err != nil {
				t.Fatal(err)
			}
			b, err := mesh.five(img, d)
			if err != nil {
				t.Fatal(err)
			}
			var e float64
			for i := range a {
				e += math.Hypot(a[i][0]-b[i][0], a[i][1]-b[i][1]) / d.W() / 5
			}
			errs = append(errs, e)
		}
		img.Close()
	}
	if len(errs) < 5 {
		t.Fatalf("only %d faces compared", len(errs))
	}
	slices.Sort(errs)
	if med := errs[len(errs)/2]; med > 0.04 {
		t.Errorf("median face: mesh and 68-point points %.3f box widths apart (all: %.3f)", med, errs)
	}
	if _, err := newLandmarker(dir, &models.Model{Name: "x", Task: models.TaskLandmarks, Decode: "landmarks5"}); err == nil {
		t.Error("a landmark decode the pipeline cannot read was accepted")
	}
}
