package models

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// SealedFile is an in-memory file (memfd_create) holding bytes that can no
// longer change: sealed against writes, growing, shrinking and further
// seals (F_ADD_SEALS) before anyone else can open it. Path names it for a
// library that reads only by path (OpenCV 4.6's Torch importer): whoever
// opens Path reads exactly those bytes, whatever happens to the file they
// were checked from. Close it once the library has read it.
type SealedFile struct {
	f *os.File
}

// NewSealedFile copies b into a sealed in-memory file; name is shown in
// /proc/self/fd (as memfd:name) and in errors.
func NewSealedFile(name string, b []byte) (*SealedFile, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create for %s: %w (the system call filter must allow memfd_create, in systemd's @ipc)", name, err)
	}
	f := os.NewFile(uintptr(fd), "memfd:"+name)
	for off := 0; off < len(b); {
		n, err := f.Write(b[off:])
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("copy %s into memory: %w", name, err)
		}
		off += n
	}
	const seals = unix.F_SEAL_WRITE | unix.F_SEAL_GROW | unix.F_SEAL_SHRINK | unix.F_SEAL_SEAL
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		f.Close()
		return nil, fmt.Errorf("seal the in-memory copy of %s: %w", name, err)
	}
	return &SealedFile{f: f}, nil
}

// Path is /proc/self/fd/N: this process's name for the sealed copy, valid
// while it is open.
func (s *SealedFile) Path() string { return "/proc/self/fd/" + strconv.Itoa(int(s.f.Fd())) }

// Close releases the copy.
func (s *SealedFile) Close() error { return s.f.Close() }
