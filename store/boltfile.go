package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"sort"
	"syscall"

	"github.com/periocular/atm-agent/internal/regfile"
)

// A bounds-checked reader of the bbolt file format (go.etcd.io/bbolt v1.4,
// format version 2), independent of bbolt's memory map. bbolt trusts the
// file: a damaged page header trips an assertion (panic), and a page number
// past a truncated end is read through the mapping (SIGBUS). This reader
// reads pages with pread and checks every offset, so a damaged file gives a
// list of problems instead; Open runs it before bbolt maps the file, and
// `db check` / `db salvage` are built on it.
//
// The layout, as bbolt writes it (native byte order; every platform the
// agent ships for is little-endian):
//
//	page header (16 bytes): id u64, flags u16, count u16, overflow u32
//	meta (at offset 16 of pages 0 and 1): magic u32, version u32,
//	    page size u32, flags u32, root bucket {root page u64, sequence u64},
//	    freelist page u64, high-water page u64, txid u64, checksum u64
//	    (FNV-64a of the 56 bytes before it)
//	branch element (16 bytes): pos u32, ksize u32, child page u64
//	leaf element (16 bytes): flags u32, pos u32, ksize u32, vsize u32
//	    (pos counts from the element's own offset)
//	bucket value (leaf flag 1): root page u64, sequence u64; root 0 means
//	    an inline bucket whose leaf page follows in the value
//	freelist: page ids u64 after the header; count 0xFFFF means the real
//	    count is the first u64

const (
	pgHeaderSize    = 16
	pgFlagBranch    = 0x01
	pgFlagLeaf      = 0x02
	pgFlagMeta      = 0x04
	pgFlagFreelist  = 0x10
	elemSize        = 16
	leafFlagBucket  = 0x01
	boltMagic       = 0xED0CDAED
	boltVersion     = 2
	metaSumLen      = 56
	noFreelist      = ^uint64(0)
	minBoltPageSize = 512
	maxBoltPageSize = 1 << 16
	maxTreeDepth    = 64
)

// boltMeta is one decoded meta page.
type boltMeta struct {
	page              int // 0 or 1
	pageSize          uint32
	root, freelist    uint64
	pgid, txid        uint64
	invalid           string // why it failed validation; "" when valid
	magicOK, sumValid bool
}

func parseMeta(page int, b []byte) boltMeta {
	m := boltMeta{page: page}
	if len(b) < pgHeaderSize+metaSumLen+8 {
		m.invalid = "short read"
		return m
	}
	le := binary.LittleEndian
	h, d := b[:pgHeaderSize], b[pgHeaderSize:]
	magic, ver := le.Uint32(d[0:]), le.Uint32(d[4:])
	m.pageSize = le.Uint32(d[8:])
	m.root = le.Uint64(d[16:])
	m.freelist, m.pgid, m.txid = le.Uint64(d[32:]), le.Uint64(d[40:]), le.Uint64(d[48:])
	sum := fnv.New64a()
	sum.Write(d[:metaSumLen])
	m.magicOK = magic == boltMagic
	m.sumValid = sum.Sum64() == le.Uint64(d[metaSumLen:])
	switch {
	case !m.magicOK:
		m.invalid = "no bbolt magic number"
	case ver != boltVersion:
		m.invalid = fmt.Sprintf("bbolt format version %d (want %d)", ver, boltVersion)
	case !m.sumValid:
		m.invalid = "checksum mismatch"
	case le.Uint16(h[8:]) != pgFlagMeta:
		m.invalid = fmt.Sprintf("page type %#x is not meta", le.Uint16(h[8:]))
	case m.pageSize < minBoltPageSize || m.pageSize > maxBoltPageSize || m.pageSize&(m.pageSize-1) != 0:
		m.invalid = fmt.Sprintf("page size %d", m.pageSize)
	}
	return m
}

// boltFile reads one database file page by page.
type boltFile struct {
	path     string
	f        *os.File
	size     int64
	pageSize int
	meta     boltMeta   // the meta bbolt would use
	metas    []boltMeta // both, as read
}

// errNotBolt: the file holds no valid meta page at all.
var errNotBolt = errors.New("not a bbolt database: no valid meta page (wrong file, overwritten, or both meta pages damaged)")

