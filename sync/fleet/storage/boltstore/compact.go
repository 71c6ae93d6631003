package boltstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/internal/fileops"
)

// Compact rewrites the store file at path without its free pages: a bbolt
// file never shrinks when records are deleted (its pages are reused), so
// after a prune of a busy month the file keeps its peak size. The service
// must be stopped: the file's lock is taken (waiting up to timeout) and
// held until the compacted copy has replaced it. The copy is written
// beside the file (room for it and fileops.Reserve more is checked first),
// checked, given the file's owner and mode, and renamed over it; a path
// that is a symbolic link has the file it points to replaced. On any
// error the old file is left as it was. It returns the sizes before and
// after.
func Compact(path string, timeout time.Duration) (before, after int64, err error) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return 0, 0, fmt.Errorf("compact %q: %w", path, err)
	}
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
	defer src.Close() // after the rename: the lock is held until the copy is in place
	tmp := real + ".compact.tmp"
	_ = os.Remove(tmp)
	if err := writeCompact(src, tmp, was); err != nil {
		os.Remove(tmp)
		return 0, 0, fmt.Errorf("compact %q: %w; the store file is left as it was", path, err)
	}
	if err := os.Rename(tmp, real); err != nil {
		os.Remove(tmp)
		return 0, 0, fmt.Errorf("compact %q: %w; the store file is left as it was", path, err)
	}
	fileops.SyncDir(filepath.Dir(real))
	now, err := os.Stat(real)
	if err != nil {
		return was.Size(), 0, fmt.Errorf("compact %q: %w", path, err)
	}
	return was.Size(), now.Size(), nil
}

// writeCompact copies src into a new file at tmp, made durable, checked
// and given was's owner and mode.
func writeCompact(src *bolt.DB, tmp string, was os.FileInfo) error {
	dst, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return err
	}
	if err := bolt.Compact(dst, src, 4<<20); err != nil {
		dst.Close()
		return err
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
