package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/internal/fileops"
	"github.com/periocular/atm-agent/store/record"
)

// templateBytes is how a plaintext template's embedding lies in the file.
func templateBytes(e []float32) []byte {
	b := make([]byte, 4*len(e))
	for i, f := range e {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
	return b
}

func fileHas(t *testing.T, path string, needle []byte) bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Contains(b, needle)
}

// A purged identity's templates are gone from the file's bytes, free pages
// included (bbolt copies pages on write: without the compaction that
// follows the purge, the old pages keep them).
func TestPurgeIdentityScrubsTheFile(t *testing.T) {
	s, path := openTest(t, Options{})
	ctx := context.Background()
	var gone, kept [][]byte
	for i := range 40 {
		v := faceVisit(fmt.Sprint("v", i), t0.Add(timeMinute(i)), fmt.Sprint("id", i%2))
		v.Embedding = emb(float32(100+i), 128)
		if _, err := s.CommitVisit(ctx, record.Commit{Visit: v, Identities: []record.Identity{{ID: v.IdentityID, Status: "pending"}}}); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			gone = append(gone, templateBytes(v.Embedding))
		} else {
			kept = append(kept, templateBytes(v.Embedding))
		}
	}
	if !fileHas(t, path, gone[0]) {
		t.Fatal("template bytes not found in the file before the purge (test is wrong)")
	}
	if n, err := s.PurgeIdentity(ctx, "id0"); err != nil || n != 20 {
		t.Fatalf("purge: %d, %v", n, err)
	}
	for i, g := range gone {
		if fileHas(t, path, g) {
			t.Fatalf("template %d of the purged identity still in the file's bytes", i)
		}
	}
	if !fileHas(t, path, kept[0]) {
		t.Fatal("kept identity's template missing")
	}
}

// Turning encryption on for a plaintext store: stats tell how many
// templates are still plaintext; Encrypt seals them all and no plaintext
// copy is left in the file.
func TestEncryptExistingStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var plain [][]byte
	for i := range 30 {
		v := faceVisit(fmt.Sprint("v", i), t0.Add(timeMinute(i)), "id1")
		v.Embedding = emb(float32(200+i), 128)
		if _, err := s.CommitVisit(ctx, record.Commit{Visit: v, Identities: []record.Identity{{ID: "id1", Status: "pending"}}}); err != nil {
			t.Fatal(err)
		}
		plain = append(plain, templateBytes(v.Embedding))
	}
	s.Close()
	key := bytes.Repeat([]byte{9}, 32)
	s, err = Open(path, Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.PlainTemplates() != 30 {
		t.Fatalf("open check counted %d plaintext templates, want 30", s.PlainTemplates())
	}
	v := faceVisit("new", t0.Add(timeMinute(100)), "id1")
	if _, err := s.CommitVisit(ctx, record.Commit{Visit: v, Identities: []record.Identity{{ID: "id1", Status: "pending"}}}); err != nil {
		t.Fatal(err)
	}
	st, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Encrypted || !st.KeyCheck || st.TemplatesPlain != 30 || st.TemplatesEncrypted != 1 {
		t.Fatalf("stats before encrypt: encrypted %v key_check %v plain %d encrypted %d", st.Encrypted, st.KeyCheck, st.TemplatesPlain, st.TemplatesEncrypted)
	}
	n, err := s.Encrypt(ctx)
	if err != nil || n != 30 {
		t.Fatalf("encrypt: %d, %v", n, err)
	}
	st, _ = s.Stats(ctx)
	if !st.Encrypted || st.TemplatesPlain != 0 || st.TemplatesEncrypted != 31 {
		t.Fatalf("stats after encrypt: %+v", st)
	}
	for i, p := range plain {
		if fileHas(t, path, p) {
			t.Fatalf("plaintext template %d still in the file's bytes after encrypt", i)
		}
	}
	got, err := s.Visit(ctx, "v3")
	if err != nil || len(got.Embedding) != 128 || got.Embedding[0] != 203 {
		t.Fatalf("visit after encrypt: %v %v", err, got.Embedding[:1])
	}
}

// Read-only and no-create opens never make a file; a missing file is an
// error for them.
func TestReadOnlyNeverCreates(t *testing.T) {
	dir := t.TempDir()
	for _, o := range []Options{{ReadOnly: true}, {NoCreate: true}} {
		p := filepath.Join(dir, "typo.db")
		if _, err := Open(p, o); err == nil || !os.IsNotExist(unwrapAll(err)) {
			t.Fatalf("%+v: open of a missing file: %v", o, err)
		}
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("%+v: file created", o)
		}
	}
	s, path := openTest(t, Options{})
	commitFace(t, s, "v1", t0, "id1")
	s.Close()
	before, _ := os.ReadFile(path)
	r, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Stats(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("read-only open changed the file")
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok || u.Unwrap() == nil {
			return err
		}
		err = u.Unwrap()
	}
}

