package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"image"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/internal/testenv/standin"
	"github.com/periocular/atm-agent/models"
)

// demoFaces are faces of face-api's demo photos: the customer's box the
// default pipeline finds in each (x0, y0, x1, y1), recorded here so that
// this test needs no built model.
var demoFaces = map[string][4]int{
	"sample2.jpg": {867, 247, 1075, 455},
	"sample3.jpg": {1062, 253, 1318, 509},
	"sample4.jpg": {979, 232, 1176, 428},
}

// The original project's own models, proven without their files: the
// stand-ins of res10 (Caffe: deploy.prototxt + caffemodel) and OpenFace
// nn4.small2.v1 (Torch7 .t7) written by internal/testenv/standin under the
// real files' names, registered through a manifest with the entries an
// operator writes for the real files (docs/models.md), verified by
// `models verify` (a test forward of each in a child process) and run by
// `cluster --crop original --algorithm dbscan` on faces of face-api's demo
// photos pasted on a gray canvas where the stand-in detector must find them.
func TestClusterOriginalModels(t *testing.T) {
	t.Setenv("ATM_AGENT_AS_CLI", "1") // models verify re-executes the test binary
	demo := filepath.Join(testenv.ModelSrc(), "face-api", "demo")
	if _, err := os.Stat(filepath.Join(demo, "sample2.jpg")); err != nil {
		t.Skipf("face-api demo photos not extracted (run `make models`): %v", err)
	}
	dir := t.TempDir()
	man, err := standin.WriteModelsDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	det, _ := man.Find(standin.Res10Name)
	emb, _ := man.Find(standin.OpenFaceName)
	if det.Format != models.FormatCaffe || det.Config != "deploy.prototxt" || emb.Format != models.FormatTorch || emb.Embedding.Dim != 128 {
		t.Fatalf("manifest entries: %+v %+v", det, emb)
	}

	code, out, errs := runTool(t, "models", "verify", "--dir", dir)
	if code != 0 || strings.Count(out, " OK") != 2 {
		t.Fatalf("models verify: exit %d\n%s%s", code, out, errs)
	}
	t.Logf("models verify:\n%s", out)
	verifyCatches(t, dir, man)

	const w, h = canvasW, canvasH
	in, placed := pastedFaces(t, demo, w, h, false)

	outDir, cache := filepath.Join(t.TempDir(), "out"), t.TempDir()
	// --pad-tight 0: the stand-in detector boxes cells of a grid laid over
	// the whole image, so the padded pass of image files would box a cell
	// of the padded image.
	code, out, errs = runTool(t, "cluster", in, "-o", outDir, "--models-dir", dir, "--crop", "original", "--algorithm", "dbscan",
		"--cache", cache, "--pad-tight", "0")
	if code != 0 {
		t.Fatalf("cluster: exit %d\n%s%s", code, out, errs)
	}
	t.Logf("cluster:\n%s%s", out, errs)
	if !strings.Contains(out, "8 images: 2 people (2+ images), 2 single-image, 1 without a usable face, 0 unreadable, 0 skipped") {
		t.Errorf("summary %q", out)
	}
	var rep struct {
		Run struct {
			Detector, Embedder, Crop, Algorithm string
			Eps                                 float64
			Models                              []struct {
				Name, SHA256 string
				ConfigSHA256 string `json:"config_sha256"`
			}
		}
		Identities []struct {
			Folder string
			Images []string
		}
		Images []struct {
			Path, Folder, Note string
			Face               *struct {
				DetScore float64 `json:"det_score"`
				Box      [4]float64
				Thumb    string
			}
		}
	}
	b, err := os.ReadFile(filepath.Join(outDir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	r := rep.Run
	if r.Detector != standin.Res10Name || r.Embedder != standin.OpenFaceName || r.Crop != "original" || r.Algorithm != "dbscan" || r.Eps != 0.5 {
		t.Errorf("run %+v", r)
	}
	want := map[string][2]string{
		standin.Res10Name:    {det.SHA256, det.ConfigSHA256},
		standin.OpenFaceName: {emb.SHA256, ""},
	}
	if len(r.Models) != len(want) {
		t.Errorf("run.models %+v", r.Models)
	}
	for _, m := range r.Models {
		if w := want[m.Name]; m.SHA256 != w[0] || m.ConfigSHA256 != w[1] {
			t.Errorf("run.models: %+v, want checksums %v", m, w)
		}
	}
	// Every face where it was pasted (the detector's normalised box mapped
	// back to the 600x800 image), found by the Caffe net.
	folder := map[string]string{}
	for _, im := range rep.Images {
		folder[im.Path] = im.Folder
		pl, ok := placed[im.Path]
		if !ok {
			continue
		}
		if im.Face == nil {
			t.Errorf("%s: no face (%s)", im.Path, im.Note)
			continue
		}
		c := standin.Canvas(w, h, pl.col, pl.row)
		for i := range c {
			if math.Abs(im.Face.Box[i]-float64(c[i])) > 1 {
				t.Errorf("%s: box %v, want %v", im.Path, im.Face.Box, c)
				break
			}
		}
		if im.Face.DetScore < 0.5 {
			t.Errorf("%s: detector score %.3f", im.Path, im.Face.DetScore)
		}
		if _, err := os.Stat(filepath.Join(outDir, im.Face.Thumb)); err != nil {
			t.Errorf("%s: thumbnail: %v", im.Path, err)
		}
	}
	if folder["blank.jpg"] != "noface" {
		t.Errorf("blank canvas in %q, want noface", folder["blank.jpg"])
	}
	// The same face with the same original crop is one person (moved
	// along the row, or darker: the stand-in ignores the scale); bob is
	// another; carol is seen once. The original crop keeps the image's
	// top 73% of the box's bottom y, so the same face lower in the frame
	// is cut shorter: alice/low.jpg is not with alice.
	a := folder["alice/1.jpg"]
	if !strings.HasPrefix(a, "person_") || folder["alice/2.jpg"] != a || folder["alice/dark.png"] != a {
		t.Errorf("alice in %q, %q, %q", a, folder["alice/2.jpg"], folder["alice/dark.png"])
	}
	if bob := folder["bob/1.jpg"]; !strings.HasPrefix(bob, "person_") || bob == a || folder["bob/2.jpg"] != bob {
		t.Errorf("bob in %q and %q (alice %q)", bob, folder["bob/2.jpg"], a)
	}
	if folder["carol.jpg"] != "singletons" || folder["alice/low.jpg"] == a {
		t.Errorf("carol in %q, alice lower in the frame in %q", folder["carol.jpg"], folder["alice/low.jpg"])
	}
	for _, f := range []string{"report.html", filepath.Join(a, "alice__1.jpg"), filepath.Join("noface", "blank.jpg")} {
		if _, err := os.Stat(filepath.Join(outDir, f)); err != nil {
			t.Error(err)
		}
	}
	var people []string
	for _, id := range rep.Identities {
		people = append(people, id.Folder)
	}
	if !slices.Contains(people, a) {
		t.Errorf("identities %v", people)
	}

	// The prototxt is half of a Caffe model: another deploy.prototxt with
	// the same caffemodel is another pipeline for the embedding cache.
	proto := filepath.Join(dir, standin.Res10Prototxt)
	text, _ := os.ReadFile(proto)
	text = []byte(strings.Replace(string(text), "confidence_threshold: 0.01", "confidence_threshold: 0.02", 1))
	if err := os.WriteFile(proto, text, 0o644); err != nil {
		t.Fatal(err)
	}
	det.ConfigSHA256, det.ConfigSize = sha256Hex(text), int64(len(text))
	if err := man.Save(filepath.Join(dir, "manifest.yaml")); err != nil {
		t.Fatal(err)
	}
	args := []string{"cluster", in, "-o", outDir, "--models-dir", dir, "--crop", "original", "--algorithm", "dbscan", "--cache", cache, "--force", "--pad-tight", "0"}
	code, out, errs = runTool(t, args...)
	if code != 0 || !strings.Contains(out, "0 from the cache, 8 embedded") {
		t.Errorf("another prototxt, same caffemodel: exit %d, %s%s", code, out, errs)
	}
	code, out, errs = runTool(t, args...)
	if code != 0 || !strings.Contains(out, "8 from the cache, 0 embedded") {
		t.Errorf("re-run: exit %d, %s%s", code, out, errs)
	}
}

// A portrait canvas (600x800): each face goes over 3x3 cells of the
// stand-in detector's 10x10 grid, 180x240 pixels.
const canvasW, canvasH = 600, 800

// A square canvas (600x600) for a real embedder: each face box (square) over
// 3x3 cells, 180x180 pixels, unstretched.
const squareSide = 600

// place is where a demo face is pasted: over the grid's 3x3 cells from
// (col, row), its pixels scaled by gain.
type place struct {
	photo    string
	col, row int
	gain     float64
}

// pastedFaces writes a folder of faces cut from face-api's demo photos
// (demoFaces) pasted on w x h gray canvases where the stand-in detector
// finds them, and a blank canvas. tight pastes the face box as it is (the
// box a face detector gives), else widened to 3:4 with room above and below.
func pastedFaces(t *testing.T, demo string, w, h int, tight bool) (string, map[string]place) {
	t.Helper()
	in := t.TempDir()
	placed := map[string]place{
		"alice/1.jpg":    {"sample2.jpg", 1, 1, 1},
		"alice/2.jpg":    {"sample2.jpg", 5, 1, 1}, // same row: the same original crop
		"alice/dark.png": {"sample2.jpg", 3, 1, 0.6},
		"alice/low.jpg":  {"sample2.jpg", 3, 4, 1}, // lower: a shorter original crop
		"bob/1.jpg":      {"sample3.jpg", 2, 2, 1},
		"bob/2.jpg":      {"sample3.jpg", 6, 2, 1},
		"carol.jpg":      {"sample4.jpg", 4, 3, 1},
	}
	for name, pl := range placed {
		photo := gocv.IMRead(filepath.Join(demo, pl.photo), gocv.IMReadColor)
		if photo.Empty() {
			t.Fatalf("cannot read %s", pl.photo)
		}
		// The face box widened to the canvas cells' 3:4, a little room
		// above and below as a face detector's box has.
		b := demoFaces[pl.photo]
		cx, fw := (b[0]+b[2])/2, b[2]-b[0]
		rect := image.Rect(cx-fw*9/16, b[1]-fw/4, cx+fw*9/16, b[1]-fw/4+fw*3/2)
		if tight {
			rect = image.Rect(b[0], b[1], b[2], b[3])
		}
		face := photo.Region(rect)
		r := standin.Canvas(w, h, pl.col, pl.row)
		canvas := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(standin.Gray, standin.Gray, standin.Gray, 0), h, w, gocv.MatTypeCV8UC3)
		roi := canvas.Region(image.Rect(r[0], r[1], r[2], r[3]))
		gocv.Resize(face, &roi, image.Pt(r[2]-r[0], r[3]-r[1]), 0, 0, gocv.InterpolationArea)
		if pl.gain != 1 {
			roi.ConvertToWithParams(&roi, gocv.MatTypeCV8UC3, float32(pl.gain), 0)
		}
		p := filepath.Join(in, filepath.FromSlash(name))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if !gocv.IMWrite(p, canvas) {
			t.Fatalf("write %s", p)
		}
		roi.Close()
		canvas.Close()
		face.Close()
		photo.Close()
	}
	blank := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(standin.Gray, standin.Gray, standin.Gray, 0), h, w, gocv.MatTypeCV8UC3)
	gocv.IMWrite(filepath.Join(in, "blank.jpg"), blank)
	blank.Close()

	return in, placed
}

