// Package facedecode holds the run-time decoders of face-api's networks
// (tiny_face_detector and ssd_mobilenetv1 boxes, the 68 landmarks): pure Go
// on the float tensors OpenCV returns, testable without cgo. The graph
// builders that write these networks are build time (models/faceapi).
package facedecode

import (
	"fmt"
	"math"
	"sort"
)

// Box is an axis-aligned box; for detector outputs the unit is the side of
// the square network input (0..1, may slightly exceed it).
type Box struct{ X1, Y1, X2, Y2 float64 }

// Width is X2-X1.
func (b Box) Width() float64 { return b.X2 - b.X1 }

// Height is Y2-Y1.
func (b Box) Height() float64 { return b.Y2 - b.Y1 }

// Area is Width*Height.
func (b Box) Area() float64 { return b.Width() * b.Height() }

// Scale multiplies the coordinates, e.g. by the input side in pixels.
func (b Box) Scale(sx, sy float64) Box { return Box{b.X1 * sx, b.Y1 * sy, b.X2 * sx, b.Y2 * sy} }

// Detection is one decoded face box with its score.
type Detection struct {
	Box   Box
	Score float64
}

// Point is a 2-D point.
type Point struct{ X, Y float64 }

// TinyAnchors are tiny_face_detector's box anchors in grid cells.
var TinyAnchors = [5]Point{
	{1.603231, 2.094468}, {6.041143, 7.080126}, {2.882459, 3.518061},
	{4.266906, 5.178857}, {9.041765, 10.66308},
}

// Default post-processing parameters of face-api.
const (
	TinyIOUThreshold    = 0.4
	TinyScoreThreshold  = 0.5
	SSDIOUThreshold     = 0.5
	SSDMinConfidence    = 0.5
	SSDDefaultMaxResult = 100
)

func sigmoid(x float64) float64 { return 1 / (1 + math.Exp(-x)) }

// DecodeTinyFaceDetector decodes the TinyOutput tensor (shape [1,25,G,G],
// NCHW) like face-api's TinyYolov2 extractBoxes + nonMaxSuppression: keeps
// anchors whose sigmoid objectness is above scoreThreshold, then greedy NMS
// at iouThreshold. Boxes are relative to the square network input; results
// are ordered by decreasing score.
func DecodeTinyFaceDetector(out []float32, shape []int, scoreThreshold, iouThreshold float64) ([]Detection, error) {
	na := len(TinyAnchors)
	if len(shape) != 4 || shape[0] != 1 || shape[1] != na*5 || shape[2] != shape[3] || shape[2] <= 0 {
		return nil, fmt.Errorf("faceapi: tiny detector output shape %v, want [1,%d,G,G]", shape, na*5)
	}
	g := shape[2]
	if len(out) != prod(shape) {
		return nil, fmt.Errorf("faceapi: tiny detector output has %d values for shape %v", len(out), shape)
	}
	at := func(a, k, row, col int) float64 { return float64(out[((a*5+k)*g+row)*g+col]) }
	var dets []Detection
	for row := 0; row < g; row++ {
		for col := 0; col < g; col++ {
			for a := 0; a < na; a++ {
				score := sigmoid(at(a, 4, row, col))
				if scoreThreshold > 0 && score <= scoreThreshold {
					continue
				}
				cx := (float64(col) + sigmoid(at(a, 0, row, col))) / float64(g)
				cy := (float64(row) + sigmoid(at(a, 1, row, col))) / float64(g)
				w := math.Exp(at(a, 2, row, col)) * TinyAnchors[a].X / float64(g)
				h := math.Exp(at(a, 3, row, col)) * TinyAnchors[a].Y / float64(g)
				x, y := cx-w/2, cy-h/2
				dets = append(dets, Detection{Box{x, y, x + w, y + h}, score})
			}
		}
	}
	return nmsGreedy(dets, iouThreshold), nil
}

