package store

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A store path that is a named pipe made every open block (reading a FIFO
// waits for a writer, in a system call signals do not end); a socket,
// device or directory is no database either. Each is refused at once,
// before anything opens it, saying what it is.
func TestOpenRefusesWhatIsNotARegularFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.db")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock.db")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	link := filepath.Join(dir, "link.db")
	if err := os.Symlink(fifo, link); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, path, kind string }{
		{"fifo", fifo, "named pipe"},
		{"symlink to a fifo", link, "named pipe"},
		{"socket", sock, "socket"},
		{"directory", dir, "directory"},
		{"device", "/dev/null", "character device"},
	}
	ctx := context.Background()
	for _, tc := range cases {
		ops := map[string]func() error{
			"open": func() error {
				s, err := Open(tc.path, Options{Timeout: 200 * time.Millisecond})
				if err == nil {
					s.Close()
				}
				return err
			},
			"open read-only": func() error {
				s, err := Open(tc.path, Options{ReadOnly: true, NoCreate: true, Timeout: 200 * time.Millisecond})
				if err == nil {
					s.Close()
				}
				return err
			},
			"check": func() error {
				_, err := CheckFile(ctx, tc.path, CheckOptions{BoltCheck: true, Timeout: 200 * time.Millisecond})
				return err
			},
			"salvage": func() error {
				_, err := Salvage(ctx, tc.path, filepath.Join(t.TempDir(), "new.db"), Options{Timeout: 200 * time.Millisecond})
				return err
			},
		}
		for op, fn := range ops {
			t.Run(tc.name+"/"+op, func(t *testing.T) {
				err := within(t, 5*time.Second, op, fn)
				if err == nil || !strings.Contains(err.Error(), "not a regular file") || !strings.Contains(err.Error(), tc.kind) {
					t.Fatalf("%s %s: %v, want a refusal naming %q", op, tc.path, err, tc.kind)
				}
			})
		}
	}
}
