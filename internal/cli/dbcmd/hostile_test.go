package dbcmd

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/store"
	"github.com/periocular/atm-agent/store/record"
)

func randomKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// keyedStore makes a store with n templates, under key (nil: plaintext),
// and returns its path.
func keyedStore(t *testing.T, key []byte, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.db")
	st, err := store.Open(path, store.Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for i := range n {
		_, err := st.CommitVisit(context.Background(), record.Commit{
			Identities: []record.Identity{{ID: "p-a", Status: "pending"}},
			Visit: &visit.Visit{Time: time.Now().Add(time.Duration(i) * time.Second), IdentityID: "p-a",
				Descriptor: visit.Descriptor{Outcome: visit.FaceFound, Embedding: []float32{1, float32(i)}}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	return path
}

func writeKey(t *testing.T, key []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "k.key")
	if err := os.WriteFile(p, key, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func dbMain(args ...string) (string, int) {
	var out bytes.Buffer
	code := cli.Main(context.Background(), "atm-agent", map[string]cli.Command{"db": Command()}, append([]string{"db"}, args...), &out, &out)
	return out.String(), code
}

// A rekey or encrypt killed after its commit and before its compaction
// leaves a compaction pending in meta (hostile-cmd F1; the crash itself is
// simulated in store's TestRekeyKilledBeforeCompaction): `db check` warns
// (exit 0) and says it in --json, `db stats` has the field, and the next
// writing command finishes it first and says so on stdout.
func TestDBPendingCompaction(t *testing.T) {
	key := randomKey(t)
	keyFile := writeKey(t, key)
	path := keyedStore(t, key, 5)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("meta")).Put([]byte("compact_pending"), []byte(`{"reason":"rekey","since":"2025-03-01T10:00:00Z"}`))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	out, code := dbMain("check", "--db", path, "--key-file", keyFile)
	if code != 0 || !strings.Contains(out, "warning: compaction pending since 2025-03-01T10:00:00Z (an interrupted `db rekey`)") ||
		!strings.Contains(out, "the key `db rekey` replaced") || !strings.Contains(out, "ok (bbolt check: true)") {
		t.Fatalf("check with a pending compaction: %d %s", code, out)
	}
	out, code = dbMain("check", "--db", path, "--key-file", keyFile, "--json")
	var rep store.CheckReport
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil || rep.CompactionPending == nil || rep.CompactionPending.Reason != "rekey" {
		t.Fatalf("check --json with a pending compaction: %d %v %s", code, err, out)
	}
	out, code = dbMain("stats", "--db", path, "--models-dir", t.TempDir())
	var s store.Stats
	if err := json.Unmarshal([]byte(out), &s); code != 0 || err != nil || s.CompactionPending == nil || s.CompactionPending.Reason != "rekey" {
		t.Fatalf("stats with a pending compaction: %d %v %s", code, err, out)
	}
	// A writing command (purge of an identity that does not exist: it
	// fails, after the open) compacts first and says so.
	out, _ = dbMain("purge", "--db", path, "--key-file", keyFile, "--identity", "nobody")
	if !strings.Contains(out, "finished the compaction an interrupted `db rekey` left pending (since 2025-03-01T10:00:00Z)") {
		t.Fatalf("writing command on a pending compaction: %s", out)
	}
	if out, code = dbMain("check", "--db", path, "--key-file", keyFile); code != 0 || strings.Contains(out, "warning") {
		t.Fatalf("check after the compaction: %d %s", code, out)
	}
	out, _ = dbMain("stats", "--db", path, "--models-dir", t.TempDir())
	if !strings.Contains(out, `"compaction_pending": null`) {
		t.Fatalf("stats after the compaction: %s", out)
	}
	if out, _ = dbMain("compact", "--db", path, "--key-file", keyFile); strings.Contains(out, "finished the compaction") {
		t.Fatalf("a second writing command compacted again: %s", out)
	}
}

// `db export --embeddings yes` to a pipe, a terminal or anything but a
// file warns on stderr that the agent cannot set its permissions
// (hostile-cmd F7), and still exports (exit 0); a file is narrowed and
// gets no such warning.
func TestDBExportTemplatesToAPipeWarns(t *testing.T) {
	path := keyedStore(t, nil, 3)
	export := func(stdout io.Writer) (string, error) {
		var errb bytes.Buffer
		env := &cli.Env{Prog: "atm-agent", Stdout: stdout, Stderr: &errb, Log: slog.New(slog.DiscardHandler)}
		err := Command().Exec(context.Background(), env, []string{"export", "--embeddings", "yes", "--db", path})
		return errb.String(), err
	}
	const warn = "export: warning: --embeddings yes writes biometric templates to standard output"

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte)
	go func() { b, _ := io.ReadAll(r); got <- b }()
	stderr, err := export(w)
	w.Close()
	data := <-got
	r.Close()
	if err != nil || !strings.Contains(stderr, warn+", a named pipe (FIFO),") || !strings.Contains(stderr, "umask 077") {
		t.Fatalf("export to a pipe: %v, stderr %q", err, stderr)
	}
	if strings.Count(string(data), `"embedding":`) != 3 {
		t.Fatalf("export to a pipe wrote: %s", data)
	}

	if tty, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0); err == nil { // a character device, as a terminal is
		stderr, err := export(tty)
		tty.Close()
		if err != nil || !strings.Contains(stderr, warn+", a character device,") {
			t.Fatalf("export to %s: %v, stderr %q", os.DevNull, err, stderr)
		}
	}

	var buf bytes.Buffer
	if stderr, err := export(&buf); err != nil || !strings.Contains(stderr, warn) || !strings.Contains(buf.String(), `"embedding":`) {
		t.Fatalf("export to a writer: %v, stderr %q", err, stderr)
	}

	file := filepath.Join(t.TempDir(), "out.jsonl")
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	stderr, err = export(f)
	f.Close()
	if err != nil || strings.Contains(stderr, "warning") {
		t.Fatalf("export to a 0600 file: %v, stderr %q", err, stderr)
	}
	// Without templates nothing is said.
	var errb bytes.Buffer
	env := &cli.Env{Prog: "atm-agent", Stdout: io.Discard, Stderr: &errb, Log: slog.New(slog.DiscardHandler)}
	if err := Command().Exec(context.Background(), env, []string{"export", "--db", path}); err != nil || errb.Len() != 0 {
		t.Fatalf("export without templates: %v, stderr %q", err, errb.String())
	}
}

// `db rekey` refuses an all-zero new key, one with too few distinct
// bytes, and the current key (the same file or a copy), before opening the
// store: it stays under its key with nothing pending; `db encrypt` refuses
// a weak key before a plaintext store could adopt it (hostile-cmd F9).
func TestDBRekeyRefusesWeakAndSameKeys(t *testing.T) {
	key := randomKey(t)
	keyFile := writeKey(t, key)
	path := keyedStore(t, key, 4)
	before, _ := os.ReadFile(path)
	for _, tc := range []struct {
		name, newKeyFile, want string
	}{
		{"zero", writeKey(t, make([]byte, 32)), "the key is 32 zero bytes"},
		{"one byte value", writeKey(t, bytes.Repeat([]byte{6}, 32)), "only 1 distinct byte values of 32"},
		{"the same file", keyFile, "the new key is the store's current key"},
		{"a copy of the key", writeKey(t, key), "the new key is the store's current key"},
	} {
		out, code := dbMain("rekey", "--db", path, "--key-file", keyFile, "--new-key-file", tc.newKeyFile)
		if code != cli.ExitFailure || !strings.Contains(out, tc.want) || !strings.Contains(out, "head -c 32 /dev/urandom") || !strings.Contains(out, "unchanged") {
			t.Errorf("rekey to %s: %d %s", tc.name, code, out)
		}
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("a refused rekey changed the file")
	}
	if out, code := dbMain("check", "--db", path, "--key-file", keyFile); code != 0 || strings.Contains(out, "warning") {
		t.Fatalf("check after the refused rekeys: %d %s", code, out)
	}
	// A random new key goes through.
	if out, code := dbMain("rekey", "--db", path, "--key-file", keyFile, "--new-key-file", writeKey(t, randomKey(t))); code != 0 || !strings.Contains(out, "4 templates encrypted") {
		t.Fatalf("rekey to a random key: %d %s", code, out)
	}

	plain := keyedStore(t, nil, 2)
	for _, k := range [][]byte{make([]byte, 32), bytes.Repeat([]byte{9}, 32)} {
		out, code := dbMain("encrypt", "--db", plain, "--key-file", writeKey(t, k))
		if code != cli.ExitFailure || !strings.Contains(out, "not a random key") || !strings.Contains(out, "db rekey") {
			t.Fatalf("encrypt with a weak key: %d %s", code, out)
		}
	}
	if out, _ := dbMain("stats", "--db", plain, "--models-dir", t.TempDir()); !strings.Contains(out, `"key_check": false`) || !strings.Contains(out, `"templates_plain": 2`) {
		t.Fatalf("a refused encrypt gave the store a key: %s", out)
	}
	if out, code := dbMain("encrypt", "--db", plain, "--key-file", writeKey(t, randomKey(t))); code != 0 || !strings.Contains(out, "2 templates encrypted") {
		t.Fatalf("encrypt with a random key: %d %s", code, out)
	}
}
