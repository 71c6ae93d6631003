package mqttsync

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSeenSet(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "seen.json")
	t0 := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	var warned []string
	warn := func(msg string, _ ...any) { warned = append(warned, msg) }
	s, err := openSeen(path, 5*time.Minute, 16, t0, warn)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		id      string
		ts, now time.Time
		want    error
	}{
		{"a", t0, t0, nil},
		{"a", t0, t0.Add(time.Second), errReplayed},
		{"b", t0.Add(-5*time.Minute - time.Second), t0, errStale},
		{"c", t0.Add(5*time.Minute + time.Second), t0, errStale},
		{"d", t0.Add(4 * time.Minute), t0, nil}, // a sender clock 4 min ahead
		{"b", t0.Add(-4 * time.Minute), t0, nil},
	}
	for i, st := range steps {
		if err := s.admit(st.id, st.ts, st.now); !errors.Is(err, st.want) {
			t.Fatalf("step %d (%s): %v, want %v", i, st.id, err, st.want)
		}
	}
	// Across a restart: remembered, and forgotten once stale anyway.
	s2, err := openSeen(path, 5*time.Minute, 16, t0.Add(time.Minute), warn)
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.admit("a", t0, t0.Add(time.Minute)); !errors.Is(err, errReplayed) {
		t.Fatalf("after restart: %v, want replayed", err)
	}
	s3, _ := openSeen(path, 5*time.Minute, 16, t0.Add(10*time.Minute), warn)
	if len(s3.ids) != 0 { // d (ts t0+4m) is 6 min old: stale, so dropped
		t.Errorf("after 10 min %d ids held, want 0: %v", len(s3.ids), s3.ids)
	}
	// Bounded: max ids inside the window, then refusals until they age out.
	for i := 0; len(s3.ids) < 16; i++ {
		if err := s3.admit(fmt.Sprintf("f-%d", i), t0.Add(10*time.Minute), t0.Add(10*time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s3.admit("over", t0.Add(10*time.Minute), t0.Add(10*time.Minute)); !errors.Is(err, errSeenFull) {
		t.Fatalf("17th id: %v, want full", err)
	}
	if err := s3.admit("later", t0.Add(16*time.Minute), t0.Add(16*time.Minute)); err != nil {
		t.Fatalf("after the window: %v", err)
	}
	if len(warned) != 0 {
		t.Errorf("warnings %v", warned)
	}

	// A damaged file: ids lost, so every command is refused for two skew
	// windows (any lost id is stale by then), with one warning.
	os.WriteFile(path, []byte(`{"version":1,"ids":{"a":"2026-12-`), 0o600)
	s4, err := openSeen(path, 5*time.Minute, 16, t0, warn)
	if err != nil {
		t.Fatal(err)
	}
	if err := s4.admit("a", t0, t0.Add(time.Second)); !errors.Is(err, errLocked) {
		t.Fatalf("damaged file: %v, want locked", err)
	}
	if err := s4.admit("new", t0.Add(10*time.Minute), t0.Add(10*time.Minute)); err != nil {
		t.Fatalf("after two windows: %v", err)
	}
	if len(warned) != 1 || !strings.Contains(warned[0], "damaged") {
		t.Errorf("warnings %v", warned)
	}

	// Not writable (its directory is gone): the command is refused, not
	// run, and its id is not held.
	gone := filepath.Join(t.TempDir(), "gone")
	os.Mkdir(gone, 0o700)
	s5, _ := openSeen(filepath.Join(gone, "seen.json"), 5*time.Minute, 16, t0, warn)
	os.Remove(gone)
	if err := s5.admit("x", t0, t0); !errors.Is(err, errPersist) || len(s5.ids) != 0 {
		t.Fatalf("unwritable: %v (%d ids held), want a persist error", err, len(s5.ids))
	}
	// Unreadable (a directory): an error at open.
	if _, err := openSeen(dir, 5*time.Minute, 16, t0, warn); err == nil {
		t.Error("a directory as seen_file was accepted")
	}
}
