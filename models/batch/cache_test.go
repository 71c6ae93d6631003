package batch

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	bolt "go.etcd.io/bbolt"
)

func countingFakes(n int, calls *atomic.Int64) []FaceFinder {
	var out []FaceFinder
	for range n {
		out = append(out, fakeFinder{calls: calls})
	}
	return out
}

func openTestCache(t *testing.T, dir, key string, max int64) *Cache {
	t.Helper()
	c, err := OpenCache(dir, key, max, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// runCached runs the fixture with a cache in dir and returns the number of
// images the finder saw and report.json.
func runCached(t *testing.T, in, dir string, mutate func(*Options)) (int64, []byte, *Cache) {
	t.Helper()
	var calls atomic.Int64
	c := openTestCache(t, dir, "pipeline A", 0)
	o := testOptions()
	o.Cache = c
	if mutate != nil {
		mutate(&o)
	}
	out := filepath.Join(t.TempDir(), "out")
	if _, err := Run(context.Background(), in, out, countingFakes(2, &calls), o); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := os.ReadFile(filepath.Join(out, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	return calls.Load(), rep, c
}

// The second run reads every face, "no face" and template back from the
// cache (the finder is never called) and writes the same report; other
// thresholds re-cluster from the cache; a moved file is not embedded again.
func TestCacheReuse(t *testing.T) {
	in := fixture(t)
	dir := t.TempDir()
	n1, rep1, _ := runCached(t, in, dir, nil)
	if n1 != 10 { // 9 faces + 1 noface reach the finder; corrupt ones fail the header check
		t.Fatalf("first run: finder called %d times, want 10", n1)
	}
	n2, rep2, c := runCached(t, in, dir, nil)
	if n2 != 0 {
		t.Errorf("second run: finder called %d times, want 0 (all cached)", n2)
	}
	if h, m := c.Stats(); h != 10 || m != 0 {
		t.Errorf("second run: %d hits, %d misses; want 10, 0", h, m)
	}
	if !bytes.Equal(rep1, rep2) {
		t.Errorf("report from the cache differs:\n%s\nvs\n%s", rep1, rep2)
	}
	// Other thresholds: no embedding, another clustering.
	n3, rep3, _ := runCached(t, in, dir, func(o *Options) {
		o.Cluster.Config.Thresholds.UU, o.Cluster.Config.Thresholds.MM, o.Cluster.Config.Thresholds.MU = 1.5, 1.5, 1.5
	})
	if n3 != 0 {
		t.Errorf("re-tuned run: finder called %d times", n3)
	}
	if bytes.Equal(rep1, rep3) || !strings.Contains(string(rep3), `"uu": 1.5`) {
		t.Errorf("re-tuned report did not change")
	}
	// A moved and renamed file is found by content.
	if err := os.Rename(filepath.Join(in, "z-p3.jpg"), filepath.Join(in, "a", "moved.jpg")); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := runCached(t, in, dir, nil); n != 0 {
		t.Errorf("after a move: finder called %d times, want 0", n)
	}
	// Another thumbnail size, another pipeline key: embedded again.
	if n, _, _ := runCached(t, in, dir, func(o *Options) { o.Thumb = 48 }); n != 10 {
		t.Errorf("other thumbnail size: finder called %d times, want 10", n)
	}
	var calls atomic.Int64
	c2 := openTestCache(t, dir, "pipeline B", 0)
	o := testOptions()
	o.Cache = c2
	if _, err := Run(context.Background(), in, filepath.Join(t.TempDir(), "o"), countingFakes(1, &calls), o); err != nil {
		t.Fatal(err)
	}
	c2.Close()
	if calls.Load() != 10 {
		t.Errorf("other pipeline key: finder called %d times, want 10", calls.Load())
	}
}

// A damaged value is a miss: the image is embedded again and the report is
// the same as without a cache; never a wrong template.
func TestCacheDamagedEntry(t *testing.T) {
	in := fixture(t)
	dir := t.TempDir()
	_, rep1, _ := runCached(t, in, dir, nil)
	db, err := bolt.Open(filepath.Join(dir, CacheFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	flipped := 0
	err = db.Update(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			if len(name) != 16 {
				return nil
			}
			c := b.Cursor()
			for k, v := c.First(); k != nil; k, v = c.Next() {
				w := bytes.Clone(v)
				w[len(w)/2] ^= 0x40 // one bit in the middle: a template value or a box
				if err := b.Put(bytes.Clone(k), w); err != nil {
					return err
				}
				flipped++
			}
			return nil
		})
	})
	db.Close()
	if err != nil || flipped != 10 {
		t.Fatalf("damaging entries: %v (%d)", err, flipped)
	}
	n, rep2, c := runCached(t, in, dir, nil)
	if n != 10 {
		t.Errorf("finder called %d times after damage, want 10", n)
	}
	if h, _ := c.Stats(); h != 0 {
		t.Errorf("%d damaged entries used", h)
	}
	if !bytes.Equal(rep1, rep2) {
		t.Errorf("report differs after damage")
	}
	// Rewritten: the next run is all hits again.
	if n, _, _ := runCached(t, in, dir, nil); n != 0 {
		t.Errorf("entries not rewritten: finder called %d times", n)
	}
}

// A cache file bbolt cannot open is moved aside and a new one started.
func TestCacheDamagedFile(t *testing.T) {
	in := fixture(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, CacheFile), bytes.Repeat([]byte("not a bolt file "), 1024), 0o600); err != nil {
		t.Fatal(err)
	}
	n, _, _ := runCached(t, in, dir, nil)
	if n != 10 {
		t.Errorf("finder called %d times, want 10", n)
	}
	m, _ := filepath.Glob(filepath.Join(dir, CacheFile+".corrupt-*"))
	if len(m) != 1 {
		t.Errorf("damaged file not moved aside: %v", m)
	}
	if n, _, _ := runCached(t, in, dir, nil); n != 0 {
		t.Errorf("new cache not used: %d calls", n)
	}
}

// A cache file that cannot be opened (here a folder in its place; a file
// without read permission or a read-only file system are the same) is an
// error naming the way out, and is left where it is: it is not damaged.
func TestCacheUnopenableIsNotDamaged(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, CacheFile), 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := OpenCache(dir, "k", 0, nil)
	if err == nil || !strings.Contains(err.Error(), "cannot be opened") || !strings.Contains(err.Error(), "--no-cache") {
		t.Fatalf("err %v", err)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, CacheFile+".corrupt-*")); len(m) != 0 {
		t.Errorf("moved aside: %v", m)
	}
	if st, err := os.Stat(filepath.Join(dir, CacheFile)); err != nil || !st.IsDir() {
		t.Errorf("the original is gone: %v", err)
	}
}

// The bound holds: old entries go first, and what stays still hits.
func TestCacheBound(t *testing.T) {
	dir := t.TempDir()
	c := openTestCache(t, dir, "p", 4000)
	big := entry{kind: entryNoFace, reason: strings.Repeat("x", 900)}
	var keys [][]byte
	for i := range 20 {
		k := imageKey([32]byte{byte(i)}, "")
		keys = append(keys, k)
		c.put(k, big)
		c.flush()
	}
	size, err := c.Size()
	if err != nil || size > 4000 {
		t.Fatalf("size %d over the bound 4000 (%v)", size, err)
	}
	if _, ok := c.get(keys[0]); ok {
		t.Error("oldest entry survived the bound")
	}
	if e, ok := c.get(keys[19]); !ok || e.reason != big.reason {
		t.Error("newest entry lost")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// A second run cannot open a cache in use: a clear error, not a hang.
	c1 := openTestCache(t, dir, "p", 0)
	defer c1.Close()
	if _, err := OpenCache(dir, "p", 0, nil); err == nil || !strings.Contains(err.Error(), "in use by another run") {
		t.Errorf("second open: %v", err)
	}
}
