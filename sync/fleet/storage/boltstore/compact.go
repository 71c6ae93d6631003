package boltstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/internal/fileops"
)

// ErrLocked: the store is held by another process (the service, or a
// compaction).
var ErrLocked = errors.New("the store is in use by another process")

// realPath resolves a symbolic link to the store file (a file that does
// not exist yet is its own path).
func realPath(path string) string {
	if r, err := filepath.EvalSymlinks(path); err == nil {
		return r
	}
	return path
}

// lockStore takes real + ".lock", waiting up to timeout. Open holds it for
// the service's life and Compact for the compaction: a service started
// while a compaction runs waits for it, then opens the compacted file.
// bbolt's own lock is on the file, and a compaction replaces the file: a
// service that waited on that lock got it on the old file, by then
// deleted, and ingested into it what the next restart lost. The lock file
// is made readable by all, so that one created by root (an operator's
// compaction) can be locked by the service's user.
func lockStore(real string, timeout time.Duration) (*os.File, error) {
	// Never through a link planted at the lock's name (root's compaction
	// would create or lock its target).
	f, err := os.OpenFile(real+".lock", os.O_RDONLY|os.O_CREATE|syscall.O_NOFOLLOW, 0o644)
	if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EROFS) {
		// No right to create it in the store's folder (the store file
		// itself writable): lock the store file instead, as before the
		// lock file, rather than not start.
		f, err = os.OpenFile(real, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	// Readable by all, whatever the umask of whoever made it (root's
	// compaction under umask 077 made a lock the service could not open),
	// and owned as the store file is.
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm() != 0o644 && fi.Size() == 0 {
		_ = f.Chmod(0o644)
	}
	if was, err := os.Stat(real); err == nil {
		if uid, gid, ok := fileops.Owner(was); ok && os.Geteuid() == 0 {
			_ = f.Chown(uid, gid)
		}
	}
	deadline := time.Now().Add(timeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return nil, fmt.Errorf("%w (waited %v for %s)", ErrLocked, timeout, real+".lock")
			}
			return nil, fmt.Errorf("lock %s: %w", real+".lock", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Compact rewrites the store file at path without its free pages: a bbolt
// file never shrinks when records are deleted (its pages are reused), so
// after a prune of a busy month the file keeps its peak size, and deleted
// records (an erased identity) stay readable in its free pages. The
// service must be stopped: the store's lock is taken (waiting up to
// timeout) and held until the compacted copy has replaced the file. The
// copy is written beside the file (room for it and fileops.Reserve more is
// checked first; a copy a killed compaction left is removed), checked,
// given the file's owner and mode, and renamed over it; a path that is a
// symbolic link has the file it points to replaced. The copy's alert
// indexes are rebuilt at the next open. On any error the old file is left
// as it was. It returns the sizes before and after.
func Compact(path string, timeout time.Duration) (before, after int64, err error) {
	real := realPath(path)
	lock, err := lockStore(real, timeout)
	if errors.Is(err, ErrLocked) {
		return 0, 0, fmt.Errorf("compact %q: %w: stop the service first (systemctl stop atm-fleet)", path, err)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("compact %q: %w", path, err)
	}
	defer lock.Close()
	if err := checkFile(real); err != nil {
		return 0, 0, fmt.Errorf("compact %q: %w; not compacted", path, err)
	}
	was, err := os.Stat(real)
	if err != nil {
		return 0, 0, fmt.Errorf("compact %q: %w", path, err)
	}
	if !was.Mode().IsRegular() || was.Size() == 0 {
		return 0, 0, fmt.Errorf("compact %q: not a store file", path)
	}
	removeStaleCopies(real)
	if err := fileops.RoomFor(filepath.Dir(real), was.Size()); err != nil {
		return 0, 0, fmt.Errorf("compact %q: %w", path, err)
	}
	src, err := bolt.Open(real, 0o600, &bolt.Options{Timeout: timeout})
	if errors.Is(err, bolt.ErrTimeout) {
		return 0, 0, fmt.Errorf("compact %q: the file is locked by another process (stop the service first: systemctl stop atm-fleet)", path)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("compact %q: %w", path, err)
	}
	defer src.Close() // after the rename
	if err := replaceCompacted(src, real, was, metaSchema, metaScrubPending); err != nil {
		return 0, 0, fmt.Errorf("compact %q: %w; the store file is left as it was", path, err)
	}
	now, err := os.Stat(real)
	if err != nil {
		return was.Size(), 0, fmt.Errorf("compact %q: %w", path, err)
	}
	return was.Size(), now.Size(), nil
}

// copyPattern names a compaction's copy beside the store file.
func copyPattern(real string) string { return "." + filepath.Base(real) + ".compact-*" }

// removeStaleCopies deletes the copies a killed compaction left.
func removeStaleCopies(real string) {
	old, _ := filepath.Glob(filepath.Join(filepath.Dir(real), copyPattern(real)))
	for _, f := range old {
		os.Remove(f)
	}
}

// replaceCompacted writes src, compacted, to a new file beside real (a
// fresh name: a link planted at a fixed name is never followed), makes it
// durable, checks it, gives it was's owner and mode and renames it over
// real. The meta keys named in clear are deleted in the copy (the schema
// version: the next open rebuilds the alert indexes; a scrub owed).
func replaceCompacted(src *bolt.DB, real string, was os.FileInfo, clear ...[]byte) error {
	f, err := os.CreateTemp(filepath.Dir(real), copyPattern(real))
	if err != nil {
		return err
	}
	tmp := f.Name()
	f.Close()
	err = writeCompact(src, tmp, was, clear...)
	if err == nil {
		err = os.Rename(tmp, real)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	fileops.SyncDir(filepath.Dir(real))
	return nil
}

// writeCompact copies src into the empty file tmp, made durable, checked
// and given was's owner and mode.
func writeCompact(src *bolt.DB, tmp string, was os.FileInfo, clear ...[]byte) error {
	dst, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return err
	}
	if err := bolt.Compact(dst, src, 4<<20); err != nil {
		dst.Close()
		return err
	}
	if len(clear) > 0 {
		err := dst.Update(func(tx *bolt.Tx) error {
			m := tx.Bucket(bMeta)
			for _, k := range clear {
				if m == nil {
					break
				}
				if err := m.Delete(k); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			dst.Close()
			return err
		}
	}
	if err := dst.Sync(); err != nil {
		dst.Close()
		return err
	}
	if err := dst.Close(); err != nil {
		return err
	}
	if err := checkFile(tmp); err != nil {
		return fmt.Errorf("the copy: %w", err)
	}
	return fileops.KeepOwner(tmp, was)
}

// Meta keys: the schema version, and a scrub owed: an erasure whose
// records' old copies are still in the file's free pages (set in the
// erasure's transaction, gone from the rewritten copy; Open rewrites a
// file that has it, so a scrub that found no room is done later).
var (
	metaSchema       = []byte("schema")
	metaScrubPending = []byte("scrub_pending")
)

// compactInPlace rewrites the running store's file without its free pages:
// after an identity's erasure, so that nothing of it stays readable in the
// file. Every transaction waits meanwhile (the store's mutex).
func (s *Store) compactInPlace() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	was, err := os.Stat(s.path)
	if err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	removeStaleCopies(s.path)
	if err := fileops.RoomFor(filepath.Dir(s.path), was.Size()); err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	if err := replaceCompacted(s.db, s.path, was, metaScrubPending); err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	// The old file, renamed over, is still open: reopen the path.
	s.db.Close()
	db, err := bolt.Open(s.path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return fmt.Errorf("compact: reopen %s: %w (the store is closed: restart the service)", s.path, err)
	}
	s.db = db
	return nil
}
