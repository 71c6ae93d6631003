package vision

import (
	"errors"
	"image"
	"math"
	"testing"

	"gocv.io/x/gocv"
)

// tightMaskedCrop paints a mask on the customer's face in a demo photo and
// cuts the face the way rmfrd's crops are cut: a square of scale detector
// box sides around the box, resized to 160x160. It returns the crop and
// the face box in the crop's pixels.
func tightMaskedCrop(t *testing.T, p *Pipeline, name string, scale float64) (gocv.Mat, Detection) {
	t.Helper()
	img, err := gocv.IMDecode(sample(t, name), gocv.IMReadColor)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	d, ok, _, err := p.detectCustomer(img, false, nil)
	if err != nil || !ok {
		t.Fatalf("%s: no face (%v)", name, err)
	}
	if err := PaintMask(&img, d, 0); err != nil {
		t.Fatal(err)
	}
	side := scale * math.Max(d.W(), d.H())
	cx, cy := (d.X0+d.X1)/2, (d.Y0+d.Y1)/2
	k := 160 / side
	crop := warp(img, k, 0, -k*(cx-side/2), 0, k, -k*(cy-side/2), 160)
	face := Detection{X0: k * (d.X0 - cx + side/2), Y0: k * (d.Y0 - cy + side/2), X1: k * (d.X1 - cx + side/2), Y1: k * (d.Y1 - cy + side/2)}
	return crop, face
}

// A masked face cut as tightly as rmfrd's crops: the detectors, trained on
// scenes, box a part of it (an eye and the mask's top: IoU 0.2-0.5 with the
// face). An image file is also searched padded when its face is large and
// keeps the larger face, which is the whole one; a camera frame is not
// (its scene gives the detector context, and the second pass costs time).
func TestTightMaskedCropFoundWhole(t *testing.T) {
	checkMats(t)
	p := newTestPipeline(t, "", "")
	for _, n := range []string{"sample3.jpg", "sample5.jpg", "sample6.jpg"} {
		for _, sc := range []float64{1.0, 1.1, 1.2} {
			crop, face := tightMaskedCrop(t, p, n, sc)
			cam, _, _, err := p.detectCustomer(crop, false, nil)
			if err != nil {
				t.Fatal(err)
			}
			still, ok, padded, err := p.detectCustomer(crop, true, nil)
			crop.Close()
			if err != nil || !ok {
				t.Fatalf("%s x%.1f: no face (%v)", n, sc, err)
			}
			t.Logf("%s x%.1f: camera frame IoU %.2f, image file IoU %.2f (padded %v)", n, sc, iou(cam, face), iou(still, face), padded)
			if o := iou(still, face); o < 0.6 {
				t.Errorf("%s x%.1f: the image file's face box %+v covers the face %+v at IoU %.2f, want >= 0.6", n, sc, still, face, o)
			}
		}
	}
}

// A large photo is scaled down before it is padded; the face found there
// is mapped back to the photo's pixels: the same tight crop at 160 and at
// 2000 pixels gives the same face box, scaled.
func TestTightCropLargePhotoPaddedScaled(t *testing.T) {
	checkMats(t)
	p := newTestPipeline(t, "", "")
	crop, face := tightMaskedCrop(t, p, "sample3.jpg", 1.1)
	defer crop.Close()
	small, ok, padded, err := p.detectCustomer(crop, true, nil)
	if err != nil || !ok || !padded {
		t.Fatalf("160 px crop: ok %v padded %v err %v", ok, padded, err)
	}
	const side = 2000
	big := gocv.NewMat()
	defer big.Close()
	gocv.Resize(crop, &big, image.Pt(side, side), 0, 0, gocv.InterpolationLinear)
	d, ok, padded, err := p.detectCustomer(big, true, nil)
	if err != nil || !ok || !padded {
		t.Fatalf("%d px copy: ok %v padded %v err %v", side, ok, padded, err)
	}
	back := d.mapped(160.0/side, 0, 0)
	if o := iou(back, small); o < 0.9 {
		t.Errorf("%d px copy: face %+v, scaled back %+v; the 160 px crop's %+v (IoU %.2f)", side, d, back, small, o)
	}
	if o := iou(back, face); o < 0.6 {
		t.Errorf("%d px copy: the face box covers the face at IoU %.2f", side, o)
	}
	if len(d.Points) == 0 || d.Points[0][0] < 0 || d.Points[0][0] > side {
		t.Errorf("%d px copy: keypoints not mapped to the photo: %v", side, d.Points)
	}
}

