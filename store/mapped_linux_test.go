package store

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// A scan over every visit (the periodic summary's) leaves the store's pages
// unmapped: RSS does not grow with the file, and the data read is intact.
func TestScanReleasesMappedPages(t *testing.T) {
	const n = 4000
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "scan.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	fillVisits(t, s, n, 0)
	s.Close()
	s, err = Open(path, Options{Now: func() time.Time { return t0.Add(n * time.Minute) }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	size := fileSize(path)

	before := rssFileKB()
	ms, err := s.Members(ctx)
	if err != nil || len(ms) != n {
		t.Fatalf("members: %d, %v", len(ms), err)
	}
	for i, m := range ms {
		if m.Embedding[0] != emb(float32(i), 384)[0] {
			t.Fatalf("member %d: embedding changed", i)
		}
	}
	after := rssFileKB() - before
	// Control, on a fresh mapping: a plain read transaction over the same
	// records keeps them mapped, so the measure above can tell.
	s.Close()
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	before = rssFileKB()
	if err := s.view(ctx, "control", func(tx *bolt.Tx) error {
		return tx.Bucket(bTemplates).ForEach(func(_, _ []byte) error { return nil })
	}); err != nil {
		t.Fatal(err)
	}
	kept := rssFileKB() - before
	t.Logf("file %d kB; RssFile +%d kB after a plain read of the templates, %+d kB after Members", size/1024, kept, after)
	if kept < size/1024/2 {
		t.Skipf("a plain read mapped only %d kB of a %d kB file: cannot measure here", kept, size/1024)
	}
	if after > size/1024/8 {
		t.Errorf("RssFile +%d kB after a scan of a %d kB store: pages left mapped", after, size/1024)
	}
}