func timeMinute(i int) time.Duration { return time.Duration(i) * time.Minute }

// Compact run as root keeps the file's owner, group and mode (the service
// user must still open it); so does Salvage for the new file.
func TestCompactKeepsOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the file another owner")
	}
	s, path := openTest(t, Options{})
	commitFace(t, s, "v1", t0, "id1")
	if err := os.Chown(path, 4242, 4343); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := s.Compact(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	s.Close()
	check := func(p string) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if uid, gid, _ := fileops.Owner(fi); uid != 4242 || gid != 4343 || fi.Mode().Perm() != 0o640 {
			t.Fatalf("%s: owner %d:%d mode %v, want 4242:4343 0640", p, uid, gid, fi.Mode().Perm())
		}
	}
	check(path)
	if _, err := Salvage(context.Background(), path, path+".new", Options{}); err != nil {
		t.Fatal(err)
	}
	check(path + ".new")
}

// Rotating the key: every template is sealed under the new key, the old key
// no longer opens the store, the new one reads every embedding back, and no
// template sealed with the old key is left in the file's bytes (free pages
// included). A plaintext store is sealed by the same call.
func TestRekey(t *testing.T) {
	ctx := context.Background()
	oldKey, newKey := bytes.Repeat([]byte{7}, 32), randKey(t) // a new key must look random (CheckNewKey)
	path := filepath.Join(t.TempDir(), "agent.db")
	s, err := Open(path, Options{Key: oldKey})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 25 {
		v := faceVisit(fmt.Sprint("v", i), t0.Add(timeMinute(i)), "id1")
		v.Embedding = emb(float32(300+i), 128)
		if _, err := s.CommitVisit(ctx, record.Commit{Visit: v, Identities: []record.Identity{{ID: "id1", Status: "pending"}}}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	raw, _ := os.ReadFile(path)
	var sealedOld [][]byte // the old ciphertexts (nonce || sealed), as in the file
	s, err = Open(path, Options{Key: oldKey})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bTemplates).ForEach(func(_, v []byte) error {
			sealedOld = append(sealedOld, bytes.Clone(v[1:]))
			return nil
		})
	}); err != nil || len(sealedOld) != 25 || !bytes.Contains(raw, sealedOld[0]) {
		t.Fatalf("templates before rekey: %d, %v (test is wrong)", len(sealedOld), err)
	}
	n, err := s.Rekey(ctx, newKey)
	if err != nil || n != 25 {
		t.Fatalf("rekey: %d, %v", n, err)
	}
	if got, err := s.Visit(ctx, "v4"); err != nil || got.Embedding[0] != 304 {
		t.Fatalf("visit through the rekeyed open store: %v %v", err, got.Embedding)
	}
	s.Close()
	for i, c := range sealedOld {
		if fileHas(t, path, c) {
			t.Fatalf("template %d sealed with the old key still in the file's bytes", i)
		}
	}
	if _, err := Open(path, Options{Key: oldKey}); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("old key after rekey: %v, want ErrWrongKey", err)
	}
	s, err = Open(path, Options{Key: newKey})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := s.Stats(ctx)
	if !st.Encrypted || st.TemplatesEncrypted != 25 || st.TemplatesPlain != 0 {
		t.Fatalf("stats after rekey: %+v", st)
	}
	for i := range 25 {
		got, err := s.Visit(ctx, fmt.Sprint("v", i))
		if err != nil || len(got.Embedding) != 128 || got.Embedding[0] != float32(300+i) {
			t.Fatalf("visit v%d after rekey: %v", i, err)
		}
	}
	// A wrong new key length changes nothing.
	if _, err := s.Rekey(ctx, []byte("short")); err == nil {
		t.Fatal("rekey to a 5-byte key accepted")
	}
	s.Close()
	rep, err := CheckFile(ctx, path, CheckOptions{Key: newKey, BoltCheck: true})
	if err != nil || !rep.OK() || !rep.TemplatesVerified {
		t.Fatalf("check after rekey: %v %+v", err, rep)
	}

	// A plaintext store (no key check): opened without a key, sealed.
	p2 := filepath.Join(t.TempDir(), "plain.db")
	s, err = Open(p2, Options{})
	if err != nil {
		t.Fatal(err)
	}
	commitFace(t, s, "p1", t0, "id1")
	if n, err := s.Rekey(ctx, newKey); err != nil || n != 1 {
		t.Fatalf("rekey of a plaintext store: %d, %v", n, err)
	}
	s.Close()
	if _, err := Open(p2, Options{}); !errors.Is(err, ErrKeyRequired) {
		t.Fatalf("plaintext store after rekey opened without a key: %v", err)
	}
}
