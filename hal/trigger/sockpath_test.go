package trigger

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A trigger socket path that cannot be the socket is refused by Listen
// (run) and by CheckSocketTarget (`config check`) with the same words, and
// Listen refuses it before it creates the lock file beside it: pointed at
// an existing file, it used to leave FILE.lock there (next to a camera's
// frames: sample1.jpg.lock), and a missing folder got only "lock file:
// open ...: no such file or directory".
func TestSocketTargetRefusedBeforeTheLock(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "sample1.jpg")
	if err := os.WriteFile(file, []byte("jpeg"), 0o600); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.sock")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	badLock := filepath.Join(dir, "l.sock")
	if err := os.Mkdir(badLock+".lock", 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, path, want string }{
		{"regular file", file, "exists and is not a socket but a regular file"},
		{"directory", sub, "exists and is not a socket but a directory"},
		{"symbolic link", link, "exists and is not a socket but a symbolic link"},
		{"missing folder", filepath.Join(dir, "nodir", "t.sock"), "its folder " + filepath.Join(dir, "nodir") + " does not exist"},
		{"folder is a file", filepath.Join(file, "t.sock"), "is not a folder but a regular file"},
		{"lock file a directory", badLock, "lock file " + badLock + ".lock is not a regular file but a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckSocketTarget(tc.path)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("CheckSocketTarget: %v, want %q", err, tc.want)
			}
			h, err := NewHTTP(HTTPConfig{Socket: tc.path}, nil)
			if err != nil {
				t.Fatal(err)
			}
			err = h.Listen()
			if err == nil {
				closeListeners(h)
				t.Fatal("Listen accepted it")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Listen: %v, want %q (as config check says)", err, tc.want)
			}
			if tc.path != badLock {
				if _, err := os.Lstat(tc.path + ".lock"); err == nil {
					t.Errorf("Listen left %s.lock beside the path it refused", tc.path)
				}
			}
		})
	}
	if err := CheckSocketTarget(filepath.Join(dir, "nodir", "t.sock")); !errors.Is(err, ErrSocketFolderMissing) {
		t.Errorf("missing folder: %v, want ErrSocketFolderMissing", err)
	}
	// A stale socket (left by kill -9) and a free path pass: Listen takes them.
	stale := filepath.Join(dir, "stale.sock")
	staleSocket(t, stale)
	for _, p := range []string{stale, filepath.Join(dir, "new.sock")} {
		if err := CheckSocketTarget(p); err != nil {
			t.Errorf("CheckSocketTarget(%s): %v", p, err)
		}
		h, err := NewHTTP(HTTPConfig{Socket: p}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.Listen(); err != nil {
			t.Errorf("Listen(%s): %v", p, err)
		}
		closeListeners(h)
	}
}
