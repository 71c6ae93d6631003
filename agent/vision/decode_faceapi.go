package vision

import (
	"github.com/periocular/atm-agent/agent/vision/facedecode"
	"github.com/periocular/atm-agent/models"
)

func init() {
	decoders["tinyyolo"] = decodeTinyYolo
}

// decodeTinyYolo decodes face-api's tiny detector. Its boxes carry no
// keypoints, so alignment and the synthetic mask painter fall back to the box.
func decodeTinyYolo(outs []Tensor, md *models.Model) ([]Detection, error) {
	// A low threshold here; the pipeline applies its own score gate.
	ds, err := facedecode.DecodeTinyFaceDetector(outs[0].Data, outs[0].Shape, 0.1, facedecode.TinyIOUThreshold)
	if err != nil {
		return nil, err
	}
	w, h := float64(md.Input.Width), float64(md.Input.Height)
	out := make([]Detection, len(ds))
	for i, d := range ds {
		b := d.Box.Scale(w, h)
		out[i] = Detection{X0: b.X1, Y0: b.Y1, X1: b.X2, Y1: b.Y2, Score: d.Score}
	}
	return out, nil
}