// openBoltFile reads and validates the meta pages. Problems found in one
// meta page while the other is usable are returned as warnings (bbolt
// falls back to the other page by design: a torn meta write after a power
// loss loses only the last transaction). A zero-length file, a file shorter
// than the pages its meta page records and a file without a valid meta page
// are errors.
//
// With tolerant (salvage) a bounds problem of the newest meta page makes it
// try the other one, and a truncated file is read as far as it goes.
func openBoltFile(path string, tolerant bool) (bf *boltFile, warnings []string, err error) {
	if _, err := checkRegular(path); err != nil {
		return nil, nil, err
	}
	f, err := openNoWait(path)
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, notRegular(path, fi.Mode())
	}
	bf = &boltFile{path: path, f: f, size: fi.Size()}
	if bf.size == 0 {
		return nil, nil, errors.New("file is empty (0 bytes): not a database; a store that is lost must be restored from a backup, or the file removed to start a new one")
	}
	// Meta 0 is at offset 0; its page size locates meta 1. When meta 0 is
	// unreadable, try the sizes bbolt tries.
	buf := make([]byte, 4096)
	n, _ := f.ReadAt(buf, 0)
	m0 := parseMeta(0, buf[:n])
	var m1 boltMeta
	sizes := []int{int(m0.pageSize)}
	if m0.invalid != "" {
		sizes = []int{4096, 1024, 2048, 8192, 16384, 32768, 65536}
	}
	for _, ps := range sizes {
		n, _ := f.ReadAt(buf, int64(ps))
		m1 = parseMeta(1, buf[:n])
		if m1.invalid == "" && int(m1.pageSize) == ps {
			break
		}
	}
	bf.metas = []boltMeta{m0, m1}
	var valid []boltMeta
	for _, m := range bf.metas {
		if m.invalid == "" {
			valid = append(valid, m)
		}
	}
	switch len(valid) {
	case 0:
		if !m0.magicOK && !m1.magicOK {
			return nil, nil, fmt.Errorf("%w; %d bytes, first bytes %x", errNotBolt, bf.size, firstBytes(buf, n))
		}
		return nil, nil, fmt.Errorf("%w: meta page 0: %s; meta page 1: %s", errNotBolt, m0.invalid, m1.invalid)
	case 1:
		bad := bf.metas[1-valid[0].page]
		warnings = append(warnings, fmt.Sprintf("meta page %d is invalid (%s); bbolt uses meta page %d (txid %d): at most the last transaction is lost",
			bad.page, bad.invalid, valid[0].page, valid[0].txid))
	case 2:
		if valid[0].pageSize != valid[1].pageSize {
			return nil, nil, fmt.Errorf("meta pages disagree on the page size (%d, %d)", valid[0].pageSize, valid[1].pageSize)
		}
	}
	// bbolt uses the valid meta with the highest txid.
	bf.meta = valid[0]
	if len(valid) == 2 && valid[1].txid > valid[0].txid {
		bf.meta = valid[1]
	}
	bf.pageSize = int(bf.meta.pageSize)
	if err := bf.checkMetaBounds(bf.meta); err != nil {
		if !tolerant {
			return nil, nil, err
		}
		warnings = append(warnings, err.Error())
		if len(valid) == 2 {
			other := valid[0]
			if other.page == bf.meta.page {
				other = valid[1]
			}
			if bf.checkMetaBounds(other) == nil {
				warnings = append(warnings, fmt.Sprintf("reading the previous transaction (meta page %d, txid %d) instead", other.page, other.txid))
				bf.meta = other
				return bf, warnings, nil
			}
		}
		if bf.meta.root < 2 || bf.meta.root >= bf.meta.pgid {
			return nil, nil, err
		}
	}
	return bf, warnings, nil
}

func firstBytes(b []byte, n int) []byte { return b[:min(n, 16)] }

// CheckBoltHeader runs the file-level checks the store makes before bbolt
// maps a file, and nothing about records: a regular file, a valid meta page,
// a size that holds every page the newest meta page records, root and
// freelist inside them. bbolt faults (SIGSEGV/SIGBUS) mapping a file that
// fails them. Any bbolt file can be checked (the fleet service's store uses
// it); a missing or empty file passes: bbolt creates it.
func CheckBoltHeader(path string) error {
	if exists, err := checkRegular(path); err != nil || !exists {
		return err
	}
	if fi, err := os.Stat(path); err == nil && fi.Size() == 0 {
		return nil
	}
	bf, _, err := openBoltFile(path, false)
	if err != nil {
		return err
	}
	return bf.Close()
}

