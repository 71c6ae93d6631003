package batch

import (
	"bytes"
	"context"
	"image"
	"image/color"
	"image/draw"
	"image/jpeg"
	"image/png"
	"os"
	"path/filepath"
	"testing"

	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/internal/testenv/mats"
	"github.com/periocular/atm-agent/models"
)

// pipelines loads n real pipelines from the built models (`make models`).
func pipelines(t *testing.T, n int) []FaceFinder {
	t.Helper()
	dir := testenv.ModelsDir(t)
	man, err := models.LoadManifest(filepath.Join(dir, "manifest.yaml"))
	if err != nil {
		t.Fatalf("built models needed (run `make models`): %v", err)
	}
	cfg := vision.DefaultConfig()
	cfg.Threads = 1
	var out []FaceFinder
	for range n {
		p, err := vision.New(dir, man, "", "", cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		out = append(out, p)
	}
	return out
}

func demoPhoto(t *testing.T, n string) []byte {
	t.Helper()
	src := testenv.ModelSrc()
	b, err := os.ReadFile(filepath.Join(src, "face-api", "demo", n))
	if err != nil {
		t.Fatalf("demo photo (run `make models`): %v", err)
	}
	return b
}

func encode(t *testing.T, img image.Image, asPNG bool) []byte {
	t.Helper()
	var b bytes.Buffer
	var err error
	if asPNG {
		err = png.Encode(&b, img)
	} else {
		err = jpeg.Encode(&b, img, &jpeg.Options{Quality: 92})
	}
	if err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// realFixture builds a folder from face-api's demo photos: sample1 three
// times (two byte-identical copies and a PNG re-encoding), sample2 twice plus
// a crop around its customer's face, sample3 once, a blank image, a
// truncated JPEG and a text file.
func realFixture(t *testing.T, finder FaceFinder) string {
	in := t.TempDir()
	s1, s2, s3 := demoPhoto(t, "sample1.jpg"), demoPhoto(t, "sample2.jpg"), demoPhoto(t, "sample3.jpg")
	img1, err := jpeg.Decode(bytes.NewReader(s1))
	if err != nil {
		t.Fatal(err)
	}
	img2, err := jpeg.Decode(bytes.NewReader(s2))
	if err != nil {
		t.Fatal(err)
	}
	f2, err := finder.FaceInImage(s2, vision.FaceOptions{}, nil)
	if err != nil {
		t.Fatalf("customer in sample2: %v", err)
	}
	d := f2.Det
	m := max(d.W(), d.H())
	crop := image.Rect(int(d.X0-m), int(d.Y0-m), int(d.X1+m), int(d.Y1+m)).Intersect(img2.Bounds())
	cropped := image.NewRGBA(image.Rect(0, 0, crop.Dx(), crop.Dy()))
	draw.Draw(cropped, cropped.Bounds(), img2, crop.Min, draw.Src)
	blank := image.NewRGBA(image.Rect(0, 0, 320, 240))
	draw.Draw(blank, blank.Bounds(), &image.Uniform{color.RGBA{128, 128, 128, 255}}, image.Point{}, draw.Src)
	files := map[string][]byte{
		"one/a.jpg":          s1,
		"one/b.jpg":          s1,
		"one/deeper/c.png":   encode(t, img1, true),
		"two/a.jpg":          s2,
		"two/b.JPEG":         s2,
		"two/face-crop.jpg":  encode(t, cropped, false),
		"three.jpg":          s3,
		"blank.png":          encode(t, blank, true),
		"corrupt.jpg":        s1[:300],
		"notes/readme.txt":   []byte("not an image"),
		"notes/clip.mp4.bmp": []byte("BMnot really"),
	}
	for name, b := range files {
		p := filepath.Join(in, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return in
}

func TestRealPhotos(t *testing.T) {
	fs := pipelines(t, 2)
	before := mats.Live()
	in := realFixture(t, fs[0])
	o := testOptions()
	o.Cluster.Config.Thresholds = identity.Thresholds{UU: 0.3, MM: 0.3, MU: 0}
	base := t.TempDir()
	var reps [][]byte
	for i := range 2 {
		out := filepath.Join(base, []string{"first", "second"}[i])
		rep, err := Run(context.Background(), in, out, fs, o)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(out, "report.json"))
		if err != nil {
			t.Fatal(err)
		}
		reps = append(reps, b)
		if i > 0 {
			continue
		}
		t.Logf("counts %+v", rep.Counts)
		folder := map[string]string{}
		for _, e := range rep.Images {
			folder[e.Path] = e.Folder
			if f := e.Face; f != nil {
				t.Logf("%-20s %-12s d=%.4f q=%.2f mask=%s", e.Path, e.Folder, f.Distance, f.Quality, f.Mask)
			}
		}
		if rep.Counts.Images != 10 || rep.Counts.Skipped != 1 || rep.Counts.Unreadable != 2 || rep.Counts.NoFace != 1 {
			t.Errorf("counts %+v", rep.Counts)
		}
		if folder["blank.png"] != "noface" {
			t.Errorf("blank image in %q", folder["blank.png"])
		}
		for _, p := range []string{"corrupt.jpg", "notes/clip.mp4.bmp"} {
			if folder[p] != "" {
				t.Errorf("%s in %q, want unreadable", p, folder[p])
			}
		}
		// Copies of one photo are one person, and sample1's three come first.
		if folder["one/a.jpg"] != "person_0001" || folder["one/b.jpg"] != "person_0001" || folder["one/deeper/c.png"] != "person_0001" {
			t.Errorf("sample1 copies in %s, %s, %s", folder["one/a.jpg"], folder["one/b.jpg"], folder["one/deeper/c.png"])
		}
		if folder["two/a.jpg"] != folder["two/b.JPEG"] || folder["two/a.jpg"] == folder["one/a.jpg"] || folder["two/a.jpg"] == "singletons" {
			t.Errorf("sample2 copies in %s and %s", folder["two/a.jpg"], folder["two/b.JPEG"])
		}
		if folder["two/face-crop.jpg"] != folder["two/a.jpg"] {
			t.Errorf("crop of sample2's customer in %s, the photo in %s", folder["two/face-crop.jpg"], folder["two/a.jpg"])
		}
		for _, e := range rep.Images {
			if e.Face != nil && e.Face.Thumb == "" {
				t.Errorf("%s has no thumbnail", e.Path)
			}
		}
		checkHTML(t, filepath.Join(out, "report.html"), rep.Counts.Faces)
	}
	if !bytes.Equal(reps[0], reps[1]) {
		t.Error("two runs over the same photos wrote different report.json files")
	}
	if mats.Profiled {
		if n := mats.Live() - before; n != 0 {
			t.Errorf("%d gocv Mats leaked", n)
		}
	}
}
