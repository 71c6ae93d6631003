// Command frames cuts photos to camera frames for benchmarks: each image is
// scaled to cover WxH and centre-cropped to it, as a camera at that mode
// would frame the scene.
//
//	go run ./scripts/frames -size 640x480 -o DIR photo.jpg...
package main

import (
	"flag"
	"fmt"
	"image"
	"os"
	"path/filepath"

	"gocv.io/x/gocv"
)

func main() {
	size := flag.String("size", "640x480", "frame size WxH")
	out := flag.String("o", "", "output directory")
	flag.Parse()
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