// nmsGreedy is face-api's ops/nonMaxSuppression (IoU variant): repeatedly
// take the best remaining box and drop those overlapping it by more than
// iouThreshold.
func nmsGreedy(dets []Detection, iouThreshold float64) []Detection {
	idx := make([]int, len(dets))
	for i := range idx {
		idx[i] = i
	}
	// Ascending, stable like JS's Array.prototype.sort; the best is popped last.
	sort.SliceStable(idx, func(i, j int) bool { return dets[idx[i]].Score < dets[idx[j]].Score })
	var pick []Detection
	for len(idx) > 0 {
		cur := idx[len(idx)-1]
		idx = idx[:len(idx)-1]
		pick = append(pick, dets[cur])
		keep := idx[:0]
		for _, i := range idx {
			if iou(dets[cur].Box, dets[i].Box) <= iouThreshold {
				keep = append(keep, i)
			}
		}
		idx = keep
	}
	return pick
}

func iou(a, b Box) float64 {
	w := math.Max(0, math.Min(a.X2, b.X2)-math.Max(a.X1, b.X1))
	h := math.Max(0, math.Min(a.Y2, b.Y2)-math.Max(a.Y1, b.Y1))
	inter := w * h
	return inter / (a.Area() + b.Area() - inter)
}

// SSDDecodeBoxes applies face-api's box decoding (outputLayer) to the
// SSDBoxEncodings output: for every anchor it returns [ymin, xmin, ymax,
// xmax] relative to the input, computed in float32 like TF.js.
func SSDDecodeBoxes(enc, anchors []float32) ([]float32, error) {
	if len(enc)%4 != 0 || len(enc) != len(anchors) {
		return nil, fmt.Errorf("faceapi: ssd: %d box encodings for %d anchor values", len(enc), len(anchors))
	}
	out := make([]float32, len(enc))
	for i := 0; i < len(enc); i += 4 {
		a, e := anchors[i:i+4], enc[i:i+4]
		s0, s1 := a[2]-a[0], a[3]-a[1]
		c0, c1 := a[0]+s0/2, a[1]+s1/2
		half0 := float32(math.Exp(float64(e[2]/5))) * s0 / 2
		ctr0 := e[0]/10*s0 + c0
		half1 := float32(math.Exp(float64(e[3]/5))) * s1 / 2
		ctr1 := e[1]/10*s1 + c1
		out[i], out[i+1], out[i+2], out[i+3] = ctr0-half0, ctr1-half1, ctr0+half0, ctr1+half1
	}
	return out, nil
}

// SSDScores returns the face probability (sigmoid of logit 1) per anchor
// from the SSDClassLogits output ([N,3] rows).
func SSDScores(logits []float32) ([]float32, error) {
	if len(logits)%3 != 0 {
		return nil, fmt.Errorf("faceapi: ssd: %d class logits is not a multiple of 3", len(logits))
	}
	out := make([]float32, len(logits)/3)
	for i := range out {
		out[i] = float32(1 / (1 + math.Exp(-float64(logits[3*i+1]))))
	}
	return out, nil
}

