// Package regfile reads the small files a command is configured with (the
// agent's config, the models' manifest, keys and tokens) without blocking
// on one that is not a regular file. os.ReadFile of a named pipe waits for
// a writer in a system call that no signal ends (SIGTERM then does
// nothing until start-up gets past it), and a device may never end; a
// directory is no file either. Open refuses all of these with an error
// naming what the path is, before reading a byte.
package regfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// ErrNotRegular is wrapped by the error for a path that exists but is not
// a regular file (nor a symbolic link to one).
var ErrNotRegular = errors.New("not a regular file")

// Open opens path (symbolic links followed) for reading when it is a
// regular file. The type is checked before the open, so that a device is
// never opened, and again on the open file, which is opened with
// O_NONBLOCK: a path swapped for a named pipe in between does not block
// the open, and fails the second check. O_NONBLOCK changes nothing for
// reading a regular file.
func Open(path string) (*os.File, error) {
	fi, err := os.Stat(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			pe.Op = "open" // as os.ReadFile says it
		}
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, notRegular(path, fi.Mode())
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if fi, err = f.Stat(); err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, notRegular(path, fi.Mode())
	}
	return f, nil
}

// Check refuses a path that exists and is not a regular file (symbolic
// links followed), without opening it; a missing or unreadable path passes,
// for its reader to report in its own terms. It is for files read by code
// that does not use Open: checked, then read, a path swapped in between
// is not caught.
func Check(path string) error {
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		return notRegular(path, fi.Mode())
	}
	return nil
}

// ReadFile is os.ReadFile for a regular file only (Open).
func ReadFile(path string) ([]byte, error) { return ReadWith(Open, path) }

// ReadWith reads the whole file that open (Open, or a stricter opener
// built on it) gives for path, and closes it.
func ReadWith(open func(string) (*os.File, error), path string) ([]byte, error) {
	f, err := open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

func notRegular(path string, m os.FileMode) error {
	return fmt.Errorf("%s: %w but %s", path, ErrNotRegular, Kind(m))
}

// Kind names what a file of mode m is: "a directory", "a named pipe
// (FIFO)", "a character device", ...
func Kind(m os.FileMode) string {
	switch {
	case m.IsRegular():
		return "a regular file"
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a block device"
	case m&os.ModeSymlink != 0:
		return "a symbolic link"
	}
	return fmt.Sprintf("mode %v", m.Type())
}
