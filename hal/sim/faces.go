// Package demo builds the simulated ATM day that `atm-tools demo` replays and
// the end-to-end tests feed to the real binary: customers are faces cropped
// from face-api's demo photos (shipped with the model sources), pasted into
// 640x480 camera-like frames with per-frame jitter, lighting changes and
// synthetic masks. Everything is deterministic for a given seed.
//
// No gocv Mat leaves this package: faces are kept as raw BGR bytes and
// frames are visit.Frame values.
package sim

import (
	"errors"
	"fmt"
	"image"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"sort"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/models"
)

// CropSize is the side of a stored face crop (pixels).
const CropSize = 256

// Face is one distinct face cut out of a demo photo: a square crop around
// the face (about twice the face box, so hair and shoulders come along),
// unmasked and with synthetic masks painted from its keypoints.
type Face struct {
	Source string // e.g. "sample3.jpg#1"
	Score  float64
	// BGR is the CropSize x CropSize crop; Masked holds masked variants
	// (possibly empty when the detector gave no keypoints).
	BGR    []byte
	Masked [][]byte
}

// Photos are the face-api demo photos the faces come from.
var Photos = []string{"sample1.jpg", "sample2.jpg", "sample3.jpg", "sample4.jpg", "sample5.jpg", "sample6.jpg"}

// minFacePx: smaller faces in the photos give crops too blurry to stand in
// for a customer in front of an ATM camera.
const minFacePx = 90

// LoadFaces detects every face in the demo photos under photoDir with the
// manifest's detector from modelsDir and returns one crop per face, in a
// stable order (photo, then left to right).
func LoadFaces(modelsDir, photoDir string) ([]Face, error) {
	man, err := models.LoadManifest(filepath.Join(modelsDir, "manifest.yaml"))
	if err != nil {
		return nil, fmt.Errorf("demo faces: %w", err)
	}
	md, ok := man.Find(man.Pipeline.Detector)
	if !ok {
		return nil, fmt.Errorf("demo faces: detector %q not in the manifest", man.Pipeline.Detector)
	}
	det, err := vision.NewDetector(modelsDir, md)
	if err != nil {
		return nil, fmt.Errorf("demo faces: %w", err)
	}
	defer det.Close()
	var out []Face
	for _, name := range Photos {
		path := filepath.Join(photoDir, name)
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("demo faces: %w (run `make models`: the photos ship with face-api)", err)
		}
		fs, err := facesIn(det, path, name)
		if err != nil {
			return nil, err
		}
		out = append(out, fs...)
	}
	if len(out) == 0 {
		return nil, errors.New("demo faces: no face found in the demo photos")
	}
	return out, nil
}

// facesIn detects faces on overlapping tiles of the photo (a whole group
// photo letterboxed to the detector's input makes its faces too small),
// merges the tiles' detections and crops each face.
func facesIn(det vision.Detector, path, name string) ([]Face, error) {
	img := gocv.IMRead(path, gocv.IMReadColor)
	if img.Empty() {
		img.Close()
		return nil, fmt.Errorf("demo faces: cannot read %s", path)
	}
	defer img.Close()
	w, h := img.Cols(), img.Rows()
	var dets []vision.Detection
	side := min(w, h) * 2 / 3
	step := side / 2
	for y := 0; ; y += step {
		y = min(y, h-side)
		for x := 0; ; x += step {
			x = min(x, w-side)
			tile := img.Region(image.Rect(x, y, x+side, y+side))
			ds, err := det.Detect(tile)
			tile.Close()
			if err != nil {
				return nil, fmt.Errorf("demo faces: detect %s: %w", name, err)
			}
			for _, d := range ds {
				if d.Score < 0.75 || d.W() < minFacePx || len(d.Points) <= vision.KpMouth {
					continue
				}
				// Drop faces cut by the tile border; another tile has them whole.
				if (d.X0 < 2 && x > 0) || (d.Y0 < 2 && y > 0) || (d.X1 > float64(side-2) && x+side < w) || (d.Y1 > float64(side-2) && y+side < h) {
					continue
				}
				dets = append(dets, shift(d, float64(x), float64(y)))
			}
			if x+side >= w {
				break
			}
		}
		if y+side >= h {
			break
		}
	}
	dets = dedupe(dets)
	sort.Slice(dets, func(i, j int) bool { return dets[i].X0 < dets[j].X0 })
	var out []Face
	for i, d := range dets {
		f, err := cropFace(img, d)
		if err != nil {
			return nil, fmt.Errorf("demo faces: %s: %w", name, err)
		}
		f.Source = fmt.Sprintf("%s#%d", name, i+1)
		out = append(out, f)
	}
	return out, nil
}

