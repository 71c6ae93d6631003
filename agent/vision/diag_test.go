package vision

import "testing"

// The rmfrd-style re-cut hands the pipeline a 160x160 image that is the face
// box, and the view shows the embedder's input size.
func TestRecropView(t *testing.T) {
	checkMats(t)
	p := newTestPipeline(t, "", "")
	jpg := sample(t, "sample1.jpg")
	whole, err := p.ViewCrop(jpg, RecropNone)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []Recrop{RecropTight, RecropTightStretch} {
		v, err := p.ViewCrop(jpg, r)
		if err != nil {
			t.Fatalf("%s: %v", r, err)
		}
		if b := v.Input.Bounds(); b.Dx() != recropSize || b.Dy() != recropSize {
			t.Errorf("%s: input %v, want %dx%d", r, b, recropSize, recropSize)
		}
		if v.Crop.Bounds() != whole.Crop.Bounds() {
			t.Errorf("%s: crop %v, want the embedder's %v", r, v.Crop.Bounds(), whole.Crop.Bounds())
		}
		// The face fills the re-cut image: its box covers most of it.
		if frac := v.Face.W() * v.Face.H() / (recropSize * recropSize); frac < 0.4 {
			t.Errorf("%s: face covers %.2f of the re-cut image", r, frac)
		}
		if _, err := p.FaceInRecrop(jpg, r, nil); err != nil {
			t.Errorf("%s: %v", r, err)
		}
	}
	if _, err := ParseRecrop("loose"); err == nil {
		t.Error("an unknown recrop kind was accepted")
	}
}
