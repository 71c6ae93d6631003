package boltstore

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

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

// A removal deletes what the device sent until the removal, not what it
// sends meanwhile: a hostile review saw the series of a device that sent
// again during its removal deleted with the old one's.
func TestRemoveDeviceKeepsWhatCameAfter(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "fleet.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := context.Background()
	if _, err := s.Apply(c, []storage.Message{
		storetest.Summary("lyon-07", "atm-1", 1, storetest.T0, 1, "p-1"),
		storetest.Summary("lyon-07", "atm-1", 2, storetest.T0.Add(time.Minute), 1, "p-1"),
	}); err != nil {
		t.Fatal(err)
	}
	// Seq 3 arrives while the removal deletes the series (written here
	// as the ingest would, under the same prefix).
	late := storetest.Summary("lyon-07", "atm-1", 3, storetest.T0.Add(2*time.Minute), 1, "p-1")
	sp, ids := storage.PointsFromSummary(late.Summary)
	err = s.update(c, "test", func(tx *bolt.Tx) error {
		if err := putJSON(tx.Bucket(bSummary), cat(dkey("lyon-07", "atm-1"), u64(3)), sp); err != nil {
			return err
		}
		return putJSON(tx.Bucket(bIdent), cat(dkey("lyon-07", "atm-1"), []byte("p-1\x00"), u64(3)), ids["p-1"])
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveDevice(c, storage.Removal{Site: "lyon-07", Device: "atm-1", User: "root", At: storetest.T0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	got, _ := s.Summaries(c, "lyon-07", "atm-1", time.Time{})
	if len(got) != 1 || got[0].Seq != 3 {
		t.Errorf("series after the removal: %+v, want seq 3 alone (sent after the removal began)", got)
	}
	if pts, _ := s.IdentityPoints(c, "lyon-07", "atm-1", "p-1", time.Time{}); len(pts) != 1 || pts[0].Seq != 3 {
		t.Errorf("identity series after the removal: %+v, want seq 3 alone", pts)
	}
}

// A scrub an erasure owes (no room for the copy then) is done at the next
// open: the erased records' old copies leave the file.
func TestOpenDoesTheScrubOwed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fleet.db")
	s, err := Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := context.Background()
	const id = "p-owed-scrub-91c2"
	var msgs []storage.Message
	for i := range 30 {
		msgs = append(msgs, storetest.Summary("lyon-07", "atm-1", uint64(i+1), storetest.T0.Add(time.Duration(i)*time.Minute), 2, id))
	}
	if _, err := s.Apply(c, msgs); err != nil {
		t.Fatal(err)
	}
	// The erasure's transaction, as if its rewrite had found no room.
	err = s.update(c, "test", func(tx *bolt.Tx) error {
		cur := tx.Bucket(bIdent).Cursor()
		p := cat(dkey("lyon-07", "atm-1"), []byte(id+"\x00"))
		for k, _ := cur.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = cur.Seek(p) {
			if err := cur.Delete(); err != nil {
				return err
			}
		}
		var d storage.Device
		if _, err := getJSON(tx.Bucket(bDevices), dkey("lyon-07", "atm-1"), &d); err != nil {
			return err
		}
		storage.DropIdentity(d.Summary, id)
		if err := putJSON(tx.Bucket(bDevices), dkey("lyon-07", "atm-1"), d); err != nil {
			return err
		}
		return tx.Bucket(bMeta).Put(metaScrubPending, []byte("now"))
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if b, _ := os.ReadFile(path); !bytes.Contains(b, []byte(id)) {
		t.Fatal("no old copy of the identity in the file before the open: the test needs one")
	}
	s, err = Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.ScrubPending(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); bytes.Contains(b, []byte(id)) {
		t.Error("the scrub owed was not done at open: the identity is still in the file")
	}
}
