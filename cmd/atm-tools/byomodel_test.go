package main

import (
	"fmt"
	"image"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/models"
)

// An operator's own embedder needs no code: a manifest entry, then
// `eval calibrate` measures it on a labelled folder and writes its
// thresholds, and the pipeline runs it. Here the "bank's model" is a network
// this project converts itself (face-api's recognition net), registered
// under a new name through the manifest only.
func TestBringYourOwnEmbedder(t *testing.T) {
	t.Setenv("ATM_AGENT_AS_CLI", "1")
	src := testenv.ModelsDir(t)
	dir, man := testenv.CopyModels(t, src, "blazeface", "faceapi-recognition")
	md, _ := man.Find("faceapi-recognition")
	own := *md
	own.Name, own.File, own.Source, own.Thresholds = "bank-embedder", "bank-embedder.onnx", nil, nil
	own.Provenance, own.License = "operator-provided (test)", "proprietary"
	b, _ := os.ReadFile(filepath.Join(dir, md.File))
	os.WriteFile(filepath.Join(dir, own.File), b, 0o644)
	man.Models = []models.Model{man.Models[0], own}
	man.Pipeline = models.Pipeline{Detector: "blazeface", Embedder: "bank-embedder"}
	if err := man.Save(filepath.Join(dir, "manifest.yaml")); err != nil {
		t.Fatal(err)
	}

	// A small labelled folder: each demo photo is one person, seen three
	// times (as is, mirrored, and darker and smaller).
	data := t.TempDir()
	srcDir := testenv.ModelSrc()
	labels := "path,identity,masked\n"
	for i := 1; i <= 6; i++ {
		img := gocv.IMRead(filepath.Join(srcDir, "face-api", "demo", fmt.Sprintf("sample%d.jpg", i)), gocv.IMReadColor)
		if img.Empty() {
			t.Fatalf("demo photo %d missing (run `make models`)", i)
		}
		variants := []func(gocv.Mat) gocv.Mat{
			func(m gocv.Mat) gocv.Mat { return m.Clone() },
			func(m gocv.Mat) gocv.Mat { o := gocv.NewMat(); gocv.Flip(m, &o, 1); return o },
			func(m gocv.Mat) gocv.Mat {
				o := gocv.NewMat()
				gocv.Resize(m, &o, image.Pt(m.Cols()*3/4, m.Rows()*3/4), 0, 0, gocv.InterpolationArea)
				o.ConvertToWithParams(&o, gocv.MatTypeCV8UC3, 0.8, 0)
				return o
			},
		}
		for k, v := range variants {
			o := v(img)
			name := fmt.Sprintf("p%d/%d.jpg", i, k)
			os.MkdirAll(filepath.Join(data, fmt.Sprintf("p%d", i)), 0o755)
			gocv.IMWrite(filepath.Join(data, name), o)
			o.Close()
			labels += fmt.Sprintf("%s,p%d,0\n", name, i)
		}
		img.Close()
	}
	os.WriteFile(filepath.Join(data, "labels.csv"), []byte(labels), 0o644)

	// Without masked faces the masked thresholds cannot be measured: a
	// clear refusal, nothing written.
	code, _, errs := runTool(t, "eval", "calibrate", "--models-dir", dir, "--model", "bank-embedder", "--dataset", data, "--far", "0.05", "--cache", "")
	if code == 0 || !strings.Contains(errs, "no MM impostor pairs") {
		t.Fatalf("calibrate on unmasked data only: exit %d, %s", code, errs)
	}
	code, out, errs := runTool(t, "eval", "calibrate", "--models-dir", dir, "--model", "bank-embedder", "--dataset", data, "--mask", "synthetic", "--far", "0.05", "--cache", "")
	if code != 0 {
		t.Fatalf("calibrate: exit %d\n%s%s", code, out, errs)
	}
	got, err := models.LoadManifest(filepath.Join(dir, "manifest.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	bm, _ := got.Find("bank-embedder")
	if bm.Thresholds == nil || bm.Thresholds.UU <= 0 || bm.Thresholds.MM <= 0 || bm.Thresholds.MU <= 0 || bm.Thresholds.FAR != 0.05 {
		t.Fatalf("thresholds not written: %+v", bm.Thresholds)
	}
	if !strings.Contains(bm.Thresholds.Dataset, filepath.Base(data)) {
		t.Errorf("thresholds do not say where they come from: %q", bm.Thresholds.Dataset)
	}
	// The calibrated model now clusters through the same commands.
	code, out, errs = runTool(t, "eval", "cluster", "--models-dir", dir, "--dataset", data, "--algorithms", "average", "--json", "--cache", "")
	if code != 0 || !strings.Contains(out, `"identities_true": 6`) {
		t.Fatalf("cluster with the operator's model: exit %d\n%s%s", code, out, errs)
	}
}
