package ingest

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/wire"
)

// countingStore counts the store transactions the ingest makes for
// statuses and rejects.
type countingStore struct {
	storage.Store
	bw  storage.BatchWriter
	txs atomic.Int64
}

func (c *countingStore) PutStatus(ctx context.Context, s storage.Status) error {
	c.txs.Add(1)
	return c.Store.PutStatus(ctx, s)
}

func (c *countingStore) PutReject(ctx context.Context, r storage.Reject) error {
	c.txs.Add(1)
	return c.Store.PutReject(ctx, r)
}

func (c *countingStore) PutStatuses(ctx context.Context, s []storage.Status) error {
	c.txs.Add(1)
	return c.bw.PutStatuses(ctx, s)
}

func (c *countingStore) PutRejects(ctx context.Context, r []storage.Reject) error {
	c.txs.Add(1)
	return c.bw.PutRejects(ctx, r)
}

func newWriter(t testing.TB, st storage.Store) *Ingester {
	cfg := DefaultConfig()
	cfg.Brokers, cfg.ClientID = []string{"tcp://127.0.0.1:1"}, "batch-test"
	in, err := New(cfg, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func burst(n, from int) ([]storage.Status, []storage.Reject) {
	now := time.Now().UTC()
	sts := make([]storage.Status, n)
	rjs := make([]storage.Reject, n)
	for i := range sts {
		dev := fmt.Sprintf("d%05d", from+i)
		st := wire.Status{Envelope: wire.NewEnvelope("s", dev, now), State: wire.StateOnline}
		sts[i] = storage.Status{Site: "s", Device: dev, Received: now, Status: st}
		rjs[i] = storage.Reject{Received: now, Topic: "atm/s/" + dev + "/summary", Site: "s", Device: dev, Error: "not json", Payload: "not json"}
	}
	return sts, rjs
}

// items makes one batch of statuses and rejects.
func items(sts []storage.Status, rjs []storage.Reject) []item {
	var out []item
	for i := range sts {
		out = append(out, item{status: &sts[i]})
	}
	for i := range rjs {
		out = append(out, item{reject: &rjs[i]})
	}
	return out
}

// A burst of statuses (every agent reconnecting) and rejects is written
// in one transaction per batch, like summaries, so the ingest keeps up
// with the broker. The rate of both ways is logged (go test -v).
func TestStatusBurstBatched(t *testing.T) {
	bolt := openBolt(t, filepath.Join(t.TempDir(), "fleet.db"))
	defer bolt.Close()
	st := &countingStore{Store: bolt, bw: bolt}
	in := newWriter(t, st)
	ctx := context.Background()
	const n, batch, n1 = 3000, 128, 500

	// One at a time (the store's PutStatus/PutReject per message), on
	// fewer messages to keep the test short.
	sts, rjs := burst(n1, 0)
	t0 := time.Now()
	for i := range sts {
		if err := bolt.PutStatus(ctx, sts[i]); err != nil {
			t.Fatal(err)
		}
		if err := bolt.PutReject(ctx, rjs[i]); err != nil {
			t.Fatal(err)
		}
	}
	one := time.Since(t0)

	// Through the ingest, in batches of the default size.
	sts, rjs = burst(n, n)
	t0 = time.Now()
	for i := 0; i < n; i += batch {
		j := min(i+batch, n)
		if err := in.write(ctx, items(sts[i:j], rjs[i:j])); err != nil {
			t.Fatal(err)
		}
	}
	batched := time.Since(t0)
	t.Logf("one transaction each: %d statuses + %d rejects in %v (%.0f msg/s); ingest batches of %d: %d + %d in %v (%.0f msg/s)",
		n1, n1, one.Round(time.Millisecond), 2*n1/one.Seconds(), batch, n, n, batched.Round(time.Millisecond), 2*n/batched.Seconds())

	wantTx := int64(2 * ((n + batch - 1) / batch))
	if got := st.txs.Load(); got != wantTx {
		t.Errorf("ingest made %d store transactions for %d statuses and %d rejects, want %d (one per batch each)", got, n, n, wantTx)
	}
	if s := in.Stats(); s.Statuses != n || s.Rejected != n {
		t.Errorf("stats: statuses %d rejected %d, want %d each", s.Statuses, s.Rejected, n)
	}
	d, err := bolt.Device(ctx, "s", fmt.Sprintf("d%05d", 2*n-1))
	if err != nil || d.State() != "online" || d.Rejected != 1 {
		t.Errorf("last device: %+v, %v", d, err)
	}
}

func BenchmarkIngestStatuses(b *testing.B) {
	bolt := openBolt(b, filepath.Join(b.TempDir(), "fleet.db"))
	defer bolt.Close()
	in := newWriter(b, bolt)
	ctx := context.Background()
	const batch = 128
	sts, _ := burst(b.N, 0)
	b.ResetTimer()
	for i := 0; i < b.N; i += batch {
		if err := in.write(ctx, items(sts[i:min(i+batch, b.N)], nil)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "statuses/s")
}
