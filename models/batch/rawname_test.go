package batch

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"unicode/utf8"
)

// A file name that is not valid UTF-8 reads as U+FFFD in report.json's
// path; its path_b64 (and file_b64 for the copy in OUT, images_b64 in its
// identity, input_b64 for the input) holds the exact bytes, so the file is
// found again; valid names carry none of them. Real models on face-api's
// sample1 photo.
func TestInvalidUTF8Names(t *testing.T) {
	fs := pipelines(t, 1)
	photo := demoPhoto(t, "sample1.jpg")
	in := filepath.Join(t.TempDir(), "in\xfd")
	if err := os.Mkdir(in, 0o755); err != nil {
		t.Skipf("the file system refuses a name that is not UTF-8: %v", err)
	}
	const bad, good = "a\xff.jpg", "b.jpg"
	files := map[string][]byte{
		bad:             photo,
		good:            photo,
		"c\xfe.jpg":     photo[:300], // truncated: unreadable
		"d\xfe.txt":     []byte("not an image"),
		"ok.txt":        []byte("not an image"),
		"sub\xfc/e.jpg": photo,
	}
	for n, b := range files {
		p := filepath.Join(in, n)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	o := testOptions()
	o.Meta.Input = in
	out := filepath.Join(t.TempDir(), "out")
	if _, err := Run(context.Background(), in, out, fs, o); err != nil {
		t.Fatal(err)
	}
	js, err := os.ReadFile(filepath.Join(out, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	type entry map[string]any
	var rep struct {
		Run        entry   `json:"run"`
		Identities []entry `json:"identities"`
		Images     []entry `json:"images"`
		Skipped    []entry `json:"skipped"`
		Unreadable []entry `json:"unreadable"`
	}
	if err := json.Unmarshal(js, &rep); err != nil {
		t.Fatal(err)
	}
	// raw checks e's field k+"_b64": the exact bytes of name when name is
	// not valid UTF-8 (and then field k reads as its U+FFFD form), absent
	// otherwise.
	raw := func(what string, e entry, k, name string) {
		t.Helper()
		b64, has := e[k+"_b64"].(string)
		if utf8.ValidString(name) {
			if _, ok := e[k+"_b64"]; ok {
				t.Errorf("%s %q: %s_b64 %v on a valid name", what, name, k, e[k+"_b64"])
			}
			if e[k] != name {
				t.Errorf("%s: %s %q, want %q", what, k, e[k], name)
			}
			return
		}
		if !has {
			t.Errorf("%s %q: no %s_b64 in %v", what, name, k, e)
			return
		}
		dec, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || string(dec) != name {
			t.Errorf("%s: %s_b64 %q decodes to %q (%v), want %q", what, k, b64, dec, err, name)
		}
		// encoding/json writes U+FFFD for each invalid byte, as []rune does.
		if e[k] != string([]rune(name)) {
			t.Errorf("%s: %s %q, want the readable %q", what, k, e[k], string([]rune(name)))
		}
	}
	raw("run", rep.Run, "input", in)
	// Images by their exact names, each found in the input and its copy in OUT.
	seen := map[string]bool{}
	for _, e := range rep.Images {
		name := e["path"].(string)
		if b, ok := e["path_b64"].(string); ok {
			d, _ := base64.StdEncoding.DecodeString(b)
			name = string(d)
		}
		seen[name] = true
		raw("image", e, "path", name)
		if _, err := os.Stat(filepath.Join(in, filepath.FromSlash(name))); err != nil {
			t.Errorf("image %q not found in the input: %v", name, err)
		}
		if e["folder"] == "" {
			continue
		}
		file := flatName(name)
		raw("image "+name, e, "file", file)
		if _, err := os.Stat(filepath.Join(out, e["folder"].(string), file)); err != nil {
			t.Errorf("the copy of %q: %v", name, err)
		}
	}
	for _, n := range []string{bad, good, "c\xfe.jpg", "sub\xfc/e.jpg"} {
		if !seen[n] {
			t.Errorf("%q is not among report.json's images", n)
		}
	}
	if len(rep.Identities) != 1 {
		t.Fatalf("%d identities, want 1 (three copies of one photo)", len(rep.Identities))
	}
	id := rep.Identities[0]
	imgs, _ := id["images"].([]any)
	b64s, _ := id["images_b64"].([]any)
	want := []string{bad, good, "sub\xfc/e.jpg"}
	if len(imgs) != len(want) || len(b64s) != len(want) {
		t.Fatalf("identity images %q, images_b64 %q: want %q", imgs, b64s, want)
	}
	for k, n := range want {
		e := entry{"image": imgs[k]}
		if b64s[k] != "" { // "" stands for a valid name
			e["image_b64"] = b64s[k]
		}
		raw("identity image", e, "image", n)
	}
	if len(rep.Unreadable) != 1 || len(rep.Skipped) != 2 {
		t.Fatalf("unreadable %v, skipped %v", rep.Unreadable, rep.Skipped)
	}
	raw("unreadable", rep.Unreadable[0], "path", "c\xfe.jpg")
	raw("skipped", rep.Skipped[0], "path", "d\xfe.txt")
	raw("skipped", rep.Skipped[1], "path", "ok.txt")
	// unreadable.json is the same list.
	var un []entry
	b, err := os.ReadFile(filepath.Join(out, "unreadable.json"))
	if err == nil {
		err = json.Unmarshal(b, &un)
	}
	if err != nil || len(un) != 1 {
		t.Fatalf("unreadable.json %s: %v", b, err)
	}
	raw("unreadable.json", un[0], "path", "c\xfe.jpg")
}
