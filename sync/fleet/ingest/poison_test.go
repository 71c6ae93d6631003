package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/wire"
)

// failingStore wraps a real store. Apply fails with poisonErr for a batch
// holding an alert whose id is poisonID (a message the store refuses on
// its own, as bbolt refused a 40 KB key: storage.ErrBadRecord). down
// fails every write (a store that is down); applyErr fails Apply alone (a
// full disk: large writes fail, small ones fit; a revoked right).
type failingStore struct {
	storage.Store
	bw        storage.BatchWriter
	poisonID  string
	poisonErr error
	down      atomic.Bool
	mu        sync.Mutex
	applyErr  error
}

func (f *failingStore) setApplyErr(err error) {
	f.mu.Lock()
	f.applyErr = err
	f.mu.Unlock()
}

func (f *failingStore) fail() error {
	if f.down.Load() {
		return errors.New("dial tcp 127.0.0.1:5432: connection refused (the test's store is down)")
	}
	return nil
}

func (f *failingStore) Apply(ctx context.Context, msgs []storage.Message) ([]bool, error) {
	if err := f.fail(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	err := f.applyErr
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	for _, m := range msgs {
		if m.Alert != nil && m.Alert.AlertID == f.poisonID {
			return nil, f.poisonErr
		}
	}
	return f.Store.Apply(ctx, msgs)
}

func (f *failingStore) PutStatus(ctx context.Context, s storage.Status) error {
	if err := f.fail(); err != nil {
		return err
	}
	return f.Store.PutStatus(ctx, s)
}

func (f *failingStore) PutReject(ctx context.Context, r storage.Reject) error {
	if err := f.fail(); err != nil {
		return err
	}
	return f.Store.PutReject(ctx, r)
}

func (f *failingStore) PutStatuses(ctx context.Context, s []storage.Status) error {
	if err := f.fail(); err != nil {
		return err
	}
	return f.bw.PutStatuses(ctx, s)
}

func (f *failingStore) PutRejects(ctx context.Context, r []storage.Reject) error {
	if err := f.fail(); err != nil {
		return err
	}
	return f.bw.PutRejects(ctx, r)
}

func newFailingStore(t *testing.T) *failingStore {
	bolt := openBolt(t, filepath.Join(t.TempDir(), "fleet.db"))
	t.Cleanup(func() { bolt.Close() })
	return &failingStore{Store: bolt, bw: bolt, poisonID: "poison-1", poisonErr: fmt.Errorf("apply messages: %w: key too large", storage.ErrBadRecord)}
}

// msg is an mqtt.Message handed to commit.
type msg struct {
	topic   string
	payload []byte
	acked   atomic.Bool
}

func (m *msg) Duplicate() bool   { return false }
func (m *msg) Qos() byte         { return 1 }
func (m *msg) Retained() bool    { return false }
func (m *msg) Topic() string     { return m.topic }
func (m *msg) MessageID() uint16 { return 1 }
func (m *msg) Payload() []byte   { return m.payload }
func (m *msg) Ack()              { m.acked.Store(true) }

func alertMsg(site, dev, id string, seq uint64) *msg {
	b, _ := json.Marshal(goodAlert(site, dev, id, seq, time.Now().UTC()))
	return &msg{topic: prefix + "/" + site + "/" + dev + "/alert", payload: b}
}

func statusMsg(site, dev string) *msg {
	s := wire.Status{Envelope: wire.NewEnvelope(site, dev, time.Now()), State: wire.StateOnline}
	s.MessageID, s.SchemaVersion = "st-1", wire.StatusSchemaVersion
	b, _ := json.Marshal(s)
	return &msg{topic: prefix + "/" + site + "/" + dev + "/status", payload: b}
}

func batchOf(ms ...*msg) []mqtt.Message {
	out := make([]mqtt.Message, len(ms))
	for i, m := range ms {
		out[i] = m
	}
	return out
}

func poisonWriter(t *testing.T, st storage.Store) *Ingester {
	in := newWriter(t, st)
	in.cfg.Prefix = prefix
	return in
}

// One message the store refuses on its own (it passes every check of
// Decode) used to be retried with its whole batch for ever, never
// acknowledged: all ingest stopped, across restarts. It is kept as a
// reject with the store's error, and the rest of its batch is stored.
func TestPoisonMessageRejected(t *testing.T) {
	st := newFailingStore(t)
	in := poisonWriter(t, st)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t0 := time.Now()
	if !in.commit(ctx, batchOf(alertMsg("s1", "d1", "ok-1", 1), alertMsg("s1", "d1", "poison-1", 2), statusMsg("s1", "d1"), alertMsg("s1", "d1", "ok-2", 3))) {
		t.Fatalf("the batch with a poison message was not committed within 10 s: %+v", in.Stats())
	}
	t.Logf("committed in %v: %+v", time.Since(t0).Round(time.Millisecond), in.Stats())
	s := in.Stats()
	if s.Applied != 2 || s.Rejected != 1 || s.Statuses != 1 || !s.StuckSince.IsZero() {
		t.Errorf("stats %+v, want 2 applied, 1 rejected, 1 status, not stuck", s)
	}
	rj, err := st.Rejects(context.Background(), 10)
	if err != nil || len(rj) != 1 {
		t.Fatalf("rejects %+v, %v", rj, err)
	}
	if r := rj[0]; r.Site != "s1" || r.Device != "d1" || !strings.Contains(r.Error, "key too large") || !strings.Contains(r.Payload, "poison-1") {
		t.Errorf("reject %+v", r)
	}
	for _, id := range []string{"ok-1", "ok-2"} {
		if _, err := st.Alert(context.Background(), storage.AlertKey{Site: "s1", Device: "d1", AlertID: id}); err != nil {
			t.Errorf("alert %s: %v", id, err)
		}
	}
	if d := device(t, st, "s1", "d1"); d.Rejected != 1 || d.State() != "online" || d.Unique != 2 {
		t.Errorf("device %+v", d)
	}
}

// A store that takes no write at all (down), or refuses only the larger
// writes (a full disk) with an error that says so, never makes a good
// message a reject: the batch waits, stuck_since says since when, and
// once the store is back everything is stored and nothing is lost.
func TestStoreDownLosesNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		fail func(*failingStore, bool)
	}{
		{"down", func(f *failingStore, on bool) { f.down.Store(on) }},
		{"disk full", func(f *failingStore, on bool) {
			var err error
			if on {
				err = fmt.Errorf("apply messages: write /var/lib/atm-fleet/fleet.db: %w", syscall.ENOSPC)
			}
			f.setApplyErr(err)
		}},
		{"disk full, errno lost", func(f *failingStore, on bool) {
			var err error
			if on {
				err = errors.New("apply messages: file resize error: truncate fleet.db: no space left on device")
			}
			f.setApplyErr(err)
		}},
		// The alerts' table refuses every insert, other writes pass (a
		// revoked right: a hostile review saw every good alert made a
		// reject and acknowledged, so lost, when the rule was to reject
		// what did not look like the store's fault).
		{"insert right revoked", func(f *failingStore, on bool) {
			var err error
			if on {
				err = errors.New("apply messages: ERROR: permission denied for table atm_fleet_alerts (SQLSTATE 42501)")
			}
			f.setApplyErr(err)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := newFailingStore(t)
			tc.fail(st, true)
			in := poisonWriter(t, st)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			done := make(chan bool, 1)
			t0 := time.Now()
			go func() {
				done <- in.commit(ctx, batchOf(alertMsg("s1", "d1", "ok-1", 1), statusMsg("s1", "d1"), alertMsg("s1", "d1", "ok-2", 2)))
			}()
			fleettest.WaitFor(t, 10*time.Second, "several rounds of retries", func() bool { return in.Stats().StoreErrs >= 6 })
			select {
			case <-done:
				t.Fatalf("committed while the store fails: %+v", in.Stats())
			default:
			}
			s := in.Stats()
			if s.Rejected != 0 || s.Applied != 0 || s.StuckSince.Before(t0) || s.StoreErrs == 0 {
				t.Fatalf("while failing: %+v", s)
			}
			rj, _ := st.Rejects(context.Background(), 10)
			if len(rj) != 0 {
				t.Fatalf("good messages rejected: %+v", rj)
			}
			if b, _ := json.Marshal(s); !strings.Contains(string(b), `"stuck_since":"`) {
				t.Errorf("/healthz's ingest while failing: %s", b)
			}
			t.Logf("while failing: %+v", s)
			tc.fail(st, false)
			select {
			case ok := <-done:
				if !ok {
					t.Fatal("commit gave up")
				}
			case <-time.After(15 * time.Second):
				t.Fatal("not committed within 15 s of the store coming back")
			}
			if s := in.Stats(); s.Applied != 2 || s.Rejected != 0 || !s.StuckSince.IsZero() {
				t.Errorf("after: %+v", s)
			}
			if b, _ := json.Marshal(in.Stats()); strings.Contains(string(b), "stuck_since") {
				t.Errorf("/healthz's ingest after: %s", b)
			}
			if d := device(t, st, "s1", "d1"); d.Unique != 2 || d.State() != "online" {
				t.Errorf("device %+v", d)
			}
		})
	}
}

