package dbcmd

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/store"
	"github.com/periocular/atm-agent/store/record"
)

// runDB runs `atm-agent db ARGS` and fails the test when it has not
// returned within a few seconds (it would block for good).
func runDB(t *testing.T, args ...string) (string, error) {
	t.Helper()
	type res struct {
		out string
		err error
	}
	done := make(chan res, 1)
	go func() {
		var out bytes.Buffer
		env := &cli.Env{Prog: "atm-agent", Stdout: &out, Stderr: &out, Log: slog.New(slog.DiscardHandler)}
		err := Command().Exec(context.Background(), env, args)
		done <- res{out.String(), err}
	}()
	select {
	case r := <-done:
		return r.out, r.err
	case <-time.After(5 * time.Second):
		t.Fatalf("db %s: still running after 5s", strings.Join(args, " "))
		return "", nil
	}
}

// makeStore writes a store with two visits of each identity.
func makeStore(t *testing.T, path string, emb func(i int) []float32) {
	t.Helper()
	st, err := store.Open(path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now()
	for i, id := range []string{"p-a", "p-b", "p-a", "p-b"} {
		_, err := st.CommitVisit(context.Background(), record.Commit{
			Identities: []record.Identity{{ID: id, Status: "pending"}},
			Visit: &visit.Visit{Time: now.Add(time.Duration(i) * time.Second), IdentityID: id,
				Descriptor: visit.Descriptor{Outcome: visit.FaceFound, Embedding: emb(i)}}})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// `db` commands given a named pipe (--db or store.path) blocked for good,
// deaf to signals, opening it; they refuse it at once.
func TestDBRefusesANamedPipe(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "f.db")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"stats"}, {"check"}, {"export"}, {"compact"}, {"purge", "--identity", "p-a"},
		{"salvage", "-o", filepath.Join(t.TempDir(), "new.db")},
	} {
		_, err := runDB(t, append(args, "--db", fifo)...)
		if err == nil || !strings.Contains(err.Error(), "not a regular file but a named pipe (FIFO)") {
			t.Errorf("db %s on a FIFO: %v, want a refusal", args[0], err)
		}
	}
}

// `db purge` and `db compact` through a symbolic link compact the file it
// points to, in place: the link stays a link, and the purged identity's
// templates are gone from the real file's bytes.
func TestDBPurgeThroughSymlink(t *testing.T) {
	realDir, linkDir := t.TempDir(), t.TempDir()
	real := filepath.Join(realDir, "agent.db")
	link := filepath.Join(linkDir, "link.db")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	embs := map[int][]float32{}
	makeStore(t, real, func(i int) []float32 {
		e := make([]float32, 64)
		for j := range e {
			e[j] = float32(1000*(i+1)+j) + 0.5
		}
		embs[i] = e
		return e
	})
	raw := func(e []float32) []byte {
		b := make([]byte, 4*len(e))
		for i, f := range e {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
		}
		return b
	}
	has := func(e []float32) bool {
		b, err := os.ReadFile(real)
		if err != nil {
			t.Fatal(err)
		}
		return bytes.Contains(b, raw(e))
	}
	if !has(embs[0]) {
		t.Fatal("template not in the file before the purge (test is wrong)")
	}
	if out, err := runDB(t, "purge", "--identity", "p-a", "--db", link); err != nil {
		t.Fatalf("purge: %v %s", err, out)
	}
	if out, err := runDB(t, "compact", "--db", link); err != nil {
		t.Fatalf("compact: %v %s", err, out)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the link was replaced: %v %v", fi.Mode(), err)
	}
	if has(embs[0]) || has(embs[2]) {
		t.Fatal("the purged identity's templates are still in the real file")
	}
	if !has(embs[1]) {
		t.Fatal("the kept identity's template is missing")
	}
	out, err := runDB(t, "export", "--db", link)
	if err != nil || strings.Count(out, `"type":"visit"`) != 2 || strings.Contains(out, "p-a") {
		t.Fatalf("export after the purge (%v): %s", err, out)
	}
}

// A schema version >= 2^63 is "too new", not a negative number.
func TestDBSchemaVersionBeyondInt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.db")
	makeStore(t, path, func(int) []float32 { return []float32{1, 0} })
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], 1<<63)
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), b[:])
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"stats", "export", "compact"} {
		out, err := runDB(t, cmd, "--db", path)
		if err == nil || !strings.Contains(err.Error(), "schema version too new") || !strings.Contains(err.Error(), "9223372036854775808") {
			t.Errorf("db %s: %v, want schema version too new\n%s", cmd, err, out)
		}
	}
}