// checkRegular refuses a path (symlinks followed) that exists but is not a
// regular file, before anything opens it: opening a named pipe for reading
// blocks until a writer comes, in a system call no signal ends, and a
// device, socket or directory is no database. exists is false for a
// missing file, which is not refused here.
func checkRegular(path string) (exists bool, err error) {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("open store %q: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return true, notRegular(path, fi.Mode())
	}
	return true, nil
}

func notRegular(path string, m os.FileMode) error {
	return fmt.Errorf("open store %q: not a regular file but %s: the store must be a regular file (or a link to one); check --db or store.path", path, regfile.Kind(m))
}

// openNoWait opens path for reading without waiting for a writer should
// it have become a named pipe since checkRegular (the caller checks the
// open file's type); O_NONBLOCK changes nothing for a regular file.
func openNoWait(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
}

// checkMetaBounds: the file must hold every page below the high-water mark
// (bbolt maps pages past a truncated end and faults on them), and the root
// and freelist pages must lie below it.
func (bf *boltFile) checkMetaBounds(m boltMeta) error {
	need := int64(m.pgid) * int64(m.pageSize)
	switch {
	case m.pgid < 3 || m.pgid > uint64(1<<62)/uint64(m.pageSize):
		return fmt.Errorf("meta page %d: high-water mark %d pages is impossible", m.page, m.pgid)
	case bf.size < need:
		return fmt.Errorf("file is truncated: %d bytes, but meta page %d (txid %d) records %d pages of %d bytes (%d bytes)",
			bf.size, m.page, m.txid, m.pgid, m.pageSize, need)
	case m.root < 2 || m.root >= m.pgid:
		return fmt.Errorf("meta page %d: root page %d outside 2..%d", m.page, m.root, m.pgid-1)
	case m.freelist != noFreelist && (m.freelist < 2 || m.freelist >= m.pgid):
		return fmt.Errorf("meta page %d: freelist page %d outside 2..%d", m.page, m.freelist, m.pgid-1)
	}
	return nil
}

func (bf *boltFile) Close() error { return bf.f.Close() }

// page is one page (with its overflow pages) as read from the file.
type page struct {
	off      int64 // file offset of data[0]
	id       uint64
	flags    uint16
	count    uint16
	overflow uint32
	data     []byte // header included
}

// readPage reads page id and its overflow pages, checking that the header
// names the page it is read from and that it lies below the high-water mark.
func (bf *boltFile) readPage(id uint64) (*page, error) {
	if id < 2 || id >= bf.meta.pgid {
		return nil, fmt.Errorf("page %d: outside 2..%d", id, bf.meta.pgid-1)
	}
	ps := int64(bf.pageSize)
	hdr := make([]byte, pgHeaderSize)
	if _, err := bf.f.ReadAt(hdr, int64(id)*ps); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("page %d: past the end of the file (%d bytes): truncated", id, bf.size)
		}
		return nil, fmt.Errorf("page %d: read: %w", id, err)
	}
	p := parsePageHeader(hdr)
	if p.id != id {
		return nil, fmt.Errorf("page %d: header names page %d (damaged header)", id, p.id)
	}
	if uint64(p.overflow) >= bf.meta.pgid-id {
		return nil, fmt.Errorf("page %d: %d overflow pages run past the high-water mark %d (damaged header)", id, p.overflow, bf.meta.pgid)
	}
	if end := (int64(id) + int64(p.overflow) + 1) * ps; end > bf.size {
		return nil, fmt.Errorf("page %d: ends at byte %d, past the end of the file (%d bytes): truncated", id, end, bf.size)
	}
	p.data, p.off = make([]byte, (int64(p.overflow)+1)*ps), int64(id)*ps
	if _, err := bf.f.ReadAt(p.data, int64(id)*ps); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("page %d: read: %w", id, err)
	}
	return p, nil
}

func parsePageHeader(b []byte) *page {
	le := binary.LittleEndian
	return &page{id: le.Uint64(b), flags: le.Uint16(b[8:]), count: le.Uint16(b[10:]), overflow: le.Uint32(b[12:]), data: b}
}

