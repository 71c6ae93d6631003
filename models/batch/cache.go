package batch

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/agent/visit"
)

// Cache keeps perception results (templates, boxes, quality, mask state,
// thumbnails, "no face" and decoder verdicts) in a bbolt file, keyed by the
// pipeline (model checksums and settings: the caller's key) and by each
// file's content (sha256) and the per-image options. A re-run with other
// clustering settings, or with files moved or renamed, reads the results
// back instead of running the nets again.
//
// Every value carries a checksum over its key and bytes: a damaged value is
// a miss (the image is embedded again and the value rewritten), never a
// wrong result. A file bbolt cannot open is moved aside and a new cache
// started. The total size of the entries is bounded (MaxBytes): the least
// recently used entries go first.
type Cache struct {
	db     *bolt.DB
	path   string
	bucket []byte // this pipeline's entries
	max    int64
	log    *slog.Logger

	broken atomic.Bool // a read failed: the rest of the run goes without
	hits   atomic.Int64
	misses atomic.Int64

	mu      sync.Mutex
	pending []cacheOp
	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}
	werr    error
}

// DefaultCacheMaxBytes bounds a cache's entries (about 5 KB an image with
// a thumbnail: some 100,000 images).
const DefaultCacheMaxBytes = 512 << 20

// CacheFile is the cache's file name inside its folder.
const CacheFile = "embeddings.db"

// cacheSchema is the layout of keys and values; another value starts a new
// cache.
const cacheSchema = "batch-cache-1"

var (
	metaBucket = []byte("meta")
	lruBucket  = []byte("lru") // seq(8) + bucket name(16) + entry key -> nil
	keySchema  = []byte("schema")
	keySeq     = []byte("seq")
	keyBytes   = []byte("bytes")
)

type cacheOp struct {
	key   []byte
	value []byte // nil: touch (mark recently used)
}

// OpenCache opens (or creates) the cache in dir for the pipeline named by
// pipelineKey (everything that changes a template: model checksums, crop
// and detector settings, code revision). maxBytes <= 0 takes
// DefaultCacheMaxBytes. A cache locked by another run is an error after a
// second's wait; a damaged file is moved aside (…corrupt-TIME) with a
// warning and a new one started; one that cannot be opened (permissions) is
// an error and left alone.
func OpenCache(dir, pipelineKey string, maxBytes int64, log *slog.Logger) (*Cache, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if maxBytes <= 0 {
		maxBytes = DefaultCacheMaxBytes
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedding cache: %w", err)
	}
	path := filepath.Join(dir, CacheFile)
	db, err := openCacheDB(path)
	var pe *fs.PathError
	if errors.As(err, &pe) {
		// The file could not be opened at all (permissions, a read-only
		// file system, a folder in its place): nothing says it is damaged.
		return nil, fmt.Errorf("embedding cache %s cannot be opened (use --cache DIR or --no-cache): %w", path, err)
	}
	if err != nil && !errors.Is(err, bolt.ErrTimeout) {
		aside := fmt.Sprintf("%s.corrupt-%s", path, time.Now().UTC().Format("20060102T150405"))
		if rerr := os.Rename(path, aside); rerr != nil {
			return nil, fmt.Errorf("embedding cache %s is damaged (%v) and cannot be moved aside: %w (remove it, or run with --no-cache)", path, err, rerr)
		}
		log.Warn("embedding cache was damaged: moved aside, starting a new one", "path", path, "moved_to", aside, "err", err)
		db, err = openCacheDB(path)
	}
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("embedding cache %s is in use by another run (waited 1s; use --cache DIR or --no-cache): %w", path, err)
		}
		return nil, fmt.Errorf("embedding cache %s: %w", path, err)
	}
	sum := sha256.Sum256([]byte(pipelineKey))
	c := &Cache{db: db, path: path, bucket: sum[:16], max: maxBytes, log: log,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go c.writer()
	return c, nil
}

