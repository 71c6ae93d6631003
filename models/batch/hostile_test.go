package batch

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/internal/imagecheck"
	"github.com/periocular/atm-agent/internal/imagecheck/crafted"
)

// Every crafted file is listed as unreadable with its reason, none reaches
// the decoder, and unreadable.json keeps a name with a tab and a newline
// intact.
func TestHostileImages(t *testing.T) {
	in := t.TempDir()
	want, err := crafted.WriteHostileSet(in)
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, in, map[string]string{"ok.jpg": "face 1 0"})
	var calls atomic.Int64
	out := filepath.Join(t.TempDir(), "out")
	rep, err := Run(context.Background(), in, out, []FaceFinder{fakeFinder{&calls}, fakeFinder{&calls}}, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 1 {
		t.Errorf("the decoder was called %d times; only ok.jpg should reach it", calls.Load())
	}
	if rep.Counts.Unreadable != len(want) || rep.Counts.Faces != 1 {
		t.Errorf("counts %+v: want %d unreadable, 1 face", rep.Counts, len(want))
	}
	un := readUnreadable(t, out)
	for name, reason := range want {
		if !strings.HasPrefix(un[name], reason) {
			t.Errorf("%q: reason %q, want %q", name, un[name], reason)
		}
	}
}

// budgetFinder records the most pixels in flight at once.
type budgetFinder struct {
	mu        *sync.Mutex
	cur, peak *int64
}

func (f budgetFinder) FaceInImage(data []byte, o vision.FaceOptions, tm *vision.Timings) (vision.Face, error) {
	info, _ := imagecheck.Check(data, o.Limits)
	f.mu.Lock()
	*f.cur += info.Pixels()
	*f.peak = max(*f.peak, *f.cur)
	f.mu.Unlock()
	time.Sleep(20 * time.Millisecond)
	f.mu.Lock()
	*f.cur -= info.Pixels()
	f.mu.Unlock()
	return fakeFinder{}.FaceInImage(data, o, tm)
}

// The pixel budget bounds what the workers hold at once: with a budget of
// one 8x8 image, four workers process the images one at a time; with the
// default budget they overlap.
func TestPixelBudget(t *testing.T) {
	in := t.TempDir()
	files := map[string]string{}
	for _, n := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		files[n+".png"] = "face 1 0"
	}
	writeFiles(t, in, files)
	for _, tc := range []struct {
		budget int64
		check  func(peak int64) bool
	}{
		{64, func(p int64) bool { return p == 64 }},
		{0, func(p int64) bool { return p > 64 }},
	} {
		var mu sync.Mutex
		var cur, peak int64
		var finders []FaceFinder
		for range 4 {
			finders = append(finders, budgetFinder{&mu, &cur, &peak})
		}
		o := testOptions()
		o.PixelBudget = tc.budget
		if _, err := Run(context.Background(), in, filepath.Join(t.TempDir(), "out"), finders, o); err != nil {
			t.Fatal(err)
		}
		if !tc.check(peak) {
			t.Errorf("budget %d: %d pixels in flight at the peak", tc.budget, peak)
		}
	}
}
