package vision

import (
	"gocv.io/x/gocv"
)

// FaceInMat is FaceInImage on an already decoded BGR image.
func (p *Pipeline) FaceInMat(img gocv.Mat, o FaceOptions, t *Timings) (Face, error) {
	return p.faceInMat(img, o, t)
}

// MaskedViews returns, per style, the template of face f (found in img)
// with a synthetic mask of that style painted on it (PaintMask from the
// detector's keypoints): what the same face would give masked. With
// realign the landmarks are found again on the painted image, as they are
// on a masked face; otherwise the crop keeps f's alignment.
func (p *Pipeline) MaskedViews(img gocv.Mat, f Face, styles []int, realign bool, t *Timings) ([][]float32, error) {
	if t == nil {
		t = &Timings{}
	}
	out := make([][]float32, 0, len(styles))
	for _, st := range styles {
		painted := img.Clone()
		err := PaintMask(&painted, f.Det, st)
		var m measured
		if err == nil {
			if realign {
				d := f.Det
				d.Five = nil
				m, err = p.measureDet(painted, d, f.Padded, t)
			} else {
				var crop gocv.Mat
				crop, err = p.emb.crop(painted, f.Det)
				m = measured{face: Face{Det: f.Det}, crop: crop}
			}
		}
		painted.Close()
		if err != nil {
			return nil, err
		}
		err = p.embed(&m, 0, t)
		m.crop.Close()
		if err != nil {
			return nil, err
		}
		out = append(out, m.face.Embedding)
	}
	return out, nil
}
