package boltstore

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/fleet/storage/storetest"
)

// A store written by an earlier version holds "phantom" devices: records
// that a rejected payload created (no status, summary or accepted
// message, only a reject count). The first open removes them and keeps
// every real device: one with summaries and rejects, one with only a
// status, one with only an alert; later opens remove nothing.
func TestOpenRemovesPhantomDevices(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fleet.db")
	ctx := context.Background()
	s, err := Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	storetest.SeedRealDevices(t, s)
	s.Close()

	// What an earlier version wrote for rejected payloads from names that
	// never sent a valid message: a device record with a reject count and
	// nothing else; and no record of the cleanup.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		devs := tx.Bucket([]byte("devices"))
		for _, d := range []storage.Device{{Site: "rej", Device: "r00001", Rejected: 3}, {Site: "lyon-07", Device: "bogus", Rejected: 1}} {
			b, err := json.Marshal(d)
			if err != nil {
				return err
			}
			if err := devs.Put([]byte(d.Site+"\x00"+d.Device+"\x00"), b); err != nil {
				return err
			}
		}
		return tx.Bucket([]byte("meta")).Delete([]byte("phantom_devices_removed"))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	s, err = Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if n := s.RemovedPhantoms(); n != 2 {
		t.Errorf("removed %d phantom devices, want 2", n)
	}
	storetest.CheckRealDevicesKept(t, s)
	s.Close()

	// Once per store: the next open has nothing to do.
	s, err = Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n := s.RemovedPhantoms(); n != 0 {
		t.Errorf("second open removed %d", n)
	}
	if devs, _ := s.Devices(ctx); len(devs) != 3 {
		t.Errorf("second open: %d devices, want 3", len(devs))
	}
}
