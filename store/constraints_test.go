package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/store/record"
)

func constraints(t testing.TB, s *Store) map[string]record.Constraint {
	t.Helper()
	cs, err := s.Constraints(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]record.Constraint{}
	for _, c := range cs {
		out[c.ID] = c
	}
	return out
}

// Constraints are stored with the commit, survive a reopen, are replaced
// and deleted by id, and one naming a visit that is not stored fails the
// whole commit.
func TestConstraintsCommitReopen(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t, Options{Now: (&clock{t0.Add(time.Hour)}).Now})
	for i, v := range []string{"v1", "v2", "v3", "v4"} {
		commitFace(t, s, v, t0.Add(time.Duration(i)*time.Minute), "A")
	}
	apart := record.Constraint{ID: "k1", Kind: record.ConstraintApart, Created: t0, A: []string{"v1"}, B: []string{"v2", "v3"}}
	together := record.Constraint{ID: "k2", Kind: record.ConstraintTogether, Created: t0, A: []string{"v3", "v4"}}
	if _, err := s.CommitVisit(ctx, record.Commit{Constraints: []record.Constraint{apart, together}}); err != nil {
		t.Fatal(err)
	}
	// Unknown visit: refused, and the relabel of the same commit is not
	// applied either.
	bad := record.Constraint{ID: "k3", Kind: record.ConstraintApart, A: []string{"v1"}, B: []string{"nope"}}
	_, err := s.CommitVisit(ctx, record.Commit{Relabels: []record.Relabel{{VisitID: "v4", IdentityID: "B"}},
		Identities: []record.Identity{{ID: "B", Status: "pending"}}, Constraints: []record.Constraint{bad}})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("constraint naming an unknown visit: %v, want ErrNotFound", err)
	}
	if v, _ := s.Visit(ctx, "v4"); v.IdentityID != "A" {
		t.Errorf("failed commit moved v4 to %q", v.IdentityID)
	}
	for _, c := range []record.Constraint{
		{ID: "k4", Kind: record.ConstraintApart, A: []string{"v1"}},
		{ID: "k5", Kind: record.ConstraintTogether, A: []string{"v1"}},
		{ID: "k6", Kind: record.ConstraintApart, A: []string{"v1"}, B: []string{"v1"}},
		{ID: "k7", Kind: "maybe", A: []string{"v1", "v2"}},
	} {
		if _, err := s.CommitVisit(ctx, record.Commit{Constraints: []record.Constraint{c}}); err == nil {
			t.Errorf("malformed constraint %+v stored", c)
		}
	}
	s.Close()
	s, err = Open(path, Options{Now: (&clock{t0.Add(time.Hour)}).Now})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := constraints(t, s)
	if len(got) != 2 || !reflect.DeepEqual(got["k1"].B, apart.B) || !reflect.DeepEqual(got["k2"].A, together.A) || !got["k1"].Created.Equal(t0) {
		t.Fatalf("after reopen: %+v", got)
	}
	apart.B = []string{"v2"}
	if _, err := s.CommitVisit(ctx, record.Commit{Constraints: []record.Constraint{apart}, DeleteConstraints: []string{"k2"}}); err != nil {
		t.Fatal(err)
	}
	got = constraints(t, s)
	if len(got) != 1 || !reflect.DeepEqual(got["k1"].B, []string{"v2"}) {
		t.Fatalf("after replace and delete: %+v", got)
	}
}