// verifyCatches checks, on copies of the stand-ins' models dir, that
// `models verify` names what an operator can get wrong with these formats:
// an embedding.dim that is not the .t7's output, and a .t7 or caffemodel
// whose recorded checksum is right but which OpenCV cannot parse (the child
// process dies, not the verifier, and OpenCV's reason is shown).
func verifyCatches(t *testing.T, dir string, man *models.Manifest) {
	t.Helper()
	copyDir := func() (string, *models.Manifest) {
		d := t.TempDir()
		for _, f := range []string{standin.Res10Prototxt, standin.Res10Caffemodel, standin.OpenFaceT7} {
			b, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(d, f), b, 0o644)
		}
		c := *man
		c.Models = slices.Clone(man.Models)
		for i := range c.Models {
			if e := c.Models[i].Embedding; e != nil {
				ec := *e
				c.Models[i].Embedding = &ec
			}
		}
		return d, &c
	}

	d, m := copyDir()
	emb, _ := m.Find(standin.OpenFaceName)
	emb.Embedding.Dim = 64
	m.Save(filepath.Join(d, "manifest.yaml"))
	code, out, _ := runTool(t, "models", "verify", "--dir", d)
	if code == 0 || !strings.Contains(out, "has 128 values, manifest says embedding.dim 64") {
		t.Errorf("verify with a wrong embedding.dim: exit %d\n%s", code, out)
	}

	for _, name := range []string{standin.OpenFaceName, standin.Res10Name} {
		d, m := copyDir()
		md, _ := m.Find(name)
		// A download that saved an error page, its checksum recorded: OpenCV
		// aborts the child while parsing it (Torch), or parses it into a
		// network whose test forward throws (Caffe), caught.
		junk := []byte("<!DOCTYPE html><html><body>404 Not Found</body></html>\n")
		os.WriteFile(filepath.Join(d, md.File), junk, 0o644)
		md.SHA256, md.Size = sha256Hex(junk), int64(len(junk))
		m.Save(filepath.Join(d, "manifest.yaml"))
		code, out, _ := runTool(t, "models", "verify", "--dir", d)
		if code == 0 || strings.Count(out, "FAIL") != 1 || !strings.Contains(out, name+" ") ||
			!strings.Contains(out, "the file is not a valid "+md.Format+" model") {
			t.Errorf("verify with an unparseable %s: exit %d\n%s", md.File, code, out)
		}
		t.Logf("unparseable %s: %s", md.File, strings.TrimSpace(out))
	}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// res10 in front of the project's own embedder: a models dir holding the