func shift(d vision.Detection, dx, dy float64) vision.Detection {
	d.X0, d.X1, d.Y0, d.Y1 = d.X0+dx, d.X1+dx, d.Y0+dy, d.Y1+dy
	pts := make([][2]float64, len(d.Points))
	for i, p := range d.Points {
		pts[i] = [2]float64{p[0] + dx, p[1] + dy}
	}
	d.Points = pts
	return d
}

// dedupe keeps the best-scored of detections that overlap (the same face
// seen from two tiles).
func dedupe(ds []vision.Detection) []vision.Detection {
	sort.Slice(ds, func(i, j int) bool { return ds[i].Score > ds[j].Score })
	var keep []vision.Detection
	for _, d := range ds {
		dup := false
		for _, k := range keep {
			cx, cy := (d.X0+d.X1)/2, (d.Y0+d.Y1)/2
			if cx > k.X0 && cx < k.X1 && cy > k.Y0 && cy < k.Y1 {
				dup = true
				break
			}
		}
		if !dup {
			keep = append(keep, d)
		}
	}
	return keep
}

// cropFace cuts a square of twice the face box around the face (padding
// with the border colour outside the photo), resizes it to CropSize and
// paints the mask variants.
func cropFace(img gocv.Mat, d vision.Detection) (Face, error) {
	side := 2.0 * math.Max(d.W(), d.H())
	cx, cy := (d.X0+d.X1)/2, (d.Y0+d.Y1)/2+0.1*d.H()
	x0, y0 := int(cx-side/2), int(cy-side/2)
	s := int(side)
	pad := s
	padded := gocv.NewMat()
	defer padded.Close()
	gocv.CopyMakeBorder(img, &padded, pad, pad, pad, pad, gocv.BorderReplicate, colorBlack)
	roi := padded.Region(image.Rect(x0+pad, y0+pad, x0+pad+s, y0+pad+s))
	defer roi.Close()
	crop := gocv.NewMat()
	defer crop.Close()
	gocv.Resize(roi, &crop, image.Pt(CropSize, CropSize), 0, 0, gocv.InterpolationArea)
	k := float64(CropSize) / float64(s)
	cd := scaleDet(shift(d, -float64(x0), -float64(y0)), k)
	f := Face{Score: d.Score, BGR: append([]byte(nil), crop.ToBytes()...)}
	for _, style := range []int{0, 3, 6, 9} {
		m := crop.Clone()
		err := vision.PaintMask(&m, cd, style%vision.MaskStyles)
		if err == nil {
			f.Masked = append(f.Masked, append([]byte(nil), m.ToBytes()...))
		}
		m.Close()
		if err != nil && !errors.Is(err, vision.ErrNoKeypoints) {
			return Face{}, err
		}
	}
	return f, nil
}

func scaleDet(d vision.Detection, k float64) vision.Detection {
	d.X0, d.X1, d.Y0, d.Y1 = d.X0*k, d.X1*k, d.Y0*k, d.Y1*k
	for i := range d.Points {
		d.Points[i] = [2]float64{d.Points[i][0] * k, d.Points[i][1] * k}
	}
	return d
}

var colorBlack = color.RGBA{A: 255}
