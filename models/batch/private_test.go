package batch

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestOutputPrivate: OUT holds copies of face photos and face thumbnails.
// Run with umask 000 over photos that only their owner may read, every
// folder and file the job writes grants nothing to group or others (before:
// 0755 folders, 0644 copies and thumbnails, readable by every local user).
func TestOutputPrivate(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	in := fixture(t)
	if err := filepath.WalkDir(in, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeSymlink != 0 {
			return err
		}
		mode := os.FileMode(0o600)
		if d.IsDir() {
			mode = 0o700
		}
		return os.Chmod(p, mode)
	}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	o := testOptions()
	o.Thumb = 32
	for _, force := range []bool{false, true} { // a fresh OUT, then --force over it
		o.Force = force
		rep, err := Run(context.Background(), in, out, fakes(1), o)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Counts.Faces == 0 {
			t.Fatal("no faces: the fixture changed")
		}
		var files, thumbs int
		if err := filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			fi, err := os.Lstat(p)
			if err != nil {
				return err
			}
			if fi.Mode().Perm()&0o077 != 0 {
				t.Errorf("%s: mode %v grants access to group or others", p, fi.Mode().Perm())
			}
			if !d.IsDir() {
				files++
				if filepath.Base(filepath.Dir(p)) == "thumbs" {
					thumbs++
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if files < 10 || thumbs == 0 {
			t.Fatalf("force=%v: %d files, %d thumbnails checked: the test no longer sees the output", force, files, thumbs)
		}
	}
}