// freelist reads the freelist page: the free page ids, or an error.
func (bf *boltFile) freelist() (free map[uint64]bool, pages []uint64, err error) {
	id := bf.meta.freelist
	if id == noFreelist {
		return map[uint64]bool{}, nil, nil
	}
	p, err := bf.readPage(id)
	if err != nil {
		return nil, nil, fmt.Errorf("freelist: %w", err)
	}
	if p.flags != pgFlagFreelist {
		return nil, nil, fmt.Errorf("freelist page %d: page type %#x is not freelist (damaged header)", id, p.flags)
	}
	le := binary.LittleEndian
	off, count := pgHeaderSize, uint64(p.count)
	if p.count == 0xFFFF {
		count = le.Uint64(p.data[off:])
		off += 8
	}
	if count > uint64(len(p.data)-off)/8 {
		return nil, nil, fmt.Errorf("freelist page %d: %d ids do not fit in %d bytes (damaged header)", id, count, len(p.data))
	}
	free = make(map[uint64]bool, count)
	for i := uint64(0); i < count; i++ {
		f := le.Uint64(p.data[off+8*int(i):])
		switch {
		case f < 2 || f >= bf.meta.pgid:
			return nil, nil, fmt.Errorf("freelist page %d: free page %d outside 2..%d", id, f, bf.meta.pgid-1)
		case free[f]:
			return nil, nil, fmt.Errorf("freelist page %d: page %d freed twice", id, f)
		}
		free[f] = true
	}
	for i := uint64(0); i <= uint64(p.overflow); i++ {
		pages = append(pages, id+i)
	}
	return free, pages, nil
}

// kv is one key/value of a leaf page; bucket marks a nested bucket; off is
// the key's offset in the page's data.
type kv struct {
	key, val []byte
	bucket   bool
	off      int
}

// leafElems decodes a leaf page's elements. Elements whose key or value
// lies outside the page are reported one by one (bad); the others are
// returned.
func leafElems(p *page) (out []kv, bad []string) {
	le := binary.LittleEndian
	n := int(p.count)
	if pgHeaderSize+n*elemSize > len(p.data) {
		return nil, []string{fmt.Sprintf("%d elements do not fit in the page (damaged header)", n)}
	}
	// bbolt packs keys and values right after the element array, in
	// element order: data that starts anywhere else means a damaged count
	// or element.
	next := uint64(pgHeaderSize + n*elemSize)
	for i := range n {
		e := pgHeaderSize + i*elemSize
		flags, pos, ks, vs := le.Uint32(p.data[e:]), uint64(le.Uint32(p.data[e+4:])), uint64(le.Uint32(p.data[e+8:])), uint64(le.Uint32(p.data[e+12:]))
		start := uint64(e) + pos
		if flags&^leafFlagBucket != 0 || start+ks+vs > uint64(len(p.data)) || pos < uint64(n-i)*elemSize {
			bad = append(bad, fmt.Sprintf("element %d: flags %#x, key %d+%d bytes, value %d bytes outside the page", i, flags, pos, ks, vs))
			continue
		}
		if start != next {
			bad = append(bad, fmt.Sprintf("element %d: data at byte %d, where byte %d follows the previous element (damaged count or element)", i, start, next))
		}
		next = start + ks + vs
		out = append(out, kv{key: p.data[start : start+ks], val: p.data[start+ks : start+ks+vs], bucket: flags&leafFlagBucket != 0, off: int(start)})
	}
	return out, bad
}

type branchElem struct {
	key   []byte
	child uint64
}

func branchElems(p *page) (out []branchElem, bad []string) {
	le := binary.LittleEndian
	n := int(p.count)
	if n == 0 || pgHeaderSize+n*elemSize > len(p.data) {
		return nil, []string{fmt.Sprintf("%d elements do not fit in the page (damaged header)", n)}
	}
	next := uint64(pgHeaderSize + n*elemSize)
	for i := range n {
		e := pgHeaderSize + i*elemSize
		pos, ks, child := uint64(le.Uint32(p.data[e:])), uint64(le.Uint32(p.data[e+4:])), le.Uint64(p.data[e+8:])
		start := uint64(e) + pos
		if start+ks > uint64(len(p.data)) || pos < uint64(n-i)*elemSize || start != next {
			bad = append(bad, fmt.Sprintf("element %d: key %d+%d bytes not where the previous element ends (damaged count or element)", i, pos, ks))
			continue
		}
		next = start + ks
		out = append(out, branchElem{key: p.data[start : start+ks], child: child})
	}
	return out, bad
}

