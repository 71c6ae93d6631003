package sim

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"gocv.io/x/gocv"
)

// WriteSchedule writes the visits as a hal/trigger replay schedule
// (offset, card_hash, txn_id = the visit id).
func (s Scenario) WriteSchedule(w io.Writer) error {
	for _, v := range s.Visits {
		line := v.Offset.String()
		if v.Card != "" {
			line += " card_hash=" + v.Card
		}
		line += " txn_id=" + v.ID
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	return nil
}

// frameName is the file WriteFrames writes for frame j of the i-th visit.
func frameName(i, j int) string { return fmt.Sprintf("v%04d-f%02d.png", i+1, j+1) }

// WriteLabels writes dir/labels.csv for the frames WriteFrames writes with
// the same perVisit and n: path,identity,masked for every frame of a visit
// that shows a face (the ground truth), so the evaluation harness reads the
// day as a labelled folder (docs/demo.md).
func (s Scenario) WriteLabels(faces []Face, dir string, perVisit, n int) error {
	var b strings.Builder
	b.WriteString("path,identity,masked\n")
	for i, v := range s.Visits {
		if n > 0 && i >= n {
			break
		}
		if v.Person < 0 {
			continue
		}
		p := s.People[v.Person]
		masked := 0
		if shownMasked(faces[p.Face], v) {
			masked = 1
		}
		for j := 0; j < perVisit; j++ {
			fmt.Fprintf(&b, "%s,%s,%d\n", frameName(i, j), p.Name, masked)
		}
	}
	return os.WriteFile(filepath.Join(dir, "labels.csv"), []byte(b.String()), 0o644)
}

// WriteFrames renders the bursts of the first n visits (all when n <= 0)
// as PNG files into dir, named in visit order, so a replay camera
// (camera kind "images") shows frames bursts of perFrame frames each.
func (s Scenario) WriteFrames(faces []Face, dir string, perVisit, n int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	vs := s.Visits
	if n > 0 && n < len(vs) {
		vs = vs[:n]
	}
	for i, v := range vs {
		for j, fr := range s.Frames(faces, v, perVisit) {
			m, err := gocv.NewMatFromBytes(fr.H, fr.W, gocv.MatTypeCV8UC3, fr.BGR)
			if err != nil {
				return err
			}
			name := filepath.Join(dir, frameName(i, j))
			ok := gocv.IMWrite(name, m)
			m.Close()
			runtime.KeepAlive(fr.BGR) // m wrapped it
			if !ok {
				return fmt.Errorf("write frame %s", name)
			}
		}
	}
	return nil
}