// built models and the res10 stand-in; `cluster --detector res10-ssd`
// feeds its boxes to the manifest's embedder, aligned by the landmark net
// (res10 gives no keypoints), at its calibrated thresholds: each person's
// faces in one folder, the lower copy too (no original crop here).
func TestClusterRes10WithProjectEmbedder(t *testing.T) {
	src := testenv.ModelsDir(t)
	demo := filepath.Join(testenv.ModelSrc(), "face-api", "demo")
	if _, err := os.Stat(filepath.Join(demo, "sample2.jpg")); err != nil {
		t.Skipf("face-api demo photos not extracted (run `make models`): %v", err)
	}
	man, err := models.LoadManifest(filepath.Join(src, "manifest.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "manifest.yaml" {
			if err := os.Symlink(filepath.Join(src, e.Name()), filepath.Join(dir, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	det, _, err := standin.Write(dir)
	if err != nil {
		t.Fatal(err)
	}
	man.Models = append(man.Models, det)
	if err := man.Save(filepath.Join(dir, "manifest.yaml")); err != nil {
		t.Fatal(err)
	}
	in, placed := pastedFaces(t, demo, squareSide, squareSide, true)
	outDir := filepath.Join(t.TempDir(), "out")
	code, out, errs := runTool(t, "cluster", in, "-o", outDir, "--models-dir", dir, "--detector", standin.Res10Name, "--cache", t.TempDir())
	if code != 0 {
		t.Fatalf("cluster: exit %d\n%s%s", code, out, errs)
	}
	t.Logf("cluster:\n%s", out)
	var rep struct {
		Run    struct{ Detector, Embedder, Crop string }
		Images []struct {
			Path, Folder, Note string
			Face               *struct{ Box [4]float64 }
		}
	}
	b, _ := os.ReadFile(filepath.Join(outDir, "report.json"))
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Run.Detector != standin.Res10Name || rep.Run.Embedder != man.Pipeline.Embedder {
		t.Errorf("run %+v", rep.Run)
	}
	folder := map[string]string{}
	for _, im := range rep.Images {
		folder[im.Path] = im.Folder
		if pl, ok := placed[im.Path]; ok {
			c := standin.Canvas(squareSide, squareSide, pl.col, pl.row)
			if im.Face == nil || math.Abs(im.Face.Box[0]-float64(c[0])) > 1 || math.Abs(im.Face.Box[3]-float64(c[3])) > 1 {
				t.Errorf("%s: face %+v (%s), want the box %v", im.Path, im.Face, im.Note, c)
			}
		}
	}
	a, bob := folder["alice/1.jpg"], folder["bob/1.jpg"]
	for _, p := range []string{"alice/2.jpg", "alice/dark.png", "alice/low.jpg"} {
		if folder[p] != a || !strings.HasPrefix(a, "person_") {
			t.Errorf("%s in %q, alice/1.jpg in %q", p, folder[p], a)
		}
	}
	if folder["bob/2.jpg"] != bob || !strings.HasPrefix(bob, "person_") || bob == a {
		t.Errorf("bob in %q and %q, alice in %q", bob, folder["bob/2.jpg"], a)
	}
	if folder["carol.jpg"] != "singletons" || folder["blank.jpg"] != "noface" {
		t.Errorf("carol in %q, blank in %q", folder["carol.jpg"], folder["blank.jpg"])
	}
}
