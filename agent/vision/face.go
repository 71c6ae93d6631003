package vision

import (
	"image"
	"image/color"
	"math"

	"gocv.io/x/gocv"
)

// Keypoint indices in Detection.Points, in the subject's frame (BlazeFace
// order): the subject's right eye appears on the image's left.
const (
	KpRightEye = iota
	KpLeftEye
	KpNose
	KpMouth
	KpRightEar
	KpLeftEar
)

// Detection is one face found in an image, in image pixels.
type Detection struct {
	X0, Y0, X1, Y1 float64
	Score          float64
	// Points are keypoints (see Kp*) when the detector gives them; at
	// least the two eyes when present.
	Points [][2]float64
	// Five, when set, are finer alignment points from a landmark net:
	// the eye centres, the nose tip and the mouth corners, image-left first.
	Five [][2]float64
}

// W and H are the box size.
func (d Detection) W() float64 { return d.X1 - d.X0 }
func (d Detection) H() float64 { return d.Y1 - d.Y0 }

// shifted is d moved by (dx, dy): from a region's coordinates to the
// image's, or back from a padded copy's.
func (d Detection) shifted(dx, dy float64) Detection { return d.mapped(1, dx, dy) }

// mapped is d with every coordinate v taken to k*v + (dx or dy): back from
// a scaled and padded copy's coordinates to the image's.
func (d Detection) mapped(k, dx, dy float64) Detection {
	d.X0, d.Y0, d.X1, d.Y1 = k*d.X0+dx, k*d.Y0+dy, k*d.X1+dx, k*d.Y1+dy
	pts := make([][2]float64, len(d.Points))
	for i, q := range d.Points {
		pts[i] = [2]float64{k*q[0] + dx, k*q[1] + dy}
	}
	d.Points = pts
	if d.Five != nil {
		five := make([][2]float64, len(d.Five))
		for i, q := range d.Five {
			five[i] = [2]float64{k*q[0] + dx, k*q[1] + dy}
		}
		d.Five = five
	}
	return d
}

// HasEyes says whether the detection carries eye keypoints.
func (d Detection) HasEyes() bool { return len(d.Points) > KpLeftEye }

// iou is intersection over union of two boxes.
func iou(a, b Detection) float64 {
	ix := math.Max(0, math.Min(a.X1, b.X1)-math.Max(a.X0, b.X0))
	iy := math.Max(0, math.Min(a.Y1, b.Y1)-math.Max(a.Y0, b.Y0))
	inter := ix * iy
	u := a.W()*a.H() + b.W()*b.H() - inter
	if u <= 0 {
		return 0
	}
	return inter / u
}

// customer picks the face of the person at the ATM: the largest, most
// central face. Background faces are smaller and off-centre; the score is
// area discounted by the distance of the box centre from the image centre.
func customer(dets []Detection, w, h int) (Detection, bool) {
	best, bestScore := -1, 0.0
	cx, cy := float64(w)/2, float64(h)/2
	diag := math.Hypot(float64(w), float64(h)) / 2
	for i, d := range dets {
		dx := (d.X0+d.X1)/2 - cx
		dy := (d.Y0+d.Y1)/2 - cy
		off := math.Hypot(dx, dy) / diag // 0 centre .. 1 corner
		s := d.W() * d.H() * (1 - 0.5*off)
		if best < 0 || s > bestScore {
			best, bestScore = i, s
		}
	}
	if best < 0 {
		return Detection{}, false
	}
	return dets[best], true
}

// cropSquare cuts a square of side scale*max(w,h) around the detection
// centre, resized to size x size. Parts outside the image are filled with
// mid-gray (warpAffine's constant border, so no pixel around a region leaks
// in). The result must be closed by the caller.
func cropSquare(img gocv.Mat, d Detection, scale float64, size int) gocv.Mat {
	side := scale * math.Max(d.W(), d.H())
	cx, cy := (d.X0+d.X1)/2, (d.Y0+d.Y1)/2
	s := float64(size) / side
	// dst = s*(src - (cx - side/2, cy - side/2))
	return warp(img, s, 0, -s*(cx-side/2), 0, s, -s*(cy-side/2), size)
}

