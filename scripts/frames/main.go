// Command frames makes camera frames for benchmarks. With photos as
// arguments, each is scaled to cover WxH and centre-cropped to it, as a
// camera at that mode would frame the scene. With -demo N it renders the
// bursts of the first N card inserts of the demo's simulated ATM day
// (`atm-tools demo --seed S`: faces at ATM distance in 640x480 frames,
// package sim) and DIR/labels.csv, their ground truth (path,identity,masked),
// which makes DIR a labelled folder for `atm-tools eval`.
//
//	go run ./scripts/frames -size 640x480 -o DIR photo.jpg...
//	go run ./scripts/frames -demo 40 [-seed S] -o DIR
package main

import (
	"flag"
	"fmt"
	"image"
	"os"
	"path/filepath"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/hal/sim"
)

func main() {
	size := flag.String("size", "640x480", "frame size WxH")
	out := flag.String("o", "", "output directory")
	visits := flag.Int("demo", 0, "render the bursts of the demo day's first N visits instead")
	burst := flag.Int("burst", 5, "frames per demo visit")
	seed := flag.Uint64("seed", 1, "the demo day's seed (atm-tools demo --seed)")
	modelsDir := flag.String("models", "build/models", "models dir (demo faces are found with its detector)")
	photos := flag.String("photos", "build/src/face-api/demo", "face-api demo photos")
	flag.Parse()
	if *visits > 0 && *out != "" {
		faces, err := sim.LoadFaces(*modelsDir, *photos)
		if err == nil {
			day := sim.Day(faces, *seed)
			if err = day.WriteFrames(faces, *out, *burst, *visits); err == nil {
				err = day.WriteLabels(faces, *out, *burst, *visits)
			}
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	var w, h int
	if _, err := fmt.Sscanf(*size, "%dx%d", &w, &h); err != nil || w <= 0 || h <= 0 || *out == "" {
		fmt.Fprintln(os.Stderr, "usage: frames -size WxH -o DIR image...")
		os.Exit(2)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, f := range flag.Args() {
		if err := cut(f, filepath.Join(*out, filepath.Base(f)), w, h); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}

func cut(in, out string, w, h int) error {
	img := gocv.IMRead(in, gocv.IMReadColor)
	defer img.Close()
	if img.Empty() {
		return fmt.Errorf("%s: not a readable image", in)
	}
	s := max(float64(w)/float64(img.Cols()), float64(h)/float64(img.Rows()))
	sw, sh := int(float64(img.Cols())*s+0.5), int(float64(img.Rows())*s+0.5)
	scaled := gocv.NewMat()
	defer scaled.Close()
	gocv.Resize(img, &scaled, image.Pt(sw, sh), 0, 0, gocv.InterpolationArea)
	x, y := (sw-w)/2, (sh-h)/2
	roi := scaled.Region(image.Rect(x, y, x+w, y+h))
	defer roi.Close()
	if !gocv.IMWrite(out, roi) {
		return fmt.Errorf("%s: write failed", out)
	}
	return nil
}
