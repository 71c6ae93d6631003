package boltstore

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/fleet/storage/storetest"
)

// Compact gives back what a prune freed, keeps every record, the file's
// mode and a symbolic link to it, and refuses a file the service holds.
func TestCompact(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "data", "fleet.db")
	link := filepath.Join(dir, "fleet.db")
	s, err := Open(real, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	c := context.Background()
	var msgs []storage.Message
	for i := range 5000 {
		msgs = append(msgs, storetest.Summary("paris-01", "atm-1", uint64(i+1), storetest.T0.Add(time.Duration(i)*time.Minute), 3,
			"p-1", "p-2", "p-3", "p-4"))
	}
	msgs = append(msgs, storetest.Alert("paris-01", "atm-1", 5001, storetest.T0.Add(5000*time.Minute), "a-1", "p-1", 6))
	if _, err := s.Apply(c, msgs); err != nil {
		t.Fatal(err)
	}
	// Keep the last day's series.
	if _, err := s.Prune(c, storetest.T0.Add(5000*time.Minute), storage.Retention{History: 24 * time.Hour, Alerts: 24 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	wantSeries, err := s.Summaries(c, "paris-01", "atm-1", time.Time{})
	if err != nil || len(wantSeries) == 0 {
		t.Fatalf("series after prune: %d, %v", len(wantSeries), err)
	}

	if _, _, err := Compact(link, 100*time.Millisecond); err == nil || !strings.Contains(err.Error(), "stop the service") {
		t.Errorf("compact while the store is open: %v, want an error naming the lock", err)
	}
	s.Close()
	if err := os.Chmod(real, 0o640); err != nil {
		t.Fatal(err)
	}
	// A copy a killed compaction left: removed, not counted against room.
	stale := filepath.Join(filepath.Dir(real), ".fleet.db.compact-12345")
	if err := os.WriteFile(stale, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	before, after, err := Compact(link, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("compacted %d -> %d bytes", before, after)
	if after*2 > before {
		t.Errorf("compacted %d -> %d bytes: want it at most half (most records were pruned)", before, after)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the link was replaced: %v %v", fi.Mode(), err)
	}
	if fi, err := os.Stat(real); err != nil || fi.Mode().Perm() != 0o640 || fi.Size() != after {
		t.Errorf("the compacted file: %v, %v (want mode 0640, size %d)", fi.Mode(), err, after)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(real), ".fleet.db.compact-*")); len(left) != 0 {
		t.Errorf("copies left behind: %v", left)
	}
	s, err = Open(link, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Summaries(c, "paris-01", "atm-1", time.Time{})
	if err != nil || len(got) != len(wantSeries) {
		t.Errorf("series after compaction: %d, %v; want %d", len(got), err, len(wantSeries))
	}
	if d, err := s.Device(c, "paris-01", "atm-1"); err != nil || d.OpenAlerts != 1 || d.MaxSeq != 5001 {
		t.Errorf("device after compaction: %+v, %v", d, err)
	}
}

// A damaged file is refused and left as it is.
func TestCompactRefusesDamagedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fleet.db")
	junk := []byte(strings.Repeat("not a store ", 2000))
	if err := os.WriteFile(path, junk, 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := Compact(path, time.Second)
	if err == nil || !strings.Contains(err.Error(), "not compacted") {
		t.Errorf("compact of a damaged file: %v, want refused", err)
	}
	if b, _ := os.ReadFile(path); string(b) != string(junk) {
		t.Error("the damaged file was changed")
	}
}

// A service started while a compaction runs waits for it and opens the
// compacted file. bbolt's lock is on the file the compaction replaces: a
// service waiting on it got the old file, by then deleted, and what it
// ingested there was gone at the next restart (a hostile review).
func TestOpenWaitsForCompaction(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "fleet.db")
	mk := func(p, dev string) {
		s, err := Open(p, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Apply(context.Background(), []storage.Message{storetest.Summary("lyon-07", dev, 1, storetest.T0, 1)}); err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	mk(path, "atm-old")
	mk(filepath.Join(dir, "new.db"), "atm-new")
	// A compaction in progress: the store's lock held.
	lock, err := lockStore(realPath(path), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	opened := make(chan *Store, 1)
	go func() {
		s, err := Open(path, 10*time.Second)
		if err != nil {
			t.Error(err)
		}
		opened <- s
	}()
	select {
	case <-opened:
		t.Fatal("Open did not wait for the compaction's lock")
	case <-time.After(300 * time.Millisecond):
	}
	// The compaction renames its copy over the file, then lets go.
	if err := os.Rename(filepath.Join(dir, "new.db"), path); err != nil {
		t.Fatal(err)
	}
	lock.Close()
	s := <-opened
	if s == nil {
		t.FailNow()
	}
	defer s.Close()
	if _, err := s.Device(context.Background(), "lyon-07", "atm-new"); err != nil {
		t.Errorf("the service opened the replaced file, not the compacted one: %v", err)
	}
	if _, _, err := Compact(path, 100*time.Millisecond); err == nil || !strings.Contains(err.Error(), "stop the service") {
		t.Errorf("compact while the store is open: %v", err)
	}
}

// The lock file: readable by all whatever the umask of whoever made it
// (root's compaction under umask 077 made one the service could not
// open), and never followed through a planted link.
func TestLockFileModeAndLinks(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "fleet.db")
	old := syscall.Umask(0o077)
	f, err := lockStore(real, time.Second)
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if fi, err := os.Stat(real + ".lock"); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("lock file under umask 077: %v, %v; want 0644", fi.Mode(), err)
	}
	target := filepath.Join(dir, "elsewhere")
	linked := filepath.Join(dir, "other.db")
	if err := os.Symlink(target, linked+".lock"); err != nil {
		t.Fatal(err)
	}
	if f, err := lockStore(linked, 100*time.Millisecond); err == nil {
		f.Close()
		t.Error("a lock file that is a link was followed")
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Errorf("the link's target was created: %v", err)
	}
}