// openCacheDB opens the file and checks its schema, turning bbolt's panics
// on a damaged file into errors.
func openCacheDB(path string) (db *bolt.DB, err error) {
	defer func() {
		if p := recover(); p != nil {
			if db != nil {
				db.Close()
			}
			db, err = nil, fmt.Errorf("damaged file: %v", p)
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		m, err := tx.CreateBucketIfNotExists(metaBucket)
		if err != nil {
			return err
		}
		switch s := m.Get(keySchema); {
		case s == nil:
			if err := m.Put(keySchema, []byte(cacheSchema)); err != nil {
				return err
			}
		case string(s) != cacheSchema:
			return fmt.Errorf("cache schema %q, want %q", s, cacheSchema)
		}
		_, err = tx.CreateBucketIfNotExists(lruBucket)
		return err
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// Path is the cache file.
func (c *Cache) Path() string { return c.path }

// Stats says how many images were read from the cache and how many were
// embedded.
func (c *Cache) Stats() (hits, misses int64) { return c.hits.Load(), c.misses.Load() }

// Close writes what is pending and closes the file.
func (c *Cache) Close() error {
	if c == nil {
		return nil
	}
	close(c.stop)
	<-c.done
	return errors.Join(c.werr, c.db.Close())
}

// entry is what the cache keeps for one image.
type entry struct {
	kind   byte // entryFace, entryNoFace, entryError
	reason string
	faces  []vision.Face
}

const (
	entryFace byte = iota
	entryNoFace
	entryError
)

// imageKey is the entry key of an image: its content hash and the options
// that change what is kept (thumbnail size, which faces).
func imageKey(sum [32]byte, opts string) []byte {
	return append(append(sum[:0:0], sum[:]...), opts...)
}

// get returns the entry for key. A damaged value is a miss; a failing read
// turns the cache off for the rest of the run (with a warning).
func (c *Cache) get(key []byte) (e entry, ok bool) {
	if c == nil || c.broken.Load() {
		return entry{}, false
	}
	var val []byte
	err := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("read: %v", p)
			}
		}()
		return c.db.View(func(tx *bolt.Tx) error {
			b := tx.Bucket(c.bucket)
			if b == nil {
				return nil
			}
			if v := b.Get(key); v != nil {
				val = bytes.Clone(v)
			}
			return nil
		})
	}()
	if err != nil {
		if !c.broken.Swap(true) {
			c.log.Warn("embedding cache unreadable: embedding without it for the rest of the run", "path", c.path, "err", err)
		}
		return entry{}, false
	}
	if val == nil {
		c.misses.Add(1)
		return entry{}, false
	}
	e, err = decodeEntry(c.bucket, key, val)
	if err != nil {
		c.log.Warn("embedding cache entry damaged: embedding the image again", "err", err)
		c.misses.Add(1)
		return entry{}, false
	}
	c.hits.Add(1)
	c.queue(cacheOp{key: key})
	return e, true
}

// put stores e under key (asynchronously: the writer commits in batches).
func (c *Cache) put(key []byte, e entry) {
	if c == nil || c.broken.Load() {
		return
	}
	c.queue(cacheOp{key: key, value: encodeEntry(c.bucket, key, e)})
}

func (c *Cache) queue(op cacheOp) {
	c.mu.Lock()
	c.pending = append(c.pending, op)
	n := len(c.pending)
	c.mu.Unlock()
	if n >= 256 {
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
}

// writer commits pending operations every half second (or every 256) and
// at Close; it exits when stop is closed, after a last commit.
func (c *Cache) writer() {
	defer close(c.done)
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			c.flush()
			return
		case <-t.C:
		case <-c.kick:
		}
		c.flush()
	}
}

func (c *Cache) flush() {
	c.mu.Lock()
	ops := c.pending
	c.pending = nil
	c.mu.Unlock()
	if len(ops) == 0 || c.broken.Load() {
		return
	}
	err := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("write: %v", p)
			}
		}()
		return c.db.Update(func(tx *bolt.Tx) error { return c.apply(tx, ops) })
	}()
	if err != nil {
		if !c.broken.Swap(true) {
			c.log.Warn("embedding cache cannot be written: going on without it", "path", c.path, "err", err)
		}
		c.werr = fmt.Errorf("embedding cache %s: %w", c.path, err)
	}
}