// treeWalk visits the records of the buckets under the meta's root,
// tolerating damage: a page that cannot be read or parsed is reported and
// its subtree skipped; the walk goes on with the rest.
type treeWalk struct {
	bf *boltFile
	// reached maps every page reached (overflow included) to its owner.
	reached map[uint64]string
	// problems: damage found, in the order found.
	problems []string
	// onRecord is called for each key/value of a top-level bucket.
	onRecord func(bucket string, k, v []byte)
	// onBucket is called for each top-level bucket found.
	onBucket func(bucket string)
	// recordAt, when set, gets each record's path of pages from the root
	// and the file offset of its key (tests use it to know which records
	// a damaged page holds, and where to damage a record).
	recordAt func(bucket string, k, v []byte, path []uint64, keyOff int64)
	// starts: pages reached as the start of a page (not as overflow).
	starts map[uint64]bool
	// warnings: oddities that are not damage (a bucket this build does
	// not know, walked for structure only).
	warnings []string
	// skipped counts records lost per bucket to damaged elements or keys
	// out of order (records on unreadable pages are not known).
	skipped map[string]int
	// badPages counts pages skipped.
	badPages int
}

func (w *treeWalk) problem(format string, args ...any) {
	w.problems = append(w.problems, fmt.Sprintf(format, args...))
}

// walk walks from the meta's root bucket page.
func (w *treeWalk) walk() {
	if w.reached == nil {
		w.reached, w.starts = map[uint64]string{}, map[uint64]bool{}
		w.skipped = map[string]int{}
	}
	w.tree(w.bf.meta.root, "", nil, nil, nil, 0, false)
}

// tree walks the subtree at page id of bucket ("" for the root bucket,
// whose records are the top-level buckets); keys must lie in [lo, hi).
func (w *treeWalk) tree(id uint64, bucket string, lo, hi []byte, path []uint64, depth int, child bool) {
	where := bucket
	if where == "" {
		where = "root bucket"
	} else {
		where = "bucket " + where
	}
	if depth > maxTreeDepth {
		w.problem("%s: page %d: tree deeper than %d (cycle)", where, id, maxTreeDepth)
		return
	}
	if w.starts[id] {
		w.problem("%s: page %d: reached a second time (multiple references)", where, id)
		w.badPages++
		return
	}
	if owner, ok := w.reached[id]; ok {
		// Covered by another page's overflow: that page's header is the
		// damaged one; this one is still read.
		w.problem("%s: page %d: also covered by the overflow of %s (damaged header there)", where, id, owner)
	}
	w.starts[id] = true
	p, err := w.bf.readPage(id)
	if err != nil {
		w.problem("%s: %v", where, err)
		w.badPages++
		return
	}
	for i := uint64(0); i <= uint64(p.overflow); i++ {
		if _, ok := w.reached[id+i]; ok && i > 0 {
			w.problem("%s: page %d: its overflow page %d is also in use (damaged header?)", where, id, id+i)
		}
		w.reached[id+i] = fmt.Sprintf("%s page %d", where, id)
	}
	path = append(path, id)
	if child && p.count == 0 {
		// bbolt merges pages that empty; only a bucket's root page may
		// hold nothing.
		w.problem("%s: page %d: no elements under a branch page (damaged count)", where, id)
		w.badPages++
		return
	}
	switch p.flags {
	case pgFlagBranch:
		elems, bad := branchElems(p)
		for _, b := range bad {
			w.problem("%s: branch page %d: %s", where, id, b)
		}
		if len(bad) > 0 {
			// Children of a damaged branch page cannot be trusted to be
			// where its keys say; skip the page.
			w.badPages++
			return
		}
		for i, e := range elems {
			if !inRange(e.key, lo, hi) || (i > 0 && bytes.Compare(elems[i-1].key, e.key) >= 0) {
				w.problem("%s: branch page %d: key %x out of order", where, id, e.key)
				w.badPages++
				return
			}
		}
		for i, e := range elems {
			clo, chi := e.key, hi
			if i == 0 {
				clo = lo
			}
			if i+1 < len(elems) {
				chi = elems[i+1].key
			}
			w.tree(e.child, bucket, clo, chi, path, depth+1, true)
		}
	case pgFlagLeaf:
		w.leaf(p, bucket, where, lo, hi, path)
	default:
		w.problem("%s: page %d: page type %#x where a branch or leaf page belongs (damaged header)", where, id, p.flags)
		w.badPages++
	}
}

