package batch

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Corrections name faces by content: they apply again after new images
// arrive and files are renamed, merges, moves (into a person and out) and
// names included; faces that are gone are counted as missing.
func TestCorrectionsSurviveRerun(t *testing.T) {
	in := t.TempDir()
	writeFiles(t, in, map[string]string{"a.jpg": "face 1 0", "b.jpg": "face 1 1", "c.jpg": "face 2 0", "d.jpg": "face 2 1",
		"e.jpg": "face 3 0", "f.jpg": "face 1 2"})
	rep, err := Run(context.Background(), in, filepath.Join(t.TempDir(), "o"), fakes(1), testOptions())
	if err != nil {
		t.Fatal(err)
	}
	key := map[string]string{}
	for _, e := range rep.Images {
		key[e.Path] = e.Key
		if !strings.HasPrefix(e.Key, "sha256:") || len(e.Key) != 7+64 {
			t.Fatalf("key %q", e.Key)
		}
	}
	c := &Corrections{Schema: 1,
		Merge: []Merge{{Faces: []string{key["c.jpg"]}, Into: []string{key["a.jpg"]}}},
		Move: []Move{{Face: key["e.jpg"], To: []string{key["b.jpg"]}}, {Face: key["f.jpg"]},
			{Face: "sha256:gone"}},
		Name: []Name{{Faces: []string{key["a.jpg"], key["d.jpg"]}, Name: "Alice"}},
	}

	// New images, a renamed file: the same corrections still hold.
	writeFiles(t, in, map[string]string{"new/g.jpg": "face 4 0", "new/h.jpg": "face 4 1"})
	if err := os.Rename(filepath.Join(in, "a.jpg"), filepath.Join(in, "renamed.jpg")); err != nil {
		t.Fatal(err)
	}
	o := testOptions()
	o.Corrections = []*Corrections{c}
	out := filepath.Join(t.TempDir(), "o")
	rep, err = Run(context.Background(), in, out, fakes(1), o)
	if err != nil {
		t.Fatal(err)
	}
	st := rep.Meta.Corrections
	if st == nil || *st != (CorrectionStats{Merged: 1, Moved: 2, Named: 1, Missing: 1}) {
		t.Errorf("stats %+v", st)
	}
	first := rep.Identities[0]
	if first.Name != "Alice" || strings.Join(first.Images, " ") != "b.jpg c.jpg d.jpg e.jpg renamed.jpg" {
		t.Errorf("first identity %+v, want Alice with b c d e renamed", first)
	}
	folder := map[string]string{}
	for _, e := range rep.Images {
		folder[e.Path] = e.Folder
	}
	if folder["f.jpg"] != "singletons" || folder["new/g.jpg"] != "person_0002" {
		t.Errorf("f.jpg in %s (want out, a singleton), new/g.jpg in %s", folder["f.jpg"], folder["new/g.jpg"])
	}
	page, _ := os.ReadFile(filepath.Join(out, "report.html"))
	if !strings.Contains(string(page), "person_0001 (Alice): 5 images") {
		t.Error("report.html lacks the name")
	}
}

// A face whose file is in the folder several times is taken out as one
// identity holding every copy; corrections files apply one after the other,
// each on what the ones before it made (the page exports a merge with the
// faces an identity holds after an earlier move).
func TestApplyCorrectionsCopiesAndOrder(t *testing.T) {
	groups := [][]int{{0, 1, 2, 3, 4}, {5, 6}, {7, 8}}
	keys := []string{"K", "K", "K", "x3", "x4", "x5", "x6", "x7", "x8"}
	show := func(g [][]int) string {
		var s []string
		for _, items := range g {
			var w []string
			for _, i := range items {
				w = append(w, keys[i])
			}
			s = append(s, strings.Join(w, ","))
		}
		return strings.Join(s, " | ")
	}
	out, _, st := applyCorrections(groups, keys, []*Corrections{{Schema: 1, Move: []Move{{Face: "K"}}}})
	if got := show(out); got != "K,K,K | x3,x4 | x5,x6 | x7,x8" || st.Moved != 1 {
		t.Errorf("copies taken out: %s (%+v)", got, st)
	}
	f1 := &Corrections{Schema: 1, Move: []Move{{Face: "x3", To: []string{"x5"}}}}
	f2 := &Corrections{Schema: 1, Merge: []Merge{{Faces: []string{"x3", "x5", "x6"}, Into: []string{"x7"}}},
		Name: []Name{{Faces: []string{"x7"}, Name: "Bob"}}}
	out, names, st := applyCorrections(groups, keys, []*Corrections{f1, f2})
	if got := show(out); got != "K,K,K,x4 | x3,x5,x6,x7,x8" || st.Moved != 1 || st.Merged != 1 {
		t.Errorf("move then merge: %s (%+v)", got, st)
	}
	if names[3] != "Bob" {
		t.Errorf("names %v", names)
	}
}

// A corrections file is one JSON object: an empty file, trailing data and
// unknown fields are errors that say so.
func TestLoadCorrectionsStrict(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ body, want string }{
		{"", "empty"},
		{`{"schema":1}{garbage`, "more after the JSON object"},
		{`{"schema":1} {"schema":1}`, "more after the JSON object"},
		{`{"schema":1,"mrege":[]}`, "unknown field"},
		{`{"schema":2}`, "schema 2"},
		{`{"schema":1,"name":[{"faces":["sha256:ab"],"name":"Ann\u202egpj.exe"}]}`, "formatting character U+202E"},
		{`{"schema":1,"name":[{"faces":["sha256:ab"],"name":"Ann\nBob"}]}`, "control or formatting character U+000A"},
		{`{"schema":1,"name":[{"faces":["sha256:ab"],"name":"` + strings.Repeat("a", 201) + `"}]}`, "longer than 200"},
	} {
		p := filepath.Join(dir, "c.json")
		if err := os.WriteFile(p, []byte(tc.body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadCorrections(p); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.body, err, tc.want)
		}
	}
	p := filepath.Join(dir, "ok.json")
	if err := os.WriteFile(p, []byte("{\"schema\":1,\"merge\":[],\"name\":[{\"faces\":[],\"name\":\"Zoë O'Brien-Łukasz 李\"}]}\n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCorrections(p); err != nil {
		t.Errorf("a file ending in newlines: %v", err)
	}
}