// An image file far wider than tall (or taller than wide) in which nothing
// is found is padded too; scaled down to padMaxSide its short side rounds
// to 0 pixels, and cv::resize to a 0-pixel size threw a C++ exception that
// aborted the process (atm-tools cluster over a folder holding a 2561x1
// banner). It must come out as no face.
func TestPaddedPassExtremeAspect(t *testing.T) {
	checkMats(t)
	p := newTestPipeline(t, "", "")
	for _, sz := range []image.Point{{2561, 1}, {1, 2561}, {6000, 2}, {5000, 20}, {10, 10}, {1, 1}} {
		img := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(90, 120, 150, 0), sz.Y, sz.X, gocv.MatTypeCV8UC3)
		buf, err := gocv.IMEncode(gocv.PNGFileExt, img)
		img.Close()
		if err != nil {
			t.Fatal(err)
		}
		data := append([]byte(nil), buf.GetBytes()...)
		buf.Close()
		if _, err := p.FaceInImage(data, FaceOptions{}, nil); !errors.Is(err, ErrNoFace) {
			t.Errorf("%dx%d uniform image: %v, want ErrNoFace", sz.X, sz.Y, err)
		}
	}
}

// sizeDetector records the longest side of the image its detector was
// last run on and how many times it ran.
type sizeDetector struct {
	Detector
	side, runs int
}

func (s *sizeDetector) Detect(img gocv.Mat) ([]Detection, error) {
	s.side, s.runs = max(img.Cols(), img.Rows()), s.runs+1
	return s.Detector.Detect(img)
}

// Every face of a photo (FacesInImage: atm-tools cluster --faces all) in
// which nothing is found is searched padded as well; a large photo is
// scaled down first there too, as for the customer's face: a 49 MP photo
// padded at full size cost 850 MB (4x its pixels) for nothing.
func TestAllFacesPaddedPassScaled(t *testing.T) {
	checkMats(t)
	p := newTestPipeline(t, "", "")
	sd := &sizeDetector{Detector: p.det}
	p.det = sd
	img := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(90, 120, 150, 0), 2000, 3001, gocv.MatTypeCV8UC3)
	buf, err := gocv.IMEncode(gocv.JPEGFileExt, img)
	img.Close()
	if err != nil {
		t.Fatal(err)
	}
	data := append([]byte(nil), buf.GetBytes()...)
	buf.Close()
	if _, err := p.FacesInImage(data, FaceOptions{}, nil); !errors.Is(err, ErrNoFace) {
		t.Fatalf("uniform photo: %v, want ErrNoFace", err)
	}
	if want := int(p.cfg.PadTight * padMaxSide); sd.runs != 2 || sd.side > want {
		t.Errorf("%d detector passes, the last on a %d px image; want 2, the padded one at most %d px", sd.runs, sd.side, want)
	}
}

// Every face of an image file (--faces all): on a tight masked crop the
// first pass finds parts of the one face (an eye, the mask's top); the
// whole face found in the padded image replaces its parts.
func TestAllFacesTightCropOneWhole(t *testing.T) {
	checkMats(t)
	p := newTestPipeline(t, "", "")
	for _, n := range []string{"sample3.jpg", "sample5.jpg", "sample6.jpg"} {
		crop, face := tightMaskedCrop(t, p, n, 1.0)
		faces, err := p.FacesInImage(encodePNG(t, crop), FaceOptions{}, nil)
		crop.Close()
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		var ious []float64
		for _, f := range faces {
			ious = append(ious, iou(f.Det, face))
		}
		t.Logf("%s: %d faces, IoU with the face %.2f", n, len(faces), ious)
		// IoU 0.5 is the usual criterion for a detection matching a face
		// (PASCAL VOC); the parts reach 0.09-0.36.
		if len(faces) != 1 || ious[0] < 0.5 {
			t.Errorf("%s: %d faces at IoU %.2f with the one face; want it once, whole (IoU >= 0.5)", n, len(faces), ious)
		}
	}
}
