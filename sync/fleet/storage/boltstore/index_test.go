package boltstore

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/fleet/storage/storetest"
)

// A file written by a service without the alert indexes (schema 1: every
// file before them, or one an older service opened again and wrote an
// alert to) has them rebuilt at open: the open counts and listings then
// include the alerts the indexes did not know.
func TestOpenRebuildsAlertIndexes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fleet.db")
	s, err := Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := context.Background()
	if _, err := s.Apply(c, []storage.Message{
		storetest.Alert("paris-01", "atm-1", 1, storetest.T0, "a-1", "p-1", 6),
		storetest.Alert("paris-01", "atm-1", 2, storetest.T0.Add(time.Minute), "a-2", "p-2", 6),
	}); err != nil {
		t.Fatal(err)
	}
	// What an older service does: it writes the alert record alone and
	// sets the schema to 1.
	err = s.db.Update(func(tx *bolt.Tx) error {
		a := storage.Alert{AlertKey: storage.AlertKey{Site: "paris-01", Device: "atm-1", AlertID: "a-old"},
			Raised: storetest.T0.Add(time.Hour), State: storage.AlertOpen}
		if err := putJSON(tx.Bucket(bAlerts), cat(dkey("paris-01", "atm-1"), []byte("a-old")), a); err != nil {
			return err
		}
		return tx.Bucket(bMeta).Put([]byte("schema"), []byte("1"))
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d, err := s.Device(c, "paris-01", "atm-1")
	if err != nil {
		t.Fatal(err)
	}
	if d.OpenAlerts != 3 {
		t.Errorf("open alerts after reopen = %d, want 3 (the older service's alert counted)", d.OpenAlerts)
	}
	all, err := s.Alerts(c, storage.AlertFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 || all[0].AlertID != "a-old" {
		t.Errorf("listing after reopen = %+v, want a-old first of 3", all)
	}
}

// BenchmarkFleetPages measures what the fleet page and the alerts page
// ask of the store at a fleet's scale: 1,000 ATMs, 100 alerts each, all
// resolved but 2 per ATM.
// go test -run '^$' -bench FleetPages -benchtime 20x ./sync/fleet/storage/boltstore
func BenchmarkFleetPages(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "fleet.db"), time.Second)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	c := context.Background()
	const devices, per = 1000, 100
	for d := range devices {
		var msgs []storage.Message
		dev := fmt.Sprintf("atm-%04d", d)
		for i := range per {
			msgs = append(msgs, storetest.Alert("paris-01", dev, uint64(i+1), storetest.T0.Add(time.Duration(i*devices+d)*time.Second),
				fmt.Sprintf("a-%d", i), fmt.Sprintf("p-%d", i), 6))
		}
		if _, err := s.Apply(c, msgs); err != nil {
			b.Fatal(err)
		}
		err := s.db.Update(func(tx *bolt.Tx) error {
			for i := 2; i < per; i++ {
				k := cat(dkey("paris-01", dev), []byte(fmt.Sprintf("a-%d", i)))
				var a storage.Alert
				if _, err := getJSON(tx.Bucket(bAlerts), k, &a); err != nil {
					return err
				}
				a.State = storage.AlertResolved
				if err := putAlert(tx, k, a); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	for _, bc := range []struct {
		name string
		run  func() error
	}{
		{"Devices", func() error { _, err := s.Devices(c); return err }},
		{"Device", func() error { _, err := s.Device(c, "paris-01", "atm-0500"); return err }},
		{"AlertsActive", func() error { _, err := s.Alerts(c, storage.AlertFilter{Active: true, Limit: 101}); return err }},
		{"AlertsAll", func() error { _, err := s.Alerts(c, storage.AlertFilter{Limit: 101}); return err }},
		{"AlertsAllPage50", func() error { _, err := s.Alerts(c, storage.AlertFilter{Limit: 101, Offset: 4900}); return err }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if err := bc.run(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// With more active alerts than a listing sorts in memory (a fleet where
// nobody resolves alerts), active listings walk the order indexes and
// check the active index before decoding: the same answers.
func TestActiveListingsOfManyAlerts(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "fleet.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := context.Background()
	var msgs []storage.Message
	for i := range 3000 {
		dev := fmt.Sprintf("atm-%d", i%3)
		m := storetest.Alert("paris-01", dev, uint64(i+1), storetest.T0.Add(time.Duration(i%700)*time.Second), fmt.Sprintf("a-%04d", i), "p-1", 6)
		m.Received = storetest.T0.Add(time.Duration((i*7919)%3000) * time.Second)
		msgs = append(msgs, m)
	}
	if _, err := s.Apply(c, msgs); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3000; i += 4 {
		k := storage.AlertKey{Site: "paris-01", Device: fmt.Sprintf("atm-%d", i%3), AlertID: fmt.Sprintf("a-%04d", i)}
		if _, err := s.Act(c, storage.Action{Key: k, Action: storage.ActionResolve, User: "ana", At: storetest.T0.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	all, err := s.Alerts(c, storage.AlertFilter{Limit: 10000})
	if err != nil || len(all) != 3000 {
		t.Fatalf("all alerts: %d, %v", len(all), err)
	}
	cur := storage.AlertFilter{Order: storage.ByReceived}.CursorOf(all[1234])
	for _, f := range []storage.AlertFilter{
		{Active: true, Limit: 50}, {Active: true, Limit: 50, Offset: 100}, {Active: true, Site: "paris-01", Limit: 30},
		{State: storage.AlertOpen, Limit: 40}, {Active: true, Order: storage.ByReceived, Limit: 60},
		{Active: true, Order: storage.ByReceived, After: &cur, Limit: 60},
	} {
		want := storetest.Listing(all, f)
		got, err := s.Alerts(c, f)
		if err != nil {
			t.Fatal(err)
		}
		if gk := storetest.Keys(got); !slices.Equal(gk, want) {
			t.Errorf("Alerts(%+v): %d alerts, want %d, or another order", f, len(gk), len(want))
		}
	}
}
