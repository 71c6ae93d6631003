package vision

import (
	"fmt"

	"github.com/periocular/atm-agent/agent/vision/blazeface"
	"github.com/periocular/atm-agent/models"
)

func init() {
	decoders["blazeface"] = decodeBlazeface
}

// decodeBlazeface decodes the BlazeFace family: either one [896,17] output
// (facemesh-detection-short) or the four separate score and regressor
// outputs of blazeface / blazeface-front, told apart by their sizes.
// Detections keep the six keypoints (eyes, nose, mouth, ears).
func decodeBlazeface(outs []Tensor, md *models.Model) ([]Detection, error) {
	var raw []float32
	switch len(outs) {
	case 1:
		raw = outs[0].Data
	case 4:
		by := map[int][]float32{}
		for _, o := range outs {
			by[len(o.Data)] = o.Data
		}
		var err error
		raw, err = blazeface.Merge(by[512], by[384], by[512*16], by[384*16])
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("blazeface: %d outputs, want 1 or 4", len(outs))
	}
	size := md.Input.Width
	dets, err := blazeface.Decode(raw, size, 0.1)
	if err != nil {
		return nil, err
	}
	dets = blazeface.NMS(dets, 0.3, true, 0)
	s := float64(size)
	out := make([]Detection, len(dets))
	for i, d := range dets {
		pts := make([][2]float64, blazeface.NumKeypoints)
		for k, p := range d.Keypoints {
			pts[k] = [2]float64{float64(p.X) * s, float64(p.Y) * s}
		}
		out[i] = Detection{X0: float64(d.X1) * s, Y0: float64(d.Y1) * s, X1: float64(d.X2) * s, Y1: float64(d.Y2) * s,
			Score: float64(d.Score), Points: pts}
	}
	return out, nil
}
