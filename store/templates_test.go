package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/store/record"
)

// oldEncodeVisit is the schema-1 visit record: header and embedding inline
// (sealed with the visit key as additional data when a key is set).
func oldEncodeVisit(t testing.TB, a aeadCipher, v *visit.Visit, key []byte) []byte {
	t.Helper()
	hj, err := json.Marshal(visitHeader{
		ID: v.ID, Seq: v.Seq, Time: v.Time.UTC(), Trigger: v.Trigger, Context: v.Context,
		Outcome: v.Outcome, Model: v.Model, Mask: v.Mask, MaskScore: v.MaskScore,
		Quality: v.Quality, Frames: v.Frames, Used: v.Used, IdentityID: v.IdentityID,
		Distance: v.Distance,
	})
	if err != nil {
		t.Fatal(err)
	}
	e := make([]byte, 4*len(v.Embedding))
	for i, f := range v.Embedding {
		binary.LittleEndian.PutUint32(e[4*i:], math.Float32bits(f))
	}
	var flags byte
	if a != nil && len(e) > 0 {
		if e, err = seal(a, e, key); err != nil {
			t.Fatal(err)
		}
		flags = 1
	}
	out := append([]byte{1, flags}, binary.AppendUvarint(nil, uint64(len(hj)))...)
	out = append(out, hj...)
	return append(out, e...)
}

// schema1Buckets is the bucket list of schema 1.
var schema1Buckets = []string{"meta", "visits", "visit_ids", "identity_visits", "identities",
	"alerts", "alert_last", "outbox", "outbox_coalesce", "outbox_superseded"}

