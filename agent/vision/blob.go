package vision

import (
	"fmt"
	"image"
	"image/color"
	"unsafe"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/models"
)

func float32Bytes(f []float32) []byte {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), 4*len(f))
}

// Letterbox maps network input coordinates back to the source image:
// src = (net - Offset) / Scale.
type Letterbox struct {
	ScaleX, ScaleY float64
	OffX, OffY     float64
}

// ToImage maps a point in network input pixels to source image pixels.
func (l Letterbox) ToImage(x, y float64) (float64, float64) {
	return (x - l.OffX) / l.ScaleX, (y - l.OffY) / l.ScaleY
}

// makeBlob resizes a BGR 8-bit image to the model input (stretch or
// letterbox with the constant pad value), converts the colour order and
// applies (pixel - mean) * scale, returning an NCHW float32 blob.
func makeBlob(img gocv.Mat, in models.Input) ([]float32, Letterbox, error) {
	if img.Empty() || img.Channels() != 3 {
		return nil, Letterbox{}, fmt.Errorf("image must be 3-channel BGR, got %d channels: %w", img.Channels(), ErrInput)
	}
	w, h := in.Width, in.Height
	sw, sh := img.Cols(), img.Rows()
	lb := Letterbox{ScaleX: float64(w) / float64(sw), ScaleY: float64(h) / float64(sh)}
	resized := gocv.NewMat()
	defer resized.Close()
	if in.Resize == "letterbox" {
		s := min(lb.ScaleX, lb.ScaleY)
		nw, nh := max(1, int(float64(sw)*s+0.5)), max(1, int(float64(sh)*s+0.5))
		tmp := gocv.NewMat()
		defer tmp.Close()
		gocv.Resize(img, &tmp, image.Pt(nw, nh), 0, 0, gocv.InterpolationLinear)
		left, top := (w-nw)/2, (h-nh)/2
		pad := in.Pad
		gocv.CopyMakeBorder(tmp, &resized, top, h-nh-top, left, w-nw-left, gocv.BorderConstant, colorOf(pad))
		lb = Letterbox{ScaleX: float64(nw) / float64(sw), ScaleY: float64(nh) / float64(sh), OffX: float64(left), OffY: float64(top)}
	} else {
		gocv.Resize(img, &resized, image.Pt(w, h), 0, 0, gocv.InterpolationLinear)
	}
	data := resized.ToBytes()
	blob := make([]float32, 3*w*h)
	var mean [3]float64
	switch len(in.Mean) {
	case 1:
		mean = [3]float64{in.Mean[0], in.Mean[0], in.Mean[0]}
	case 3:
		mean = [3]float64{in.Mean[0], in.Mean[1], in.Mean[2]}
	}
	scale := in.Scale.Channels()
	rgb := in.Color == "RGB"
	plane := w * h
	for i := 0; i < plane; i++ {
		b, g, r := float64(data[3*i]), float64(data[3*i+1]), float64(data[3*i+2])
		c0, c2 := b, r
		if rgb {
			c0, c2 = r, b
		}
		blob[i] = float32((c0 - mean[0]) * scale[0])
		blob[plane+i] = float32((g - mean[1]) * scale[1])
		blob[2*plane+i] = float32((c2 - mean[2]) * scale[2])
	}
	return blob, lb, nil
}

func colorOf(v float64) color.RGBA {
	c := uint8(min(255, max(0, v)))
	return color.RGBA{R: c, G: c, B: c, A: 255}
}