// End to end: a poison alert published through mosquitto, refused by the
// store (bbolt behind a wrapper that refuses it alone), is acknowledged
// and kept as a reject; the alert published after it arrives, and a
// restarted service is not given the poison again.
func TestPoisonMessageMosquitto(t *testing.T) {
	m := fleettest.StartMosquitto(t, "")
	st := newFailingStore(t)
	in := start(t, m.URL(), st, "fleet-poison", "")
	for _, a := range []*msg{alertMsg("s1", "d1", "poison-1", 1), alertMsg("s1", "d1", "after-poison", 2)} {
		fleettest.Publish(t, m.URL(), a.topic, a.payload, false)
	}
	fleettest.WaitFor(t, 10*time.Second, "the alert after the poison applied", func() bool {
		_, err := st.Alert(context.Background(), storage.AlertKey{Site: "s1", Device: "d1", AlertID: "after-poison"})
		return err == nil
	})
	// The counters are updated after the store's transaction returns: wait
	// for them too, then check that they settle where they should.
	fleettest.WaitFor(t, 10*time.Second, "the counters of the batch", func() bool {
		s := in.Stats()
		return s.Applied+s.Rejected >= 2
	})
	s := in.Stats()
	t.Logf("stats %+v", s)
	if s.Applied != 1 || s.Rejected != 1 || !s.StuckSince.IsZero() {
		t.Errorf("stats %+v, want 1 applied, 1 rejected, not stuck", s)
	}
	if rj, err := st.Rejects(context.Background(), 10); err != nil || len(rj) != 1 || !strings.Contains(rj[0].Error, "key too large") {
		t.Errorf("rejects %+v, %v", rj, err)
	}
	in.stop(t)
	in = start(t, m.URL(), st, "fleet-poison", "")
	defer in.stop(t)
	time.Sleep(time.Second)
	if s := in.Stats(); s.Received != 0 || s.StoreErrs != 0 {
		t.Errorf("after a restart: %+v, want nothing given again", s)
	}
}
