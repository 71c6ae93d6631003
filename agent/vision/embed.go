package vision

import (
	"errors"
	"fmt"
	"image"
	"math"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/models"
)

// Embedder turns a detected face into an L2-normalised template.
type Embedder struct {
	net *Net
	e   models.Embedding
}

// NewEmbedder loads an embedder model.
func NewEmbedder(dir string, md *models.Model) (*Embedder, error) {
	if md.Task != models.TaskEmbedder || md.Embedding == nil {
		return nil, fmt.Errorf("model %s is not an embedder", md.Name)
	}
	n, err := LoadNet(dir, md)
	if err != nil {
		return nil, err
	}
	return &Embedder{net: n, e: *md.Embedding}, nil
}

// Close releases the network.
func (e *Embedder) Close() error { return e.net.Close() }

// Model is the embedder's manifest entry.
func (e *Embedder) Model() models.Model { return e.net.Model }

// ErrEmptyCrop is returned when the crop policy leaves nothing of the face.
var ErrEmptyCrop = errors.New("face crop is empty")

// crop cuts the face as the model's crop policy says, at the input size.
func (e *Embedder) crop(img gocv.Mat, d Detection) (gocv.Mat, error) {
	in := e.net.Model.Input
	size := in.Width
	scale := e.e.CropScale
	if scale == 0 {
		scale = 1.12
	}
	switch e.e.Crop {
	case "aligned":
		if d.HasEyes() {
			// BlazeFace boxes put the eyes about 38% down the box, about
			// 42% of the box width apart; keep that framing at this scale.
			return cropAligned(img, d, 0.5-0.12/scale, 0.42/scale, size), nil
		}
		return cropSquare(img, d, scale, size), nil
	case "arcface":
		// ArcFace five-point template (eyes, nose, mouth from the detector).
		if e.e.CropScale == 0 {
			scale = 1
		}
		return cropArcFace(img, d, e.e.Align, scale, size), nil
	case "original":
		// The original project's policy, kept as a baseline:
		// image[startY:int(endY-(.27*endY)), startX:endX], which keeps 73%
		// of the absolute y coordinate, then a stretch to the input size.
		x0 := clampInt(int(d.X0), 0, img.Cols())
		x1 := clampInt(int(d.X1), 0, img.Cols())
		y0 := clampInt(int(d.Y0), 0, img.Rows())
		y1 := clampInt(int(d.Y1-0.27*d.Y1), 0, img.Rows())
		if x1-x0 < 2 || y1-y0 < 2 {
			return gocv.Mat{}, ErrEmptyCrop
		}
		roi := img.Region(image.Rect(x0, y0, x1, y1))
		defer roi.Close()
		out := gocv.NewMat()
		gocv.Resize(roi, &out, image.Pt(in.Width, in.Height), 0, 0, gocv.InterpolationLinear)
		return out, nil
	default:
		return cropSquare(img, d, scale, size), nil
	}
}

// EmbedCrop embeds a crop made by the model's crop policy (flip-averaged
// when the manifest says so) and optionally returns a JPEG thumbnail.
func (e *Embedder) EmbedCrop(crop gocv.Mat, thumb int) ([]float32, []byte, error) {
	emb, err := e.embedCrop(crop)
	if err != nil {
		return nil, nil, err
	}
	if e.e.Flip {
		flipped := gocv.NewMat()
		defer flipped.Close()
		gocv.Flip(crop, &flipped, 1)
		f2, err := e.embedCrop(flipped)
		if err != nil {
			return nil, nil, err
		}
		for i := range emb {
			emb[i] += f2[i]
		}
		l2normalize(emb)
	}
	var jpg []byte
	if thumb > 0 {
		small := gocv.NewMat()
		defer small.Close()
		gocv.Resize(crop, &small, image.Pt(thumb, thumb*crop.Rows()/max(1, crop.Cols())), 0, 0, gocv.InterpolationArea)
		buf, err := gocv.IMEncode(gocv.JPEGFileExt, small)
		if err == nil {
			jpg = append([]byte(nil), buf.GetBytes()...)
			buf.Close()
		}
	}
	return emb, jpg, nil
}

func (e *Embedder) embedCrop(crop gocv.Mat) ([]float32, error) {
	blob, _, err := makeBlob(crop, e.net.Model.Input)
	if err != nil {
		return nil, err
	}
	outs, err := e.net.Forward(blob, 3)
	if err != nil {
		return nil, err
	}
	v := outs[0].Data
	if e.e.Dim > 0 && len(v) != e.e.Dim {
		return nil, fmt.Errorf("model %s: embedding has %d values, manifest says %d", e.net.Model.Name, len(v), e.e.Dim)
	}
	l2normalize(v)
	return v, nil
}

func l2normalize(v []float32) {
	var n float64
	for _, x := range v {
		n += float64(x) * float64(x)
	}
	if n == 0 {
		return
	}
	inv := float32(1 / math.Sqrt(n))
	for i := range v {
		v[i] *= inv
	}
}

func clampInt(v, lo, hi int) int { return min(max(v, lo), hi) }
