package store

import (
	"syscall"

	bolt "go.etcd.io/bbolt"
)

// releaseMapped drops this process's page-table entries for the database
// file's mapping after a scan over many records. bbolt reads through a
// read-only shared mapping: every page a scan touches (and, by the kernel's
// fault-around, up to 64 KB of cached neighbours, templates included) stays
// mapped and counts in the agent's RSS until the file is remapped, so a
// summary over a week of visits would keep the whole store resident. The
// pages stay in the page cache, unmapped, where the kernel reclaims them
// first under memory pressure; the next read faults them back in without
// disk I/O while they are cached. MADV_DONTNEED on a read-only file mapping
// never changes data.
//
// It must run inside a transaction: a transaction holds bbolt's mmap lock
// for reading, so the mapping cannot be replaced (remapped to a larger
// size) while the advice is given.
func releaseMapped(db *bolt.DB, tx *bolt.Tx) {
	data, size := db.Info().Data, uintptr(tx.Size())
	if data == 0 || size == 0 {
		return
	}
	// Advisory: a failure only leaves pages mapped.
	_, _, _ = syscall.Syscall(syscall.SYS_MADVISE, data, size, syscall.MADV_DONTNEED)
}
