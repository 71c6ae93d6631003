package vision

import (
	"fmt"
	"image"
	"math"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/internal/imagecheck"
)

// Recrop names a way of re-cutting a whole-scene face image before it goes
// through the pipeline, for diagnosing how a dataset's own cropping affects
// the embedders (docs/accuracy.md, "What rmfrd's crops do to the
// embedders").
type Recrop string

// Recrop kinds.
const (
	// RecropNone leaves the image as it is.
	RecropNone Recrop = ""
	// RecropTight cuts the detector's box (brows to chin, cheek to cheek:
	// 1.0 x the box, square) and resizes it to 160x160, as rmfrd's
	// crops are cut.
	RecropTight Recrop = "tight"
	// RecropTightStretch cuts a box taller than wide (0.85 of the box side
	// wide, 1.1 high) and stretches it to a 160x160 square, the geometry of
	// rmfrd's unmasked crops.
	RecropTightStretch Recrop = "tight-stretch"
)

// ParseRecrop checks a recrop kind's name.
func ParseRecrop(s string) (Recrop, error) {
	switch r := Recrop(s); r {
	case RecropNone, RecropTight, RecropTightStretch:
		return r, nil
	}
	return "", fmt.Errorf("recrop %q: want tight or tight-stretch", s)
}

// recropSize is the side of rmfrd's crops.
const recropSize = 160

// recrop finds the customer's face in img and cuts it as r says. The
// result must be closed.
func (p *Pipeline) recrop(img gocv.Mat, r Recrop, t *Timings) (gocv.Mat, error) {
	d, ok, _, err := p.detectCustomer(img, true, t)
	if err != nil {
		return gocv.Mat{}, err
	}
	if !ok {
		return gocv.Mat{}, ErrNoFace
	}
	side := math.Max(d.W(), d.H())
	cx, cy := (d.X0+d.X1)/2, (d.Y0+d.Y1)/2
	w, h := side, side
	if r == RecropTightStretch {
		w, h = 0.85*side, 1.1*side
		cy += 0.05 * side
	}
	sx, sy := recropSize/w, recropSize/h
	return warp(img, sx, 0, -sx*(cx-w/2), 0, sy, -sy*(cy-h/2), recropSize), nil
}

// FaceInRecrop decodes an image, re-cuts its face as r says (see Recrop)
// and runs the pipeline on the re-cut image.
func (p *Pipeline) FaceInRecrop(data []byte, r Recrop, t *Timings) (Face, error) {
	img, err := DecodeImage(data, imagecheck.Limits{})
	if err != nil {
		return Face{}, err
	}
	defer img.Close()
	if r == RecropNone {
		return p.faceInMat(img, FaceOptions{}, true, t)
	}
	rc, err := p.recrop(img, r, t)
	if err != nil {
		return Face{}, err
	}
	defer rc.Close()
	return p.faceInMat(rc, FaceOptions{}, true, t)
}

// CropView is what the embedder of one image is fed, for looking at by eye:
// the (re-cut) input image and the face crop at the embedder's input size,
// both BGR.
type CropView struct {
	Input, Crop image.Image
	Face        Detection
}

// ViewCrop runs detection and the embedder's crop policy on an image (re-cut
// as r says) and returns both as Go images.
func (p *Pipeline) ViewCrop(data []byte, r Recrop) (CropView, error) {
	img, err := DecodeImage(data, imagecheck.Limits{})
	if err != nil {
		return CropView{}, err
	}
	defer img.Close()
	in := img
	if r != RecropNone {
		rc, err := p.recrop(img, r, nil)
		if err != nil {
			return CropView{}, err
		}
		defer rc.Close()
		in = rc
	}
	m, err := p.measureIn(in, nil, false, true, nil)
	if err != nil {
		return CropView{}, err
	}
	defer m.crop.Close()
	inImg, err := in.ToImage()
	if err != nil {
		return CropView{}, err
	}
	cropImg, err := m.crop.ToImage()
	if err != nil {
		return CropView{}, err
	}
	return CropView{Input: inImg, Crop: cropImg, Face: m.face.Det}, nil
}
