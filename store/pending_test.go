package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/store/record"
)

func randKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

const (
	pendingEnvDB  = "ATM_STORE_PENDING_DB"
	pendingEnvOp  = "ATM_STORE_PENDING_OP"
	pendingEnvKey = "ATM_STORE_PENDING_KEY"
	pendingEnvNew = "ATM_STORE_PENDING_NEWKEY"
)

// TestPendingCompactionChild is the subprocess of
// TestRekeyKilledBeforeCompaction and TestEncryptKilledBeforeCompaction:
// it runs the rekey or the encrypt and kills itself (SIGKILL, as kill -9)
// right after the commit, before the compaction.
func TestPendingCompactionChild(t *testing.T) {
	path := os.Getenv(pendingEnvDB)
	if path == "" {
		t.Skip("subprocess of TestRekeyKilledBeforeCompaction / TestEncryptKilledBeforeCompaction")
	}
	key, _ := hex.DecodeString(os.Getenv(pendingEnvKey))
	newKey, _ := hex.DecodeString(os.Getenv(pendingEnvNew))
	op := os.Getenv(pendingEnvOp)
	s, err := Open(path, Options{Key: key, NoCreate: true})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	s.testHook = func(stage string) error {
		if stage == op+" committed" {
			p, _ := os.FindProcess(os.Getpid())
			_ = p.Kill()
			time.Sleep(time.Minute)
		}
		return nil
	}
	switch op {
	case "rekey":
		_, err = s.Rekey(context.Background(), newKey)
	case "encrypt":
		_, err = s.Encrypt(context.Background())
	}
	fmt.Println("error: not killed:", err)
	os.Exit(2)
}

// killedDuring runs op in a subprocess killed between its commit and its
// compaction.
func killedDuring(t *testing.T, path, op string, key, newKey []byte) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestPendingCompactionChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), pendingEnvDB+"="+path, pendingEnvOp+"="+op,
		pendingEnvKey+"="+hex.EncodeToString(key), pendingEnvNew+"="+hex.EncodeToString(newKey))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != -1 { // -1: ended by a signal
		t.Fatalf("child %s: %v (want killed by a signal): %s", op, err, out)
	}
	if _, err := os.Stat(path + ".compact.tmp"); err == nil {
		t.Fatal("the child started compacting: the kill was meant to come before")
	}
}

