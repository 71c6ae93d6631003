// Package blazeface is the pure-Go pre- and post-processing of the BlazeFace
// family of face detectors (human-models blazeface / blazeface-back at 256,
// blazeface-front and facemesh-detection-short at 128): letterbox geometry,
// anchors, box and keypoint decoding, sigmoid scores and plain or weighted
// non-maximum suppression, and the mapping back to image pixels.
//
// The networks output, per anchor, one score logit and 16 regressors:
// box centre offset (x, y) and size (w, h), then six keypoints (right eye,
// left eye, nose tip, mouth, right ear tragion, left ear tragion; "right"
// is the subject's), all in input pixels relative to the anchor centre.
// 896 anchors: a 16x16 grid with 2 anchors per cell then an 8x8 grid with 6,
// for both input sizes (strides size/16 and size/8).
//
// Input (measured better than Human's stretch to x/127.5-0.5): the image
// letterboxed into the square input with a constant pad, RGB, scaled to
// [-1,1] (x/127.5-1), as MediaPipe does.
package blazeface

import (
	"fmt"
	"math"
	"sort"
)

// Values per anchor in a [896,17] output: score logit then 16 regressors.
const (
	NumAnchors   = 896
	NumKeypoints = 6
	Stride       = 17
)

// Anchor is an anchor centre in input pixels.
type Anchor struct{ X, Y float32 }

// Anchors returns the 896 anchors of an input of size x size pixels, in the
// networks' output order (16x16x2 then 8x8x6, row-major, anchors of a cell
// adjacent).
func Anchors(size int) []Anchor {
	out := make([]Anchor, 0, NumAnchors)
	for _, l := range []struct{ grid, per int }{{16, 2}, {8, 6}} {
		stride := float32(size) / float32(l.grid)
		for gy := 0; gy < l.grid; gy++ {
			for gx := 0; gx < l.grid; gx++ {
				for k := 0; k < l.per; k++ {
					out = append(out, Anchor{X: stride * (float32(gx) + 0.5), Y: stride * (float32(gy) + 0.5)})
				}
			}
		}
	}
	return out
}

// Point is a position in normalised input coordinates ([0,1] across the
// network input) or, after Letterbox.ToImage, in image pixels.
type Point struct{ X, Y float32 }

// Detection is one face: box corners, keypoints and score (probability).
type Detection struct {
	X1, Y1, X2, Y2 float32
	Keypoints      [NumKeypoints]Point
	Score          float32
}

// Width and Height of the box.
func (d Detection) Width() float32  { return d.X2 - d.X1 }
func (d Detection) Height() float32 { return d.Y2 - d.Y1 }

// Sigmoid of a logit clipped to [-100,100] (as MediaPipe's score_clipping).
func Sigmoid(logit float32) float32 {
	x := math.Max(-100, math.Min(100, float64(logit)))
	return float32(1 / (1 + math.Exp(-x)))
}

// Merge joins the separate outputs of the 4-output models (blazeface,
// blazeface-front: scores [512] and [384], regressors [512x16] and
// [384x16]) into the [896,17] layout of facemesh-detection-short.
func Merge(scores16, scores8, regs16, regs8 []float32) ([]float32, error) {
	if len(scores16) != 512 || len(scores8) != 384 || len(regs16) != 512*16 || len(regs8) != 384*16 {
		return nil, fmt.Errorf("blazeface: merge: sizes %d, %d, %d, %d; want 512, 384, 8192, 6144",
			len(scores16), len(scores8), len(regs16), len(regs8))
	}
	out := make([]float32, NumAnchors*Stride)
	for i := 0; i < NumAnchors; i++ {
		o := out[i*Stride : (i+1)*Stride]
		if i < 512 {
			o[0] = scores16[i]
			copy(o[1:], regs16[i*16:(i+1)*16])
		} else {
			j := i - 512
			o[0] = scores8[j]
			copy(o[1:], regs8[j*16:(j+1)*16])
		}
	}
	return out, nil
}

// Decode turns a [896,17] output of a size x size input into detections whose
// score is at least minScore, in normalised input coordinates, unsorted and
// before NMS.
func Decode(out []float32, size int, minScore float32) ([]Detection, error) {
	if len(out) != NumAnchors*Stride {
		return nil, fmt.Errorf("blazeface: decode: %d values, want %d", len(out), NumAnchors*Stride)
	}
	if size <= 0 {
		return nil, fmt.Errorf("blazeface: decode: input size %d", size)
	}
	anchors := Anchors(size)
	s := float32(size)
	var dets []Detection
	for i, a := range anchors {
		r := out[i*Stride : (i+1)*Stride]
		score := Sigmoid(r[0])
		if score < minScore {
			continue
		}
		cx, cy := (r[1]+a.X)/s, (r[2]+a.Y)/s
		w, h := r[3]/s, r[4]/s
		d := Detection{X1: cx - w/2, Y1: cy - h/2, X2: cx + w/2, Y2: cy + h/2, Score: score}
		for k := 0; k < NumKeypoints; k++ {
			d.Keypoints[k] = Point{X: (r[5+2*k] + a.X) / s, Y: (r[6+2*k] + a.Y) / s}
		}
		dets = append(dets, d)
	}
	return dets, nil
}

// IoU is the intersection over union of two boxes.
func IoU(a, b Detection) float32 {
	ix := min(a.X2, b.X2) - max(a.X1, b.X1)
	iy := min(a.Y2, b.Y2) - max(a.Y1, b.Y1)
	if ix <= 0 || iy <= 0 {
		return 0
	}
	inter := ix * iy
	union := a.Width()*a.Height() + b.Width()*b.Height() - inter
	if union <= 0 {
		return 0
	}
	return inter / union
}

