package store

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/store/record"
)

// TestPurgeExpiredScrubsTheFile: the retention purge the agent runs every
// purge_interval leaves no stored form of an expired template in the file,
// free pages included (plaintext floats, or the sealed bytes, which the
// key on the same device still opens). Before, only `db purge` compacted:
// the daemon's purge left every expired template in free pages until bbolt
// happened to reuse them.
func TestPurgeExpiredScrubsTheFile(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  []byte
	}{{"plain", nil}, {"encrypted", bytes.Repeat([]byte{7}, 32)}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			clk := &clock{t: t0}
			s, path := openTest(t, Options{Retention: 24 * time.Hour, Now: clk.Now, Key: tc.key})
			stored := func(v string) []byte { // the newest template's bytes as they lie in the file (keys are visit keys: time first)
				var b []byte
				if err := s.db.View(func(tx *bolt.Tx) error {
					_, val := tx.Bucket(bTemplates).Cursor().Last()
					b = bytes.Clone(val)
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				if len(b) < 64 {
					t.Fatalf("template of %s not found in bucket templates (%d bytes): test is wrong", v, len(b))
				}
				return b
			}
			var old, kept [][]byte
			for i := range 60 {
				id := fmt.Sprint("v", i)
				tm := t0.Add(timeMinute(i))
				if i >= 30 {
					tm = t0.Add(48*time.Hour + timeMinute(i))
				}
				v := faceVisit(id, tm, fmt.Sprint("id", i%3))
				v.Embedding = emb(float32(300+i), 128)
				if _, err := s.CommitVisit(ctx, record.Commit{Visit: v, Identities: []record.Identity{{ID: v.IdentityID, Status: "pending"}}}); err != nil {
					t.Fatal(err)
				}
				if i < 30 {
					old = append(old, stored(id))
				} else {
					kept = append(kept, stored(id))
				}
			}
			if !fileHas(t, path, old[0]) {
				t.Fatal("template bytes not found in the file before the purge (test is wrong)")
			}
			clk.t = t0.Add(60 * time.Hour) // cut-off t0+36h: the first 30 expire
			if n, err := s.PurgeExpired(ctx); err != nil || n != 30 {
				t.Fatalf("purge: %d, %v", n, err)
			}
			left := 0
			for _, o := range old {
				if fileHas(t, path, o) {
					left++
				}
			}
			if left > 0 {
				t.Fatalf("%d of 30 expired templates still in the file's bytes after the retention purge", left)
			}
			for i, k := range kept {
				if !fileHas(t, path, k) {
					t.Fatalf("kept template %d missing", i)
				}
			}
			if m, err := s.Members(ctx); err != nil || len(m) != 30 {
				t.Fatalf("members after purge: %d, %v", len(m), err)
			}
			// Nothing expired: nothing to scrub, the file is not rewritten.
			before := inode(t, path)
			if n, err := s.PurgeExpired(ctx); err != nil || n != 0 {
				t.Fatalf("second purge: %d, %v", n, err)
			}
			if inode(t, path) != before {
				t.Error("a purge that removed nothing rewrote the file")
			}
		})
	}
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}