// seedTemplates commits n visits with templates and compacts, so that
// each template is in the file once, in a live page.
func seedTemplates(t *testing.T, path string, key []byte, n int) {
	t.Helper()
	s, err := Open(path, Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range n {
		v := faceVisit(fmt.Sprint("v", i), t0.Add(timeMinute(i)), "id1")
		v.Embedding = emb(float32(500+i), 128)
		if _, err := s.CommitVisit(context.Background(), record.Commit{Visit: v, Identities: []record.Identity{{ID: "id1", Status: "pending"}}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Compact(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
}

// rawTemplates returns the stored template values (flag byte dropped):
// the ciphertexts under the store's key, or the plaintext embeddings.
func rawTemplates(t *testing.T, path string) [][]byte {
	t.Helper()
	db, err := bolt.Open(path, 0, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var out [][]byte
	if err := db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bTemplates).ForEach(func(_, v []byte) error {
			out = append(out, bytes.Clone(v[1:]))
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func countInFile(t *testing.T, path string, needles [][]byte) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, x := range needles {
		if bytes.Contains(b, x) {
			n++
		}
	}
	return n
}

// afterKill checks the state a kill between commit and compaction left,
// and that the next writing open scrubs it: before it, `db check` (a
// warning and the field) and `db stats` report the pending compaction and
// every leftover is in the file's bytes; after it none is, the flag is
// gone, and every template reads back with key.
func afterKill(t *testing.T, path, reason string, key []byte, leftovers [][]byte, n int) {
	t.Helper()
	ctx := context.Background()
	if got := countInFile(t, path, leftovers); got != len(leftovers) {
		t.Fatalf("after the kill %d of %d leftovers are in the file; the test wants them all there (the crash it simulates)", got, len(leftovers))
	}
	rep, err := CheckFile(ctx, path, CheckOptions{Key: key, BoltCheck: true})
	if err != nil || !rep.OK() || !rep.TemplatesVerified {
		t.Fatalf("check after the kill: %v %+v", err, rep)
	}
	if rep.CompactionPending == nil || rep.CompactionPending.Reason != reason || rep.CompactionPending.Since.IsZero() ||
		len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "compaction pending") || !strings.Contains(rep.Warnings[0], "db "+reason) {
		t.Fatalf("check after the kill: pending %+v, warnings %q", rep.CompactionPending, rep.Warnings)
	}
	ro, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	st, err := ro.Stats(ctx)
	ro.Close()
	if err != nil || st.CompactionPending == nil || st.CompactionPending.Reason != reason || st.TemplatesPlain != 0 || st.TemplatesEncrypted != n {
		t.Fatalf("stats after the kill: %v %+v", err, st)
	}
	if got := countInFile(t, path, leftovers); got != len(leftovers) {
		t.Fatal("a read-only open (db stats) changed the file")
	}

	var logs bytes.Buffer
	s, err := Open(path, Options{Key: key, NoCreate: true, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("open after the kill: %v", err)
	}
	if p := s.CompactedAtOpen(); p == nil || p.Reason != reason {
		t.Fatalf("open did not report the compaction it finished: %+v", p)
	}
	if !strings.Contains(logs.String(), "compacting the file now") || !strings.Contains(logs.String(), "pending compaction finished") {
		t.Fatalf("open logged: %s", logs.String())
	}
	if p, err := s.PendingCompaction(ctx); err != nil || p != nil {
		t.Fatalf("still pending after the open: %+v %v", p, err)
	}
	for i := range n {
		got, err := s.Visit(ctx, fmt.Sprint("v", i))
		if err != nil || len(got.Embedding) != 128 || got.Embedding[0] != float32(500+i) {
			t.Fatalf("visit v%d after the open: %v", i, err)
		}
	}
	s.Close()
	if got := countInFile(t, path, leftovers); got != 0 {
		t.Fatalf("%d of %d leftovers still in the file after the open compacted it", got, len(leftovers))
	}
	rep, err = CheckFile(ctx, path, CheckOptions{Key: key, BoltCheck: true})
	if err != nil || !rep.OK() || rep.CompactionPending != nil || len(rep.Warnings) != 0 {
		t.Fatalf("check after the open: %v %+v", err, rep)
	}
	s, err = Open(path, Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	if s.CompactedAtOpen() != nil {
		t.Fatal("a second open compacted again")
	}
	s.Close()
}

// TestRekeyKilledBeforeCompaction: a kill -9 after the rekey committed and
// before its compaction left every template sealed with the old key in the
// file's free pages, and nothing said so (hostile-cmd F1). Now the rekey
// commit records the compaction as pending: `db check` and `db stats`
// report it, and the next writing open compacts first.
func TestRekeyKilledBeforeCompaction(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a subprocess")
	}
	oldKey, newKey := randKey(t), randKey(t)
	path := filepath.Join(t.TempDir(), "agent.db")
	seedTemplates(t, path, oldKey, 40)
	sealedOld := rawTemplates(t, path)
	if len(sealedOld) != 40 || countInFile(t, path, sealedOld) != 40 {
		t.Fatal("old ciphertexts not in the file before the rekey (test is wrong)")
	}
	killedDuring(t, path, "rekey", oldKey, newKey)
	if _, err := Open(path, Options{Key: oldKey, ReadOnly: true}); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("the old key after the killed rekey: %v; the rekey should have committed", err)
	}
	afterKill(t, path, CompactAfterRekey, newKey, sealedOld, 40)
}

// TestEncryptKilledBeforeCompaction: the same for `db encrypt`: the
// plaintext templates it sealed stay in free pages until the compaction.
func TestEncryptKilledBeforeCompaction(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a subprocess")
	}
	key := randKey(t)
	path := filepath.Join(t.TempDir(), "agent.db")
	seedTemplates(t, path, nil, 30)
	plain := rawTemplates(t, path)
	if len(plain) != 30 || !bytes.Equal(plain[3], templateBytes(emb(503, 128))) || countInFile(t, path, plain) != 30 {
		t.Fatal("plaintext templates not in the file before the encrypt (test is wrong)")
	}
	killedDuring(t, path, "encrypt", key, nil)
	afterKill(t, path, CompactAfterEncrypt, key, plain, 30)
}

// A failed compaction after the commit (here a hook, as a full disk would)
// leaves the flag; a compacted copy elsewhere does not carry it (it has no
// free pages of the old file) while the store keeps it; the in-place
// compaction clears it in the same rename that replaces the file.
func TestPendingCompactionFlagFollowsTheFile(t *testing.T) {
	ctx := context.Background()
	oldKey, newKey := randKey(t), randKey(t)
	path := filepath.Join(t.TempDir(), "agent.db")
	seedTemplates(t, path, oldKey, 10)
	sealedOld := rawTemplates(t, path)
	s, err := Open(path, Options{Key: oldKey})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	stop := errors.New("stopped before the compaction")
	s.testHook = func(stage string) error {
		if stage == "rekey committed" {
			return stop
		}
		return nil
	}
	if _, err := s.Rekey(ctx, newKey); !errors.Is(err, stop) {
		t.Fatalf("rekey: %v", err)
	}
	s.testHook = nil
	if p, err := s.PendingCompaction(ctx); err != nil || p == nil || p.Reason != CompactAfterRekey {
		t.Fatalf("pending after the stopped rekey: %+v %v", p, err)
	}
	if countInFile(t, path, sealedOld) != len(sealedOld) {
		t.Fatal("old ciphertexts not left in the file (test is wrong)")
	}
	cp := filepath.Join(t.TempDir(), "copy.db")
	if err := s.Compact(ctx, cp); err != nil {
		t.Fatal(err)
	}
	if rep, err := CheckFile(ctx, cp, CheckOptions{Key: newKey}); err != nil || !rep.OK() || rep.CompactionPending != nil || countInFile(t, cp, sealedOld) != 0 {
		t.Fatalf("compacted copy: %v %+v", err, rep)
	}
	if p, _ := s.PendingCompaction(ctx); p == nil {
		t.Fatal("compacting into a copy cleared the store's own flag")
	}
	if err := s.Compact(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if p, _ := s.PendingCompaction(ctx); p != nil || countInFile(t, path, sealedOld) != 0 {
		t.Fatalf("after the in-place compaction: pending %+v", p)
	}
}

// New keys that did not come from a random source are refused (hostile-cmd
// F9): all zero, or fewer than 16 distinct byte values; `head -c 32
// /dev/urandom` passes.
func TestCheckNewKey(t *testing.T) {
	fifteen := make([]byte, 32)
	sixteen := make([]byte, 32)
	for i := range 32 {
		fifteen[i], sixteen[i] = byte(i%15), byte(i%16)
	}
	for _, tc := range []struct {
		name string
		key  []byte
		want string // "" accepted
	}{
		{"zero", make([]byte, 32), "32 zero bytes"},
		{"one value", bytes.Repeat([]byte{7}, 32), "only 1 distinct"},
		{"15 values", fifteen, "only 15 distinct"},
		{"16 values", sixteen, ""},
		{"random", randKey(t), ""},
		{"short", make([]byte, 31), "want 32 bytes"},
	} {
		err := CheckNewKey(tc.key)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: refused: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		case tc.want != "" && tc.name != "short" && (!errors.Is(err, ErrWeakKey) || !strings.Contains(err.Error(), "/dev/urandom")):
			t.Errorf("%s: %v: want ErrWeakKey and how to make a key", tc.name, err)
		}
	}
}

// Rekey refuses a weak new key and the current key (also a copy of it),
// leaving the store as it was: under its key, nothing pending.
func TestRekeyRefusesWeakOrSameKey(t *testing.T) {
	ctx := context.Background()
	key := randKey(t)
	path := filepath.Join(t.TempDir(), "agent.db")
	seedTemplates(t, path, key, 3)
	before := rawTemplates(t, path)
	s, err := Open(path, Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		newKey []byte
		is     error
	}{
		{"zero", make([]byte, 32), ErrWeakKey},
		{"repeated byte", bytes.Repeat([]byte{8}, 32), ErrWeakKey},
		{"the current key", key, ErrSameKey},
		{"a copy of the current key", bytes.Clone(key), ErrSameKey},
	} {
		n, err := s.Rekey(ctx, tc.newKey)
		if n != 0 || !errors.Is(err, tc.is) || !strings.Contains(err.Error(), "unchanged") {
			t.Errorf("rekey to %s: %d, %v; want %v", tc.name, n, err, tc.is)
		}
	}
	if p, err := s.PendingCompaction(ctx); err != nil || p != nil {
		t.Fatalf("a refused rekey left a pending compaction: %+v %v", p, err)
	}
	s.Close()
	if after := rawTemplates(t, path); len(after) != 3 || !bytes.Equal(after[0], before[0]) {
		t.Fatal("a refused rekey changed the templates")
	}
	s, err = Open(path, Options{Key: key, ReadOnly: true})
	if err != nil {
		t.Fatalf("the key after the refused rekeys: %v", err)
	}
	s.Close()
}

// A store under a weak key still opens (so that it can be rekeyed), with a
// warning in the log.
func TestOpenWarnsAboutAWeakKey(t *testing.T) {
	var logs bytes.Buffer
	_, _ = openTest(t, Options{Key: make([]byte, 32), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if !strings.Contains(logs.String(), "store key does not look random") {
		t.Fatalf("no warning for an all-zero key: %s", logs.String())
	}
	logs.Reset()
	_, _ = openTest(t, Options{Key: randKey(t), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if strings.Contains(logs.String(), "does not look random") {
		t.Fatalf("warning for a random key: %s", logs.String())
	}
}

// A purge has the same gap: its deletion commits, then the compaction that
// scrubs the deleted templates from free pages runs. A stop in between (here
// the deletion without the compaction, then a close) left a purged
// person's templates in the file with nothing owed on record; now the
// deletion records the compaction as pending and the next writing open
// does it.
func TestPurgeStoppedBeforeCompaction(t *testing.T) {
	ctx := context.Background()
	key := randKey(t)
	path := filepath.Join(t.TempDir(), "agent.db")
	seedTemplates(t, path, key, 20)
	sealed := rawTemplates(t, path)
	s, err := Open(path, Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.purgeIdentity(ctx, "id1"); err != nil || n != 20 {
		t.Fatalf("purge: %d %v", n, err)
	}
	s.Close()
	if got := countInFile(t, path, sealed); got == 0 {
		t.Fatal("no purged template left in the file: the test simulates nothing")
	}
	rep, err := CheckFile(ctx, path, CheckOptions{Key: key})
	if err != nil || rep.CompactionPending == nil || rep.CompactionPending.Reason != CompactAfterPurge {
		t.Fatalf("check after the stopped purge: %v %+v", err, rep)
	}
	s, err = Open(path, Options{Key: key, NoCreate: true})
	if err != nil {
		t.Fatal(err)
	}
	if p := s.CompactedAtOpen(); p == nil || p.Reason != CompactAfterPurge {
		t.Fatalf("open did not finish the purge's compaction: %+v", p)
	}
	s.Close()
	if got := countInFile(t, path, sealed); got != 0 {
		t.Fatalf("%d of %d purged templates still in the file after the open", got, len(sealed))
	}
}
