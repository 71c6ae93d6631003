// Package fileops holds the file steps that the agent's store and the
// fleet's store share when they rewrite a file in place: room for the copy,
// the old file's owner and mode on the new one, a durable rename.
package fileops

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// Reserve is the free space a copy must leave on its file system beyond
// itself: the agent's disk is the ATM controller's, and the ATM application
// must not find it full because a store was compacted.
const Reserve = 16 << 20

// ErrNoRoom: a copy would leave less than Reserve free.
var ErrNoRoom = errors.New("not enough free space")

// RoomFor checks that dir's file system can take a copy of size bytes (a
// compacted file is at most the old one's size) and keep Reserve free.
func RoomFor(dir string, size int64) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return nil // not knowable: the write itself reports a full disk
	}
	free := uint64(st.Bavail) * uint64(st.Bsize)
	if need := uint64(size) + Reserve; free < need {
		return fmt.Errorf("%w in %s for a copy of the store: %d MiB free, %d MiB needed (the %d MiB file and %d MiB left for the rest of the system); not compacted", ErrNoRoom, dir, free>>20, (need+1<<20-1)>>20, (size+1<<20-1)>>20, Reserve>>20)
	}
	return nil
}

// KeepOwner gives path the owner, group and permission bits of was (an
// operator command run as root must not leave a file the service user
// cannot open). Changing the owner needs root; without it the file already
// belongs to the caller, and only a different owner is reported.
func KeepOwner(path string, was os.FileInfo) error {
	if err := os.Chmod(path, was.Mode().Perm()); err != nil {
		return fmt.Errorf("keep mode of %q: %w", path, err)
	}
	uid, gid, ok := Owner(was)
	if !ok {
		return nil
	}
	now, err := os.Stat(path)
	if err != nil {
		return err
	}
	if u, g, _ := Owner(now); u == uid && g == gid {
		return nil
	}
	if err := os.Lchown(path, uid, gid); err != nil {
		return fmt.Errorf("keep owner %d:%d of %q: %w (run the command as the service user or as root)", uid, gid, path, err)
	}
	return nil
}

// Owner returns the owner and group of a file.
func Owner(fi os.FileInfo) (uid, gid int, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	return int(st.Uid), int(st.Gid), true
}

// SyncDir makes a rename in dir durable (best effort).
func SyncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