// apply writes ops in one transaction: each value is stored with its
// recency sequence number in front, the LRU index follows, and the oldest
// entries are dropped while the total is over the bound.
func (c *Cache) apply(tx *bolt.Tx, ops []cacheOp) error {
	meta := tx.Bucket(metaBucket)
	lru := tx.Bucket(lruBucket)
	b, err := tx.CreateBucketIfNotExists(c.bucket)
	if err != nil {
		return err
	}
	seq := u64(meta.Get(keySeq))
	total := int64(u64(meta.Get(keyBytes)))
	lruKey := func(s uint64, bucket, key []byte) []byte {
		k := binary.BigEndian.AppendUint64(nil, s)
		return append(append(k, bucket...), key...)
	}
	for _, op := range ops {
		old := b.Get(op.key)
		val := op.value
		if val == nil { // touch
			if old == nil || len(old) < 8 {
				continue
			}
			val = old[8:]
		}
		if old != nil && len(old) >= 8 {
			if err := lru.Delete(lruKey(binary.BigEndian.Uint64(old), c.bucket, op.key)); err != nil {
				return err
			}
			total -= int64(len(op.key) + len(old))
		} else {
			val = bytes.Clone(val)
		}
		seq++
		stored := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(val)), seq)
		stored = append(stored, val...)
		if err := b.Put(op.key, stored); err != nil {
			return err
		}
		if err := lru.Put(lruKey(seq, c.bucket, op.key), nil); err != nil {
			return err
		}
		total += int64(len(op.key) + len(stored))
	}
	if total > c.max {
		// Evict down to 90% of the bound, oldest first, over all pipelines.
		cur := lru.Cursor()
		var drop [][]byte
		for k, _ := cur.First(); k != nil && total > c.max*9/10; k, _ = cur.Next() {
			if len(k) < 8+16 {
				drop = append(drop, bytes.Clone(k))
				continue
			}
			eb := tx.Bucket(k[8 : 8+16])
			ek := k[8+16:]
			if eb != nil {
				if v := eb.Get(ek); v != nil {
					total -= int64(len(ek) + len(v))
					if err := eb.Delete(ek); err != nil {
						return err
					}
				}
			}
			drop = append(drop, bytes.Clone(k))
		}
		for _, k := range drop {
			if err := lru.Delete(k); err != nil {
				return err
			}
		}
	}
	if err := meta.Put(keySeq, binary.BigEndian.AppendUint64(nil, seq)); err != nil {
		return err
	}
	return meta.Put(keyBytes, binary.BigEndian.AppendUint64(nil, uint64(max(total, 0))))
}

// Size is the total of the entries' keys and values, as the bound counts it.
func (c *Cache) Size() (int64, error) {
	var n uint64
	err := c.db.View(func(tx *bolt.Tx) error {
		n = u64(tx.Bucket(metaBucket).Get(keyBytes))
		return nil
	})
	return int64(n), err
}

func u64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// Value layout (little endian): version 1, kind, reason (u32 length +
// bytes), face count (u32), per face: box and score (5 f64), points and
// five (u16 count + f64 pairs each), sharpness, roll, yaw, quality,
// mask score (f64), mask (u8), padded (u8), template (u32 length + f32),
// thumbnail (u32 length + bytes); then 16 bytes of sha256 over the bucket,
// the key and everything before.
const entryVersion = 1

func encodeEntry(bucket, key []byte, e entry) []byte {
	w := []byte{entryVersion, e.kind}
	w = appendBytes(w, []byte(e.reason))
	w = binary.LittleEndian.AppendUint32(w, uint32(len(e.faces)))
	f64 := func(v float64) { w = binary.LittleEndian.AppendUint64(w, math.Float64bits(v)) }
	pts := func(p [][2]float64) {
		w = binary.LittleEndian.AppendUint16(w, uint16(len(p)))
		for _, q := range p {
			f64(q[0])
			f64(q[1])
		}
	}
	for _, f := range e.faces {
		d := f.Det
		for _, v := range []float64{d.X0, d.Y0, d.X1, d.Y1, d.Score} {
			f64(v)
		}
		pts(d.Points)
		pts(d.Five)
		for _, v := range []float64{f.Sharpness, f.Roll, f.Yaw, f.Quality, f.MaskScore} {
			f64(v)
		}
		padded := byte(0)
		if f.Padded {
			padded = 1
		}
		w = append(w, byte(f.Mask), padded)
		w = binary.LittleEndian.AppendUint32(w, uint32(len(f.Embedding)))
		for _, v := range f.Embedding {
			w = binary.LittleEndian.AppendUint32(w, math.Float32bits(v))
		}
		w = appendBytes(w, f.Thumb)
	}
	return append(w, entrySum(bucket, key, w)...)
}

