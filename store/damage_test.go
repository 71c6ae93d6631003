package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/store/record"
)

// The damaged-store corpus: a real store written through the API, then
// copies of it damaged by this test (zero length, garbage, truncations at
// many offsets, byte flips in the meta pages, in page headers, in visit
// records and in index records). For every copy: Open never panics and
// never turns the file into a new store, a damaged copy is refused with
// ErrDamaged naming the file, CheckFile names the damage, and Salvage
// recovers every visit that does not lie on a damaged page or record.

const corpusVisits = 150

type corpus struct {
	path     string
	orig     []byte
	pageSize int
	pgid     uint64
	visits   map[string][]uint64 // visit key -> pages from the root to its leaf
	recs     []corpusRec         // every record with its file offset
	pageOf   map[uint64]string   // reachable page -> bucket
}

type corpusRec struct {
	bucket   string
	key, val []byte
	keyOff   int64
	path     []uint64
}

func buildCorpus(t *testing.T, key []byte) *corpus {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.db")
	s, err := Open(path, Options{Key: key, Now: func() time.Time { return t0.Add(24 * time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range corpusVisits {
		v := faceVisit(fmt.Sprint("v", i), t0.Add(time.Duration(i)*time.Minute), fmt.Sprint("id", i%9))
		v.Embedding = emb(float32(i), 128)
		c := record.Commit{Visit: v, Identities: []record.Identity{{ID: v.IdentityID, Status: "pending"}},
			Outbox: []visit.OutboxMessage{{Kind: "summary", Topic: "s", Coalesce: "sum", Payload: []byte(v.ID)}}}
		if i%50 == 0 {
			c.Alerts = []record.NewAlert{{Alert: visit.Alert{ID: fmt.Sprint("a", i), Rule: "r", IdentityID: v.IdentityID, Raised: v.Time},
				Message: &visit.OutboxMessage{Topic: "alert", Payload: []byte("x")}}}
		}
		if _, err := s.CommitVisit(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	c := &corpus{path: path, visits: map[string][]uint64{}, pageOf: map[uint64]string{}}
	if c.orig, err = os.ReadFile(path); err != nil {
		t.Fatal(err)
	}
	bf, _, err := openBoltFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer bf.Close()
	c.pageSize, c.pgid = bf.pageSize, bf.meta.pgid
	w := &treeWalk{bf: bf, recordAt: func(b string, k, v []byte, p []uint64, off int64) {
		p = slices.Clone(p)
		c.recs = append(c.recs, corpusRec{bucket: b, key: bytes.Clone(k), val: bytes.Clone(v), keyOff: off, path: p})
		if b == string(bVisits) {
			c.visits[string(k)] = p
		}
		for _, id := range p {
			if _, ok := c.pageOf[id]; !ok || id != bf.meta.root {
				c.pageOf[id] = b
			}
		}
	}}
	w.walk()
	if len(w.problems) > 0 || len(c.visits) != corpusVisits {
		t.Fatalf("intact corpus: %d visits, problems %v", len(c.visits), w.problems)
	}
	c.pageOf[bf.meta.root] = "root"
	return c
}

// damaged writes a damaged copy and returns its path.
func (c *corpus) damaged(t *testing.T, name string, mutate func(b []byte) []byte) string {
	t.Helper()
	b := mutate(bytes.Clone(c.orig))
	p := filepath.Join(t.TempDir(), name+".db")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// outcome opens a damaged copy: it must not panic, must leave the file
// unchanged when refused, and must either refuse with ErrDamaged naming
// the file or open a store whose every read works (damage found at open
// or never found by the agent).
func openOutcome(t *testing.T, path string, key []byte) (refused bool, err error) {
	t.Helper()
	before, _ := os.ReadFile(path)
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("%s: Open panicked: %v", filepath.Base(path), r)
		}
	}()
	s, err := Open(path, Options{Key: key, Timeout: time.Second, Now: func() time.Time { return t0.Add(24 * time.Hour) }})
	if err != nil {
		after, _ := os.ReadFile(path)
		if !bytes.Equal(before, after) {
			t.Fatalf("%s: refused, but the file was changed", filepath.Base(path))
		}
		if !errors.Is(err, ErrDamaged) {
			t.Fatalf("%s: error is not ErrDamaged: %v", filepath.Base(path), err)
		}
		if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "db salvage") {
			t.Fatalf("%s: error does not name the file and the commands: %v", filepath.Base(path), err)
		}
		return true, err
	}
	defer s.Close()
	ctx := context.Background()
	st, err := s.Stats(ctx)
	if err != nil {
		t.Fatalf("%s: opened, then stats failed: %v", filepath.Base(path), err)
	}
	if st.Buckets[string(bVisits)] == 0 {
		t.Fatalf("%s: opened as an empty store (silent new store)", filepath.Base(path))
	}
	if err := s.Export(ctx, io.Discard, ExportOptions{Embeddings: true}); err != nil {
		t.Fatalf("%s: opened, then export failed: %v", filepath.Base(path), err)
	}
	if _, err := s.Members(ctx); err != nil {
		t.Fatalf("%s: opened, then members failed: %v", filepath.Base(path), err)
	}
	for i := range 9 {
		if _, err := s.VisitsSince(ctx, fmt.Sprint("id", i), time.Time{}); err != nil {
			t.Fatalf("%s: opened, then visits since failed: %v", filepath.Base(path), err)
		}
	}
	return false, nil
}

func checkNames(t *testing.T, path string, key []byte, want ...string) *CheckReport {
	t.Helper()
	rep, err := CheckFile(context.Background(), path, CheckOptions{Key: key, BoltCheck: true})
	if err != nil {
		t.Fatalf("%s: check: %v", filepath.Base(path), err)
	}
	if rep.OK() {
		t.Fatalf("%s: check found nothing", filepath.Base(path))
	}
	all := strings.Join(rep.Problems, "\n")
	for _, w := range want {
		if !strings.Contains(all, w) {
			t.Fatalf("%s: check does not name %q:\n%s", filepath.Base(path), w, all)
		}
	}
	return rep
}

// salvageCount salvages path and returns the visits recovered, checking
// that the new store opens, passes the check and that the source is
// unchanged.
func salvageCount(t *testing.T, path string, key []byte) (int, *SalvageReport) {
	t.Helper()
	before, _ := os.ReadFile(path)
	dst := path + ".salvaged"
	rep, err := Salvage(context.Background(), path, dst, Options{Key: key, Timeout: time.Second})
	if err != nil {
		t.Fatalf("%s: salvage: %v", filepath.Base(path), err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatalf("%s: salvage changed the damaged file", filepath.Base(path))
	}
	chk, err := CheckFile(context.Background(), dst, CheckOptions{Key: key, BoltCheck: true})
	if err != nil || !chk.OK() {
		t.Fatalf("%s: salvaged store fails its check: %v %v", filepath.Base(path), err, chk.Problems)
	}
	s, err := Open(dst, Options{Key: key, NoCreate: true})
	if err != nil {
		t.Fatalf("%s: salvaged store does not open: %v", filepath.Base(path), err)
	}
	defer s.Close()
	n := 0
	vs, err := s.VisitsBetween(context.Background(), time.Time{}, t0.Add(100*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		if _, err := s.Visit(context.Background(), v.ID); err != nil {
			t.Fatalf("%s: salvaged visit %s: %v", filepath.Base(path), v.ID, err)
		}
		n++
	}
	if rep.Kept[string(bVisits)] != n {
		t.Fatalf("%s: report says %d visits kept, store holds %d", filepath.Base(path), rep.Kept[string(bVisits)], n)
	}
	return n, rep
}

func (c *corpus) isLeaf(id uint64) bool {
	return c.orig[int(id)*c.pageSize+8] == pgFlagLeaf
}

// visitsThrough counts the visits whose path runs through page id.
func (c *corpus) visitsThrough(id uint64) int {
	n := 0
	for _, p := range c.visits {
		if slices.Contains(p, id) {
			n++
		}
	}
	return n
}

func TestDamagedStoreCorpus(t *testing.T) {
	for _, enc := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "encrypted"}[enc], func(t *testing.T) {
			var key []byte
			if enc {
				key = bytes.Repeat([]byte{7}, 32)
			}
			c := buildCorpus(t, key)
			ps := c.pageSize
			stats := map[string][2]int{} // kind -> refused, total

			count := func(kind string, refused bool) {
				s := stats[kind]
				s[1]++
				if refused {
					s[0]++
				}
				stats[kind] = s
			}

			t.Run("zero length", func(t *testing.T) {
				p := c.damaged(t, "empty", func([]byte) []byte { return nil })
				refused, _ := openOutcome(t, p, key)
				if !refused {
					t.Fatal("a zero-length file opened")
				}
				if fi, _ := os.Stat(p); fi.Size() != 0 {
					t.Fatal("zero-length file was written")
				}
				checkNames(t, p, key, "empty")
			})
			t.Run("garbage", func(t *testing.T) {
				rng := rand.New(rand.NewPCG(1, 2))
				p := c.damaged(t, "garbage", func(b []byte) []byte {
					for i := range b {
						b[i] = byte(rng.Uint32())
					}
					return b
				})
				if refused, _ := openOutcome(t, p, key); !refused {
					t.Fatal("garbage opened")
				}
				checkNames(t, p, key, "not a bbolt database")
				if _, err := Salvage(context.Background(), p, p+".s", Options{Key: key}); err == nil {
					t.Fatal("salvage of garbage succeeded")
				}
			})
			t.Run("truncated", func(t *testing.T) {
				need := int(c.pgid) * ps
				var sizes []int
				for n := 1; n < len(c.orig); n += ps + ps/3 {
					sizes = append(sizes, n)
				}
				sizes = append(sizes, ps, 2*ps, need-1, need, len(c.orig)-1)
				for _, n := range sizes {
					p := c.damaged(t, fmt.Sprint("trunc", n), func(b []byte) []byte { return b[:n] })
					refused, _ := openOutcome(t, p, key)
					count("truncated", refused)
					if n < need && !refused {
						t.Fatalf("truncated to %d of %d needed bytes, opened", n, need)
					}
					if !refused {
						continue
					}
					if n > 2*ps {
						checkNames(t, p, key, "truncated")
						got, _ := salvageCount(t, p, key)
						// Every visit on a page that is still whole.
						want := 0
						for _, path := range c.visits {
							if int(slices.Max(path)+1)*ps <= n {
								want++
							}
						}
						if got < want {
							t.Fatalf("truncated to %d: salvaged %d visits, %d lie on whole pages", n, got, want)
						}
					}
				}
			})
			t.Run("meta", func(t *testing.T) {
				for _, off := range []int{16, 20, 24, 40, 48, 56, 64, 72} {
					// One meta page damaged: bbolt falls back to the other
					// by design (a torn meta write after a power loss
					// loses the last transaction, nothing else); the check
					// names it, and Open goes on with a warning.
					p := c.damaged(t, fmt.Sprint("meta0-", off), func(b []byte) []byte { b[off] ^= 0x10; return b })
					rep, err := CheckFile(context.Background(), p, CheckOptions{Key: key})
					if err != nil {
						t.Fatal(err)
					}
					if !strings.Contains(strings.Join(append(rep.Warnings, rep.Problems...), "\n"), "meta page") {
						t.Fatalf("meta 0 byte %d: check does not name the meta page: %+v", off, rep)
					}
					refused, _ := openOutcome(t, p, key)
					count("one meta page", refused)
					p = c.damaged(t, fmt.Sprint("metaboth-", off), func(b []byte) []byte { b[off] ^= 0x10; b[ps+off] ^= 0x10; return b })
					if refused, _ := openOutcome(t, p, key); !refused {
						t.Fatalf("both meta pages damaged at byte %d: opened", off)
					}
					count("both meta pages", true)
					checkNames(t, p, key, "meta page")
				}
			})
			t.Run("page headers", func(t *testing.T) {
				rng := rand.New(rand.NewPCG(3, 4))
				// The root page, every branch page and a sample of
				// leaves of every bucket.
				var ids []uint64
				for id := range c.pageOf {
					ids = append(ids, id)
				}
				slices.Sort(ids)
				for _, id := range ids {
					bucket := c.pageOf[id]
					if c.isLeaf(id) && rng.IntN(4) != 0 {
						continue
					}
					for _, off := range []int{0, 1, 4, 8, 9, 10, 11, 12, 15} {
						p := c.damaged(t, fmt.Sprintf("hdr%d-%d", id, off), func(b []byte) []byte {
							b[int(id)*ps+off] ^= byte(1 + rng.IntN(255))
							return b
						})
						refused, _ := openOutcome(t, p, key)
						count("page header", refused)
						if !refused {
							// Only the high bytes of a small count or
							// overflow could land on a value that still
							// fits; none of these offsets may.
							t.Fatalf("page %d (%s) header byte %d damaged: opened", id, bucket, off)
						}
						checkNames(t, p, key, fmt.Sprintf("page %d", id))
						if rng.IntN(4) != 0 {
							continue // salvage a quarter of them: it rereads the file
						}
						got, _ := salvageCount(t, p, key)
						if want := corpusVisits - c.visitsThrough(id); got < want {
							t.Fatalf("page %d (%s) header byte %d damaged: salvaged %d visits, %d are on other pages", id, bucket, off, got, want)
						}
					}
				}
			})
			t.Run("records", func(t *testing.T) {
				rng := rand.New(rand.NewPCG(5, 6))
				perBucket := map[string]int{}
				for i, r := range c.recs {
					if perBucket[r.bucket]++; perBucket[r.bucket] > 25 {
						continue
					}
					if r.bucket != string(bVisits) && r.bucket != string(bIdentityVisits) && r.bucket != string(bVisitIDs) &&
						r.bucket != string(bIdentities) && r.bucket != string(bTemplates) && rng.IntN(4) != 0 {
						continue
					}
					// A byte of the key, and one of the value.
					offs := []int64{r.keyOff + int64(rng.IntN(len(r.key)))}
					if len(r.val) > 0 {
						offs = append(offs, r.keyOff+int64(len(r.key))+int64(rng.IntN(len(r.val))))
					}
					for j, off := range offs {
						p := c.damaged(t, fmt.Sprintf("rec%d-%d", i, j), func(b []byte) []byte { b[off] ^= 0x04; return b })
						refused, _ := openOutcome(t, p, key)
						kind := r.bucket + map[int]string{0: " key", 1: " value"}[j]
						count(kind, refused)
						// Keys tie records together: a flipped key is
						// always found; so is every flipped template when
						// templates are encrypted.
						if !refused && (j == 0 || (enc && r.bucket == string(bTemplates))) {
							t.Fatalf("%s %s %x: byte flipped, opened", r.bucket, kind, r.key)
						}
						if !refused {
							continue
						}
						checkNames(t, p, key, "bucket ")
						if rng.IntN(3) != 0 {
							continue
						}
						got, rep := salvageCount(t, p, key)
						if want := corpusVisits - rep.Skipped[string(bVisits)]; got != want || rep.Skipped[string(bVisits)] > 1 {
							t.Fatalf("%s %x: salvaged %d visits, skipped %d", kind, r.key, got, rep.Skipped[string(bVisits)])
						}
					}
				}
			})
			for k, s := range stats {
				t.Logf("%-28s %4d damaged copies, %4d refused at open", k, s[1], s[0])
			}
		})
	}
}
