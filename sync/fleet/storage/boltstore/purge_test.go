package boltstore

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/fleet/storage/storetest"
)

// An erased identity leaves nothing readable in the file: bbolt copies
// pages on write, and the erasure's deleted records stayed in free pages
// until the file is rewritten (a hostile review read 6 copies back).
func TestPurgeIdentityScrubsTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fleet.db")
	s, err := Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := context.Background()
	const id = "p-erase-me-7f3a"
	var msgs []storage.Message
	for i := range 50 {
		msgs = append(msgs, storetest.Summary("lyon-07", "atm-1", uint64(i+1), storetest.T0.Add(time.Duration(i)*time.Minute), 3, id, "p-keep"))
	}
	msgs = append(msgs, storetest.Alert("lyon-07", "atm-1", 51, storetest.T0.Add(time.Hour), "a-1", id, 6))
	if _, err := s.Apply(c, msgs); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); !bytes.Contains(b, []byte(id)) {
		t.Fatal("the identity is not in the file before the erasure: the test needs it")
	}
	n, err := s.PurgeIdentity(c, storage.IdentityPurge{Site: "lyon-07", Device: "atm-1", Identity: id, User: "root", At: storetest.T0.Add(2 * time.Hour)})
	if err != nil || n != 1 {
		t.Fatalf("purge: %d, %v", n, err)
	}
	b, _ := os.ReadFile(path)
	if k := bytes.Count(b, []byte(id)); k != 0 {
		t.Errorf("%d copies of the erased identity still in the file's bytes", k)
	}
	if !bytes.Contains(b, []byte("p-keep")) {
		t.Error("the other identity is gone from the file")
	}
	// The store goes on after its in-place rewrite.
	if d, err := s.Device(c, "lyon-07", "atm-1"); err != nil || d.MaxSeq != 51 {
		t.Errorf("after the rewrite: %+v, %v", d, err)
	}
	if _, err := s.Apply(c, []storage.Message{storetest.Summary("lyon-07", "atm-1", 52, storetest.T0.Add(3*time.Hour), 1, "p-keep")}); err != nil {
		t.Errorf("ingest after the rewrite: %v", err)
	}
}
