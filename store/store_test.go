package store

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/store/record"
)

var t0 = time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)

// clock is an injected, settable clock.
type clock struct{ t time.Time }

func (c *clock) Now() time.Time { return c.t }

func openTest(t testing.TB, opts Options) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.db")
	s, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func emb(seed float32, n int) []float32 {
	e := make([]float32, n)
	for i := range e {
		e[i] = seed + float32(i)/1000
	}
	return e
}

func faceVisit(id string, at time.Time, identity string) *visit.Visit {
	return &visit.Visit{
		ID: id, Time: at, Trigger: "gpio", Context: visit.Context{CardHash: "c-" + id},
		Descriptor: visit.Descriptor{Outcome: visit.FaceFound, Embedding: emb(0.5, 8), Model: "m1",
			Mask: visit.Masked, MaskScore: 0.9, Quality: 0.7, Frames: 10, Used: 4},
		IdentityID: identity, Distance: 0.25,
	}
}

func commitFace(t testing.TB, s *Store, id string, at time.Time, identity string) record.CommitResult {
	t.Helper()
	res, err := s.CommitVisit(context.Background(), record.Commit{
		Visit:      faceVisit(id, at, identity),
		Identities: []record.Identity{{ID: identity, Status: "pending", Confidence: 0.5}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestOpenCreatesFileAndMeta(t *testing.T) {
	s, path := openTest(t, Options{})
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600", fi.Mode().Perm())
	}
	id := s.DeviceID()
	if len(id) != 16 {
		t.Errorf("device id %q: want 16 hex chars", id)
	}
	s.Close()
	s2, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if s2.DeviceID() != id {
		t.Errorf("device id changed across reopen: %q -> %q", id, s2.DeviceID())
	}
	st, err := s2.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.SchemaVersion != SchemaVersion() || st.FileSize == 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestOpenLockedTimesOut(t *testing.T) {
	_, path := openTest(t, Options{})
	start := time.Now()
	_, err := Open(path, Options{Timeout: 100 * time.Millisecond})
	if !errors.Is(err, bolt.ErrTimeout) {
		t.Fatalf("second open: %v, want timeout", err)
	}
	if time.Since(start) > 3*time.Second {
		t.Errorf("lock wait took %v", time.Since(start))
	}
}

func TestCommitVisitRoundTrip(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t, Options{})
	var seqs []uint64
	for i, at := range []time.Duration{0, time.Minute, 2 * time.Minute} {
		r := commitFace(t, s, fmt.Sprintf("v%d", i), t0.Add(at), "idA")
		seqs = append(seqs, r.VisitSeq)
	}
	if !slices.Equal(seqs, []uint64{1, 2, 3}) {
		t.Errorf("visit seqs %v, want 1 2 3", seqs)
	}
	// A faceless visit without identity, store-assigned id.
	res, err := s.CommitVisit(ctx, record.Commit{Visit: &visit.Visit{Time: t0.Add(3 * time.Minute),
		Descriptor: visit.Descriptor{Outcome: visit.NoFace}}})
	if err != nil {
		t.Fatal(err)
	}
	if res.VisitID == "" || res.VisitSeq != 4 {
		t.Errorf("faceless result %+v", res)
	}

	got, err := s.Visit(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	want := *faceVisit("v1", t0.Add(time.Minute), "idA")
	want.Seq = 2
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
	}

	id, err := s.Identity(ctx, "idA")
	if err != nil {
		t.Fatal(err)
	}
	if id.Count != 3 || !id.FirstSeen.Equal(t0) || !id.LastSeen.Equal(t0.Add(2*time.Minute)) || id.Status != "pending" {
		t.Errorf("identity %+v", id)
	}

	since, err := s.VisitsSince(ctx, "idA", t0) // strictly after t0
	if err != nil {
		t.Fatal(err)
	}
	if len(since) != 2 || since[0].ID != "v1" || since[1].ID != "v2" {
		t.Errorf("VisitsSince(idA) = %d visits", len(since))
	}
	all, _ := s.VisitsSince(ctx, "", t0.Add(-time.Second))
	if len(all) != 4 {
		t.Errorf("device VisitsSince = %d, want 4", len(all))
	}
	between, _ := s.VisitsBetween(ctx, t0.Add(time.Minute), t0.Add(3*time.Minute))
	if len(between) != 2 {
		t.Errorf("VisitsBetween = %d, want 2 (half-open)", len(between))
	}
	iv, _ := s.IdentityVisits(ctx, "idA")
	if len(iv) != 3 || len(iv[2].Embedding) != 8 {
		t.Errorf("IdentityVisits = %d", len(iv))
	}

	if _, err := s.CommitVisit(ctx, record.Commit{Visit: faceVisit("v1", t0, "idA")}); !errors.Is(err, ErrDuplicateVisit) {
		t.Errorf("duplicate visit id: %v", err)
	}
	if _, err := s.CommitVisit(ctx, record.Commit{Visit: faceVisit("vx", t0, "nobody")}); !errors.Is(err, ErrUnknownIdentity) {
		t.Errorf("visit with unknown identity: %v", err)
	}
}

// snapshot dumps every bucket for before/after comparisons.
func snapshot(t *testing.T, s *Store) string {
	t.Helper()
	var b strings.Builder
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, bk *bolt.Bucket) error {
			return bk.ForEach(func(k, v []byte) error {
				if bytes.Equal(name, bMeta) && bytes.Equal(k, kCompactPending) {
					return nil // bookkeeping of the file, not its contents
				}
				fmt.Fprintf(&b, "%s %x %x\n", name, k, v)
				return nil
			})
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestCommitIsAtomic(t *testing.T) {
	stages := []string{"identities", "visit", "relabels", "deletes", "alerts", "outbox", "bounds"}
	for _, stage := range stages {
		t.Run(stage, func(t *testing.T) {
			ctx := context.Background()
			s, _ := openTest(t, Options{OutboxMaxMessages: 1})
			commitFace(t, s, "old", t0, "idB")
			if _, err := s.CommitVisit(ctx, record.Commit{Outbox: []visit.OutboxMessage{{Kind: "summary", Topic: "summary", Payload: []byte(`{}`)}}}); err != nil {
				t.Fatal(err)
			}
			before := snapshot(t, s)

			boom := errors.New("injected failure")
			s.testHook = func(st string) error {
				if st == stage {
					return boom
				}
				return nil
			}
			_, err := s.CommitVisit(ctx, record.Commit{
				Visit:            faceVisit("new", t0.Add(time.Hour), "idA"),
				Identities:       []record.Identity{{ID: "idA"}},
				Relabels:         []record.Relabel{{VisitID: "old", IdentityID: "idA"}},
				DeleteIdentities: []string{"idB"},
				Alerts:           []record.NewAlert{{Alert: visit.Alert{ID: "a1", Rule: "r"}, Message: &visit.OutboxMessage{Topic: "alert", Payload: []byte(`{}`)}}},
				Outbox:           []visit.OutboxMessage{{Kind: "summary", Topic: "summary", Payload: []byte(`{}`)}},
			})
			if !errors.Is(err, boom) {
				t.Fatalf("commit error %v, want injected", err)
			}
			if after := snapshot(t, s); after != before {
				t.Errorf("failed commit left changes:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			s.testHook = nil
			// The same commit succeeds afterwards; counters continue without gaps.
			res, err := s.CommitVisit(ctx, record.Commit{
				Visit:            faceVisit("new", t0.Add(time.Hour), "idA"),
				Identities:       []record.Identity{{ID: "idA"}},
				Relabels:         []record.Relabel{{VisitID: "old", IdentityID: "idA"}},
				DeleteIdentities: []string{"idB"},
				Outbox:           []visit.OutboxMessage{{Kind: "event", Topic: "event", Payload: []byte(`{}`)}},
			})
			if err != nil {
				t.Fatal(err)
			}
			if res.VisitSeq != 2 || res.Enqueued[0].Seq != 2 {
				t.Errorf("after rollback: visit seq %d, outbox seq %d, want 2 and 2", res.VisitSeq, res.Enqueued[0].Seq)
			}
		})
	}
}

func TestConsolidationRelabelAndDelete(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t, Options{})
	commitFace(t, s, "v1", t0, "A")
	commitFace(t, s, "v2", t0.Add(time.Minute), "B")
	commitFace(t, s, "v3", t0.Add(2*time.Minute), "B")

	// Deleting B while it still has visits fails and changes nothing.
	if _, err := s.CommitVisit(ctx, record.Commit{DeleteIdentities: []string{"B"}}); err == nil {
		t.Fatal("delete of identity with visits succeeded")
	}
	d := float32(0.1)
	res, err := s.CommitVisit(ctx, record.Commit{
		Relabels:         []record.Relabel{{VisitID: "v2", IdentityID: "A", Distance: &d}, {VisitID: "v3", IdentityID: "A"}, {VisitID: "gone", IdentityID: "A"}},
		DeleteIdentities: []string{"B"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.MissingRelabels, []string{"gone"}) {
		t.Errorf("missing relabels %v", res.MissingRelabels)
	}
	ids, _ := s.Identities(ctx)
	if len(ids) != 1 || ids[0].ID != "A" || ids[0].Count != 3 || !ids[0].LastSeen.Equal(t0.Add(2*time.Minute)) {
		t.Fatalf("identities after merge: %+v", ids)
	}
	v2, _ := s.Visit(ctx, "v2")
	if v2.IdentityID != "A" || v2.Distance != 0.1 || len(v2.Embedding) != 8 {
		t.Errorf("relabelled v2 %+v", v2)
	}
	if vs, _ := s.VisitsSince(ctx, "B", time.Time{}); len(vs) != 0 {
		t.Errorf("B still indexed with %d visits", len(vs))
	}
}

func TestAlertsAreWrittenOnce(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t, Options{})
	a := visit.Alert{ID: "al-1", Rule: "r1", IdentityID: "A", Raised: t0}
	mk := func() record.Commit {
		return record.Commit{Alerts: []record.NewAlert{{Alert: a, Message: &visit.OutboxMessage{Topic: "alert", Payload: []byte(`{"id":"al-1"}`)}}}}
	}
	r1, err := s.CommitVisit(ctx, mk())
	if err != nil {
		t.Fatal(err)
	}
	r2, err := s.CommitVisit(ctx, mk())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r1.NewAlerts, []string{"al-1"}) || len(r1.Enqueued) != 1 || r1.Enqueued[0].Kind != KindAlert {
		t.Errorf("first commit %+v", r1)
	}
	if len(r2.NewAlerts) != 0 || !slices.Equal(r2.DuplicateAlerts, []string{"al-1"}) || len(r2.Enqueued) != 0 {
		t.Errorf("second commit %+v", r2)
	}
	if n, _, _ := s.OutboxStats(); n != 1 {
		t.Errorf("outbox depth %d, want 1", n)
	}
	ok, _ := s.AlertExists(ctx, "al-1")
	last, found, _ := s.LastAlert(ctx, "r1", "A")
	if !ok || !found || !last.Equal(t0) {
		t.Errorf("exists %v, last %v %v", ok, last, found)
	}
	list, _ := s.Alerts(ctx, time.Time{})
	if len(list) != 1 || list[0].ID != "al-1" {
		t.Errorf("alerts %+v", list)
	}
}

func msg(kind, coalesce string, size int) visit.OutboxMessage {
	return visit.OutboxMessage{Kind: kind, Topic: kind, Coalesce: coalesce, Payload: bytes.Repeat([]byte("x"), size)}
}

func pendingKinds(t *testing.T, s *Store) []string {
	t.Helper()
	p, err := s.OutboxPending(context.Background(), 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range p {
		out = append(out, fmt.Sprintf("%s#%d", m.Kind, m.Seq))
	}
	return out
}

func TestOutboxBoundPolicy(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name        string
		opts        Options
		msgs        []visit.OutboxMessage // one commit each
		wantPending []string
		wantDropped map[string]uint64
	}{
		{
			name: "superseded summaries go first",
			opts: Options{OutboxMaxMessages: 4, OutboxMaxBytes: 1 << 20},
			msgs: []visit.OutboxMessage{
				msg("event", "", 10), msg("summary", "s", 10), msg("alert", "", 10),
				msg("summary", "s", 10), msg("summary", "s", 10), msg("event", "", 10),
			},
			// #2 dropped when #5 arrives (superseded by #4), #4 when #6 arrives (superseded by #5).
			wantPending: []string{"event#1", "alert#3", "summary#5", "event#6"},
			wantDropped: map[string]uint64{"summary": 2},
		},
		{
			name: "then oldest non-alerts, alerts kept",
			opts: Options{OutboxMaxMessages: 3, OutboxMaxBytes: 1 << 20},
			msgs: []visit.OutboxMessage{
				msg("alert", "", 10), msg("event", "", 10), msg("summary", "a", 10),
				msg("alert", "", 10), msg("event", "", 10), msg("alert", "", 10),
			},
			wantPending: []string{"alert#1", "alert#4", "alert#6"},
			wantDropped: map[string]uint64{"event": 2, "summary": 1},
		},
		{
			name: "alerts beyond the soft bound up to the hard cap",
			opts: Options{OutboxMaxMessages: 2, OutboxMaxBytes: 1 << 20, OutboxAlertCapMessages: 3},
			msgs: []visit.OutboxMessage{
				msg("alert", "", 10), msg("alert", "", 10), msg("alert", "", 10),
				msg("alert", "", 10), msg("summary", "", 10), msg("alert", "", 10),
			},
			wantPending: []string{"alert#3", "alert#4", "alert#6"},
			wantDropped: map[string]uint64{"alert": 2, "summary": 1},
		},
		{
			name: "byte bound",
			opts: Options{OutboxMaxMessages: 100, OutboxMaxBytes: 250},
			msgs: []visit.OutboxMessage{
				msg("summary", "", 100), msg("alert", "", 100), msg("summary", "", 100), msg("event", "", 40),
			},
			wantPending: []string{"alert#2", "summary#3", "event#4"},
			wantDropped: map[string]uint64{"summary": 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, path := openTest(t, tt.opts)
			var perCommit = map[string]uint64{}
			for _, m := range tt.msgs {
				res, err := s.CommitVisit(ctx, record.Commit{Outbox: []visit.OutboxMessage{m}})
				if err != nil {
					t.Fatal(err)
				}
				for k, n := range res.Dropped {
					perCommit[k] += n
				}
			}
			if got := pendingKinds(t, s); !slices.Equal(got, tt.wantPending) {
				t.Errorf("pending %v, want %v", got, tt.wantPending)
			}
			_, _, dropped := s.OutboxStats()
			if fmt.Sprint(dropped) != fmt.Sprint(tt.wantDropped) || fmt.Sprint(perCommit) != fmt.Sprint(tt.wantDropped) {
				t.Errorf("dropped %v (per commit %v), want %v", dropped, perCommit, tt.wantDropped)
			}
			// Drop counts and byte accounting persist across reopen.
			n, b, _ := s.OutboxStats()
			s.Close()
			s2, err := Open(path, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			n2, b2, dropped2 := s2.OutboxStats()
			if n2 != n || b2 != b || fmt.Sprint(dropped2) != fmt.Sprint(tt.wantDropped) {
				t.Errorf("after reopen: %d %d %v, want %d %d %v", n2, b2, dropped2, n, b, tt.wantDropped)
			}
			var sum int64
			p, _ := s2.OutboxPending(ctx, 1000)
			for _, m := range p {
				sum += int64(len(m.Payload))
			}
			if sum != b2 || len(p) != n2 {
				t.Errorf("counters %d msgs/%d bytes disagree with contents %d/%d", n2, b2, len(p), sum)
			}
		})
	}
}

func TestOutboxPendingAck(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t, Options{})
	var keys []uint64
	for i := range 5 {
		res, err := s.CommitVisit(ctx, record.Commit{Outbox: []visit.OutboxMessage{{Kind: "summary", Topic: "summary",
			Coalesce: "sum", Created: t0.Add(time.Duration(i) * time.Second), Payload: []byte(fmt.Sprintf(`{"n":%d}`, i))}}})
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, res.Enqueued[0].Key)
	}
	p, err := s.OutboxPending(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(p) != 3 || p[0].Key != keys[0] || string(p[2].Payload) != `{"n":2}` || !p[1].Created.Equal(t0.Add(time.Second)) || p[1].Coalesce != "sum" {
		t.Fatalf("pending %+v", p)
	}
	if err := s.OutboxAck(ctx, keys[0], keys[1], 9999); err != nil {
		t.Fatal(err)
	}
	if err := s.OutboxAck(ctx, keys[0]); err != nil { // idempotent
		t.Fatal(err)
	}
	n, b, _ := s.OutboxStats()
	if n != 3 || b != 21 {
		t.Errorf("stats %d msgs %d bytes, want 3, 21", n, b)
	}
	p, _ = s.OutboxPending(ctx, 10)
	if len(p) != 3 || p[0].Seq != 3 {
		t.Errorf("after ack pending %+v", p)
	}
	// Index buckets are cleaned up when the last message of a key is acked.
	if err := s.OutboxAck(ctx, keys[2], keys[3], keys[4]); err != nil {
		t.Fatal(err)
	}
	st, _ := s.Stats(ctx)
	if st.Buckets["outbox"] != 0 || st.Buckets["outbox_coalesce"] != 0 || st.Buckets["outbox_superseded"] != 0 {
		t.Errorf("outbox buckets not empty: %v", st.Buckets)
	}
}

func key32(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func TestEncryption(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "enc.db")
	s, err := Open(path, Options{Key: key32(7)})
	if err != nil {
		t.Fatal(err)
	}
	v := faceVisit("v1", t0, "A")
	v.Embedding = []float32{0.123456, -0.654321, 0.5, 0.25}
	if _, err := s.CommitVisit(ctx, record.Commit{Visit: v, Identities: []record.Identity{{ID: "A"}}}); err != nil {
		t.Fatal(err)
	}
	s.Close()

	raw, _ := os.ReadFile(path)
	plain := make([]byte, 16)
	for i, f := range v.Embedding {
		binary.LittleEndian.PutUint32(plain[4*i:], math.Float32bits(f))
	}
	if bytes.Contains(raw, plain) {
		t.Error("plaintext embedding found in the database file")
	}

	if _, err := Open(path, Options{}); !errors.Is(err, ErrKeyRequired) {
		t.Errorf("open without key: %v", err)
	}
	if _, err := Open(path, Options{Key: key32(8)}); !errors.Is(err, ErrWrongKey) {
		t.Errorf("open with wrong key: %v", err)
	}
	s, err = Open(path, Options{Key: key32(7)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Visit(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Embedding, v.Embedding) {
		t.Errorf("embedding %v, want %v", got.Embedding, v.Embedding)
	}
	st, _ := s.Stats(ctx)
	if !st.Encrypted {
		t.Error("stats: not encrypted")
	}
}

func TestLoadKey(t *testing.T) {
	dir := t.TempDir()
	k := key32(0xab)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	raw := write("raw", k)
	hx := write("hex", []byte(hex.EncodeToString(k)+"\n"))
	bad := write("bad", []byte("short"))
	badhex := write("badhex", []byte(strings.Repeat("zz", 32)))
	write("cred", []byte(hex.EncodeToString(k)))
	t.Setenv("CREDENTIALS_DIRECTORY", dir)

	for _, tt := range []struct {
		path string
		ok   bool
	}{{raw, true}, {hx, true}, {"credential:cred", true}, {bad, false}, {badhex, false},
		{"credential:../raw", false}, {filepath.Join(dir, "missing"), false}} {
		got, err := LoadKey(tt.path)
		if tt.ok && (err != nil || !bytes.Equal(got, k)) {
			t.Errorf("LoadKey(%q) = %x, %v", tt.path, got, err)
		}
		if !tt.ok && err == nil {
			t.Errorf("LoadKey(%q) accepted", tt.path)
		}
	}
}

func TestMigrations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	commitFace(t, s, "v1", t0, "A")
	s.Close()

	// A later build adds a step; it runs once, on existing data.
	saved := migrations
	t.Cleanup(func() { migrations = saved })
	runs := 0
	migrations = append(slices.Clone(saved), func(tx *bolt.Tx) error {
		runs++
		_, err := tx.CreateBucketIfNotExists([]byte("extra"))
		return err
	})
	for range 2 {
		s, err = Open(path, Options{})
		if err != nil {
			t.Fatal(err)
		}
		st, _ := s.Stats(context.Background())
		if st.SchemaVersion != len(saved)+1 {
			t.Errorf("schema %d, want %d", st.SchemaVersion, len(saved)+1)
		}
		if _, err := s.Visit(context.Background(), "v1"); err != nil {
			t.Errorf("visit lost in migration: %v", err)
		}
		s.Close()
	}
	if runs != 1 {
		t.Errorf("migration ran %d times, want 1", runs)
	}

	// A failing step leaves the file at the old version.
	migrations = append(slices.Clone(migrations), func(tx *bolt.Tx) error { return errors.New("step failed") })
	if _, err := Open(path, Options{}); err == nil || !strings.Contains(err.Error(), "migrate schema") {
		t.Errorf("failing migration: %v", err)
	}

	// The old build refuses the newer file.
	migrations = saved
	_, err = Open(path, Options{})
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Errorf("open newer schema: %v", err)
	}
}

func TestRetentionPurge(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: t0}
	s, _ := openTest(t, Options{Retention: 24 * time.Hour, Now: clk.Now})
	commitFace(t, s, "old1", t0, "A")
	commitFace(t, s, "old2", t0.Add(time.Hour), "B")
	commitFace(t, s, "new1", t0.Add(30*time.Hour), "B")
	if _, err := s.CommitVisit(ctx, record.Commit{Alerts: []record.NewAlert{
		{Alert: visit.Alert{ID: "x-old", Rule: "r", IdentityID: "A", Raised: t0}},
		{Alert: visit.Alert{ID: "x-new", Rule: "r", IdentityID: "B", Raised: t0.Add(30 * time.Hour)}},
	}}); err != nil {
		t.Fatal(err)
	}

	clk.t = t0.Add(26 * time.Hour) // cut-off at t0+2h
	if m, _ := s.Members(ctx); len(m) != 1 || m[0].VisitID != "new1" || len(m[0].Embedding) != 8 {
		t.Errorf("members inside retention: %+v", m)
	}
	n, err := s.PurgeExpired(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("purged %d, want 2", n)
	}
	ids, _ := s.Identities(ctx)
	if len(ids) != 1 || ids[0].ID != "B" || ids[0].Count != 1 || !ids[0].FirstSeen.Equal(t0.Add(30*time.Hour)) {
		t.Errorf("identities after purge %+v", ids)
	}
	if _, err := s.Visit(ctx, "old1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("old1: %v", err)
	}
	al, _ := s.Alerts(ctx, time.Time{})
	if len(al) != 1 || al[0].ID != "x-new" {
		t.Errorf("alerts after purge %+v", al)
	}
	if _, ok, _ := s.LastAlert(ctx, "r", "A"); ok {
		t.Error("alert_last of purged alert kept")
	}
}

// TestUnassigned: the face visits without identity inside retention, oldest
// first, with their templates; assigned, faceless and expired visits are
// not listed, and an assigned visit's template is not read.
func TestUnassigned(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: t0}
	s, _ := openTest(t, Options{Retention: 24 * time.Hour, Now: clk.Now, Key: key32(3)})
	put := func(v *visit.Visit) {
		t.Helper()
		if _, err := s.CommitVisit(ctx, record.Commit{Visit: v}); err != nil {
			t.Fatal(err)
		}
	}
	put(faceVisit("expired", t0, ""))
	commitFace(t, s, "assigned", t0.Add(3*time.Hour), "A")
	late := faceVisit("late", t0.Add(5*time.Hour), "")
	late.Quality = 0.3
	put(late)
	put(faceVisit("early", t0.Add(4*time.Hour), ""))
	put(&visit.Visit{ID: "noface", Time: t0.Add(6 * time.Hour), Descriptor: visit.Descriptor{Outcome: visit.NoFace}})

	clk.t = t0.Add(26 * time.Hour) // cut-off at t0+2h
	// Without the assigned visit's template, listing the others still works.
	if err := s.db.Update(func(tx *bolt.Tx) error {
		k := tx.Bucket(bVisitIDs).Get([]byte("assigned"))
		return tx.Bucket(bTemplates).Delete(k)
	}); err != nil {
		t.Fatal(err)
	}
	ms, err := s.Unassigned(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ms {
		got = append(got, m.VisitID)
		if m.IdentityID != "" || len(m.Embedding) != 8 || m.Model != "m1" {
			t.Errorf("unassigned member %+v", m)
		}
	}
	if !slices.Equal(got, []string{"early", "late"}) || ms[1].Quality != 0.3 {
		t.Errorf("unassigned %v (%+v), want early, late", got, ms)
	}
	if _, err := s.Members(ctx); err == nil {
		t.Error("Members read the assigned visit without its template")
	}
}

func TestPurgeManyInBatches(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t, Options{})
	vs := make([]*visit.Visit, 0, 2500)
	err := s.db.Update(func(tx *bolt.Tx) error {
		if err := s.putIdentity(tx, record.Identity{ID: "A"}, t0); err != nil {
			return err
		}
		for i := range 2500 {
			v := faceVisit(fmt.Sprint(i), t0.Add(time.Duration(i)*time.Second), "A")
			vs = append(vs, v)
			if err := s.putVisit(tx, v); err != nil {
				return err
			}
		}
		return s.refreshIdentity(tx, "A")
	})
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.Purge(ctx, t0.Add(2100*time.Second))
	if err != nil || n != 2100 {
		t.Fatalf("purge = %d, %v", n, err)
	}
	id, _ := s.Identity(ctx, "A")
	if id.Count != 400 || !id.FirstSeen.Equal(t0.Add(2100*time.Second)) {
		t.Errorf("identity %+v", id)
	}
}

func TestPurgeIdentity(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t, Options{})
	commitFace(t, s, "v1", t0, "A")
	commitFace(t, s, "v2", t0.Add(time.Minute), "B")
	commitFace(t, s, "v3", t0.Add(2*time.Minute), "A")
	if _, err := s.CommitVisit(ctx, record.Commit{Alerts: []record.NewAlert{{Alert: visit.Alert{ID: "al", Rule: "r", IdentityID: "A"}}}}); err != nil {
		t.Fatal(err)
	}
	n, err := s.PurgeIdentity(ctx, "A")
	if err != nil || n != 2 {
		t.Fatalf("PurgeIdentity = %d, %v", n, err)
	}
	if _, err := s.PurgeIdentity(ctx, "A"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second purge: %v", err)
	}
	st, _ := s.Stats(ctx)
	want := map[string]int{"visits": 1, "visit_ids": 1, "identity_visits": 1, "identities": 1, "alerts": 0, "alert_last": 0}
	for k, v := range want {
		if st.Buckets[k] != v {
			t.Errorf("bucket %s has %d keys, want %d", k, st.Buckets[k], v)
		}
	}
	var buf bytes.Buffer
	if err := s.Export(ctx, &buf, ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), `"A"`) {
		t.Errorf("export still mentions identity A:\n%s", buf.String())
	}
}

func TestExportAndCompact(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t, Options{Key: key32(1)})
	for i := range 50 {
		commitFace(t, s, fmt.Sprint("v", i), t0.Add(time.Duration(i)*time.Minute), "A")
	}
	if _, err := s.CommitVisit(ctx, record.Commit{Alerts: []record.NewAlert{{Alert: visit.Alert{ID: "al", Rule: "r", IdentityID: "A", Raised: t0.Add(time.Hour)}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Purge(ctx, t0.Add(40*time.Minute)); err != nil {
		t.Fatal(err)
	}
	count := func(opts ExportOptions) map[string]int {
		var buf bytes.Buffer
		if err := s.Export(ctx, &buf, opts); err != nil {
			t.Fatal(err)
		}
		out := map[string]int{}
		sc := bufio.NewScanner(&buf)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				t.Fatalf("line %q: %v", sc.Text(), err)
			}
			out[m["type"].(string)]++
			if _, ok := m["embedding"]; ok {
				out["with_embedding"]++
			}
		}
		return out
	}
	if got := count(ExportOptions{}); fmt.Sprint(got) != "map[alert:1 identity:1 meta:1 visit:10]" {
		t.Errorf("export %v", got)
	}
	if got := count(ExportOptions{Embeddings: true}); got["with_embedding"] != 10 {
		t.Errorf("export with embeddings %v", got)
	}

	before := snapshot(t, s)
	// The purge deleted templates that stay in free pages until a
	// compaction: it is recorded as owed.
	if st, _ := s.Stats(ctx); st.CompactionPending == nil || st.CompactionPending.Reason != CompactAfterPurge {
		t.Errorf("after a purge: compaction pending %+v, want reason purge", st.CompactionPending)
	}
	copyPath := filepath.Join(t.TempDir(), "copy.db")
	if err := s.Compact(ctx, copyPath); err != nil {
		t.Fatal(err)
	}
	if err := s.Compact(ctx, ""); err != nil { // in place, reopened
		t.Fatal(err)
	}
	if st, _ := s.Stats(ctx); st.CompactionPending != nil {
		t.Errorf("after compaction: still pending %+v", st.CompactionPending)
	}
	if after := snapshot(t, s); after != before {
		t.Error("in-place compact changed the contents")
	}
	if _, err := os.Stat(path + ".compact.tmp"); !os.IsNotExist(err) {
		t.Error("temporary file left behind")
	}
	// The store keeps working after an in-place compact.
	commitFace(t, s, "after", t0.Add(time.Hour), "A")
	c, err := Open(copyPath, Options{Key: key32(1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := snapshot(t, c); got != before {
		t.Error("compacted copy differs")
	}
	if v, err := c.Visit(ctx, "v45"); err != nil || len(v.Embedding) != 8 {
		t.Errorf("encrypted visit in copy: %v", err)
	}
}

func BenchmarkCommitVisit(b *testing.B) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		key  []byte
	}{{"plain", nil}, {"encrypted", key32(3)}} {
		b.Run(tc.name, func(b *testing.B) {
			s, _ := openTest(b, Options{Key: tc.key})
			e := emb(0.1, 512)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				v := faceVisit(fmt.Sprint("v", i), t0.Add(time.Duration(i)*time.Second), fmt.Sprint("id", i%50))
				v.Embedding = e
				_, err := s.CommitVisit(ctx, record.Commit{
					Visit:      v,
					Identities: []record.Identity{{ID: v.IdentityID, Status: "pending"}},
					Outbox:     []visit.OutboxMessage{{Kind: "event", Topic: "visit", Payload: make([]byte, 300)}},
				})
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestConfig(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	kf := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(kf, []byte(strings.Repeat("0f", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	c.KeyFile = kf
	c.Outbox.MaxMessages = 7
	o, err := c.Options()
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Key) != 32 || o.OutboxMaxMessages != 7 || o.Retention != DefaultRetention || o.Timeout != DefaultLockTimeout {
		t.Errorf("options %+v", o)
	}
	c.Retention = 0
	c.Outbox.AlertCapMessages = 1
	err = c.Validate()
	if err == nil || !strings.Contains(err.Error(), "store.retention") || !strings.Contains(err.Error(), "alert caps") {
		t.Errorf("validate: %v", err)
	}
}

// Stats counts stored templates per model tag from the record headers, so an
// operator sees how many belong to an embedder the agent no longer runs.
func TestStatsTemplatesPerModel(t *testing.T) {
	s, _ := openTest(t, Options{})
	ctx := context.Background()
	now := time.Now()
	for i, m := range []string{"faceres+abc", "faceres+abc", "foamliu", ""} {
		v := &visit.Visit{Time: now.Add(time.Duration(i) * time.Second),
			Descriptor: visit.Descriptor{Outcome: visit.FaceFound, Model: m, Embedding: emb(float32(i), 8)}}
		if _, err := s.CommitVisit(ctx, record.Commit{Visit: v}); err != nil {
			t.Fatal(err)
		}
	}
	// A visit without a face holds no template.
	if _, err := s.CommitVisit(ctx, record.Commit{Visit: &visit.Visit{Time: now.Add(time.Minute),
		Descriptor: visit.Descriptor{Outcome: visit.NoFace, Model: "foamliu"}}}); err != nil {
		t.Fatal(err)
	}
	st, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]int{"faceres+abc": 2, "foamliu": 1, "": 1}; !reflect.DeepEqual(st.Templates, want) {
		t.Errorf("templates %v, want %v", st.Templates, want)
	}
}

// A commit that enqueues outbox messages signals OutboxReady (the publisher
// drains at once); a commit without messages does not.
func TestOutboxReadySignal(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t, Options{})
	ready := func() bool {
		select {
		case <-s.OutboxReady():
			return true
		default:
			return false
		}
	}
	if ready() {
		t.Fatal("signalled before any commit")
	}
	if _, err := s.CommitVisit(ctx, record.Commit{Visit: &visit.Visit{ID: "v-no-msg", Time: t0, Descriptor: visit.Descriptor{Outcome: visit.NoFace}}}); err != nil {
		t.Fatal(err)
	}
	if ready() {
		t.Fatal("a commit without outbox messages signalled")
	}
	for i := range 3 {
		if _, err := s.CommitVisit(ctx, record.Commit{Outbox: []visit.OutboxMessage{{Kind: "alert", Topic: "alert",
			Created: t0, Payload: []byte(fmt.Sprintf(`{"n":%d}`, i))}}}); err != nil {
			t.Fatal(err)
		}
	}
	if !ready() {
		t.Fatal("outbox commits did not signal")
	}
	if ready() {
		t.Fatal("three commits left more than one pending signal (the channel holds one)")
	}
}

// The kept state summary is a known meta record: db check accepts it, and
// refuses one that is not a JSON object.
func TestStateSummaryChecked(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "agent.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := s.StateSummary(ctx); err != nil || b != nil {
		t.Fatalf("a new store's state summary %q, %v; want none", b, err)
	}
	want := []byte(`{"seq":3,"totals":{}}`)
	if err := s.KeepStateSummary(ctx, want); err != nil {
		t.Fatal(err)
	}
	if err := s.KeepStateSummary(ctx, bytes.Repeat([]byte(" "), maxStateSummary+1)); err == nil {
		t.Error("kept an oversized state summary")
	}
	if b, err := s.StateSummary(ctx); err != nil || !bytes.Equal(b, want) {
		t.Fatalf("state summary %q, %v; want %q", b, err, want)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := CheckFile(ctx, path, CheckOptions{BoltCheck: true})
	if err != nil || len(rep.Problems) != 0 {
		t.Fatalf("check: %v, problems %v", err, rep.Problems)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bMeta).Put(kStateSummary, []byte("not json")) })
	db.Close()
	if rep, err = CheckFile(ctx, path, CheckOptions{}); err != nil || len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0], "state summary") {
		t.Fatalf("check of a damaged state summary: %v, problems %v", err, rep.Problems)
	}
}

// TestExportClampsDistance: a visit stored with a rounding error below 0
// as its distance (agents before distances were clamped stored -1.19e-7
// for a face matching its identity exactly) is exported at 0.
func TestExportClampsDistance(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t, Options{})
	v := faceVisit("v1", t0, "A")
	v.Distance = -1.1920929e-07
	if _, err := s.CommitVisit(ctx, record.Commit{Visit: v, Identities: []record.Identity{{ID: "A", Status: "pending"}}}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := s.Export(ctx, &buf, ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), `"distance":0}`) || strings.Contains(buf.String(), "e-07") {
		t.Errorf("export: want distance 0:\n%s", buf.String())
	}
}
