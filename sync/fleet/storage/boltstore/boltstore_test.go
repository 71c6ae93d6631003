package boltstore

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/fleet/storage/storetest"
)

// The embedded store is pure Go: `CGO_ENABLED=0 go test ./sync/fleet/storage/boltstore`.
func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storage.Store {
		s, err := Open(filepath.Join(t.TempDir(), "fleet.db"), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// An acknowledgement survives closing and reopening the file.
func TestReopenKeepsAcks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fleet.db")
	ctx := context.Background()
	s, err := Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	m := storetest.Alert("s", "d", 1, storetest.T0, "a-1", "p-1", 6)
	if _, err := s.Apply(ctx, []storage.Message{m}); err != nil {
		t.Fatal(err)
	}
	k := storage.AlertKey{Site: "s", Device: "d", AlertID: "a-1"}
	if _, err := s.Act(ctx, storage.Action{Key: k, Action: storage.ActionAck, User: "ana", At: storetest.T0}); err != nil {
		t.Fatal(err)
	}
	// A second opener times out instead of hanging on the file lock.
	if _, err := Open(path, 100*time.Millisecond); err == nil {
		t.Error("second Open of a locked file succeeded")
	}
	s.Close()
	s, err = Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, err := s.Alert(ctx, k)
	if err != nil || a.State != storage.AlertAcknowledged || a.AckBy != "ana" {
		t.Errorf("after reopen: %+v, %v", a, err)
	}
	if fresh, _ := s.Apply(ctx, []storage.Message{m}); fresh[0] {
		t.Error("redelivery after reopen counted as new")
	}
}

// A backup taken while the store is open is a valid store with the same data.
func TestBackup(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s, err := Open(filepath.Join(dir, "fleet.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Apply(ctx, []storage.Message{storetest.Alert("s", "d", 1, storetest.T0, "a-1", "p-1", 6)}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "copy.db"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.Backup(ctx, f)
	f.Close()
	if err != nil || n == 0 {
		t.Fatalf("backup: %d bytes, %v", n, err)
	}
	c, err := Open(filepath.Join(dir, "copy.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if a, err := c.Alert(ctx, storage.AlertKey{Site: "s", Device: "d", AlertID: "a-1"}); err != nil || a.Count != 6 {
		t.Errorf("copy: %+v %v", a, err)
	}
}
