package boltstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
)

// ErrCorrupt marks a store file that bbolt must not map (errors.Is): it
// would fault inside bbolt.Open on a truncated or damaged file instead of
// returning an error.
var ErrCorrupt = errors.New("corrupt store file")

// bbolt layout (native byte order, little-endian on every supported
// platform): page header 16 bytes (id u64, flags u16, count u16, overflow
// u32); meta at offset 16 of pages 0 and 1: magic u32, version u32, page
// size u32, flags u32, root {page u64, sequence u64}, freelist page u64,
// high-water page u64, txid u64, checksum u64 (FNV-64a of the 56 bytes
// before it). The same check as the agent's store (store/boltfile.go),
// reduced to what keeps bbolt.Open from faulting.
const (
	pgHeaderSize = 16
	pgFlagMeta   = 0x04
	boltMagic    = 0xED0CDAED
	boltVersion  = 2
	metaSumLen   = 56
	noFreelist   = ^uint64(0)
)

type metaPage struct {
	pageSize                 uint32
	root, freelist, pgid, tx uint64
	invalid                  string
}

func parseMeta(b []byte) metaPage {
	var m metaPage
	if len(b) < pgHeaderSize+metaSumLen+8 {
		m.invalid = "short read"
		return m
	}
	le := binary.LittleEndian
	h, d := b[:pgHeaderSize], b[pgHeaderSize:]
	m.pageSize = le.Uint32(d[8:])
	m.root = le.Uint64(d[16:])
	m.freelist, m.pgid, m.tx = le.Uint64(d[32:]), le.Uint64(d[40:]), le.Uint64(d[48:])
	sum := fnv.New64a()
	sum.Write(d[:metaSumLen])
	switch {
	case le.Uint32(d[0:]) != boltMagic:
		m.invalid = "no bbolt magic number"
	case le.Uint32(d[4:]) != boltVersion:
		m.invalid = fmt.Sprintf("bbolt format version %d", le.Uint32(d[4:]))
	case sum.Sum64() != le.Uint64(d[metaSumLen:]):
		m.invalid = "checksum mismatch"
	case le.Uint16(h[8:]) != pgFlagMeta:
		m.invalid = fmt.Sprintf("page type %#x is not meta", le.Uint16(h[8:]))
	case m.pageSize < 512 || m.pageSize > 1<<16 || m.pageSize&(m.pageSize-1) != 0:
		m.invalid = fmt.Sprintf("page size %d", m.pageSize)
	}
	return m
}

// checkFile validates an existing store file before bbolt maps it: a valid
// meta page (checksum), a file size that is a multiple of the page size
// and holds at least the pages the newest valid meta page records, and
// root and freelist pages inside them. A missing or empty file is fine
// (bbolt creates it).
func checkFile(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: not a regular file (%s)", ErrCorrupt, fi.Mode().Type())
	}
	size := fi.Size()
	if size == 0 {
		return nil
	}
	buf := make([]byte, 4096)
	n, err := f.ReadAt(buf, 0)
	if err != nil && err != io.EOF {
		return err
	}
	m0 := parseMeta(buf[:n])
	sizes := []int64{int64(m0.pageSize)}
	if m0.invalid != "" {
		sizes = []int64{4096, 1024, 2048, 8192, 16384, 32768, 65536}
	}
	var m1 metaPage
	for _, ps := range sizes {
		n, err := f.ReadAt(buf, ps)
		if err != nil && err != io.EOF {
			return err
		}
		m1 = parseMeta(buf[:n])
		if m1.invalid == "" && int64(m1.pageSize) == ps {
			break
		}
	}
	var m metaPage
	switch {
	case m0.invalid != "" && m1.invalid != "":
		return fmt.Errorf("%w: %d bytes, no valid meta page (meta 0: %s; meta 1: %s)", ErrCorrupt, size, m0.invalid, m1.invalid)
	case m0.invalid != "":
		m = m1
	case m1.invalid != "":
		m = m0
	default:
		if m0.pageSize != m1.pageSize {
			return fmt.Errorf("%w: meta pages disagree on the page size (%d, %d)", ErrCorrupt, m0.pageSize, m1.pageSize)
		}
		m = m0
		if m1.tx > m0.tx {
			m = m1
		}
	}
	ps := int64(m.pageSize)
	switch {
	case size%ps != 0:
		return fmt.Errorf("%w: file is truncated: %d bytes is not a multiple of the page size %d", ErrCorrupt, size, ps)
	case m.pgid < 3 || m.pgid > uint64(1<<62)/uint64(ps):
		return fmt.Errorf("%w: meta page records an impossible %d pages", ErrCorrupt, m.pgid)
	case size < int64(m.pgid)*ps:
		return fmt.Errorf("%w: file is truncated: %d bytes, but the meta page (txid %d) records %d pages of %d bytes (%d bytes)",
			ErrCorrupt, size, m.tx, m.pgid, ps, int64(m.pgid)*ps)
	case m.root < 2 || m.root >= m.pgid:
		return fmt.Errorf("%w: root page %d outside 2..%d", ErrCorrupt, m.root, m.pgid-1)
	case m.freelist != noFreelist && (m.freelist < 2 || m.freelist >= m.pgid):
		return fmt.Errorf("%w: freelist page %d outside 2..%d", ErrCorrupt, m.freelist, m.pgid-1)
	}
	return nil
}
