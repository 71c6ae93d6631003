package vision

import (
	"image"
	"image/color"
	"math"
	"testing"

	"gocv.io/x/gocv"
)

// faceAt places the ArcFace template in an image: scaled by k, rotated by
// deg about the origin, shifted by (ox, oy). Points in BlazeFace order
// (subject's right eye = image left, left eye, nose, mouth centre).
func faceAt(k, deg, ox, oy float64) Detection {
	t := arcface112
	pts := [][2]float64{t[0], t[1], t[2], {(t[3][0] + t[4][0]) / 2, (t[3][1] + t[4][1]) / 2}}
	r := deg * math.Pi / 180
	var d Detection
	for _, p := range pts {
		x, y := k*p[0], k*p[1]
		d.Points = append(d.Points, [2]float64{ox + x*math.Cos(r) - y*math.Sin(r), oy + x*math.Sin(r) + y*math.Cos(r)})
	}
	d.X0, d.Y0, d.X1, d.Y1 = ox, oy, ox+112*k, oy+112*k
	return d
}

func TestSimilarityRecoversTransform(t *testing.T) {
	d := faceAt(2.5, 20, 40, 30)
	src, dst := arcfacePoints(d, AlignDetector)
	if len(src) != 4 {
		t.Fatalf("%d point pairs, want 4 (eyes, nose, mouth)", len(src))
	}
	a, b, tx, ty, ok := similarity(src, dst)
	if !ok {
		t.Fatal("no fit")
	}
	if s := math.Hypot(a, b); math.Abs(s-1/2.5) > 1e-9 {
		t.Errorf("scale %v, want 0.4", s)
	}
	for i := range src {
		x := a*src[i][0] - b*src[i][1] + tx
		y := b*src[i][0] + a*src[i][1] + ty
		if math.Hypot(x-dst[i][0], y-dst[i][1]) > 1e-9 {
			t.Errorf("point %d maps to (%.3f,%.3f), want %v", i, x, y, dst[i])
		}
	}
	// Swapped eye order (another detector's convention) gives the same pairs.
	d.Points[KpRightEye], d.Points[KpLeftEye] = d.Points[KpLeftEye], d.Points[KpRightEye]
	src2, _ := arcfacePoints(d, AlignDetector)
	if src2[0] != src[0] || src2[1] != src[1] {
		t.Error("eyes not ordered image-left first")
	}
	if _, _, _, _, ok := similarity([][2]float64{{5, 5}, {5.1, 5}}, [][2]float64{{0, 0}, {1, 0}}); ok {
		t.Error("degenerate points accepted")
	}
}

func TestCropArcFacePutsLandmarksOnTemplate(t *testing.T) {
	checkMats(t)
	img := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(0, 0, 0, 0), 480, 640, gocv.MatTypeCV8UC3)
	defer img.Close()
	d := faceAt(2, -15, 200, 150)
	// A white disc on each keypoint.
	for _, p := range d.Points {
		gocv.Circle(&img, image.Pt(int(math.Round(p[0])), int(math.Round(p[1]))), 5, color.RGBA{255, 255, 255, 0}, -1)
	}
	for _, tc := range []struct {
		scale float64
	}{{1}, {1.25}} {
		crop := cropArcFace(img, d, AlignDetector, tc.scale, 112)
		if crop.Rows() != 112 || crop.Cols() != 112 {
			t.Fatalf("crop %dx%d", crop.Cols(), crop.Rows())
		}
		tp := arcface112
		want := [][2]float64{tp[0], tp[1], tp[2], {(tp[3][0] + tp[4][0]) / 2, (tp[3][1] + tp[4][1]) / 2}}
		for i, w := range want {
			x := 56 + (w[0]-56)/tc.scale
			y := 56 + (w[1]-56)/tc.scale
			if v := crop.GetVecbAt(int(math.Round(y)), int(math.Round(x)))[0]; v < 200 {
				t.Errorf("scale %v: keypoint %d: pixel at template (%.1f,%.1f) is %d, want white", tc.scale, i, x, y, v)
			}
		}
		// Between the eyes (no disc) stays dark: the crop is not just white.
		if v := crop.GetVecbAt(40, 56)[0]; v > 50 {
			t.Errorf("scale %v: forehead pixel %d, want dark", tc.scale, v)
		}
		crop.Close()
	}
	// No keypoints: a box crop of the right size, no panic.
	crop := cropArcFace(img, Detection{X0: 10, Y0: 10, X1: 110, Y1: 110}, AlignDetector, 1, 112)
	if crop.Rows() != 112 {
		t.Errorf("fallback crop %dx%d", crop.Cols(), crop.Rows())
	}
	crop.Close()
}

// A detector without keypoints (res10, face-api's SSD and tiny) and an
// embedder aligned by the landmark net: the crop follows the landmarks'
// five points, as with a detector that has keypoints, not the box.
func TestArcFaceLandmarksWithoutKeypoints(t *testing.T) {
	img := gocv.NewMatWithSize(400, 400, gocv.MatTypeCV8UC3)
	defer img.Close()
	for y := 0; y < 400; y += 20 {
		for x := 0; x < 400; x += 20 {
			gocv.Rectangle(&img, image.Rect(x, y, x+20, y+20), color.RGBA{uint8(x / 2), uint8(y / 2), uint8((x + y) % 256), 255}, -1)
		}
	}
	// Five points of a face rotated by 25 degrees inside a box that
	// says nothing of the rotation.
	r := 25 * math.Pi / 180
	var five [][2]float64
	for _, p := range arcface112 {
		x, y := 2*p[0], 2*p[1]
		five = append(five, [2]float64{80 + x*math.Cos(r) - y*math.Sin(r), 60 + x*math.Sin(r) + y*math.Cos(r)})
	}
	box := Detection{X0: 40, Y0: 60, X1: 300, Y1: 320, Five: five}
	withEyes := box
	withEyes.Points = [][2]float64{{0, 0}, {10, 0}} // the detector's eyes: unused by a landmark alignment
	same := func(a, b gocv.Mat) bool {
		diff := gocv.NewMat()
		defer diff.Close()
		gocv.AbsDiff(a, b, &diff)
		gray := gocv.NewMat()
		defer gray.Close()
		gocv.CvtColor(diff, &gray, gocv.ColorBGRToGray)
		return gocv.CountNonZero(gray) == 0
	}
	got := cropArcFace(img, box, AlignLandmarks, 1, 112)
	defer got.Close()
	want := cropArcFace(img, withEyes, AlignLandmarks, 1, 112)
	defer want.Close()
	square := cropSquare(img, box, 1.12, 112)
	defer square.Close()
	if !same(got, want) || same(got, square) {
		t.Errorf("without detector keypoints the landmark alignment fell back to the box (same as with keypoints: %v, same as the box crop: %v)", same(got, want), same(got, square))
	}
}