// DecodeSSD turns the two ssd outputs into face detections like face-api's
// SsdMobilenetv1.locateFaces on a square input: box decoding with the
// anchors, sigmoid scores, score threshold, NMS at iouThreshold, at most
// maxResults, boxes clamped to [0,1]. Ordered by decreasing score.
func DecodeSSD(enc, logits, anchors []float32, minConfidence, iouThreshold float64, maxResults int) ([]Detection, error) {
	boxes, err := SSDDecodeBoxes(enc, anchors)
	if err != nil {
		return nil, err
	}
	scores, err := SSDScores(logits)
	if err != nil {
		return nil, err
	}
	if len(scores) != len(boxes)/4 {
		return nil, fmt.Errorf("faceapi: ssd: %d scores for %d boxes", len(scores), len(boxes)/4)
	}
	type cand struct {
		i     int
		score float64
	}
	var cands []cand
	for i, s := range scores {
		if float64(s) > minConfidence {
			cands = append(cands, cand{i, float64(s)})
		}
	}
	sort.SliceStable(cands, func(a, b int) bool { return cands[a].score > cands[b].score })
	n := min(maxResults, len(scores))
	var sel []int
	for _, c := range cands {
		if len(sel) >= n {
			break
		}
		suppressed := false
		for j := len(sel) - 1; j >= 0; j-- {
			o := ssdIOU(boxes, c.i, sel[j])
			if o == 0 {
				continue
			}
			if o > iouThreshold {
				suppressed = true
				break
			}
		}
		if !suppressed {
			sel = append(sel, c.i)
		}
	}
	dets := make([]Detection, len(sel))
	for k, i := range sel {
		b := boxes[4*i : 4*i+4]
		top, bottom := math.Max(0, float64(b[0])), math.Min(1, float64(b[2]))
		left, right := math.Max(0, float64(b[1])), math.Min(1, float64(b[3]))
		dets[k] = Detection{Box{left, top, right, bottom}, float64(scores[i])}
	}
	return dets, nil
}

// ssdIOU is face-api's ssd IOU on [ymin,xmin,ymax,xmax] rows.
func ssdIOU(boxes []float32, i, j int) float64 {
	bi, bj := boxes[4*i:4*i+4], boxes[4*j:4*j+4]
	f := func(v float32) float64 { return float64(v) }
	yminI, xminI := math.Min(f(bi[0]), f(bi[2])), math.Min(f(bi[1]), f(bi[3]))
	ymaxI, xmaxI := math.Max(f(bi[0]), f(bi[2])), math.Max(f(bi[1]), f(bi[3]))
	yminJ, xminJ := math.Min(f(bj[0]), f(bj[2])), math.Min(f(bj[1]), f(bj[3]))
	ymaxJ, xmaxJ := math.Max(f(bj[0]), f(bj[2])), math.Max(f(bj[1]), f(bj[3]))
	areaI := (ymaxI - yminI) * (xmaxI - xminI)
	areaJ := (ymaxJ - yminJ) * (xmaxJ - xminJ)
	if areaI <= 0 || areaJ <= 0 {
		return 0
	}
	ih := math.Max(math.Min(ymaxI, ymaxJ)-math.Max(yminI, yminJ), 0)
	iw := math.Max(math.Min(xmaxI, xmaxJ)-math.Max(xminI, xminJ), 0)
	inter := ih * iw
	return inter / (areaI + areaJ - inter)
}

// Landmarks68 converts the LandmarkOutput tensor (136 values) to 68 points
// in pixels of a crop of cropW x cropH that was padded to a square with the
// crop centred (face-api's toBatchTensor(112, true)) and resized to 112.
func Landmarks68(out []float32, cropW, cropH int) ([]Point, error) {
	if len(out) != 136 {
		return nil, fmt.Errorf("faceapi: landmarks: %d values, want 136", len(out))
	}
	if cropW <= 0 || cropH <= 0 {
		return nil, fmt.Errorf("faceapi: landmarks: crop size %dx%d", cropW, cropH)
	}
	const in = 112 // face_landmark_68 input side (models/faceapi.FaceLandmark68Size)
	w, h := float64(cropW), float64(cropH)
	s := in / math.Max(w, h)
	sw, sh := w*s, h*s
	var padX, padY float64
	if sw < sh {
		padX = math.Abs(sw-sh) / 2
	}
	if sh < sw {
		padY = math.Abs(sw-sh) / 2
	}
	pts := make([]Point, 68)
	for i := range pts {
		x := (float64(out[2*i])*in - padX) / sw
		y := (float64(out[2*i+1])*in - padY) / sh
		pts[i] = Point{x * w, y * h}
	}
	return pts, nil
}

func prod(s []int) int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}
