package batch

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"unicode"
	"unicode/utf8"
)

// Corrections are an analyst's edits of a clustering, exported from
// report.html and applied with `cluster --apply FILE`. Faces are named by
// FaceKey (the file's sha256, plus the face number with --faces all), not
// by folder, so corrections still apply after a re-run with new images,
// renamed files or renumbered folders.
type Corrections struct {
	Schema int `json:"schema"` // 1
	// Merge: the identity holding any of Faces and the one holding any of
	// Into are one person.
	Merge []Merge `json:"merge"`
	// Move: Face belongs with the identity holding any of To; an empty To
	// takes it out into an identity of its own.
	Move []Move `json:"move"`
	// Name: the identity holding most of Faces is called Name.
	Name []Name `json:"name"`
}

// Merge joins the identities holding Faces and Into.
type Merge struct {
	Faces []string `json:"faces"`
	Into  []string `json:"into"`
}

// Move puts Face with the identity holding To (empty: out, on its own).
type Move struct {
	Face string   `json:"face"`
	To   []string `json:"to"`
}

// Name names the identity holding most of Faces.
type Name struct {
	Faces []string `json:"faces"`
	Name  string   `json:"name"`
}

// CorrectionStats says what a run made of its corrections.
type CorrectionStats struct {
	Merged  int `json:"merged"`
	Moved   int `json:"moved"`
	Named   int `json:"named"`
	Missing int `json:"missing"` // corrections naming only faces this run does not have
}

// LoadCorrections reads a corrections file strictly (unknown fields are
// errors).
func LoadCorrections(path string) (*Corrections, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("corrections: %w", err)
	}
	defer f.Close()
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields()
	var c Corrections
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("corrections %s: the file is empty", path)
		}
		return nil, fmt.Errorf("corrections %s: %w", path, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("corrections %s: more after the JSON object (one object per file)", path)
	}
	if c.Schema != 1 {
		return nil, fmt.Errorf("corrections %s: schema %d, want 1", path, c.Schema)
	}
	for _, n := range c.Name {
		if err := checkName(n.Name); err != nil {
			return nil, fmt.Errorf("corrections %s: %w", path, err)
		}
	}
	return &c, nil
}

// MaxNameLen bounds a person's name in corrections, in characters.
const MaxNameLen = 200

// checkName refuses a name that would not read as what it is in the report
// and folder listings: control characters (a newline in a heading) and
// invisible format characters, among them the bidirectional overrides that
// display "gpj.exe" as "exe.jpg".
func checkName(name string) error {
	if !utf8.ValidString(name) {
		return fmt.Errorf("name %q: not valid UTF-8", name)
	}
	if utf8.RuneCountInString(name) > MaxNameLen {
		return fmt.Errorf("name %.40q...: longer than %d characters", name, MaxNameLen)
	}
	for _, r := range name {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return fmt.Errorf("name %+q: has the control or formatting character %U", name, r)
		}
	}
	return nil
}

// FaceKey names a face by its file's content: "sha256:HEX", with "#N" for
// the N-th face of an image under --faces all.
func FaceKey(sum string, faceNo int) string {
	if faceNo > 0 {
		return fmt.Sprintf("sha256:%s#%d", sum, faceNo)
	}
	return "sha256:" + sum
}

// applyCorrections rewrites groups (item indexes) by each corrections file
// in order, as the analyst made them: a file's merges, then its moves; then
// the next file on the result; names last, on the final groups (a later
// name wins). keys[i] is item i's FaceKey. It returns the new groups and the
// names by the smallest item index of each named group.
func applyCorrections(groups [][]int, keys []string, files []*Corrections) ([][]int, map[int]string, CorrectionStats) {
	var st CorrectionStats
	of := map[string][]int{} // key -> items (one file copied twice has one key)
	for i, k := range keys {
		if k != "" {
			of[k] = append(of[k], i)
		}
	}
	group := map[int]int{} // item -> group
	for g, items := range groups {
		for _, i := range items {
			group[i] = g
		}
	}
	next := len(groups) // the next new group's number
	for _, c := range files {
		parent := map[int]int{}
		var find func(int) int
		find = func(x int) int {
			for {
				p, ok := parent[x]
				if !ok || p == x {
					return x
				}
				x = p
			}
		}
		groupsOf := func(ks []string) []int {
			var out []int
			for _, k := range ks {
				for _, i := range of[k] {
					out = append(out, find(group[i]))
				}
			}
			return out
		}
		for _, m := range c.Merge {
			a, b := groupsOf(m.Faces), groupsOf(m.Into)
			if len(a) == 0 || len(b) == 0 {
				st.Missing++
				continue
			}
			root := find(b[0])
			for _, g := range append(a, b...) {
				parent[find(g)] = root
			}
			st.Merged++
		}
		// Flatten the merges.
		for i, g := range group {
			group[i] = find(g)
		}
		for _, mv := range c.Move {
			items := of[mv.Face]
			if len(items) == 0 {
				st.Missing++
				continue
			}
			to := -1
			for _, k := range mv.To {
				for _, i := range of[k] {
					if k != mv.Face {
						to = group[i]
					}
				}
				if to >= 0 {
					break
				}
			}
			if len(mv.To) > 0 && to < 0 {
				st.Missing++
				continue
			}
			if to < 0 {
				to = next // out: one identity of its own, for every copy of the face
				next++
			}
			for _, i := range items {
				group[i] = to
			}
			st.Moved++
		}
	}
	by := map[int][]int{}
	for i, g := range group {
		by[g] = append(by[g], i)
	}
	var out [][]int
	for _, items := range by {
		sort.Ints(items)
		out = append(out, items)
	}
	sort.Slice(out, func(a, b int) bool { return out[a][0] < out[b][0] })
	names := map[int]string{}
	var named []Name
	for _, c := range files {
		named = append(named, c.Name...)
	}
	for _, n := range named {
		votes := map[int]int{}
		for _, k := range n.Faces {
			for _, i := range of[k] {
				votes[group[i]]++
			}
		}
		best, bv := -1, 0
		for g, v := range votes {
			if v > bv || (v == bv && g < best) {
				best, bv = g, v
			}
		}
		if best < 0 || n.Name == "" {
			st.Missing++
			continue
		}
		names[by[best][0]] = n.Name
		st.Named++
	}
	return out, names, st
}