func entrySum(bucket, key, body []byte) []byte {
	h := sha256.New()
	h.Write(bucket)
	h.Write([]byte{byte(len(key))})
	h.Write(key)
	h.Write(body)
	return h.Sum(nil)[:16]
}

func appendBytes(w, b []byte) []byte {
	w = binary.LittleEndian.AppendUint32(w, uint32(len(b)))
	return append(w, b...)
}

var errDamaged = errors.New("damaged cache entry")

// decodeEntry reads a stored value (its recency number first).
func decodeEntry(bucket, key, stored []byte) (entry, error) {
	if len(stored) < 8+2+16 {
		return entry{}, fmt.Errorf("%w: %d bytes", errDamaged, len(stored))
	}
	v := stored[8:]
	body, sum := v[:len(v)-16], v[len(v)-16:]
	if !bytes.Equal(sum, entrySum(bucket, key, body)) {
		return entry{}, fmt.Errorf("%w: checksum mismatch (key %s)", errDamaged, hex.EncodeToString(key[:min(8, len(key))]))
	}
	r := reader{b: body}
	if r.u8() != entryVersion {
		return entry{}, fmt.Errorf("%w: version", errDamaged)
	}
	e := entry{kind: r.u8(), reason: string(r.bytes())}
	n := int(r.u32())
	if n > 1<<16 {
		return entry{}, fmt.Errorf("%w: %d faces", errDamaged, n)
	}
	pts := func() [][2]float64 {
		k := int(r.u16())
		if k == 0 {
			return nil
		}
		p := make([][2]float64, 0, k)
		for range k {
			p = append(p, [2]float64{r.f64(), r.f64()})
		}
		return p
	}
	for range n {
		var f vision.Face
		f.Det.X0, f.Det.Y0, f.Det.X1, f.Det.Y1, f.Det.Score = r.f64(), r.f64(), r.f64(), r.f64(), r.f64()
		f.Det.Points = pts()
		f.Det.Five = pts()
		f.Sharpness, f.Roll, f.Yaw, f.Quality, f.MaskScore = r.f64(), r.f64(), r.f64(), r.f64(), r.f64()
		f.Mask = visit.MaskState(r.u8())
		f.Padded = r.u8() == 1
		dim := int(r.u32())
		if dim > 1<<16 {
			return entry{}, fmt.Errorf("%w: template of %d values", errDamaged, dim)
		}
		f.Embedding = make([]float32, dim)
		for i := range f.Embedding {
			f.Embedding[i] = math.Float32frombits(r.u32())
		}
		if t := r.bytes(); len(t) > 0 {
			f.Thumb = bytes.Clone(t)
		}
		e.faces = append(e.faces, f)
	}
	if r.bad || len(r.b) != 0 {
		return entry{}, fmt.Errorf("%w: layout", errDamaged)
	}
	if e.kind > entryError {
		return entry{}, fmt.Errorf("%w: kind %d", errDamaged, e.kind)
	}
	return e, nil
}

type reader struct {
	b   []byte
	bad bool
}

func (r *reader) take(n int) []byte {
	if r.bad || n < 0 || len(r.b) < n {
		r.bad = true
		return make([]byte, max(n, 0))
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}
func (r *reader) u8() byte     { return r.take(1)[0] }
func (r *reader) u16() uint16  { return binary.LittleEndian.Uint16(r.take(2)) }
func (r *reader) u32() uint32  { return binary.LittleEndian.Uint32(r.take(4)) }
func (r *reader) f64() float64 { return math.Float64frombits(binary.LittleEndian.Uint64(r.take(8))) }
func (r *reader) bytes() []byte {
	n := int(r.u32())
	if n > len(r.b) {
		r.bad = true
		return nil
	}
	return r.take(n)
}
