package golden

import (
	"image"
	"image/color"
	"path/filepath"
	"testing"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/agent/vision/blazeface"
	"github.com/periocular/atm-agent/internal/testenv/mats"
)

// blazeDetectors are the BlazeFace-family networks decoded in Go.
var blazeDetectors = []humanModel{humanModels[0], humanModels[1], humanModels[2]}

// detectBlaze runs a converted detector on an NCHW input and decodes it.
func detectBlaze(t *testing.T, net *gocv.Net, m humanModel, blob []float32, lb blazeface.Letterbox) []blazeface.Detection {
	t.Helper()
	outs, err := forward(net, blob, m.size, m.outputs)
	if err != nil {
		t.Fatal(err)
	}
	raw := outs["Identity"]
	if len(m.outputs) == 4 {
		if raw, err = blazeface.Merge(outs["Identity"], outs["Identity_1"], outs["Identity_2"], outs["Identity_3"]); err != nil {
			t.Fatal(err)
		}
	}
	dets, err := blazeface.Detect(raw, lb, blazeface.DefaultConfig)
	if err != nil {
		t.Fatal(err)
	}
	return dets
}

// letterboxBlob letterboxes a BGR image with a constant gray pad and returns
// the [-1,1] RGB NCHW input.
func letterboxBlob(t *testing.T, img gocv.Mat, size int) ([]float32, blazeface.Letterbox) {
	t.Helper()
	lb, err := blazeface.NewLetterbox(img.Cols(), img.Rows(), size)
	if err != nil {
		t.Fatal(err)
	}
	small := gocv.NewMat()
	defer small.Close()
	gocv.Resize(img, &small, image.Pt(lb.ResizedW, lb.ResizedH), 0, 0, gocv.InterpolationArea)
	boxed := gocv.NewMat()
	defer boxed.Close()
	gocv.CopyMakeBorder(small, &boxed, lb.PadY, size-lb.ResizedH-lb.PadY, lb.PadX, size-lb.ResizedW-lb.PadX,
		gocv.BorderConstant, color.RGBA{127, 127, 127, 0})
	blob, err := blazeface.InputNCHW(boxed.ToBytes(), size, true)
	if err != nil {
		t.Fatal(err)
	}
	return blob, lb
}

func TestHumanBlazeFaceRealFaces(t *testing.T) {
	face := loadFace(t)
	demo := filepath.Join(filepath.Dir(humanModelsDir(t)), "..", "face-api", "demo")
	for _, m := range blazeDetectors {
		t.Run(m.name, func(t *testing.T) {
			net := loadNet(t, convertHuman(t, m))
			defer net.Close()

			// The golden face crop (256 px, one face) at the model's size.
			lb, err := blazeface.NewLetterbox(face.Size, face.Size, m.size)
			if err != nil {
				t.Fatal(err)
			}
			x := faceNHWC(face, m.size, "m11")
			if m.size != face.Size && m.size*2 != face.Size {
				t.Fatalf("no face input for size %d", m.size)
			}
			dets := detectBlaze(t, &net, m, nhwcToNCHW(x, m.size, m.size, 3), lb)
			if len(dets) != 1 {
				t.Fatalf("face crop: %d faces, want 1: %+v", len(dets), dets)
			}
			d := dets[0]
			cx, cy := (d.X1+d.X2)/2, (d.Y1+d.Y2)/2
			t.Logf("face crop: score %.3f box (%.0f,%.0f)-(%.0f,%.0f) in the 256 crop, eyes (%.0f,%.0f) (%.0f,%.0f)",
				d.Score, d.X1, d.Y1, d.X2, d.Y2, d.Keypoints[0].X, d.Keypoints[0].Y, d.Keypoints[1].X, d.Keypoints[1].Y)
			// The face sits in the middle of the crop, about 100 px wide,
			// eyes above the mouth and right eye (subject's) left in the image.
			if cx < 96 || cx > 160 || cy < 96 || cy > 170 || d.Width() < 60 || d.Width() > 160 || d.Score < 0.75 {
				t.Errorf("implausible face box %+v", d)
			}
			if !(d.Keypoints[0].X < d.Keypoints[1].X && d.Keypoints[0].Y < d.Keypoints[3].Y) {
				t.Errorf("implausible keypoints %+v", d.Keypoints)
			}

			// The whole demo photo: three people, faces near the top.
			img := gocv.IMRead(filepath.Join(demo, "sample1.jpg"), gocv.IMReadColor)
			defer img.Close()
			if img.Empty() {
				t.Fatalf("cannot read %s", filepath.Join(demo, "sample1.jpg"))
			}
			blob, lb := letterboxBlob(t, img, m.size)
			dets = detectBlaze(t, &net, m, blob, lb)
			for _, d := range dets {
				t.Logf("sample1.jpg: score %.3f box (%.0f,%.0f)-(%.0f,%.0f)", d.Score, d.X1, d.Y1, d.X2, d.Y2)
			}
			// Face centres read off the 1920x1280 photo by eye: left, middle, right.
			want := []image.Point{{520, 490}, {940, 540}, {1580, 310}}
			if len(dets) != len(want) {
				t.Fatalf("sample1.jpg: %d faces, want %d", len(dets), len(want))
			}
			for _, w := range want {
				found := 0
				for _, d := range dets {
					cx, cy := (d.X1+d.X2)/2, (d.Y1+d.Y2)/2
					if abs32(cx-float32(w.X)) < 120 && abs32(cy-float32(w.Y)) < 120 && d.Width() > 120 && d.Width() < 400 {
						found++
					}
				}
				if found != 1 {
					t.Errorf("sample1.jpg: %d detections at the face near %v", found, w)
				}
			}
		})
	}
	if n := mats.Live(); n > 0 {
		t.Errorf("%d gocv Mats left open", n)
	}
}

func abs32(x float32) float32 {
	if x < 0 {
		return -x
	}
	return x
}