// Retention and purge_identity remove the visits they delete from the
// constraints, and drop the constraints left constraining nothing; db
// check finds the file sound after each.
func TestConstraintsPrunedWithVisits(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t0}
	s, path := openTest(t, Options{Now: clk.Now, Retention: 24 * time.Hour})
	commitFace(t, s, "old1", t0, "A")
	commitFace(t, s, "old2", t0.Add(time.Minute), "B")
	commitFace(t, s, "new1", t0.Add(48*time.Hour), "A")
	commitFace(t, s, "new2", t0.Add(49*time.Hour), "B")
	commitFace(t, s, "new3", t0.Add(50*time.Hour), "C")
	cs := []record.Constraint{
		// Loses old1: still apart (new1 | new2).
		{ID: "shrinks", Kind: record.ConstraintApart, A: []string{"old1", "new1"}, B: []string{"new2"}},
		// Loses its only A visit: gone.
		{ID: "emptied", Kind: record.ConstraintApart, A: []string{"old2"}, B: []string{"new1"}},
		// Loses one of two: together with one visit constrains nothing.
		{ID: "single", Kind: record.ConstraintTogether, A: []string{"old1", "new2"}},
		// Untouched by retention; purge_identity C takes new3.
		{ID: "purged", Kind: record.ConstraintApart, A: []string{"new3"}, B: []string{"new1", "new2"}},
		// A merge's: loses old2 from A and from its moved visits.
		{ID: "merged", Kind: record.ConstraintTogether, A: []string{"new1", "new2", "old2"}, Moved: []string{"new2", "old2"}},
	}
	for _, bad := range []record.Constraint{
		{ID: "stray", Kind: record.ConstraintTogether, A: []string{"new1", "new2"}, Moved: []string{"new3"}},
		{ID: "twice", Kind: record.ConstraintTogether, A: []string{"new1", "new2"}, Moved: []string{"new1", "new1"}},
		{ID: "apart", Kind: record.ConstraintApart, A: []string{"new1"}, B: []string{"new2"}, Moved: []string{"new1"}},
	} {
		if _, err := s.CommitVisit(ctx, record.Commit{Constraints: []record.Constraint{bad}}); err == nil {
			t.Errorf("constraint %+v committed", bad)
		}
	}
	if _, err := s.CommitVisit(ctx, record.Commit{Constraints: cs}); err != nil {
		t.Fatal(err)
	}
	clk.t = t0.Add(50 * time.Hour)
	n, err := s.PurgeExpired(ctx)
	if err != nil || n != 2 {
		t.Fatalf("purge: %d, %v", n, err)
	}
	got := constraints(t, s)
	if len(got) != 3 || !reflect.DeepEqual(got["shrinks"].A, []string{"new1"}) || got["purged"].ID == "" ||
		!reflect.DeepEqual(got["merged"].A, []string{"new1", "new2"}) || !reflect.DeepEqual(got["merged"].Moved, []string{"new2"}) {
		t.Fatalf("after retention: %+v", got)
	}
	s = checkOK(t, s, path)
	if _, err := s.PurgeIdentity(ctx, "C"); err != nil {
		t.Fatal(err)
	}
	got = constraints(t, s)
	if len(got) != 2 || got["shrinks"].ID == "" || got["merged"].ID == "" {
		t.Fatalf("after purge_identity: %+v", got)
	}
	checkOK(t, s, path)
}

// checkOK closes s, checks its file and opens it again.
func checkOK(t *testing.T, s *Store, path string) *Store {
	t.Helper()
	opts := s.opts
	s.Close()
	rep, err := CheckFile(context.Background(), path, CheckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("db check: %v", rep.Problems)
	}
	if rep.Records[string(bConstraints)] == 0 {
		t.Errorf("db check counted no constraint: %v", rep.Records)
	}
	s2, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s2.Close() })
	return s2
}

// db check reports a constraint naming a visit that is not stored; salvage
// keeps the constraints, without the visits it could not keep; export
// writes them as "constraint" lines.
func TestConstraintsCheckSalvageExport(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t, Options{Now: (&clock{t0}).Now})
	commitFace(t, s, "v1", t0, "A")
	commitFace(t, s, "v2", t0.Add(time.Minute), "B")
	commitFace(t, s, "v3", t0.Add(2*time.Minute), "B")
	c := record.Constraint{ID: "k1", Kind: record.ConstraintApart, Created: t0, A: []string{"v1"}, B: []string{"v2", "v3"}}
	if _, err := s.CommitVisit(ctx, record.Commit{Constraints: []record.Constraint{c}}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := s.Export(ctx, &out, ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `{"type":"constraint","id":"k1","kind":"apart"`) {
		t.Errorf("export has no constraint line:\n%s", out.String())
	}
	s.Close()

	// A constraint naming a visit that is not stored (written behind the
	// store's back).
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	stray := record.Constraint{ID: "k2", Kind: record.ConstraintApart, A: []string{"v1"}, B: []string{"ghost"}}
	j, _ := json.Marshal(stray)
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bConstraints).Put([]byte("k2"), j) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	rep, err := CheckFile(ctx, path, CheckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || !strings.Contains(strings.Join(rep.Problems, "\n"), "constraint k2: names visit ghost") {
		t.Fatalf("db check problems %v, want the stray visit", rep.Problems)
	}

	dst := filepath.Join(t.TempDir(), "salvaged.db")
	srep, err := Salvage(ctx, path, dst, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if srep.Kept[string(bConstraints)] != 1 || srep.Skipped[string(bConstraints)] != 1 {
		t.Errorf("salvage kept %v skipped %v constraints", srep.Kept, srep.Skipped)
	}
	s2, err := Open(dst, Options{Now: (&clock{t0}).Now})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	got := constraints(t, s2)
	if len(got) != 1 || !reflect.DeepEqual(got["k1"].B, c.B) {
		t.Fatalf("salvaged constraints %+v", got)
	}
}

// A schema-2 file (before constraints) is migrated by a writing open, and
// read by a read-only one (stats, export, constraints) without the bucket.
func TestConstraintsSchemaMigration(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t, Options{})
	commitFace(t, s, "v1", t0, "A")
	s.Close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bConstraints); err != nil {
			return err
		}
		return putU64(tx.Bucket(bMeta), kSchema, 2)
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	ro, err := Open(path, Options{ReadOnly: true, NoCreate: true})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := ro.Stats(ctx); err != nil || st.SchemaVersion != 2 {
		t.Errorf("read-only stats of schema 2: %+v, %v", st, err)
	}
	if cs, err := ro.Constraints(ctx); err != nil || len(cs) != 0 {
		t.Errorf("read-only constraints of schema 2: %v, %v", cs, err)
	}
	if err := ro.Export(ctx, &bytes.Buffer{}, ExportOptions{}); err != nil {
		t.Errorf("read-only export of schema 2: %v", err)
	}
	ro.Close()

	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if st, err := s.Stats(ctx); err != nil || st.SchemaVersion != 3 || SchemaVersion() != 3 || st.Buckets[string(bConstraints)] != 0 {
		t.Fatalf("after migration: %+v, %v (build %d), want schema 3 with an empty constraints bucket", st, err, SchemaVersion())
	}
	commitFace(t, s, "v2", t0.Add(time.Minute), "B")
	if _, err := s.CommitVisit(ctx, record.Commit{Constraints: []record.Constraint{
		{ID: "k1", Kind: record.ConstraintApart, A: []string{"v1"}, B: []string{"v2"}}}}); err != nil {
		t.Fatalf("constraint after migration: %v", err)
	}
}

