package pgstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/fleet/storage/storetest"
)

func open(t *testing.T, dsn string) *Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := Open(ctx, dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// The same conformance suite as the embedded store, against a real
// PostgreSQL started by the test (one database per subtest).
func TestConformance(t *testing.T) {
	pg := fleettest.StartPostgres(t)
	storetest.Run(t, func(t *testing.T) storage.Store { return open(t, pg.NewDatabase(t)) })
}

// Two instances on one database: what one writes the other reads, the other
// is notified (LISTEN/NOTIFY), and of two concurrent acknowledgements of the
// same alert exactly one wins.
func TestTwoInstances(t *testing.T) {
	pg := fleettest.StartPostgres(t)
	dsn := pg.NewDatabase(t)
	var a, b *Store
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); a = open(t, dsn) }() // concurrent schema creation
	go func() { defer wg.Done(); b = open(t, dsn) }()
	wg.Wait()
	if a == nil || b == nil {
		t.FailNow()
	}
	ctx := context.Background()
	chB, cancel := b.Subscribe()
	defer cancel()
	m := storetest.Alert("lyon-07", "atm-1", 1, storetest.T0, "a-1", "p-1", 7)
	if _, err := a.Apply(ctx, []storage.Message{m}); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-chB:
		if c.Kind != "alert" || c.Alert != "a-1" {
			t.Errorf("b notified of %+v", c)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("instance b not notified of a's alert within 5s")
	}
	// The same message ingested by b (a redelivery after a failover) is a duplicate.
	if fresh, err := b.Apply(ctx, []storage.Message{m}); err != nil || fresh[0] {
		t.Errorf("redelivery through b: fresh=%v err=%v", fresh, err)
	}
	k := storage.AlertKey{Site: "lyon-07", Device: "atm-1", AlertID: "a-1"}
	errs := make([]error, 2)
	wg.Add(2)
	for i, s := range []*Store{a, b} {
		go func() {
			defer wg.Done()
			_, errs[i] = s.Act(ctx, storage.Action{Key: k, Action: storage.ActionAck, User: []string{"ana", "bob"}[i], At: storetest.T0})
		}()
	}
	wg.Wait()
	ok, conflict := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, storage.ErrState):
			conflict++
		default:
			t.Errorf("ack: %v", err)
		}
	}
	if ok != 1 || conflict != 1 {
		t.Errorf("concurrent acks: %d succeeded, %d refused; want 1 and 1 (%v)", ok, conflict, errs)
	}
	got, err := a.Alert(ctx, k)
	if err != nil || got.State != storage.AlertAcknowledged {
		t.Fatalf("a sees %+v, %v", got, err)
	}
	gotB, _ := b.Alert(ctx, k)
	if gotB.AckBy != got.AckBy {
		t.Errorf("a sees ack by %q, b by %q", got.AckBy, gotB.AckBy)
	}
	audit, _ := b.Audit(ctx, 10)
	if len(audit) != 1 || audit[0].User != got.AckBy {
		t.Errorf("audit = %+v", audit)
	}
}

func TestOpenErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	port := fleettest.FreePort(t)
	_, err := Open(ctx, fmt.Sprintf("postgres://fleet@127.0.0.1:%d/x?connect_timeout=2", port), nil)
	if err == nil {
		t.Fatal("open of a closed port succeeded")
	}
	t.Logf("closed port: %v", err)
	if _, err := Open(ctx, "postgres://%zz", nil); err == nil {
		t.Error("bad dsn accepted")
	}
}

// A database written by an earlier version holds "phantom" devices: rows
// that a rejected payload created (what its PutReject inserted: a reject
// count and nothing else). The first open removes them and keeps every
// real device (summary and rejects, status only, alert only); later opens
// remove nothing.
func TestOpenRemovesPhantomDevices(t *testing.T) {
	pg := fleettest.StartPostgres(t)
	dsn := pg.NewDatabase(t)
	ctx := context.Background()
	s := open(t, dsn)
	storetest.SeedRealDevices(t, s)
	s.Close()

	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`INSERT INTO atm_fleet_devices (site, device, rejected) VALUES ('rej', 'r00001', 3), ('lyon-07', 'bogus', 1)`,
		`DELETE FROM atm_fleet_meta WHERE key = 'phantom_devices_removed'`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	conn.Close(ctx)

	s = open(t, dsn)
	if n := s.RemovedPhantoms(); n != 2 {
		t.Errorf("removed %d phantom devices, want 2", n)
	}
	storetest.CheckRealDevicesKept(t, s)
	s.Close()
	if s = open(t, dsn); s.RemovedPhantoms() != 0 {
		t.Errorf("second open removed %d", s.RemovedPhantoms())
	}
}
