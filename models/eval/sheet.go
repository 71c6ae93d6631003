package eval

import (
	"context"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"os"

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
