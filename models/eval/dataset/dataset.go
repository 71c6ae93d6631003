// Package dataset reads labelled face folders: a labels.csv with at least
// the columns path, identity and masked (more columns are ignored).
package dataset

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Item is one labelled image.
type Item struct {
	Path     string // absolute or relative to the working dir
	Rel      string // as written in labels.csv
	Identity string
	Masked   bool
}

// Dataset is a labelled folder.
type Dataset struct {
	Dir   string
	Name  string
	Items []Item
}

// Load reads DIR/labels.csv. Rows whose file does not exist are an error:
// a label file that disagrees with its folder is not silently trusted.
func Load(dir string) (*Dataset, error) {
	f, err := os.Open(filepath.Join(dir, "labels.csv"))
	if err != nil {
		return nil, fmt.Errorf("dataset %s: %w", dir, err)
	}
	defer f.Close()
	r := csv.NewReader(f)
	r.FieldsPerRecord = -1
	head, err := r.Read()
	if err != nil {
		return nil, fmt.Errorf("dataset %s: labels.csv: %w", dir, err)
	}
	col := map[string]int{}
	for i, h := range head {
		col[strings.TrimSpace(strings.ToLower(h))] = i
	}
	pi, ok1 := col["path"]
	if !ok1 {
		pi, ok1 = col["file"]
	}
	ii, ok2 := col["identity"]
	mi, ok3 := col["masked"]
	if !ok1 || !ok2 || !ok3 {
		return nil, fmt.Errorf("dataset %s: labels.csv needs columns path, identity, masked (has %v)", dir, head)
	}
	ds := &Dataset{Dir: dir, Name: filepath.Base(filepath.Clean(dir))}
	line := 1
	for {
		rec, err := r.Read()
		line++
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("dataset %s: labels.csv line %d: %w", dir, line, err)
		}
		if len(rec) <= max(pi, ii, mi) {
			return nil, fmt.Errorf("dataset %s: labels.csv line %d: too few columns", dir, line)
		}
		rel := strings.TrimSpace(rec[pi])
		masked, err := parseBool(rec[mi])
		if err != nil {
			return nil, fmt.Errorf("dataset %s: labels.csv line %d: masked: %w", dir, line, err)
		}
		path := filepath.Join(dir, rel)
		if filepath.IsAbs(rel) {
			path = rel // a subset list pointing into another dataset
		}
		ds.Items = append(ds.Items, Item{Path: path, Rel: rel, Identity: strings.TrimSpace(rec[ii]), Masked: masked})
	}
	if len(ds.Items) == 0 {
		return nil, fmt.Errorf("dataset %s: labels.csv lists no images", dir)
	}
	return ds, nil
}

func parseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "1", "true", "yes", "masked":
		return true, nil
	case "0", "false", "no", "unmasked", "":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a boolean", s)
}

// videoExt are the video files labels.csv may list.
var videoExt = map[string]bool{".mp4": true, ".m4v": true, ".mov": true, ".avi": true, ".mkv": true, ".webm": true,
	".mpg": true, ".mpeg": true, ".wmv": true, ".flv": true, ".3gp": true, ".ts": true}

// Images keeps the still images: everything but videos (by extension).
// Their format is decided by content when they are read, so PGM, TIFF,
// WebP or extension-less images are stills too.
func (d *Dataset) Images() []Item {
	var out []Item
	for _, it := range d.Items {
		if !videoExt[strings.ToLower(filepath.Ext(it.Path))] {
			out = append(out, it)
		}
	}
	return out
}

// Identities counts distinct identities.
func (d *Dataset) Identities() int {
	s := map[string]bool{}
	for _, it := range d.Items {
		s[it.Identity] = true
	}
	return len(s)
}

// SyntheticHalf marks, for each identity with at least two unmasked images,
// every second one (in path order) to receive a synthetic mask, so that every
// such identity has masked and unmasked images.
func SyntheticHalf(items []Item) []bool {
	by := map[string][]int{}
	for i, it := range items {
		if !it.Masked {
			by[it.Identity] = append(by[it.Identity], i)
		}
	}
	out := make([]bool, len(items))
	for _, idx := range by {
		sort.Slice(idx, func(a, b int) bool { return items[idx[a]].Rel < items[idx[b]].Rel })
		if len(idx) == 1 {
			// Single-image identities are impostors only: mask about half
			// of them, chosen by name, so both kinds appear among impostors.
			out[idx[0]] = fnv32(items[idx[0]].Identity)%2 == 1
			continue
		}
		for k, i := range idx {
			out[i] = k%2 == 1
		}
	}
	return out
}

func fnv32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

// Subset keeps, for identities with at least two images, the first maxPer
// images in path order, and the first maxSingletons single-image identities
// by name (impostors only). It makes training sets of a bounded size from a
// large folder, reproducibly. Zero values keep everything of that kind.
func (d *Dataset) Subset(maxPer, maxSingletons int) *Dataset {
	by := map[string][]Item{}
	for _, it := range d.Images() {
		by[it.Identity] = append(by[it.Identity], it)
	}
	ids := make([]string, 0, len(by))
	for id := range by {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := &Dataset{Dir: d.Dir, Name: d.Name}
	singles := 0
	for _, id := range ids {
		items := by[id]
		sort.Slice(items, func(a, b int) bool { return items[a].Rel < items[b].Rel })
		if len(items) == 1 {
			if maxSingletons == 0 || singles < maxSingletons {
				out.Items = append(out.Items, items[0])
				singles++
			}
			continue
		}
		if maxPer > 0 && len(items) > maxPer {
			items = items[:maxPer]
		}
		out.Items = append(out.Items, items...)
	}
	return out
}
