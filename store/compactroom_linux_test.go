//go:build linux

package store

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/periocular/atm-agent/store/record"
)

// TestCompactLeavesRoom: on a small file system (a tmpfs mounted by the
// test; root only), a compaction whose copy would leave less than
// CompactReserve free is refused before it writes anything, and the store
// stays usable; with room again it compacts. Before, the copy was written
// whatever the free space, filling a disk the ATM application shares.
func TestCompactLeavesRoom(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (root only): %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	ctx := context.Background()
	path := filepath.Join(dir, "agent.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 200 {
		v := crashVisit(i)
		if _, err := s.CommitVisit(ctx, record.Commit{Visit: v, Identities: []record.Identity{{ID: v.IdentityID}}}); err != nil {
			t.Fatal(err)
		}
	}
	// Leave less than the reserve free: 32 MiB - 20 MiB of filler - the store.
	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, 20<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	err = s.Compact(ctx, "")
	if !errors.Is(err, ErrNoRoom) {
		t.Fatalf("compact with under %d MiB free beside the copy: %v, want ErrNoRoom", CompactReserve>>20, err)
	}
	t.Logf("refused: %v", err)
	if _, err := os.Stat(path + ".compact.tmp"); !os.IsNotExist(err) {
		t.Errorf("a copy was started: %v", err)
	}
	if _, err := s.Visit(ctx, "crash-199"); err != nil {
		t.Fatalf("store unusable after the refusal: %v", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := s.Compact(ctx, ""); err != nil {
		t.Fatalf("compact with room: %v", err)
	}
	if _, err := s.Visit(ctx, "crash-199"); err != nil {
		t.Fatalf("after compaction: %v", err)
	}
}