// writeSchema1 appends visits to a schema-1 file the way a schema-1 build
// stored them (raw bbolt puts, old record encoding). key, when set, encrypts
// the new records (and creates the key check on a file without one).
func writeSchema1(t testing.TB, path string, key []byte, vs []*visit.Visit) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var a aeadCipher
	if key != nil {
		if a, err = newAEAD(key); err != nil {
			t.Fatal(err)
		}
	}
	s := &Store{aead: a}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range schema1Buckets {
			if _, err := tx.CreateBucketIfNotExists([]byte(name)); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bMeta)
		if err := putU64(meta, kSchema, 1); err != nil {
			return err
		}
		if meta.Get(kDeviceID) == nil {
			if err := meta.Put(kDeviceID, []byte("dev-1")); err != nil {
				return err
			}
		}
		if a != nil && meta.Get(kKeyCheck) == nil {
			c, err := makeKeyCheck(a)
			if err != nil {
				return err
			}
			if err := meta.Put(kKeyCheck, c); err != nil {
				return err
			}
		}
		touched := map[string]bool{}
		for _, v := range vs {
			k := visitKey(v.Time, v.Seq)
			if err := tx.Bucket(bVisits).Put(k, oldEncodeVisit(t, a, v, k)); err != nil {
				return err
			}
			if err := tx.Bucket(bVisitIDs).Put([]byte(v.ID), k); err != nil {
				return err
			}
			if err := putU64(meta, kVisitSeq, v.Seq); err != nil {
				return err
			}
			if v.IdentityID != "" {
				if !touched[v.IdentityID] {
					if err := s.putIdentity(tx, record.Identity{ID: v.IdentityID, Status: "pending"}, t0); err != nil {
						return err
					}
				}
				touched[v.IdentityID] = true
				if err := tx.Bucket(bIdentityVisits).Put(identityIndexKey(v.IdentityID, k), nil); err != nil {
					return err
				}
			}
		}
		for id := range touched {
			if err := s.refreshIdentity(tx, id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// rawVisits returns, per visit key, the visit record and the template.
func rawVisits(t testing.TB, db *bolt.DB) (recs, tmpls map[string][]byte) {
	t.Helper()
	recs, tmpls = map[string][]byte{}, map[string][]byte{}
	err := db.View(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bVisits).ForEach(func(k, v []byte) error {
			recs[string(k)] = bytes.Clone(v)
			return nil
		}); err != nil {
			return err
		}
		tb := tx.Bucket(bTemplates)
		if tb == nil {
			return nil
		}
		return tb.ForEach(func(k, v []byte) error {
			tmpls[string(k)] = bytes.Clone(v)
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return recs, tmpls
}

func schemaOf(t *testing.T, path string) int {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var v uint64
	_ = db.View(func(tx *bolt.Tx) error {
		v = getU64(tx.Bucket(bMeta), kSchema)
		return nil
	})
	return int(v)
}

func TestMigrateTemplatesFromSchema1(t *testing.T) {
	saved := migrateTemplatesBatch
	t.Cleanup(func() { migrateTemplatesBatch = saved })
	migrateTemplatesBatch = 7 // several transactions for the 40 records

	ctx := context.Background()
	key := key32(9)
	var plain, sealed []*visit.Visit
	seq := uint64(0)
	mk := func(i int, face bool) *visit.Visit {
		seq++
		v := faceVisit(fmt.Sprint("v", i), t0.Add(time.Duration(i)*time.Minute), fmt.Sprint("id", i%3))
		v.Seq = seq
		v.Embedding = emb(float32(i), 384)
		if !face { // no embedding, so no template
			v.Descriptor = visit.Descriptor{Outcome: visit.NoFace}
			v.IdentityID, v.Distance = "", 0
		}
		return v
	}
	for i := range 20 {
		plain = append(plain, mk(i, i%5 != 4))
	}
	for i := 20; i < 40; i++ {
		sealed = append(sealed, mk(i, i%5 != 4))
	}

	for _, tc := range []struct {
		name string
		key  []byte
		vs   [][]*visit.Visit // written in turn, the key set from the second on
	}{
		{"plain", nil, [][]*visit.Visit{append(slices.Clone(plain), sealed...)}},
		{"encrypted", key, [][]*visit.Visit{nil, append(slices.Clone(plain), sealed...)}},
		{"mixed", key, [][]*visit.Visit{plain, sealed}}, // key set on a plaintext file
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "v1.db")
			for i, vs := range tc.vs {
				var k []byte
				if i > 0 {
					k = tc.key
				}
				writeSchema1(t, path, k, vs)
			}
			all := append(slices.Clone(plain), sealed...)

			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			oldRecs, _ := rawVisits(t, db)
			// A crash after the first batch: the step is half done and the
			// schema still says 1.
			if err := db.Update(func(tx *bolt.Tx) error {
				if err := migrateTemplates(tx); !errors.Is(err, errMigrateMore) {
					return fmt.Errorf("first batch: %v, want more", err)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			// Both record kinds decode meanwhile (inline and moved).
			var a aeadCipher
			if tc.key != nil {
				a, _ = newAEAD(tc.key)
			}
			rs := &Store{aead: a}
			if err := db.View(func(tx *bolt.Tx) error {
				kinds := map[byte]int{}
				for _, want := range all {
					k := tx.Bucket(bVisitIDs).Get([]byte(want.ID))
					val := tx.Bucket(bVisits).Get(k)
					kinds[val[1]&flagTemplate]++
					got, err := rs.decodeVisit(tx, k, val, true)
					if err != nil {
						return err
					}
					if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", *want) {
						return fmt.Errorf("half-migrated visit %s:\n got %+v\nwant %+v", want.ID, got, *want)
					}
				}
				if kinds[0] != 33 || kinds[flagTemplate] != 7 {
					return fmt.Errorf("record kinds %v, want 7 moved", kinds)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			db.Close()
			if v := schemaOf(t, path); v != 1 {
				t.Fatalf("schema %d after a partial step, want 1", v)
			}
			if tc.key != nil {
				// A wrong key fails as before and migrates nothing more.
				if _, err := Open(path, Options{Key: key32(1)}); !errors.Is(err, ErrWrongKey) {
					t.Fatalf("wrong key: %v", err)
				}
				if _, err := Open(path, Options{}); !errors.Is(err, ErrKeyRequired) {
					t.Fatalf("no key: %v", err)
				}
			}

			now := func() time.Time { return t0.Add(time.Hour) }
			s, err := Open(path, Options{Key: tc.key, Now: now})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if st, _ := s.Stats(ctx); st.SchemaVersion != SchemaVersion() || st.Buckets["templates"] != 32 || st.Buckets["visits"] != 40 {
				t.Fatalf("after migration: schema %d, buckets %v", st.SchemaVersion, st.Buckets)
			}
			for _, want := range all {
				got, err := s.Visit(ctx, want.ID)
				if err != nil {
					t.Fatal(err)
				}
				if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", *want) {
					t.Errorf("visit %s:\n got %+v\nwant %+v", want.ID, got, *want)
				}
			}
			newRecs, tmpls := rawVisits(t, s.db)
			if len(newRecs) != 40 || len(tmpls) != 32 {
				t.Fatalf("%d records, %d templates, want 40 and 32", len(newRecs), len(tmpls))
			}
			for k, old := range oldRecs {
				of, oh, oe, _ := splitVisit([]byte(k), old)
				nf, nh, ne, err := splitVisit([]byte(k), newRecs[k])
				if len(oe) == 0 { // faceless: record unchanged, no template
					if !bytes.Equal(newRecs[k], old) || tmpls[k] != nil {
						t.Errorf("faceless record %x changed", k)
					}
					continue
				}
				if err != nil || len(ne) != 0 || nf != flagTemplate || !bytes.Equal(nh, oh) {
					t.Errorf("record %x: flags %d header equal %t inline %d bytes (%v)", k, nf, bytes.Equal(nh, oh), len(ne), err)
				}
				// The template holds the old bytes unchanged (same ciphertext).
				if tm := tmpls[k]; len(tm) == 0 || tm[0] != of&flagEncrypted || !bytes.Equal(tm[1:], oe) {
					t.Errorf("template %x differs from the old inline bytes", k)
				}
			}
			ids, _ := s.Identities(ctx)
			if len(ids) != 3 || ids[0].Count+ids[1].Count+ids[2].Count != 32 {
				t.Errorf("identities %+v", ids)
			}
			members, err := s.Members(ctx)
			if err != nil || len(members) != 32 {
				t.Fatalf("members: %d, %v", len(members), err)
			}
			for _, m := range members {
				if len(m.Embedding) != 384 || m.Embedding[1] != m.Embedding[0]+0.001 {
					t.Errorf("member %s embedding %d-d", m.VisitID, len(m.Embedding))
				}
			}

			// Reopening runs nothing more; new visits go to the new layout.
			s.Close()
			s, err = Open(path, Options{Key: tc.key})
			if err != nil {
				t.Fatal(err)
			}
			commitFace(t, s, "new", t0.Add(time.Hour), "id0")
			if v, err := s.Visit(ctx, "new"); err != nil || len(v.Embedding) != 8 {
				t.Errorf("new visit: %v", err)
			}
		})
	}
}

// checkNoOrphans fails when a template has no visit or a visit flagged with
// a template has none.
func checkNoOrphans(t *testing.T, s *Store) (visits, templates int) {
	t.Helper()
	recs, tmpls := rawVisits(t, s.db)
	for k := range tmpls {
		if _, ok := recs[k]; !ok {
			t.Errorf("orphan template %x", k)
		}
	}
	for k, v := range recs {
		f, _, _, _ := splitVisit([]byte(k), v)
		if _, ok := tmpls[k]; ok != (f&flagTemplate != 0) {
			t.Errorf("visit %x: flags %d, template present %t", k, f, ok)
		}
	}
	return len(recs), len(tmpls)
}

func TestPurgeRemovesTemplates(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: t0}
	s, _ := openTest(t, Options{Key: key32(4), Now: clk.Now, Retention: time.Hour})
	for i := range 30 {
		commitFace(t, s, fmt.Sprint("f", i), t0.Add(time.Duration(i)*time.Minute), fmt.Sprint("id", i%3))
		if _, err := s.CommitVisit(ctx, record.Commit{Visit: &visit.Visit{ID: fmt.Sprint("n", i),
			Time: t0.Add(time.Duration(i)*time.Minute + time.Second), Descriptor: visit.Descriptor{Outcome: visit.NoFace}}}); err != nil {
			t.Fatal(err)
		}
	}
	if v, tm := checkNoOrphans(t, s); v != 60 || tm != 30 {
		t.Fatalf("%d visits, %d templates, want 60 and 30", v, tm)
	}
	clk.t = t0.Add(80 * time.Minute) // cut-off t0+20m
	if n, err := s.PurgeExpired(ctx); err != nil || n != 40 {
		t.Fatalf("purge = %d, %v", n, err)
	}
	if v, tm := checkNoOrphans(t, s); v != 20 || tm != 10 {
		t.Errorf("after purge: %d visits, %d templates, want 20 and 10", v, tm)
	}
	if n, err := s.PurgeIdentity(ctx, "id1"); err != nil || n != 3 {
		t.Fatalf("purge identity = %d, %v", n, err)
	}
	if v, tm := checkNoOrphans(t, s); v != 17 || tm != 7 {
		t.Errorf("after purge identity: %d visits, %d templates, want 17 and 7", v, tm)
	}
	// Relabels rewrite the record only; the template stays readable.
	if _, err := s.CommitVisit(ctx, record.Commit{Identities: []record.Identity{{ID: "idX"}},
		Relabels: []record.Relabel{{VisitID: "f29", IdentityID: "idX"}}}); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Visit(ctx, "f29"); err != nil || v.IdentityID != "idX" || !slices.Equal(v.Embedding, emb(0.5, 8)) {
		t.Errorf("relabelled visit %+v, %v", v, err)
	}
	checkNoOrphans(t, s)
}

func TestMetadataScansDoNotReadTemplates(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t, Options{Key: key32(5)})
	const n = 300
	err := s.db.Update(func(tx *bolt.Tx) error {
		if err := s.putIdentity(tx, record.Identity{ID: "A"}, t0); err != nil {
			return err
		}
		for i := range n {
			v := faceVisit(fmt.Sprint("v", i), t0.Add(time.Duration(i)*time.Minute), "A")
			v.Embedding = emb(float32(i), 384)
			if err := s.putVisit(tx, v); err != nil {
				return err
			}
		}
		return s.refreshIdentity(tx, "A")
	})
	if err != nil {
		t.Fatal(err)
	}
	// Visit records are small; the 1.5 KB templates live in other pages.
	_ = s.db.View(func(tx *bolt.Tx) error {
		vs, ts := tx.Bucket(bVisits).Stats(), tx.Bucket(bTemplates).Stats()
		if vs.LeafInuse > n*600 || ts.LeafInuse < n*(384*4+28) {
			t.Errorf("leaf bytes in use: visits %d, templates %d for %d visits", vs.LeafInuse, ts.LeafInuse, n)
		}
		return nil
	})

	// Without the templates bucket, metadata scans still work; reading an
	// embedding does not.
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bTemplates) }); err != nil {
		t.Fatal(err)
	}
	if got, err := s.VisitsBetween(ctx, t0, t0.Add(n*time.Minute)); err != nil || len(got) != n {
		t.Errorf("VisitsBetween: %d, %v", len(got), err)
	}
	if got, err := s.VisitsSince(ctx, "", t0.Add(-time.Second)); err != nil || len(got) != n {
		t.Errorf("VisitsSince device: %d, %v", len(got), err)
	}
	if got, err := s.VisitsSince(ctx, "A", t0.Add(-time.Second)); err != nil || len(got) != n || got[n-1].Quality != 0.7 {
		t.Errorf("VisitsSince identity: %d, %v", len(got), err)
	}
	if _, err := s.Visit(ctx, "v1"); err == nil {
		t.Error("Visit read an embedding without its template")
	}
}

