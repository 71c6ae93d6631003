package batch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"unicode/utf8"

	"golang.org/x/net/html"

	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/imagecheck/crafted"
)

// fakeFinder reads tiny text "images" (the text wrapped in a small PNG by
// writeFiles, so that they pass the header check): "face P [masked]" gives
// person P's template (plus a small per-file jitter), "noface" gives
// ErrNoFace, anything else fails to decode, as a corrupt file does.
type fakeFinder struct{ calls *atomic.Int64 }

// fakeImage wraps a fake image's text in an 8x8 PNG (as its IDAT).
func fakeImage(text string) []byte { return crafted.PNG(8, 8, []byte(text)) }

// fakeText is the text inside fakeImage's PNG.
func fakeText(data []byte) string {
	i := bytes.Index(data, []byte("IDAT"))
	if !bytes.HasPrefix(data, []byte("\x89PNG")) || i < 4 {
		return string(data)
	}
	n := int(data[i-4])<<24 | int(data[i-3])<<16 | int(data[i-2])<<8 | int(data[i-1])
	return string(data[i+4 : i+4+n])
}

func (f fakeFinder) FaceInImage(data []byte, o vision.FaceOptions, _ *vision.Timings) (vision.Face, error) {
	if f.calls != nil {
		f.calls.Add(1)
	}
	fields := strings.Fields(fakeText(data))
	switch {
	case len(fields) >= 2 && fields[0] == "face":
		var p, jitter int
		fmt.Sscan(fields[1], &p)
		if len(fields) >= 3 {
			fmt.Sscan(fields[len(fields)-1], &jitter)
		}
		emb := make([]float32, 8)
		emb[p%8] = 1
		emb[(p+1)%8] = 0.1 * float32(jitter)
		face := vision.Face{Embedding: emb, Quality: 0.9, Mask: visit.Unmasked, MaskScore: 0.1,
			Det: vision.Detection{X0: 10, Y0: 20, X1: 110, Y1: 140, Score: 0.95}}
		if strings.Contains(fakeText(data), "masked") {
			face.Mask, face.MaskScore = visit.Masked, 0.9
		}
		if o.Thumb > 0 {
			face.Thumb = []byte("\xff\xd8fake jpeg")
		}
		return face, nil
	case len(fields) == 1 && fields[0] == "noface":
		return vision.Face{}, vision.ErrNoFace
	}
	return vision.Face{}, errors.New("decode image: not a readable image")
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		b := []byte(body)
		if strings.HasPrefix(body, "face ") || body == "noface" {
			b = fakeImage(body)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func testOptions() Options {
	cfg := identity.DefaultConfig()
	cfg.Thresholds = identity.Thresholds{UU: 0.1, MM: 0.1, MU: 0.1}
	return Options{Cluster: identity.ClusterOptions{Algorithm: identity.Average, Config: cfg}, Meta: Meta{Version: "test"}}
}

func fakes(n int) []FaceFinder {
	var out []FaceFinder
	for range n {
		out = append(out, fakeFinder{})
	}
	return out
}

// fixture: person 1 in four images (two folders, a name clash), person 2 in
// two (one masked), person 3 and 4 once, plus noface, corrupt, empty,
// non-image and a broken link.
func fixture(t *testing.T) string {
	in := t.TempDir()
	writeFiles(t, in, map[string]string{
		"a/p1.jpg":       "face 1 0",
		"b/p1.jpg":       "face 1 1",
		"b/c/p1-2.JPG":   "face 1 2",
		"p1-3.png":       "face 1 3",
		"p2-a.jpeg":      "face 2 0",
		"p2-b.bmp":       "face 2 masked 1",
		"z-p3.jpg":       "face 3 0",
		"y-p4.jpg":       "face 5 0",
		"blank.png":      "noface",
		"corrupt.jpg":    "\xff\xd8\xff garbage",
		"empty.jpg":      "",
		"notes.txt":      "notes on face 1",
		"x/<b>&evil.jpg": "face 1 4",
		"deep/er/README": "hello",
		"deep/er/no.gif": "GIF89a face 1 0",
	})
	if err := os.Symlink(filepath.Join(in, "missing.jpg"), filepath.Join(in, "dangling.jpg")); err != nil {
		t.Fatal(err)
	}
	return in
}

// readUnreadable reads unreadable.json as path -> reason.
func readUnreadable(t *testing.T, out string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(out, "unreadable.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ps []Problem
	if err := json.Unmarshal(b, &ps); err != nil {
		t.Fatalf("unreadable.json: %v", err)
	}
	m := map[string]string{}
	for _, p := range ps {
		m[p.Path] = p.Reason
	}
	return m
}

func readReport(t *testing.T, out string) *Report {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(out, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return &r
}

func TestRunLayout(t *testing.T) {
	in := fixture(t)
	out := filepath.Join(t.TempDir(), "out")
	rep, err := Run(context.Background(), in, out, fakes(2), testOptions())
	if err != nil {
		t.Fatal(err)
	}
	want := Counts{Images: 12, Faces: 9, NoFace: 1, Unreadable: 4, Skipped: 2, Identities: 4, People: 2, Singletons: 2}
	if rep.Counts != want {
		t.Fatalf("counts %+v, want %+v", rep.Counts, want)
	}
	// Largest first: person 1 (5 images), person 2 (2), then singletons.
	entries := map[string][]string{}
	for _, d := range []string{"person_0001", "person_0002", "singletons", "noface"} {
		ents, err := os.ReadDir(filepath.Join(out, d))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			entries[d] = append(entries[d], e.Name())
		}
	}
	wantDirs := map[string][]string{
		"person_0001": {"a__p1.jpg", "b__c__p1-2.JPG", "b__p1.jpg", "p1-3.png", "x__<b>&evil.jpg"},
		"person_0002": {"p2-a.jpeg", "p2-b.bmp"},
		"singletons":  {"y-p4.jpg", "z-p3.jpg"},
		"noface":      {"blank.png"},
	}
	for d, w := range wantDirs {
		if fmt.Sprint(entries[d]) != fmt.Sprint(w) {
			t.Errorf("%s holds %v, want %v", d, entries[d], w)
		}
	}
	if _, err := os.Stat(filepath.Join(out, "person_0003")); !os.IsNotExist(err) {
		t.Errorf("person_0003 exists with singletons=folder: %v", err)
	}
	// Copies are the inputs' bytes; inputs are untouched.
	got, _ := os.ReadFile(filepath.Join(out, "person_0002", "p2-b.bmp"))
	if fakeText(got) != "face 2 masked 1" {
		t.Errorf("copied content %q", got)
	}
	un := readUnreadable(t, out)
	for p, want := range map[string]string{"corrupt.jpg": "corrupt image header: jpeg", "empty.jpg": "empty file", "dangling.jpg": "file vanished or broken link",
		"deep/er/no.gif": "unsupported image format: GIF (OpenCV cannot decode it"} {
		if !strings.HasPrefix(un[p], want) {
			t.Errorf("unreadable.json: %s: %q, want %q", p, un[p], want)
		}
	}
	r := readReport(t, out)
	skipped := fmt.Sprint(r.Skipped)
	for _, s := range []string{"notes.txt", "deep/er/README"} {
		if !strings.Contains(skipped, s) {
			t.Errorf("skipped lacks %s: %s", s, skipped)
		}
	}
	var p2b *ImageEntry
	for i := range r.Images {
		if r.Images[i].Path == "p2-b.bmp" {
			p2b = &r.Images[i]
		}
	}
	if p2b == nil || p2b.Folder != "person_0002" || p2b.Face == nil {
		t.Fatalf("p2-b entry %+v", p2b)
	}
	if f := p2b.Face; f.Mask != "masked" || f.MaskScore != 0.9 || f.Distance <= 0 || f.Box != [4]float64{10, 20, 110, 140} || f.Thumb == "" {
		t.Fatalf("p2-b face %+v", f)
	}
	if id := r.Identities[1]; id.Folder != "person_0002" || id.Size != 2 || id.Masked != 1 || id.Unmasked != 1 {
		t.Errorf("identity 2 %+v", id)
	}
	if r.Meta.Algorithm != "average" || r.Meta.Thresholds == nil || r.Meta.Thresholds.UU != 0.1 || r.Schema != SchemaVersion {
		t.Errorf("meta %+v schema %d", r.Meta, r.Schema)
	}
	page := checkHTML(t, filepath.Join(out, "report.html"), 9)
	if strings.Contains(page, "<b>&evil") || !strings.Contains(page, "&lt;b&gt;&amp;evil") {
		t.Error("file name not escaped in report.html")
	}
}

// checkHTML parses the contact sheet, counts thumbnails and checks that it
// loads nothing from outside OUT and runs no script.
func checkHTML(t *testing.T, file string, thumbs int) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := html.Parse(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	imgs, scripts := 0, 0
	var walk func(n *html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode {
			switch n.Data {
			case "script":
				scripts++
				for _, a := range n.Attr {
					if a.Key == "src" {
						t.Errorf("report.html loads a script from %q", a.Val)
					}
				}
				if c := n.FirstChild; c != nil {
					for _, bad := range []string{"http", "fetch(", "XMLHttpRequest", "import", "eval(", "innerHTML"} {
						if strings.Contains(c.Data, bad) {
							t.Errorf("inline script uses %q", bad)
						}
					}
				}
			case "a":
				for _, a := range n.Attr {
					if a.Key == "href" && !(strings.HasPrefix(a.Val, "#") || strings.HasPrefix(a.Val, "file:///") ||
						(!strings.Contains(a.Val, ":") && !strings.HasPrefix(a.Val, "/") && !strings.Contains(a.Val, ".."))) {
						t.Errorf("link %q leaves OUT and the input", a.Val)
					}
				}
			case "link", "iframe", "object":
				t.Errorf("report.html has a <%s>", n.Data)
			case "img":
				imgs++
				for _, a := range n.Attr {
					if a.Key == "src" && (!strings.HasPrefix(a.Val, "thumbs/") || strings.Contains(a.Val, "..")) {
						t.Errorf("img src %q is not a local thumbnail", a.Val)
					}
				}
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(doc)
	if scripts > 1 {
		t.Errorf("report.html has %d scripts, want at most the one inline", scripts)
	}
	if imgs != thumbs {
		t.Errorf("report.html has %d thumbnails, want %d", imgs, thumbs)
	}
	// The tokenizer must get through the whole file without error.
	z := html.NewTokenizer(bytes.NewReader(b))
	for z.Next() != html.ErrorToken {
	}
	if err := z.Err(); err.Error() != "EOF" {
		t.Errorf("tokenize report.html: %v", err)
	}
	return string(b)
}

func TestSingletonsOwnAndDBSCAN(t *testing.T) {
	in := fixture(t)
	out := filepath.Join(t.TempDir(), "out")
	o := testOptions()
	o.Singletons = SingletonsOwn
	o.Cluster = identity.ClusterOptions{Algorithm: identity.DBSCAN, Eps: 0.5, MinSamples: 2}
	rep, err := Run(context.Background(), in, out, fakes(1), o)
	if err != nil {
		t.Fatal(err)
	}
	var folders []string
	for _, id := range rep.Identities {
		folders = append(folders, fmt.Sprintf("%s:%d", id.Folder, id.Size))
	}
	// Singletons (DBSCAN noise) get their own folders after the larger ones,
	// in path order: y-p4.jpg before z-p3.jpg.
	if got := strings.Join(folders, " "); got != "person_0001:5 person_0002:2 person_0003:1 person_0004:1" {
		t.Fatalf("folders %s", got)
	}
	if _, err := os.Stat(filepath.Join(out, "person_0003", "y-p4.jpg")); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(filepath.Join(out, "singletons")); !os.IsNotExist(err) {
		t.Errorf("singletons/ exists with singletons=own: %v", err)
	}
	r := readReport(t, out)
	if r.Meta.Algorithm != "dbscan" || r.Meta.Eps != 0.5 || r.Meta.MinSamples != 2 || r.Meta.Thresholds != nil {
		t.Errorf("meta %+v", r.Meta)
	}
}

func TestDeterministic(t *testing.T) {
	in := fixture(t)
	base := t.TempDir()
	var reports [][]byte
	for i, workers := range []int{1, 2, 2} {
		out := filepath.Join(base, fmt.Sprint(i))
		if _, err := Run(context.Background(), in, out, fakes(workers), testOptions()); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"report.json", "report.html"} {
			b, err := os.ReadFile(filepath.Join(out, f))
			if err != nil {
				t.Fatal(err)
			}
			reports = append(reports, b)
		}
	}
	for i := 2; i < len(reports); i++ {
		if !bytes.Equal(reports[i], reports[i%2]) {
			t.Errorf("run %d: %s differs from the first run's", i/2, []string{"report.json", "report.html"}[i%2])
		}
	}
}

func TestForce(t *testing.T) {
	in := fixture(t)
	out := filepath.Join(t.TempDir(), "out")
	ctx := context.Background()
	if _, err := Run(ctx, in, out, fakes(1), testOptions()); err != nil {
		t.Fatal(err)
	}
	if _, err := Run(ctx, in, out, fakes(1), testOptions()); !errors.Is(err, ErrOutputNotEmpty) {
		t.Fatalf("second run without force: %v", err)
	}
	// A leftover from a different earlier layout is cleared with --force.
	if err := os.MkdirAll(filepath.Join(out, "person_0009"), 0o755); err != nil {
		t.Fatal(err)
	}
	o := testOptions()
	o.Force = true
	o.Singletons = SingletonsOwn
	if _, err := Run(ctx, in, out, fakes(1), o); err != nil {
		t.Fatalf("force over a previous run: %v", err)
	}
	for _, gone := range []string{"person_0009", "singletons"} {
		if _, err := os.Stat(filepath.Join(out, gone)); !os.IsNotExist(err) {
			t.Errorf("%s survived --force: %v", gone, err)
		}
	}
	// Foreign files: refused, and nothing is deleted.
	writeFiles(t, out, map[string]string{"mine.doc": "keep"})
	if _, err := Run(ctx, in, out, fakes(1), o); !errors.Is(err, ErrForeignFiles) || !strings.Contains(err.Error(), "mine.doc") {
		t.Fatalf("force with a foreign file: %v", err)
	}
	for _, keep := range []string{"mine.doc", "report.json", "person_0001"} {
		if _, err := os.Stat(filepath.Join(out, keep)); err != nil {
			t.Errorf("%s deleted by a refused --force: %v", keep, err)
		}
	}
	// A non-empty folder without the marker is never cleared.
	other := t.TempDir()
	writeFiles(t, other, map[string]string{"report.json": "{}"})
	if _, err := Run(ctx, in, other, fakes(1), o); !errors.Is(err, ErrForeignFiles) {
		t.Fatalf("force on an unmarked folder: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(other, "report.json")); string(b) != "{}" {
		t.Error("unmarked folder modified")
	}
}

func TestOutputInsideInput(t *testing.T) {
	in := fixture(t)
	out := filepath.Join(in, "clustered")
	calls := &atomic.Int64{}
	ctx := context.Background()
	if _, err := Run(ctx, in, out, []FaceFinder{fakeFinder{calls}}, testOptions()); err != nil {
		t.Fatal(err)
	}
	first := calls.Load()
	o := testOptions()
	o.Force = true
	rep, err := Run(ctx, in, out, []FaceFinder{fakeFinder{calls}}, o)
	if err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 2*first || rep.Counts.Images != 12 {
		t.Fatalf("the output was read back as input: %d calls after %d, %d images", calls.Load(), first, rep.Counts.Images)
	}
	if _, err := Run(ctx, filepath.Join(in, "a"), in, fakes(1), o); err == nil {
		t.Fatal("input inside the output folder accepted")
	}
	// A second output folder: the first one, still inside the input, is
	// an earlier run's output (photo copies, face thumbnails), not input.
	rep, err = Run(ctx, in, filepath.Join(in, "clustered-again"), []FaceFinder{fakeFinder{calls}}, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Counts.Images != 12 {
		t.Fatalf("an earlier output folder was read as input: %d images, want 12", rep.Counts.Images)
	}
	found := false
	for _, p := range rep.Skipped {
		found = found || (p.Path == "clustered" && strings.Contains(p.Reason, "earlier cluster run"))
	}
	if !found {
		t.Errorf("the earlier output is not listed as skipped: %+v", rep.Skipped)
	}
}

func TestPermissionDenied(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads every file")
	}
	in := t.TempDir()
	writeFiles(t, in, map[string]string{"locked.jpg": "face 1 0", "ok.jpg": "face 1 0"})
	if err := os.Chmod(filepath.Join(in, "locked.jpg"), 0); err != nil {
		t.Fatal(err)
	}
	rep, err := Run(context.Background(), in, filepath.Join(t.TempDir(), "o"), fakes(1), testOptions())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Unreadable) != 1 || rep.Unreadable[0] != (Problem{Path: "locked.jpg", Reason: "permission denied"}) {
		t.Fatalf("unreadable %+v", rep.Unreadable)
	}
}

func TestCancel(t *testing.T) {
	in := fixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Run(ctx, in, filepath.Join(t.TempDir(), "o"), fakes(2), testOptions()); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled run: %v", err)
	}
}

func TestCentroidDistance(t *testing.T) {
	res := []result{
		{face: vision.Face{Embedding: []float32{1, 0}}},
		{face: vision.Face{Embedding: []float32{0, 1}}},
	}
	c := centroid(res, []int{0, 1})
	if d := cosDist(res[0].face.Embedding, c); math.Abs(d-(1-math.Sqrt(0.5))) > 1e-9 {
		t.Fatalf("distance %v", d)
	}
}

func TestNamer(t *testing.T) {
	n := namer{}
	got := []string{n.take("a.jpg"), n.take("a.jpg"), n.take("a~2.jpg"), n.take("a.jpg")}
	if fmt.Sprint(got) != "[a.jpg a~2.jpg a~2~2.jpg a~3.jpg]" {
		t.Fatal(got)
	}
	// Case-insensitive file systems: names that differ only in case are
	// kept apart.
	if got := []string{n.take("IMG_1.JPG"), n.take("img_1.jpg"), n.take("Img_1.Jpg")}; fmt.Sprint(got) != "[IMG_1.JPG img_1~2.jpg Img_1~3.Jpg]" {
		t.Fatal(got)
	}
	if flatName("x/y/z.jpg") != "x__y__z.jpg" {
		t.Fatal(flatName("x/y/z.jpg"))
	}
	// Names longer than a file system allows (a long name, or deep folders
	// flattened) are shortened, stay distinct and keep their extension.
	long := strings.Repeat("é", 200) + ".jpg" // 404 bytes
	deep := flatName(strings.Repeat("d/", 100) + "x.jpg")
	var seen []string
	for _, in := range []string{long, long, "x" + long, deep, deep} {
		c := n.take(in)
		if len(c) > 255 || !utf8.ValidString(c) || !strings.HasSuffix(c, ".jpg") || slices.Contains(seen, c) {
			t.Errorf("take(%d bytes) = %q (%d bytes)", len(in), c, len(c))
		}
		seen = append(seen, c)
	}
	if !strings.Contains(seen[1], "~2.jpg") {
		t.Errorf("second of the same long name: %q", seen[1])
	}
}

// The contact sheet's words and links: singular and plural, a table of
// contents, links to the copies and to the originals, no negative zero;
// files are copies unless Link is set.
func TestReportPolish(t *testing.T) {
	in := t.TempDir()
	writeFiles(t, in, map[string]string{"a.jpg": "face 1 0", "b.jpg": "face 1 0", "c.jpg": "face 2 0"})
	for _, link := range []bool{false, true} {
		out := filepath.Join(t.TempDir(), "out")
		o := testOptions()
		o.Link = link
		if _, err := Run(context.Background(), in, out, fakes(1), o); err != nil {
			t.Fatal(err)
		}
		page := checkHTML(t, filepath.Join(out, "report.html"), 3)
		for _, want := range []string{"3 images, 3 faces: 1 person seen in 2 or more images, 1 person seen once",
			`<a href="#person_0001">person_0001</a> (2 images)`, `<a href="#singletons">singletons</a> (1 image)`,
			`<a href="person_0001/a.jpg">a.jpg</a>`, `href="file://` + filepath.ToSlash(in), `id="q"`, `id="sort"`,
			"mean distance 0.000"} {
			if !strings.Contains(page, want) {
				t.Errorf("report.html lacks %q", want)
			}
		}
		for _, bad := range []string{"1 people", "1 images", "-0.000"} {
			if strings.Contains(page, bad) {
				t.Errorf("report.html says %q", bad)
			}
		}
		src, _ := os.Stat(filepath.Join(in, "a.jpg"))
		dst, err := os.Stat(filepath.Join(out, "person_0001", "a.jpg"))
		if err != nil {
			t.Fatal(err)
		}
		if os.SameFile(src, dst) != link {
			t.Errorf("Link %v: output shares the input's inode: %v", link, os.SameFile(src, dst))
		}
	}
}

// Near misses: a face just beyond the cut (cosine 0.106 against 0.1) is
// suggested for the person it was kept apart from, both ways, with the
// distance; a far one is not.
func TestSuggestions(t *testing.T) {
	in := t.TempDir()
	writeFiles(t, in, map[string]string{"a.jpg": "face 1 0", "b.jpg": "face 1 0", "c.jpg": "face 1 5", "d.jpg": "face 3 0"})
	out := filepath.Join(t.TempDir(), "out")
	rep, err := Run(context.Background(), in, out, fakes(1), testOptions())
	if err != nil {
		t.Fatal(err)
	}
	byImage := map[string]Identity{}
	for _, id := range rep.Identities {
		byImage[id.Images[0]] = id
	}
	p, c, d := byImage["a.jpg"], byImage["c.jpg"], byImage["d.jpg"]
	if p.Folder != "person_0001" || p.Size != 2 || c.Folder != "singletons" {
		t.Fatalf("identities %+v", rep.Identities)
	}
	if len(p.Maybe) != 1 || p.Maybe[0].Folder != "singletons" || p.Maybe[0].Image != "c.jpg" || p.Maybe[0].Distance < 0.1 || p.Maybe[0].Distance > 0.13 {
		t.Errorf("person_0001 suggestions %+v, want c.jpg just beyond 0.1", p.Maybe)
	}
	if len(c.Maybe) != 1 || c.Maybe[0].Folder != "person_0001" {
		t.Errorf("c.jpg suggestions %+v, want person_0001", c.Maybe)
	}
	if len(d.Maybe) != 0 {
		t.Errorf("far face has suggestions %+v", d.Maybe)
	}
	page := checkHTML(t, filepath.Join(out, "report.html"), 4)
	if !strings.Contains(page, `Maybe the same person as: <a href="#singletons">singletons c.jpg</a>`) || !strings.Contains(page, `maybe: <a href="#person_0001">person_0001</a>`) {
		t.Error("report.html does not show the suggestions")
	}
}

// A photo reached through a symbolic link or a hard link as well as by its
// own name is one image of its person, not two: the path that is not a
// symbolic link is kept (whichever sorts first), the others are listed as
// skipped with its name. Two copies of the same bytes are two files and
// stay two images.
func TestLinksToOneFileReadOnce(t *testing.T) {
	in := t.TempDir()
	writeFiles(t, in, map[string]string{
		"p1/b.jpg":    "face 1 0",
		"p1/c.jpg":    "face 1 1",
		"p1/copy.jpg": "face 1 1",
		"p2/d.jpg":    "face 2 0",
	})
	link := func(old, new string, hard bool) {
		t.Helper()
		mk := os.Symlink
		if hard {
			mk = os.Link
		}
		if err := mk(filepath.Join(in, old), filepath.Join(in, new)); err != nil {
			t.Fatal(err)
		}
	}
	link("p1/b.jpg", "p1/a-link.jpg", false) // sorts before its target
	link("p1/b.jpg", "p1/z-link.jpg", false)
	link("p2/d.jpg", "p2/e-hard.jpg", true)
	out := filepath.Join(t.TempDir(), "out")
	rep, err := Run(context.Background(), in, out, fakes(2), testOptions())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Counts.Images != 4 || rep.Counts.Skipped != 3 {
		t.Fatalf("counts %+v, want 4 images (b, c, copy, d) and 3 skipped links", rep.Counts)
	}
	want := map[string]string{
		"p1/a-link.jpg": "the same file as p1/b.jpg (a link to it; read once)",
		"p1/z-link.jpg": "the same file as p1/b.jpg (a link to it; read once)",
		"p2/e-hard.jpg": "the same file as p2/d.jpg (a link to it; read once)",
	}
	for _, p := range rep.Skipped {
		if want[p.Path] != p.Reason {
			t.Errorf("skipped %s: %q, want %q", p.Path, p.Reason, want[p.Path])
		}
		delete(want, p.Path)
	}
	if len(want) > 0 {
		t.Errorf("not listed as skipped: %v", want)
	}
	var images []string
	for _, e := range rep.Images {
		images = append(images, e.Path)
	}
	if fmt.Sprint(images) != "[p1/b.jpg p1/c.jpg p1/copy.jpg p2/d.jpg]" {
		t.Errorf("images %v", images)
	}
}
