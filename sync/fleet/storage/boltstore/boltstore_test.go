package boltstore

import (
	"context"
	"fmt"
	"io"
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

// A backup whose client stops reading must not stop ingest: the copy was
// written to the client inside a read transaction, and a write that had to
// grow the file (remap the database) waited for that transaction, with
// every read queued behind it; ingest froze until the client went away.
func TestStalledBackupDoesNotBlockWrites(t *testing.T) {
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
	pr, pw := io.Pipe() // nobody reads: the client stalled
	backupDone := make(chan error, 1)
	go func() {
		_, err := s.Backup(ctx, pw)
		backupDone <- err
	}()
	time.Sleep(200 * time.Millisecond) // the backup is under way, blocked on the client
	// Enough new messages to grow the file several times over.
	applied := make(chan error, 1)
	go func() {
		for i := range 40 {
			var batch []storage.Message
			for j := range 100 {
				seq := uint64(2 + i*100 + j)
				batch = append(batch, storetest.Summary("s", fmt.Sprintf("d%d", j), seq, storetest.T0.Add(time.Duration(seq)*time.Second), 3,
					"p-1", "p-2", "p-3", "p-4", "p-5", "p-6", "p-7", "p-8"))
			}
			if _, err := s.Apply(ctx, batch); err != nil {
				applied <- err
				return
			}
		}
		applied <- nil
	}()
	select {
	case err := <-applied:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		pr.Close() // lets the old code's transaction end, so Close returns
		t.Fatal("writes blocked while a backup's client does not read")
	}
	if fi, _ := os.Stat(filepath.Join(dir, "fleet.db")); fi.Size() < 4<<20 {
		t.Fatalf("the store grew only to %d bytes: the test grew no mapping", fi.Size())
	}
	pr.Close() // the client goes away
	if err := <-backupDone; err == nil {
		t.Error("a backup to a closed client reported success")
	}
	if m, _ := filepath.Glob(filepath.Join(dir, ".backup-*")); len(m) != 0 {
		t.Errorf("spool files left: %v", m)
	}
}

// Prune deletes in transactions of pruneBatch records (one write
// transaction over the whole store stopped ingest for seconds); more old
// records than a batch are all deleted, and the newer ones kept.
func TestPruneInBatches(t *testing.T) {
	ctx := context.Background()
	s, err := Open(filepath.Join(t.TempDir(), "fleet.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const old, recent = 2*pruneBatch + 17, 50
	var batch []storage.Message
	for i := range old + recent {
		at := storetest.T0
		if i >= old {
			at = storetest.T0.Add(40 * 24 * time.Hour)
		}
		m := storetest.Summary("s", fmt.Sprintf("d%d", i%20), uint64(i+1), at, 1)
		m.Received = at
		batch = append(batch, m)
		if len(batch) == 1000 || i == old+recent-1 {
			if _, err := s.Apply(ctx, batch); err != nil {
				t.Fatal(err)
			}
			batch = nil
		}
	}
	r := storage.Retention{History: 30 * 24 * time.Hour, Alerts: 90 * 24 * time.Hour}
	st, err := s.Prune(ctx, storetest.T0.Add(41*24*time.Hour), r)
	if err != nil {
		t.Fatal(err)
	}
	if st.Messages != old || st.Summaries != old {
		t.Fatalf("pruned %d messages and %d summaries, want %d of each", st.Messages, st.Summaries, old)
	}
	if st, _ = s.Prune(ctx, storetest.T0.Add(41*24*time.Hour), r); st.Messages != 0 || st.Summaries != 0 {
		t.Errorf("a second prune found %d messages, %d summaries", st.Messages, st.Summaries)
	}
}
