package regfile

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// What is not a regular file is refused at once, saying what it is: a
// named pipe (os.ReadFile waited for a writer for good, deaf to SIGTERM),
// a symbolic link to one, a directory, a socket, a device.
func TestReadFileRefusesWhatIsNotARegularFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(fifo, link); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, tc := range []struct{ name, path, kind string }{
		{"fifo", fifo, "a named pipe (FIFO)"},
		{"symlink to a fifo", link, "a named pipe (FIFO)"},
		{"directory", dir, "a directory"},
		{"socket", sock, "a socket"},
		{"device", "/dev/zero", "a character device"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() { _, err := ReadFile(tc.path); done <- err }()
			select {
			case err := <-done:
				if !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), tc.path+": not a regular file but "+tc.kind) {
					t.Fatalf("ReadFile(%s): %v, want not a regular file but %s", tc.name, err, tc.kind)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("ReadFile(%s) still blocked after 5s", tc.name)
			}
		})
	}
}

func TestReadFileRegular(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "l")
	if err := os.Symlink(p, link); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{p, link} {
		b, err := ReadFile(path)
		if err != nil || string(b) != "hello" {
			t.Fatalf("ReadFile(%s) = %q, %v", path, b, err)
		}
	}
	_, err := ReadFile(filepath.Join(dir, "missing"))
	if !errors.Is(err, fs.ErrNotExist) || !strings.HasPrefix(err.Error(), "open ") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "f")
	os.WriteFile(file, nil, 0o600)
	if err := Check(fifo); !errors.Is(err, ErrNotRegular) {
		t.Errorf("Check(fifo) = %v", err)
	}
	for _, p := range []string{file, filepath.Join(dir, "missing")} {
		if err := Check(p); err != nil {
			t.Errorf("Check(%s) = %v, want nil", p, err)
		}
	}
}