// BenchmarkMigrateTemplates times the 1 -> 2 migration of a schema-1 file
// holding 10,000 encrypted 384-d visits.
func BenchmarkMigrateTemplates(b *testing.B) {
	const n = 10000
	src := filepath.Join(b.TempDir(), "v1.db")
	vs := make([]*visit.Visit, n)
	for i := range vs {
		vs[i] = faceVisit(fmt.Sprint("v", i), t0.Add(time.Duration(i)*time.Minute), fmt.Sprint("id", i%50))
		vs[i].Seq = uint64(i + 1)
		vs[i].Embedding = emb(float32(i), 384)
	}
	writeSchema1(b, src, key32(2), vs)
	raw, err := os.ReadFile(src)
	if err != nil {
		b.Fatal(err)
	}
	var ms0, ms1 runtime.MemStats
	var after int64
	for b.Loop() {
		b.StopTimer()
		path := filepath.Join(b.TempDir(), "m.db")
		if err := os.WriteFile(path, raw, 0o600); err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&ms0)
		b.StartTimer()
		s, err := Open(path, Options{Key: key32(2)})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		runtime.ReadMemStats(&ms1)
		if st, _ := s.Stats(context.Background()); st.Buckets["templates"] != n {
			b.Fatalf("templates %d", st.Buckets["templates"])
		}
		s.Close()
		after = fileSize(path)
		b.StartTimer()
	}
	b.ReportMetric(float64(ms1.TotalAlloc-ms0.TotalAlloc)/(1<<20), "alloc-MB")
	b.Logf("file %d B before, %d B after migration", len(raw), after)
}