// writeSchema2 writes a store as the schema-2 build did: its migrations
// (0 -> 1 -> 2) and no constraints bucket, which it did not know.
func writeSchema2(t *testing.T, path string, fill func(s *Store)) {
	t.Helper()
	all := migrations
	migrations = migrations[:2]
	s, err := Open(path, Options{Now: (&clock{t0.Add(24 * time.Hour)}).Now})
	if err == nil {
		fill(s)
		err = s.Close()
	}
	migrations = all
	if err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bConstraints) }); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if v := schemaOf(t, path); v != 2 {
		t.Fatalf("schema-2 file has schema %d", v)
	}
}

// A damaged schema-2 store (damaged before the upgrade to schema 3, or by
// the crash of the first start after it) cannot be opened to migrate it:
// salvage reads it and writes a schema-3 store.
func TestSalvageDamagedSchema2(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "agent.db")
	const n = 150
	writeSchema2(t, path, func(s *Store) {
		for i := range n {
			commitFace(t, s, fmt.Sprint("v", i), t0.Add(time.Duration(i)*time.Minute), fmt.Sprint("id", i%9))
		}
	})
	// Damage one leaf page of the visits (its page flags).
	bf, _, err := openBoltFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	leaves := map[uint64]int{}
	w := &treeWalk{bf: bf, recordAt: func(b string, _, _ []byte, p []uint64, _ int64) {
		if b == string(bVisits) {
			leaves[p[len(p)-1]]++
		}
	}}
	w.walk()
	pageSize := bf.pageSize
	bf.Close()
	if len(leaves) < 2 {
		t.Fatalf("visits on %d leaf pages, want several", len(leaves))
	}
	var leaf uint64
	for id := range leaves {
		leaf = max(leaf, id)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xff, 0xff}, int64(leaf)*int64(pageSize)+8); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if s, err := Open(path, Options{}); !errors.Is(err, ErrDamaged) {
		if err == nil {
			s.Close()
		}
		t.Fatalf("open of the damaged schema-2 store: %v, want ErrDamaged", err)
	}

	dst := filepath.Join(t.TempDir(), "salvaged.db")
	rep, err := Salvage(ctx, path, dst, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if want := n - leaves[leaf]; rep.Kept[string(bVisits)] != want {
		t.Errorf("salvage kept %d visits, want %d (all but those of the damaged page): %+v", rep.Kept[string(bVisits)], want, rep)
	}
	if !strings.Contains(strings.Join(rep.Warnings, "\n"), "schema version 2: the new store is written as schema 3") {
		t.Errorf("salvage warnings %q do not say the schema was upgraded", rep.Warnings)
	}
	if v := schemaOf(t, path); v != 2 {
		t.Errorf("salvage changed the source's schema to %d", v)
	}
	chk, err := CheckFile(ctx, dst, CheckOptions{BoltCheck: true})
	if err != nil || !chk.OK() || len(chk.Warnings) > 0 {
		t.Fatalf("salvaged store: %v %v %v", err, chk.Problems, chk.Warnings)
	}
	s, err := Open(dst, Options{NoCreate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, err := s.Stats(ctx)
	if err != nil || st.SchemaVersion != SchemaVersion() || st.Buckets[string(bConstraints)] != 0 {
		t.Fatalf("salvaged store: %+v, %v, want schema %d with an empty constraints bucket", st, err, SchemaVersion())
	}
	if cs, err := s.Constraints(ctx); err != nil || len(cs) != 0 {
		t.Fatalf("salvaged constraints: %v %v", cs, err)
	}
	if _, err := s.CommitVisit(ctx, record.Commit{Visit: faceVisit("after", t0.Add(time.Hour), "id1"),
		Constraints: []record.Constraint{{ID: "k1", Kind: record.ConstraintTogether, Created: t0, A: []string{"v1", "after"}}}}); err != nil {
		t.Fatalf("a correction on the salvaged store: %v", err)
	}
}
