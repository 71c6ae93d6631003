// Command humaninput writes the real-face input of the human-models golden
// tests: a 512x512 crop of face-api's demo sample1.jpg (the middle face),
// box-averaged 2x2 to 256x256 RGB bytes, base64 in a small JSON file that
// both scripts/golden/human.mjs and the Go tests read.
//
//	go run ./scripts/golden/humaninput -src build/src -out testdata/golden/human_input_face.json
package main

import (
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"image/jpeg"
	"os"
	"path/filepath"
)

// Crop of sample1.jpg (1920x1280) holding the middle face.
const cropX, cropY, cropSize = 684, 274, 512

func main() {
	src := flag.String("src", "build/src", "extracted npm packages")
	out := flag.String("out", "testdata/golden/human_input_face.json", "output file")
	flag.Parse()
	if err := run(*src, *out); err != nil {
		fmt.Fprintln(os.Stderr, "humaninput:", err)
		os.Exit(1)
	}
}

func run(src, out string) error {
	path := filepath.Join(src, "face-api", "demo", "sample1.jpg")
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	img, err := jpeg.Decode(f)
	if err != nil {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	const n = cropSize / 2
	rgb := make([]byte, n*n*3)
	b := img.Bounds()
	for y := 0; y < n; y++ {
		for x := 0; x < n; x++ {
			var s [3]uint32
			for dy := 0; dy < 2; dy++ {
				for dx := 0; dx < 2; dx++ {
					r, g, bl, _ := img.At(b.Min.X+cropX+2*x+dx, b.Min.Y+cropY+2*y+dy).RGBA()
					s[0] += r >> 8
					s[1] += g >> 8
					s[2] += bl >> 8
				}
			}
			for c := 0; c < 3; c++ {
				rgb[(y*n+x)*3+c] = byte((s[c] + 2) / 4)
			}
		}
	}
	doc := map[string]any{
		"source": "npm @vladmandic/face-api@1.7.15 demo/sample1.jpg",
		"crop":   []int{cropX, cropY, cropSize, cropSize},
		"size":   n,
		"rgb":    base64.StdEncoding.EncodeToString(rgb),
	}
	j, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	return os.WriteFile(out, j, 0o644)
}
