package sim

import (
	"encoding/csv"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/internal/testenv"
)

func dirs(t testing.TB) (string, string) {
	m, s := os.Getenv("ATM_MODELS_DIR"), os.Getenv("ATM_MODEL_SRC")
	if m == "" {
		m = testenv.Path("build", "models")
	}
	if s == "" {
		s = testenv.Path("build", "src")
	}
	return m, filepath.Join(s, "face-api", "demo")
}

func TestLoadFaces(t *testing.T) {
	m, s := dirs(t)
	faces, err := LoadFaces(m, s)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range faces {
		t.Logf("%s score %.2f masks %d", f.Source, f.Score, len(f.Masked))
	}
}

func TestBuildDeterministic(t *testing.T) {
	a, b := Build(22, 7), Build(22, 7)
	if len(a.Visits) != len(b.Visits) {
		t.Fatalf("visit counts differ: %d vs %d", len(a.Visits), len(b.Visits))
	}
	for i := range a.Visits {
		if a.Visits[i] != b.Visits[i] {
			t.Fatalf("visit %d differs: %+v vs %+v", i, a.Visits[i], b.Visits[i])
		}
	}
	c := Build(22, 8)
	if len(c.Visits) == len(a.Visits) && c.Visits[0] == a.Visits[0] {
		t.Errorf("another seed gave the same day")
	}
	per := map[int]int{}
	cards := map[string]bool{}
	faceless := 0
	for i, v := range a.Visits {
		if i > 0 && v.Offset < a.Visits[i-1].Offset {
			t.Fatalf("visits not in time order at %d", i)
		}
		if v.Offset < 0 || v.Offset > a.Day+time.Hour {
			t.Errorf("visit %s at %v outside the day", v.ID, v.Offset)
		}
		if v.Person < 0 {
			faceless++
			continue
		}
		per[v.Person]++
		if v.Person == 1 && v.Card != "" {
			cards[v.Card] = true
		}
	}
	if len(cards) < 3 {
		t.Errorf("the many-cards customer used %d cards, want >= 3", len(cards))
	}
	if faceless < 4 {
		t.Errorf("%d faceless visits, want >= 4", faceless)
	}
	if per[0] < 5 || per[2] < 5 {
		t.Errorf("frequent customers: %v", per)
	}
	// Frequent person 0 has 5 visits inside one hour.
	var t0 []time.Duration
	for _, v := range a.Visits {
		if v.Person == 0 {
			t0 = append(t0, v.Offset)
		}
	}
	if t0[4]-t0[0] > time.Hour {
		t.Errorf("P01's first five visits span %v, want <= 1h", t0[4]-t0[0])
	}
}

func TestRender(t *testing.T) {
	m, s := dirs(t)
	faces, err := LoadFaces(m, s)
	if err != nil {
		t.Fatal(err)
	}
	if len(faces) < 10 {
		t.Fatalf("%d faces in the demo photos, want >= 10", len(faces))
	}
	sc := Build(len(faces), 1)
	v := sc.Visits[0]
	a, b := sc.Frames(faces, v, 3), sc.Frames(faces, v, 3)
	for i := range a {
		if a[i].W != FrameW || a[i].H != FrameH || len(a[i].BGR) != 3*FrameW*FrameH {
			t.Fatalf("frame %d: %dx%d %d bytes", i, a[i].W, a[i].H, len(a[i].BGR))
		}
		if string(a[i].BGR) != string(b[i].BGR) {
			t.Fatalf("frame %d differs between renders of one seed", i)
		}
	}
	if string(a[0].BGR) == string(a[1].BGR) {
		t.Errorf("frames of a burst are identical: no jitter")
	}
	// A covered camera is dark; a face frame is not.
	mean := func(f Frame) float64 {
		var s float64
		for _, x := range f.BGR {
			s += float64(x)
		}
		return s / float64(len(f.BGR))
	}
	cov := Render(nil, ShotCovered, 1, 3)[0]
	if mean(cov) > 30 || mean(a[0]) < 40 {
		t.Errorf("covered mean %.0f, face mean %.0f", mean(cov), mean(a[0]))
	}
}

func TestWriteLabels(t *testing.T) {
	s := Build(22, 7)
	faces := make([]Face, 22)
	for i := range faces {
		if i%2 == 0 { // odd faces have no masked variant: shown unmasked
			faces[i].Masked = [][]byte{{0}}
		}
	}
	dir := t.TempDir()
	const per = 3
	if err := s.WriteLabels(faces, dir, per, 0); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, "labels.csv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(rows[0], ","); got != "path,identity,masked" {
		t.Fatalf("header %q", got)
	}
	want := map[string][2]string{}
	maskedSeen := 0
	for i, v := range s.Visits {
		if v.Person < 0 {
			continue
		}
		p := s.People[v.Person]
		m := "0"
		if v.Mask >= 0 && faces[p.Face].Masked != nil {
			m = "1"
			maskedSeen++
		}
		for j := 0; j < per; j++ {
			want[frameName(i, j)] = [2]string{p.Name, m}
		}
	}
	if len(rows)-1 != len(want) || maskedSeen == 0 {
		t.Fatalf("%d rows for %d face frames (%d masked visits)", len(rows)-1, len(want), maskedSeen)
	}
	for _, r := range rows[1:] {
		if w, ok := want[r[0]]; !ok || w != [2]string{r[1], r[2]} {
			t.Errorf("row %v, want %v", r, w)
		}
	}
	// The first n visits only.
	if err := s.WriteLabels(faces, dir, per, 5); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "labels.csv"))
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n")[1:] {
		if l[:5] > "v0005" {
			t.Errorf("row beyond the first 5 visits: %s", l)
		}
	}
}