// NMS keeps the best detection of each group overlapping above iou, by
// descending score, at most maxFaces (<= 0: no limit). Weighted (MediaPipe's
// WEIGHTED mode) replaces each kept detection's box and keypoints by the
// score-weighted mean of its group; plain keeps it as is.
func NMS(dets []Detection, iou float32, weighted bool, maxFaces int) []Detection {
	sorted := append([]Detection(nil), dets...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Score > sorted[j].Score })
	used := make([]bool, len(sorted))
	var out []Detection
	for i, d := range sorted {
		if used[i] {
			continue
		}
		if maxFaces > 0 && len(out) == maxFaces {
			break
		}
		used[i] = true
		var sum Detection
		var wsum float32
		add := func(o Detection) {
			w := o.Score
			sum.X1 += w * o.X1
			sum.Y1 += w * o.Y1
			sum.X2 += w * o.X2
			sum.Y2 += w * o.Y2
			for k := range sum.Keypoints {
				sum.Keypoints[k].X += w * o.Keypoints[k].X
				sum.Keypoints[k].Y += w * o.Keypoints[k].Y
			}
			wsum += w
		}
		add(d)
		for j := i + 1; j < len(sorted); j++ {
			if !used[j] && IoU(d, sorted[j]) > iou {
				used[j] = true
				add(sorted[j])
			}
		}
		if weighted && wsum > 0 {
			m := Detection{X1: sum.X1 / wsum, Y1: sum.Y1 / wsum, X2: sum.X2 / wsum, Y2: sum.Y2 / wsum, Score: d.Score}
			for k := range m.Keypoints {
				m.Keypoints[k] = Point{X: sum.Keypoints[k].X / wsum, Y: sum.Keypoints[k].Y / wsum}
			}
			d = m
		}
		out = append(out, d)
	}
	return out
}

// Letterbox places a W x H image into a Size x Size input: scaled by Scale
// (aspect kept) to ResizedW x ResizedH, at offset (PadX, PadY), the rest
// filled with a constant.
type Letterbox struct {
	Size                    int
	Scale                   float64
	ResizedW, ResizedH      int
	PadX, PadY              int
	ImageWidth, ImageHeight int
}

// NewLetterbox computes the letterbox of a w x h image into a square input.
func NewLetterbox(w, h, size int) (Letterbox, error) {
	if w <= 0 || h <= 0 || size <= 0 {
		return Letterbox{}, fmt.Errorf("blazeface: letterbox of %dx%d into %d", w, h, size)
	}
	s := float64(size) / float64(max(w, h))
	rw := max(1, min(size, int(math.Round(float64(w)*s))))
	rh := max(1, min(size, int(math.Round(float64(h)*s))))
	return Letterbox{Size: size, Scale: s, ResizedW: rw, ResizedH: rh,
		PadX: (size - rw) / 2, PadY: (size - rh) / 2, ImageWidth: w, ImageHeight: h}, nil
}

// ToImage maps a normalised input point to image pixels.
func (l Letterbox) ToImage(p Point) Point {
	sx := float64(l.ResizedW) / float64(l.ImageWidth)
	sy := float64(l.ResizedH) / float64(l.ImageHeight)
	return Point{
		X: float32((float64(p.X)*float64(l.Size) - float64(l.PadX)) / sx),
		Y: float32((float64(p.Y)*float64(l.Size) - float64(l.PadY)) / sy),
	}
}

// DetectionToImage maps a detection from normalised input coordinates to
// image pixels.
func (l Letterbox) DetectionToImage(d Detection) Detection {
	a := l.ToImage(Point{d.X1, d.Y1})
	b := l.ToImage(Point{d.X2, d.Y2})
	out := Detection{X1: a.X, Y1: a.Y, X2: b.X, Y2: b.Y, Score: d.Score}
	for k, p := range d.Keypoints {
		out.Keypoints[k] = l.ToImage(p)
	}
	return out
}

// InputNCHW converts a Size x Size RGB (or BGR with swapRB) 8-bit image, row
// major with 3 bytes per pixel, into the network's NCHW float32 input in
// [-1,1].
func InputNCHW(pix []byte, size int, swapRB bool) ([]float32, error) {
	n := size * size
	if len(pix) != 3*n {
		return nil, fmt.Errorf("blazeface: input: %d bytes for %dx%d RGB", len(pix), size, size)
	}
	out := make([]float32, 3*n)
	for i := 0; i < n; i++ {
		for c := 0; c < 3; c++ {
			src := c
			if swapRB {
				src = 2 - c
			}
			out[c*n+i] = float32(float64(pix[3*i+src])/127.5 - 1)
		}
	}
	return out, nil
}

// Config holds post-processing parameters.
type Config struct {
	MinScore float32 // score threshold (probability), e.g. 0.5
	IoU      float32 // NMS overlap, e.g. 0.3
	Weighted bool    // weighted NMS (MediaPipe) instead of plain
	MaxFaces int     // <= 0: no limit
}

// DefaultConfig is MediaPipe's face detection setting.
var DefaultConfig = Config{MinScore: 0.5, IoU: 0.3, Weighted: true}

// Detect decodes a [896,17] output, suppresses overlaps and maps the faces
// to image pixels through the letterbox, best first.
func Detect(out []float32, lb Letterbox, cfg Config) ([]Detection, error) {
	dets, err := Decode(out, lb.Size, cfg.MinScore)
	if err != nil {
		return nil, err
	}
	dets = NMS(dets, cfg.IoU, cfg.Weighted, cfg.MaxFaces)
	for i := range dets {
		dets[i] = lb.DetectionToImage(dets[i])
	}
	return dets, nil
}
