package vision

import (
	"fmt"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/models"
)

// Detector finds faces in a BGR image.
type Detector interface {
	Detect(img gocv.Mat) ([]Detection, error)
	Close() error
}

// decodeFunc turns raw outputs into detections in network input pixels.
type decodeFunc func(outs []Tensor, md *models.Model) ([]Detection, error)

var decoders = map[string]decodeFunc{
	"opencv-ssd": decodeOpenCVSSD,
}

// netDetector runs a detector network and decodes its outputs in Go.
type netDetector struct {
	net    *Net
	decode decodeFunc
}

// NewDetector loads a detector model and its decoder (manifest "decode").
func NewDetector(dir string, md *models.Model) (Detector, error) {
	if md.Task != models.TaskDetector {
		return nil, fmt.Errorf("model %s is a %s, not a detector", md.Name, md.Task)
	}
	dec, ok := decoders[md.Decode]
	if !ok {
		return nil, fmt.Errorf("model %s: unknown detector decode %q", md.Name, md.Decode)
	}
	n, err := LoadNet(dir, md)
	if err != nil {
		return nil, err
	}
	return &netDetector{net: n, decode: dec}, nil
}

func (d *netDetector) Close() error { return d.net.Close() }

func (d *netDetector) Detect(img gocv.Mat) ([]Detection, error) {
	md := &d.net.Model
	blob, lb, err := makeBlob(img, md.Input)
	if err != nil {
		return nil, err
	}
	outs, err := d.net.Forward(blob, 3)
	if err != nil {
		return nil, err
	}
	dets, err := d.decode(outs, md)
	if err != nil {
		return nil, fmt.Errorf("model %s: decode: %w", md.Name, err)
	}
	for i := range dets {
		dt := &dets[i]
		dt.X0, dt.Y0 = lb.ToImage(dt.X0, dt.Y0)
		dt.X1, dt.Y1 = lb.ToImage(dt.X1, dt.Y1)
		for j := range dt.Points {
			dt.Points[j][0], dt.Points[j][1] = lb.ToImage(dt.Points[j][0], dt.Points[j][1])
		}
	}
	return dets, nil
}

// decodeOpenCVSSD reads the [1,1,N,7] DetectionOutput of Caffe SSD face
// detectors (the res10 300x300 model an operator may provide): each row is
// (image, class, confidence, x0, y0, x1, y1) with coordinates in [0,1].
func decodeOpenCVSSD(outs []Tensor, md *models.Model) ([]Detection, error) {
	t := outs[0]
	if len(t.Data)%7 != 0 {
		return nil, fmt.Errorf("output of %d values is not rows of 7", len(t.Data))
	}
	w, h := float64(md.Input.Width), float64(md.Input.Height)
	var dets []Detection
	for i := 0; i+7 <= len(t.Data); i += 7 {
		r := t.Data[i : i+7]
		if r[2] <= 0 {
			continue
		}
		dets = append(dets, Detection{
			X0: float64(r[3]) * w, Y0: float64(r[4]) * h,
			X1: float64(r[5]) * w, Y1: float64(r[6]) * h,
			Score: float64(r[2]),
		})
	}
	return dets, nil
}

// nms keeps the best-scoring boxes, dropping any that overlap a kept box by
// more than thr IoU.
func nms(dets []Detection, thr float64) []Detection {
	order := make([]int, len(dets))
	for i := range order {
		order[i] = i
	}
	for i := 1; i < len(order); i++ { // insertion sort by score, stable
		for j := i; j > 0 && dets[order[j]].Score > dets[order[j-1]].Score; j-- {
			order[j], order[j-1] = order[j-1], order[j]
		}
	}
	var keep []Detection
	for _, i := range order {
		ok := true
		for _, k := range keep {
			if iou(dets[i], k) > thr {
				ok = false
				break
			}
		}
		if ok {
			keep = append(keep, dets[i])
		}
	}
	return keep
}
