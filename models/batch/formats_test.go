package batch

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/internal/testenv/mats"
)

// Every format the Debian-linked OpenCV decodes from memory, written here
// with gocv from one demo photo, is read by content (extension-less and
// misnamed files included) and its face found; an OpenEXR file and a TIFF
// whose pixels OpenCV cannot decode are listed as unreadable with the
// reason.
func TestRealFormats(t *testing.T) {
	finders := pipelines(t, 1)
	before := mats.Live()
	in := t.TempDir()
	src := filepath.Join(t.TempDir(), "s1.jpg")
	if err := os.WriteFile(src, demoPhoto(t, "sample1.jpg"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := gocv.IMRead(src, gocv.IMReadColor)
	defer img.Close()
	if img.Empty() {
		t.Fatal("demo photo did not decode")
	}
	gray := gocv.NewMat()
	defer gray.Close()
	gocv.CvtColor(img, &gray, gocv.ColorBGRToGray)
	flt := gocv.NewMat()
	defer flt.Close()
	img.ConvertToWithParams(&flt, gocv.MatTypeCV32FC3, 1.0/255, 0)
	// PFM holds floats that imdecode turns into 8-bit grey levels unscaled:
	// a PFM is read as 0..255, as OpenCV reads it.
	flt255 := gocv.NewMat()
	defer flt255.Close()
	img.ConvertTo(&flt255, gocv.MatTypeCV32FC3)
	write := func(name string, m gocv.Mat) {
		t.Helper()
		if !gocv.IMWrite(filepath.Join(in, name), m) {
			t.Fatalf("gocv could not write %s", name)
		}
	}
	formats := map[string]gocv.Mat{
		"face.pgm": gray, "face.ppm": img, "face.pam": img, "face.tiff": img, "face.webp": img,
		"face.jp2": img, "face.ras": img, "face.hdr": flt, "face.pfm": flt255, "face.png": img,
	}
	for name, m := range formats {
		write(name, m)
	}
	// Names that say nothing, or the wrong thing: the header decides.
	for from, to := range map[string]string{"face.ppm": "noextension", "face.tiff": "scan-0001.dat", "face.webp": "photo.jpg"} {
		b, err := os.ReadFile(filepath.Join(in, from))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(in, to), b, 0o644)
	}
	// OpenEXR: linked, but OpenCV leaves its decoder off.
	os.WriteFile(filepath.Join(in, "render.exr"), append([]byte{0x76, 0x2f, 0x31, 0x01, 2, 0, 0, 0}, make([]byte, 300)...), 0o644)
	// A TIFF whose directory says 64x64 8-bit RGB with strips pointing past
	// the end: the header passes, OpenCV refuses the pixels.
	os.WriteFile(filepath.Join(in, "broken.tif"), brokenTIFF(), 0o644)
	os.WriteFile(filepath.Join(in, "notes"), []byte("just text, no image header\n"), 0o644)

	cfg := identity.DefaultConfig()
	cfg.Thresholds = identity.Thresholds{UU: 0.5, MM: 0.5, MU: 0.5}
	o := Options{Cluster: identity.ClusterOptions{Algorithm: identity.Average, Config: cfg}, Thumb: -1}
	out := filepath.Join(t.TempDir(), "out")
	rep, err := Run(context.Background(), in, out, finders, o)
	if err != nil {
		t.Fatal(err)
	}
	if n := mats.Live() - before; mats.Profiled && n != 4 { // img, gray, flt, flt255 are still open
		t.Errorf("%d Mats leaked by the run", n-4)
	}
	faces := map[string]string{}
	for _, e := range rep.Images {
		if e.Face != nil {
			faces[e.Path] = e.Folder
		}
	}
	for _, name := range []string{"face.pgm", "face.ppm", "face.pam", "face.tiff", "face.webp", "face.jp2", "face.ras",
		"face.hdr", "face.pfm", "face.png", "noextension", "scan-0001.dat", "photo.jpg"} {
		if faces[name] == "" {
			t.Errorf("%s: no face found (report: %+v)", name, findEntry(rep, name))
		} else if faces[name] != "person_0001" {
			t.Errorf("%s in %s, want person_0001 with the others", name, faces[name])
		}
	}
	un := map[string]string{}
	for _, p := range rep.Unreadable {
		un[p.Path] = p.Reason
	}
	if !strings.Contains(un["render.exr"], "OpenEXR") || !strings.Contains(un["render.exr"], "unsupported image format") {
		t.Errorf("render.exr: %q", un["render.exr"])
	}
	if !strings.Contains(un["broken.tif"], "decode image") {
		t.Errorf("broken.tif: %q, want OpenCV's refusal", un["broken.tif"])
	}
	skipped := false
	for _, p := range rep.Skipped {
		skipped = skipped || (p.Path == "notes" && strings.Contains(p.Reason, "no image header"))
	}
	if !skipped {
		t.Errorf("notes not skipped: %+v", rep.Skipped)
	}
}

func findEntry(r *Report, path string) ImageEntry {
	for _, e := range r.Images {
		if e.Path == path {
			return e
		}
	}
	for _, p := range r.Unreadable {
		if p.Path == path {
			return ImageEntry{Path: path, Note: "unreadable: " + p.Reason}
		}
	}
	return ImageEntry{Path: path, Note: "not listed"}
}

// brokenTIFF is a little-endian TIFF of 64x64 RGB whose one strip lies far
// past the end of the file.
func brokenTIFF() []byte {
	b := []byte("II*\x00\x08\x00\x00\x00")
	type ent struct {
		tag, typ uint16
		n, v     uint32
	}
	ents := []ent{{256, 3, 1, 64}, {257, 3, 1, 64}, {258, 3, 1, 8}, {259, 3, 1, 1}, {262, 3, 1, 2},
		{273, 4, 1, 1 << 20}, {277, 3, 1, 3}, {278, 3, 1, 64}, {279, 4, 1, 64 * 64 * 3}}
	b = binary.LittleEndian.AppendUint16(b, uint16(len(ents)))
	for _, e := range ents {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.typ)
		b = binary.LittleEndian.AppendUint32(b, e.n)
		b = binary.LittleEndian.AppendUint32(b, e.v)
	}
	return binary.LittleEndian.AppendUint32(b, 0)
}

