package eval

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/models/eval/dataset"
)

// SheetOptions control ContactSheet.
type SheetOptions struct {
	Recrop vision.Recrop
	// PerIdentity and Identities bound the sheet: the first PerIdentity
	// images of each of the first Identities identities (a row each).
	PerIdentity, Identities int
	Cell                    int // side of each tile in pixels
}

// ContactSheet writes a PNG with one row per identity and, for each image,
// two tiles side by side: the image the pipeline sees (after any re-cut,
// with the detected box and keypoints drawn) and the crop the embedder is
// fed. It is for checking crops by eye; the list of files in sheet order is
// written to list.
func ContactSheet(ctx context.Context, p *vision.Pipeline, ds *dataset.Dataset, o SheetOptions, out string, list io.Writer) error {
	if o.Cell <= 0 {
		o.Cell = 112
	}
	rows := map[string][]dataset.Item{}
	var order []string
	for _, it := range ds.Images() {
		if _, ok := rows[it.Identity]; !ok {
			if len(order) >= o.Identities {
				continue
			}
			order = append(order, it.Identity)
		}
		if len(rows[it.Identity]) < o.PerIdentity {
			rows[it.Identity] = append(rows[it.Identity], it)
		}
	}
	c := o.Cell
	sheet := image.NewRGBA(image.Rect(0, 0, 2*c*o.PerIdentity+4*o.PerIdentity, (c+4)*len(order)))
	draw.Draw(sheet, sheet.Bounds(), image.NewUniform(color.White), image.Point{}, draw.Src)
	for r, id := range order {
		for k, it := range rows[id] {
			if err := ctx.Err(); err != nil {
				return err
			}
			fmt.Fprintf(list, "%d,%d,%s,masked=%v\n", r, k, it.Rel, it.Masked)
			data, err := os.ReadFile(it.Path)
			if err != nil {
				return err
			}
			v, err := p.ViewCrop(data, o.Recrop)
			if err != nil {
				fmt.Fprintf(list, "  %s: %v\n", it.Rel, err)
				continue
			}
			x0, y0 := k*(2*c+4), r*(c+4)
			in := scaleNearest(toRGBA(v.Input), c)
			markFace(in, v.Face, float64(c)/float64(max(v.Input.Bounds().Dx(), v.Input.Bounds().Dy())))
			draw.Draw(sheet, image.Rect(x0, y0, x0+c, y0+c), in, image.Point{}, draw.Src)
			draw.Draw(sheet, image.Rect(x0+c, y0, x0+2*c, y0+c), scaleNearest(toRGBA(v.Crop), c), image.Point{}, draw.Src)
		}
	}
	// Face crops: readable by the owner only, whatever the umask or the
	// mode of a sheet written before.
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if err := png.Encode(f, sheet); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// toRGBA copies an image (Mat.ToImage gives RGB already) into an RGBA.
func toRGBA(src image.Image) *image.RGBA {
	b := src.Bounds()
	out := image.NewRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	draw.Draw(out, out.Bounds(), src, b.Min, draw.Src)
	return out
}

// scaleNearest fits src into a side x side square (aspect kept, top-left).
func scaleNearest(src *image.RGBA, side int) *image.RGBA {
	b := src.Bounds()
	s := float64(side) / float64(max(b.Dx(), b.Dy()))
	out := image.NewRGBA(image.Rect(0, 0, side, side))
	draw.Draw(out, out.Bounds(), image.NewUniform(color.White), image.Point{}, draw.Src)
	for y := 0; y < int(float64(b.Dy())*s) && y < side; y++ {
		for x := 0; x < int(float64(b.Dx())*s) && x < side; x++ {
			out.Set(x, y, src.At(int(float64(x)/s), int(float64(y)/s)))
		}
	}
	return out
}

// markFace draws the detection box (green), the detector's keypoints (red)
// and the landmark net's alignment points (blue) scaled by s.
func markFace(img *image.RGBA, d vision.Detection, s float64) {
	green, red, blue := color.RGBA{0, 255, 0, 255}, color.RGBA{255, 0, 0, 255}, color.RGBA{0, 64, 255, 255}
	x0, y0, x1, y1 := int(d.X0*s), int(d.Y0*s), int(d.X1*s), int(d.Y1*s)
	for x := x0; x <= x1; x++ {
		img.Set(x, y0, green)
		img.Set(x, y1, green)
	}
	for y := y0; y <= y1; y++ {
		img.Set(x0, y, green)
		img.Set(x1, y, green)
	}
	dot := func(q [2]float64, c color.RGBA) {
		px, py := int(q[0]*s), int(q[1]*s)
		for dy := -1; dy <= 1; dy++ {
			for dx := -1; dx <= 1; dx++ {
				img.Set(px+dx, py+dy, c)
			}
		}
	}
	for _, q := range d.Points {
		dot(q, red)
	}
	for _, q := range d.Five {
		dot(q, blue)
	}
}

// DumpCrops writes the crop the embedder is fed for every image of ds
// (PNG, in the image's colours) into the new or empty folder out, with an
// index.csv of file,identity,masked,fold,path (fold: the identity's half
// in the held-out splits). It is the training input of scripts/maskft.
// Face crops are personal data: the folder is 0700 and its files 0600.
// Images without a face are listed on errs and left out.
func DumpCrops(ctx context.Context, p *vision.Pipeline, ds *dataset.Dataset, r vision.Recrop, out string, errs io.Writer) (int, error) {
	if err := os.Mkdir(out, 0o700); err != nil && !os.IsExist(err) {
		return 0, err
	}
	if ents, err := os.ReadDir(out); err != nil {
		return 0, err
	} else if len(ents) > 0 {
		return 0, fmt.Errorf("%s is not empty", out)
	}
	if err := os.Chmod(out, 0o700); err != nil {
		return 0, err
	}
	var index bytes.Buffer
	index.WriteString("file,identity,masked,fold,path\n")
	w := csv.NewWriter(&index)
	n := 0
	for i, it := range ds.Images() {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		data, err := os.ReadFile(it.Path)
		if err != nil {
			return n, err
		}
		v, err := p.ViewCrop(data, r)
		if err != nil {
			fmt.Fprintf(errs, "%s: %v\n", it.Rel, err)
			continue
		}
		name := fmt.Sprintf("%06d.png", i)
		var b bytes.Buffer
		if err := png.Encode(&b, v.Crop); err != nil {
			return n, err
		}
		if err := os.WriteFile(filepath.Join(out, name), b.Bytes(), 0o600); err != nil {
			return n, err
		}
		w.Write([]string{name, it.Identity, strconv.FormatBool(it.Masked), strconv.Itoa(fold(it.Identity)), it.Rel})
		n++
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return n, err
	}
	return n, os.WriteFile(filepath.Join(out, "index.csv"), index.Bytes(), 0o600)
}
