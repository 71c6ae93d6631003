package vision

import (
	"fmt"
	"math"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/models"
)

// Alignment point sources for the ArcFace crop (manifest embedding.align).
const (
	// AlignDetector: the detector's eyes, nose tip and mouth centre.
	AlignDetector = ""
	// AlignEyes: the detector's two eyes only (a similarity transform is
	// fixed by two points), so a mask cannot pull the crop.
	AlignEyes = "eyes"
	// AlignLandmarks: five points (eye centres, nose tip, mouth corners)
	// from the 68-point landmark net run on the detection.
	AlignLandmarks = "landmarks"
	// AlignLandmarkEyes: the landmark net's two eye centres only.
	AlignLandmarkEyes = "landmarks-eyes"
)

// needsLandmarks says whether an alignment reads the landmark net.
func needsLandmarks(align string) bool {
	return align == AlignLandmarks || align == AlignLandmarkEyes
}

// landmarkScale is the side of the square the landmark net sees, in
// detector box sides (face-api feeds its detector's box, which is a little
// larger than BlazeFace's).
const landmarkScale = 1.2

// meshScale is the side of the square MediaPipe's face mesh sees, in
// detector box sides.
const meshScale = 1.5

// landmarker places points on a face: face-api's 68 (decode landmarks68)
// or MediaPipe's 468-point face mesh (decode facemesh468).
type landmarker struct {
	net  *Net
	mesh bool
}

func newLandmarker(dir string, md *models.Model) (*landmarker, error) {
	if md.Task != models.TaskLandmarks || (md.Decode != "landmarks68" && md.Decode != "facemesh468") {
		return nil, fmt.Errorf("model %s is not a landmark net (decode landmarks68 or facemesh468)", md.Name)
	}
	n, err := LoadNet(dir, md)
	if err != nil {
		return nil, err
	}
	return &landmarker{net: n, mesh: md.Decode == "facemesh468"}, nil
}

func (l *landmarker) Close() error { return l.net.Close() }

// five returns the eye centres, nose tip and mouth corners, image-left
// first, in image pixels.
func (l *landmarker) five(img gocv.Mat, d Detection) ([][2]float64, error) {
	in := l.net.Model.Input
	scale := landmarkScale
	if l.mesh {
		scale = meshScale
	}
	side := scale * math.Max(d.W(), d.H())
	x0, y0 := (d.X0+d.X1)/2-side/2, (d.Y0+d.Y1)/2-side/2
	crop := cropSquare(img, d, scale, in.Width)
	defer crop.Close()
	blob, _, err := makeBlob(crop, in)
	if err != nil {
		return nil, err
	}
	outs, err := l.net.Forward(blob, 3)
	if err != nil {
		return nil, err
	}
	o := outs[0].Data
	if l.mesh {
		return meshFive(o, x0, y0, side/float64(in.Width))
	}
	if len(o) != 136 {
		return nil, fmt.Errorf("landmarks: %d values, want 136", len(o))
	}
	pt := func(i int) [2]float64 {
		return [2]float64{x0 + float64(o[2*i])*side, y0 + float64(o[2*i+1])*side}
	}
	mean := func(lo, hi int) [2]float64 {
		var m [2]float64
		for i := lo; i <= hi; i++ {
			p := pt(i)
			m[0] += p[0] / float64(hi-lo+1)
			m[1] += p[1] / float64(hi-lo+1)
		}
		return m
	}
	// iBUG 68: 36-41 and 42-47 the eyes, 30 the nose tip, 48 and 54 the
	// mouth corners (image-left first).
	return [][2]float64{mean(36, 41), mean(42, 47), pt(30), pt(48), pt(54)}, nil
}

// meshFive reads the eye centres, nose tip and mouth corners from the face
// mesh's 468 (x, y, z) points in input pixels: each eye the mean of its
// corners and lids (33, 133, 159, 145 on the image-left eye; 263, 362,
// 386, 374 on the other), the nose tip 1, the mouth corners 61 and 291.
func meshFive(o []float32, x0, y0, k float64) ([][2]float64, error) {
	if len(o) != 468*3 {
		return nil, fmt.Errorf("face mesh: %d values, want 1404", len(o))
	}
	pt := func(i int) [2]float64 {
		return [2]float64{x0 + float64(o[3*i])*k, y0 + float64(o[3*i+1])*k}
	}
	mean := func(ids ...int) [2]float64 {
		var m [2]float64
		for _, i := range ids {
			p := pt(i)
			m[0] += p[0] / float64(len(ids))
			m[1] += p[1] / float64(len(ids))
		}
		return m
	}
	return [][2]float64{mean(33, 133, 159, 145), mean(263, 362, 386, 374), pt(1), pt(61), pt(291)}, nil
}