func inRange(k, lo, hi []byte) bool {
	return (lo == nil || bytes.Compare(k, lo) >= 0) && (hi == nil || bytes.Compare(k, hi) < 0)
}

func (w *treeWalk) leaf(p *page, bucket, where string, lo, hi []byte, path []uint64) {
	elems, bad := leafElems(p)
	for _, b := range bad {
		w.problem("%s: leaf page %d: %s", where, p.id, b)
	}
	if bucket != "" && pgHeaderSize+int(p.count)*elemSize <= len(p.data) {
		w.skipped[bucket] += int(p.count) - len(elems)
	}
	var prev []byte
	for _, e := range elems {
		if !inRange(e.key, lo, hi) || (prev != nil && bytes.Compare(prev, e.key) >= 0) {
			w.problem("%s: leaf page %d: key %x out of order (damaged key)", where, p.id, e.key)
			if bucket != "" {
				w.skipped[bucket]++
			}
			continue
		}
		prev = e.key
		if bucket == "" {
			if !e.bucket {
				w.problem("root bucket: leaf page %d: key %q is not a bucket", p.id, e.key)
				continue
			}
			w.bucket(string(e.key), e.val, p, e.off+len(e.key), path)
			continue
		}
		if e.bucket {
			w.problem("%s: leaf page %d: unexpected nested bucket %q", where, p.id, e.key)
			continue
		}
		if w.recordAt != nil {
			w.recordAt(bucket, e.key, e.val, path, p.off+int64(e.off))
		}
		if w.onRecord != nil && knownBucket(bucket) {
			w.onRecord(bucket, e.key, e.val)
		}
	}
}

// bucket walks one top-level bucket from its bucket value.
func (w *treeWalk) bucket(name string, val []byte, parentPage *page, valOff int, path []uint64) {
	parent := parentPage.id
	if w.onBucket != nil {
		w.onBucket(name)
	}
	if len(val) < 16 {
		w.problem("bucket %s: bucket header %d bytes (want 16)", name, len(val))
		return
	}
	if !knownBucket(name) {
		w.warnings = append(w.warnings, fmt.Sprintf("bucket %q is not one this build uses (structure checked only)", name))
	}
	root := binary.LittleEndian.Uint64(val)
	if root != 0 {
		w.tree(root, name, nil, nil, path, 1, false)
		return
	}
	// Inline bucket: a leaf page inside the value.
	inl := val[16:]
	if len(inl) < pgHeaderSize {
		w.problem("bucket %s: inline page %d bytes", name, len(inl))
		return
	}
	p := parsePageHeader(inl)
	p.id, p.off = parent, parentPage.off+int64(valOff)+16
	if p.flags != pgFlagLeaf {
		w.problem("bucket %s: inline page type %#x is not leaf (damaged)", name, p.flags)
		return
	}
	w.leaf(p, name, "bucket "+name, nil, nil, path)
}

func knownBucket(name string) bool {
	for _, b := range allBuckets {
		if string(b) == name {
			return true
		}
	}
	return false
}

// unreached lists pages below the high-water mark that are neither reached
// from the root, nor free, nor the freelist or a meta page.
func (w *treeWalk) unreached(free map[uint64]bool, freelistPages []uint64) []uint64 {
	fl := map[uint64]bool{}
	for _, p := range freelistPages {
		fl[p] = true
	}
	var out []uint64
	for id := uint64(2); id < w.bf.meta.pgid; id++ {
		if _, ok := w.reached[id]; !ok && !free[id] && !fl[id] {
			out = append(out, id)
		}
	}
	return out
}

// reachedFree lists pages both reached and free (bbolt would overwrite them).
func (w *treeWalk) reachedFree(free map[uint64]bool) []string {
	var ids []uint64
	for id := range w.reached {
		if free[id] {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	// Name each page with the page that claims it: a damaged overflow
	// count makes a page claim its free neighbours.
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = fmt.Sprintf("%d (held by %s)", id, w.reached[id])
	}
	return out
}
