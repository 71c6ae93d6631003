package vision

import (
	"math"

	"gocv.io/x/gocv"
)

// arcface112 is the five-point template ArcFace/InsightFace models (and the
// MobileFaceNets trained on their data) are aligned to, in a 112x112 crop,
// image-left to image-right: the eyes, the nose tip, the mouth corners.
var arcface112 = [5][2]float64{
	{38.2946, 51.6963}, {73.5318, 51.5014}, {56.0252, 71.7366}, {41.5493, 92.3655}, {70.7299, 92.2041},
}

// arcfacePoints pairs the detector's keypoints with template points: the two
// eyes (image-left first), and when present the nose tip and the mouth
// centre (BlazeFace gives one mouth point; the template's is the mean of its
// corners).
func arcfacePoints(d Detection, align string) (src, dst [][2]float64) {
	if needsLandmarks(align) && len(d.Five) == 5 {
		n := 5
		if align == AlignLandmarkEyes {
			n = 2
		}
		return d.Five[:n], slicesOf(arcface112[:n])
	}
	re, le := d.Points[KpRightEye], d.Points[KpLeftEye]
	if re[0] > le[0] {
		re, le = le, re
	}
	src = [][2]float64{re, le}
	dst = [][2]float64{arcface112[0], arcface112[1]}
	if len(d.Points) > KpMouth && align == AlignDetector {
		t := arcface112
		src = append(src, d.Points[KpNose], d.Points[KpMouth])
		dst = append(dst, t[2], [2]float64{(t[3][0] + t[4][0]) / 2, (t[3][1] + t[4][1]) / 2})
	}
	return src, dst
}

// similarity fits dst ~ [a -b; b a] src + t by least squares (Umeyama,
// rotation, uniform scale and translation, no reflection).
func similarity(src, dst [][2]float64) (a, b, tx, ty float64, ok bool) {
	n := float64(len(src))
	var ms, md [2]float64
	for i := range src {
		for k := 0; k < 2; k++ {
			ms[k] += src[i][k] / n
			md[k] += dst[i][k] / n
		}
	}
	var ss, sa, sb float64
	for i := range src {
		px, py := src[i][0]-ms[0], src[i][1]-ms[1]
		qx, qy := dst[i][0]-md[0], dst[i][1]-md[1]
		ss += px*px + py*py
		sa += px*qx + py*qy
		sb += px*qy - py*qx
	}
	if ss < 1 {
		return 0, 0, 0, 0, false
	}
	a, b = sa/ss, sb/ss
	tx = md[0] - (a*ms[0] - b*ms[1])
	ty = md[1] - (b*ms[0] + a*ms[1])
	return a, b, tx, ty, true
}

// cropArcFace warps the face onto the ArcFace 112 template scaled to size
// and zoomed out by scale about the crop centre (1: the template itself).
// Without usable points (no detector eyes, and no landmark net's five
// points for a landmark alignment) it falls back to a square box crop: a
// detector without keypoints (res10, face-api's) still aligns by landmarks.
func cropArcFace(img gocv.Mat, d Detection, align string, scale float64, size int) gocv.Mat {
	if !(needsLandmarks(align) && len(d.Five) == 5) && !d.HasEyes() {
		return cropSquare(img, d, 1.12, size)
	}
	src, dst := arcfacePoints(d, align)
	c := float64(size) / 2
	for i := range dst {
		dst[i] = [2]float64{c + (dst[i][0]*float64(size)/112-c)/scale, c + (dst[i][1]*float64(size)/112-c)/scale}
	}
	a, b, tx, ty, ok := similarity(src, dst)
	if !ok || scale <= 0 || math.IsNaN(a) {
		return cropSquare(img, d, 1.12, size)
	}
	return warp(img, a, -b, tx, b, a, ty, size)
}

func slicesOf(pts [][2]float64) [][2]float64 { return append([][2]float64(nil), pts...) }