// cropAligned rotates and scales the face so that the eyes sit level at
// canonical positions: the eye midpoint at (0.5, eyeY) of the output and the
// eye distance eyeDist of its width.
func cropAligned(img gocv.Mat, d Detection, eyeY, eyeDist float64, size int) gocv.Mat {
	re, le := d.Points[KpRightEye], d.Points[KpLeftEye]
	// Image-left eye first, whatever the detector's convention.
	if re[0] > le[0] {
		re, le = le, re
	}
	dx, dy := le[0]-re[0], le[1]-re[1]
	dist := math.Hypot(dx, dy)
	if dist < 1 {
		return cropSquare(img, d, 1.12, size)
	}
	s := eyeDist * float64(size) / dist
	c, si := s*dx/dist, s*dy/dist
	mx, my := (re[0]+le[0])/2, (re[1]+le[1])/2
	// Rotation by -angle and scale s about the eye midpoint, then move it
	// to (size/2, eyeY*size).
	a, b := c, si
	tx := float64(size)/2 - (a*mx + b*my)
	ty := eyeY*float64(size) - (-b*mx + a*my)
	return warp(img, a, b, tx, -b, a, ty, size)
}

func warp(img gocv.Mat, a, b, tx, c, d, ty float64, size int) gocv.Mat {
	m := gocv.NewMatWithSize(2, 3, gocv.MatTypeCV64F)
	defer m.Close()
	m.SetDoubleAt(0, 0, a)
	m.SetDoubleAt(0, 1, b)
	m.SetDoubleAt(0, 2, tx)
	m.SetDoubleAt(1, 0, c)
	m.SetDoubleAt(1, 1, d)
	m.SetDoubleAt(1, 2, ty)
	out := gocv.NewMat()
	gocv.WarpAffineWithParams(img, &out, m, image.Pt(size, size), gocv.InterpolationLinear, gocv.BorderConstant, color.RGBA{128, 128, 128, 255})
	return out
}

// sharpness is the variance of the Laplacian of a grayscale face crop,
// a standard focus measure: blurred or motion-smeared faces score low.
func sharpness(crop gocv.Mat) float64 {
	gray := gocv.NewMat()
	defer gray.Close()
	gocv.CvtColor(crop, &gray, gocv.ColorBGRToGray)
	lap := gocv.NewMat()
	defer lap.Close()
	gocv.Laplacian(gray, &lap, gocv.MatTypeCV64F, 1, 1, 0, gocv.BorderDefault)
	mean := gocv.NewMat()
	defer mean.Close()
	std := gocv.NewMat()
	defer std.Close()
	gocv.MeanStdDev(lap, &mean, &std)
	v := std.GetDoubleAt(0, 0)
	return v * v
}

// pose estimates roll (degrees, eye line tilt) and yaw (-1..1, nose offset
// from the eye midpoint relative to the eye distance) from keypoints.
func pose(d Detection) (roll, yaw float64, ok bool) {
	if len(d.Points) <= KpNose {
		return 0, 0, false
	}
	re, le, n := d.Points[KpRightEye], d.Points[KpLeftEye], d.Points[KpNose]
	if re[0] > le[0] {
		re, le = le, re
	}
	dx, dy := le[0]-re[0], le[1]-re[1]
	dist := math.Hypot(dx, dy)
	if dist < 1 {
		return 0, 0, false
	}
	roll = math.Atan2(dy, dx) * 180 / math.Pi
	mx := (re[0] + le[0]) / 2
	yaw = (n[0] - mx) / dist
	return roll, yaw, true
}

// contrast is the standard deviation of the grey levels inside the
// detection box (clipped to the image); 0 when the box is empty.
func contrast(img gocv.Mat, d Detection) float64 {
	r := image.Rect(int(d.X0), int(d.Y0), int(d.X1), int(d.Y1)).Intersect(image.Rect(0, 0, img.Cols(), img.Rows()))
	if r.Dx() < 2 || r.Dy() < 2 {
		return 0
	}
	roi := img.Region(r)
	defer roi.Close()
	gray := gocv.NewMat()
	defer gray.Close()
	gocv.CvtColor(roi, &gray, gocv.ColorBGRToGray)
	mean := gocv.NewMat()
	defer mean.Close()
	std := gocv.NewMat()
	defer std.Close()
	gocv.MeanStdDev(gray, &mean, &std)
	return std.GetDoubleAt(0, 0)
}
