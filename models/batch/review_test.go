package batch

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/gif"
	"image/jpeg"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/periocular/atm-agent/agent/identity"
)

// Photo formats OpenCV cannot decode are listed as unreadable with what
// they are: a phone's HEIC or AVIF (an ISO BMFF "ftyp" box, as an MP4's)
// was opened as a video ("video: OpenCV cannot open it", FFmpeg's "moov
// atom not found" on stderr), a GIF skipped as "no image header". Videos
// stay videos.
func TestUnsupportedPhotoFormats(t *testing.T) {
	in := t.TempDir()
	photo, err := jpeg.Decode(bytes.NewReader(demoPhoto(t, "sample1.jpg")))
	if err != nil {
		t.Fatal(err)
	}
	var g bytes.Buffer
	if err := gif.Encode(&g, photo, nil); err != nil {
		t.Fatal(err)
	}
	ftyp := func(major string, compat ...string) []byte {
		b := []byte{0, 0, 0, byte(16 + 4*len(compat))}
		b = append(b, "ftyp"+major+"\x00\x00\x00\x00"...)
		for _, c := range compat {
			b = append(b, c...)
		}
		return append(b, "\x00\x00\x01\x00meta\x00\x00\x00\x00"...)
	}
	files := map[string][]byte{
		"a.jpg":           demoPhoto(t, "sample1.jpg"),
		"IMG_0001.HEIC":   ftyp("heic", "mif1", "heic"),
		"IMG_0002.heic":   ftyp("mif1", "mif1", "heic"), // major brand mif1
		"named-wrong.jpg": ftyp("heix", "mif1", "heix"),
		"photo.avif":      ftyp("avif", "avif", "mif1", "miaf"),
		"anim.gif":        g.Bytes(),
		"noext":           g.Bytes(),
		"damaged.heic":    []byte("not a heif at all"),
		"x.jxl":           {0xFF, 0x0A, 0xFA, 0x7F},
		"clip.mp4":        ftyp("isom", "isom", "iso2", "avc1", "mp41"),
		"phone.mov":       ftyp("qt  ", "qt  "),
		"notes.txt":       []byte("hello"),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(in, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	l, err := Walk(in)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(l.Images) != "[a.jpg]" || fmt.Sprint(l.Videos) != "[clip.mp4 phone.mov]" {
		t.Errorf("images %v, videos %v; want [a.jpg] and [clip.mp4 phone.mov]", l.Images, l.Videos)
	}
	if len(l.Skipped) != 1 || l.Skipped[0].Path != "notes.txt" {
		t.Errorf("skipped %+v, want notes.txt only", l.Skipped)
	}
	want := map[string]string{
		"IMG_0001.HEIC": "HEIF/HEIC", "IMG_0002.heic": "HEIF/HEIC", "named-wrong.jpg": "HEIF/HEIC", "damaged.heic": "HEIF/HEIC",
		"photo.avif": "AVIF", "anim.gif": "GIF", "noext": "GIF", "x.jxl": "JPEG XL",
	}
	got := map[string]string{}
	for _, p := range l.Unreadable {
		got[p.Path] = p.Reason
	}
	for name, format := range want {
		if r := got[name]; r != "unsupported image format: "+format+" (OpenCV cannot decode it; convert it to JPEG or PNG)" {
			t.Errorf("%s: %q, want the %s reason", name, r, format)
		}
	}
	if len(got) != len(want) {
		t.Errorf("unreadable %v, want %d entries", got, len(want))
	}

	// The whole job with the real pipeline: the photo is clustered, the
	// rest listed, no video opened.
	o := realOptions()
	rep, err := Run(context.Background(), in, filepath.Join(t.TempDir(), "out"), pipelines(t, 1), o)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Counts.Faces != 1 || rep.Counts.Unreadable != len(want)+2 {
		t.Errorf("counts %+v: want 1 face and %d unreadable (the two empty videos too)", rep.Counts, len(want)+2)
	}
	for _, p := range rep.Unreadable {
		if strings.HasPrefix(p.Reason, "video") && !strings.HasSuffix(p.Path, ".mp4") && !strings.HasSuffix(p.Path, ".mov") {
			t.Errorf("%s opened as a video: %s", p.Path, p.Reason)
		}
	}
}

// realOptions are testOptions with the calibrated-like thresholds the real
// embedder needs to join two copies of one face.
func realOptions() Options {
	o := testOptions()
	cfg := identity.DefaultConfig()
	cfg.Thresholds = identity.Thresholds{UU: 0.3, MM: 0.3, MU: 0.3}
	o.Cluster.Config = cfg
	return o
}

// tinyImages writes n small synthetic images (8 to 31 pixels a side, a
// gradient each): the detector finds "faces" of a few pixels in most of
// them, whose templates grouped into people that are not there (3000 such
// images gave 225 "people", every face "masked", quality 0).
func tinyImages(t *testing.T, dir string, n int) {
	t.Helper()
	for i := range n {
		im := image.NewRGBA(image.Rect(0, 0, 8+i%24, 8+i%17))
		for p := range im.Pix {
			im.Pix[p] = byte(i*7 + p)
		}
		var b bytes.Buffer
		if err := png.Encode(&b, im); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("t%03d.png", i)), b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// Faces under MinFacePx (default the pipeline's 40 px) are not used: tiny
// images land in noface ("face too small"), real photos are unchanged, in
// both face modes; MinFacePx < 0 turns the limit off.
func TestSmallFacesLeftOut(t *testing.T) {
	finders := pipelines(t, 1)
	in := t.TempDir()
	tinyImages(t, in, 40)
	s1 := demoPhoto(t, "sample1.jpg")
	for _, n := range []string{"p1.jpg", "p2.jpg"} {
		if err := os.WriteFile(filepath.Join(in, n), s1, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := func(o Options) *Report {
		t.Helper()
		rep, err := Run(context.Background(), in, filepath.Join(t.TempDir(), "out"), finders, o)
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	// Without the limit: the old behaviour, faces of a few pixels.
	o := realOptions()
	o.MinFacePx = -1
	rep := run(o)
	tiny := 0
	for _, e := range rep.Images {
		if e.Face != nil && strings.HasPrefix(e.Path, "t") {
			tiny++
			if side := max(e.Face.Box[2]-e.Face.Box[0], e.Face.Box[3]-e.Face.Box[1]); side >= 40 {
				t.Errorf("%s: a face of %.0f px in an image of at most 31", e.Path, side)
			}
		}
	}
	if tiny < 10 {
		t.Fatalf("only %d tiny images gave a face without the limit: the fixture no longer shows the problem", tiny)
	}
	for _, faces := range []Faces{FacesCustomer, FacesAll} {
		o := realOptions()
		o.Faces = faces
		rep := run(o)
		small := 0
		for _, e := range rep.Images {
			switch {
			case strings.HasPrefix(e.Path, "t"):
				if strings.HasPrefix(e.Note, "face too small: ") && strings.HasSuffix(e.Note, " px (under 40 px, --min-face-px)") {
					small++
				}
				if e.Folder != "noface" {
					t.Errorf("%s %s: folder %q, want noface", faces, e.Path, e.Folder)
				}
			case e.Face == nil || !strings.HasPrefix(e.Folder, "person_"):
				t.Errorf("%s %s: folder %q, want a person folder", faces, e.Path, e.Folder)
			}
		}
		if small != tiny {
			t.Errorf("%s: %d tiny images noted \"face too small\", want the %d that gave a face", faces, small, tiny)
		}
		if rep.Counts.NoFace != 40 {
			t.Errorf("%s: counts %+v, want the 40 tiny images in noface", faces, rep.Counts)
		}
		if faces == FacesAll && rep.Counts.Faces < 4 {
			t.Errorf("faces all: %d faces, want sample1's in both copies", rep.Counts.Faces)
		}
	}
}
