package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/periocular/atm-agent/store/record"
)

// A store reached through a symbolic link (store.path or --db naming a
// link to the real file): purging an identity compacts the real file in
// place of itself. Before, the rename replaced the link with a new file
// and left the real one, the purged templates still in its free pages.
func TestPurgeIdentityThroughSymlinkScrubsTheRealFile(t *testing.T) {
	ctx := context.Background()
	realDir, linkDir := t.TempDir(), t.TempDir()
	real := filepath.Join(realDir, "agent.db")
	link := filepath.Join(linkDir, "link.db")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	s, err := Open(link, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var gone, kept [][]byte
	for i := range 40 {
		v := faceVisit(fmt.Sprint("v", i), t0.Add(timeMinute(i)), fmt.Sprint("id", i%2))
		v.Embedding = emb(float32(100+i), 128)
		if _, err := s.CommitVisit(ctx, record.Commit{Visit: v, Identities: []record.Identity{{ID: v.IdentityID, Status: "pending"}}}); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			gone = append(gone, templateBytes(v.Embedding))
		} else {
			kept = append(kept, templateBytes(v.Embedding))
		}
	}
	if !fileHas(t, real, gone[0]) {
		t.Fatal("template bytes not in the real file before the purge (test is wrong)")
	}
	if n, err := s.PurgeIdentity(ctx, "id0"); err != nil || n != 20 {
		t.Fatalf("purge: %d, %v", n, err)
	}
	fi, err := os.Lstat(link)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the link %s was replaced by a %v", link, fi.Mode().Type())
	}
	if to, _ := os.Readlink(link); to != real {
		t.Fatalf("the link points at %q, want %q", to, real)
	}
	for i, g := range gone {
		if fileHas(t, real, g) {
			t.Fatalf("template %d of the purged identity still in the real file's bytes", i)
		}
	}
	if !fileHas(t, real, kept[0]) {
		t.Fatal("kept identity's template missing from the real file")
	}
	for _, d := range []string{realDir, linkDir} {
		ents, _ := os.ReadDir(d)
		if len(ents) != 1 {
			t.Errorf("%s holds %d entries after the compaction, want 1 (no leftover temporary file)", d, len(ents))
		}
	}
	// The store still works through the link, on the compacted file.
	commitFace(t, s, "after", t0.Add(timeMinute(99)), "id1")
	if vs, err := s.IdentityVisits(ctx, "id1"); err != nil || len(vs) != 21 {
		t.Fatalf("after the purge: %d visits, %v", len(vs), err)
	}
}
