package vision

import (
	"errors"
	"fmt"
	"image"
	"math"
	"os"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/models"
	"github.com/periocular/atm-agent/models/onnx"
)

// Embedder turns a detected face into an L2-normalised template.
type Embedder struct {
	net  *Net
	e    models.Embedding
	tail *onnx.PoolingTail // with PoolRows: the model's last two layers
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
	e := &Embedder{net: n, e: *md.Embedding}
	if e.e.PoolRows > 0 {
		b, err := os.ReadFile(models.Path(dir, md.File))
		if err == nil {
			e.tail, err = onnx.ReadPoolingTail(b, e.e.FeatureMap)
		}
		if err == nil && !n.HasLayer(e.tail.Layer) {
			err = fmt.Errorf("OpenCV has no layer %q for tensor %q", e.tail.Layer, e.e.FeatureMap)
		}
		if err == nil && (e.e.PoolRows > e.tail.H || e.tail.Out != e.e.Dim) {
			err = fmt.Errorf("pool_rows %d of a %dx%d map, %d outputs", e.e.PoolRows, e.tail.H, e.tail.W, e.tail.Out)
		}
		if err != nil {
			n.Close()
			return nil, fmt.Errorf("model %s: periocular pooling: %w", md.Name, err)
		}
	}
	return e, nil
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
		crop := cropArcFace(img, d, e.e.Align, scale, size)
		if e.e.Occlude > 0 {
			occludeBelow(crop, e.e.Occlude)
		}
		return crop, nil
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
	if e.tail != nil {
		outs, err := e.net.Forward(blob, 3, e.tail.Layer)
		if err != nil {
			return nil, err
		}
		return e.pooled(outs[0].Data)
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

// pooled runs the model's GDC and linear layers on its feature map twice:
// over the whole map (the model's own template) and over the top PoolRows
// rows, scaled to the whole map's area (the periocular template).
func (e *Embedder) pooled(fm []float32) ([]float32, error) {
	t := e.tail
	if len(fm) != t.C*t.H*t.W {
		return nil, fmt.Errorf("model %s: feature map %q has %d values, want %dx%dx%d", e.net.Model.Name, e.e.FeatureMap, len(fm), t.C, t.H, t.W)
	}
	w := e.e.PoolWeightOr()
	full, peri := make([]float32, t.C), make([]float32, t.C)
	top := e.e.PoolRows * t.W
	scale := float32(t.H) / float32(e.e.PoolRows)
	for c := range t.C {
		g, f := t.GDC[c*t.H*t.W:(c+1)*t.H*t.W], fm[c*t.H*t.W:(c+1)*t.H*t.W]
		var s float32
		for i := range top {
			s += g[i] * f[i]
		}
		peri[c] = scale*s + t.GDCBias[c]
		for i := top; i < len(g); i++ {
			s += g[i] * f[i]
		}
		full[c] = s + t.GDCBias[c]
	}
	lin := func(x []float32) []float32 {
		out := make([]float32, t.Out)
		for o := range t.Out {
			row := t.Lin[o*t.C : (o+1)*t.C]
			s := t.LinBias[o]
			for c, v := range x {
				s += row[c] * v
			}
			out[o] = s
		}
		l2normalize(out)
		return out
	}
	pt := lin(peri)
	if w >= 1 {
		return pt, nil
	}
	ft := lin(full)
	a, b := float32(math.Sqrt(1-w)), float32(math.Sqrt(w))
	out := make([]float32, 0, 2*t.Out)
	for _, x := range ft {
		out = append(out, a*x)
	}
	for _, x := range pt {
		out = append(out, b*x)
	}
	return out, nil
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

// occludeBelow paints the crop mid-gray from the fraction y of its height
// down (experiment).
func occludeBelow(crop gocv.Mat, y float64) {
	top := int(y * float64(crop.Rows()))
	if top >= crop.Rows() {
		return
	}
	r := crop.Region(image.Rect(0, top, crop.Cols(), crop.Rows()))
	defer r.Close()
	r.SetTo(gocv.NewScalar(128, 128, 128, 0))
}
