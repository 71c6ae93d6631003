package vision

import (
	"errors"
	"image"
	"image/color"
	"math"

	"gocv.io/x/gocv"
)

// MaskStyles is the number of synthetic mask looks PaintMask can draw.
const MaskStyles = 12

var maskColors = []color.RGBA{
	{R: 170, G: 205, B: 230, A: 255}, // surgical blue
	{R: 235, G: 235, B: 235, A: 255}, // white
	{R: 30, G: 30, B: 30, A: 255},    // black cloth
	{R: 120, G: 130, B: 100, A: 255}, // khaki / camouflage base
}

// ErrNoKeypoints: the detection has no eye and nose keypoints to place a mask.
var ErrNoKeypoints = errors.New("detection has no keypoints")

// PaintMask draws a synthetic face mask on img (in place) from the
// detection's keypoints: from the nose bridge down to the chin and across to
// the ears. style in [0, MaskStyles) picks shape (surgical, cloth, N95-like)
// and colour. It is how the evaluation makes masked versions of unmasked
// faces and how the demo masks its simulated customers.
func PaintMask(img *gocv.Mat, d Detection, style int) error {
	if len(d.Points) <= KpMouth {
		return ErrNoKeypoints
	}
	re, le := d.Points[KpRightEye], d.Points[KpLeftEye]
	if re[0] > le[0] {
		re, le = le, re
	}
	nose, mouth := d.Points[KpNose], d.Points[KpMouth]
	ex, ey := (re[0]+le[0])/2, (re[1]+le[1])/2
	dx, dy := le[0]-re[0], le[1]-re[1]
	dist := math.Hypot(dx, dy)
	if dist < 2 {
		return ErrNoKeypoints
	}
	// Unit vectors along the eye line (ax) and down the face (dn).
	ax := [2]float64{dx / dist, dy / dist}
	dn := [2]float64{-ax[1], ax[0]}
	// Face-frame coordinates relative to the eye midpoint, in eye distances.
	at := func(u, v float64) image.Point {
		return image.Pt(int(ex+dist*(u*ax[0]+v*dn[0])+0.5), int(ey+dist*(u*ax[1]+v*dn[1])+0.5))
	}
	// Where the nose and mouth sit along the face, for this face.
	proj := func(p [2]float64) float64 { return ((p[0]-ex)*dn[0] + (p[1]-ey)*dn[1]) / dist }
	nv, mv := proj(nose), proj(mouth)
	if nv < 0.2 || mv <= nv {
		nv, mv = 0.6, 1.0
	}
	top := nv * 0.55 // nose bridge: a little over half way from eyes to nose tip
	chin := mv + (mv-nv)*1.5
	half := 1.05 // half width at the cheeks, in eye distances
	var pts []image.Point
	switch (style / len(maskColors)) % 3 {
	case 0: // surgical: straight top, pleated flat sides
		pts = []image.Point{at(-half, top+0.12), at(-0.3, top), at(0, top-0.04), at(0.3, top), at(half, top+0.12),
			at(half*0.95, chin-0.25), at(0.45, chin), at(-0.45, chin), at(-half*0.95, chin-0.25)}
	case 1: // cloth: rounded
		for i := 0; i <= 16; i++ {
			a := math.Pi * float64(i) / 16
			pts = append(pts, at(-half*math.Cos(a), top+0.08-0.08*math.Sin(a)))
		}
		for i := 0; i <= 16; i++ {
			a := math.Pi * float64(i) / 16
			pts = append(pts, at(half*math.Cos(a)*0.95, (top+chin)/2+(chin-(top+chin)/2)*math.Sin(a)))
		}
	default: // N95-like: pointed top and bottom
		pts = []image.Point{at(-half*0.9, top+0.2), at(0, top-0.06), at(half*0.9, top+0.2),
			at(half*0.85, chin-0.35), at(0, chin+0.05), at(-half*0.85, chin-0.35)}
	}
	c := maskColors[style%len(maskColors)]
	pv := gocv.NewPointsVectorFromPoints([][]image.Point{pts})
	defer pv.Close()
	gocv.FillPoly(img, pv, c)
	// A darker outline and ear loops make it read as a mask, not a patch.
	edge := color.RGBA{R: c.R * 3 / 4, G: c.G * 3 / 4, B: c.B * 3 / 4, A: 255}
	gocv.Polylines(img, pv, true, edge, max(1, int(dist/25)))
	gocv.Line(img, at(-half, top+0.12), at(-half*1.15, -0.1), edge, max(1, int(dist/30)))
	gocv.Line(img, at(half, top+0.12), at(half*1.15, -0.1), edge, max(1, int(dist/30)))
	return nil
}