// --faces all: a group photo and its copy give one item per face; each
// person of the photo becomes an identity with the two images, every face
// with its own thumbnail and number; the cache keeps all the faces of an
// image. --faces customer on the same folder gives one identity.
func TestRealFacesAll(t *testing.T) {
	finders := pipelines(t, 2)
	in := t.TempDir()
	group := demoPhoto(t, "sample5.jpg")
	writeRaw := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(in, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeRaw("group.jpg", group)
	os.MkdirAll(filepath.Join(in, "copy"), 0o755)
	writeRaw("copy/group.jpg", group)
	cfg := identity.DefaultConfig()
	cfg.Thresholds = identity.Thresholds{UU: 0.3, MM: 0.3, MU: 0.3}
	cache := openTestCache(t, t.TempDir(), "real", 0)
	defer cache.Close()
	run := func(faces Faces) (*Report, string) {
		out := filepath.Join(t.TempDir(), "out")
		o := Options{Cluster: identity.ClusterOptions{Algorithm: identity.Average, Config: cfg}, Faces: faces, Cache: cache}
		rep, err := Run(context.Background(), in, out, finders, o)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(filepath.Join(out, "report.json"))
		return rep, string(b)
	}
	rep, js := run(FacesAll)
	n := rep.Counts.Faces / 2
	if n < 3 || rep.Counts.Images != 2 || rep.Counts.People != n || rep.Counts.Faces != 2*n {
		t.Fatalf("faces all: counts %+v, want 2 images with the same 3+ faces each, one person per face", rep.Counts)
	}
	seen := map[string]map[int]bool{}
	thumbs := map[string]bool{}
	for _, e := range rep.Images {
		if e.Face == nil || e.FaceNo < 1 {
			t.Fatalf("entry without a face number: %+v", e)
		}
		if seen[e.Path] == nil {
			seen[e.Path] = map[int]bool{}
		}
		seen[e.Path][e.FaceNo] = true
		thumbs[e.Face.Thumb] = true
	}
	if len(seen["group.jpg"]) != n || len(seen["copy/group.jpg"]) != n || len(thumbs) != 2*n {
		t.Errorf("face numbers %v, %d thumbnails; want 1..%d per image and one thumbnail per face", seen, len(thumbs), n)
	}
	for _, id := range rep.Identities {
		if id.Size != 2 || id.Images[0] != "copy/group.jpg" || id.Images[1] != "group.jpg" {
			t.Errorf("identity %s: %v, want the same face of both images", id.Folder, id.Images)
		}
	}
	// From the cache: the same report.
	h0, _ := cache.Stats()
	time.Sleep(600 * time.Millisecond) // the cache's writer commits every 500 ms
	_, js2 := run(FacesAll)
	if h, _ := cache.Stats(); h-h0 != 2 || js2 != js {
		t.Errorf("faces all from the cache: %d hits, same report %v", h-h0, js2 == js)
	}
	rep, _ = run(FacesCustomer)
	if rep.Counts.Faces != 2 || rep.Counts.People != 1 {
		t.Errorf("faces customer: counts %+v, want the two images as one person", rep.Counts)
	}
	if strings.Contains(js, `"face_no"`) == false {
		t.Error("report.json lacks face_no with faces all")
	}
}
