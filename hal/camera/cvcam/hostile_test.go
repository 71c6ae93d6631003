package cvcam

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	. "github.com/periocular/atm-agent/hal/camera"
	"github.com/periocular/atm-agent/internal/imagecheck"
	"github.com/periocular/atm-agent/internal/imagecheck/crafted"
)

// A replay folder with hostile frames between good ones: each hostile file
// is one failed read naming the reason (before, the 69-byte PNG aborted the
// process through an uncaught OpenCV exception and the bombs decoded to
// gigabytes); the good frames around them still come through.
func TestReplayHostileFrames(t *testing.T) {
	dir := t.TempDir()
	writeImages(t, dir, 2, 32, 24) // f000.png, f001.png
	for name, b := range map[string][]byte{
		"f000a.png": crafted.HugeClaimPNG(),
		"f000b.png": crafted.BombPNG(30000, 30000, 64),
		"f000c.jpg": crafted.JPEGClaiming(30000, 30000),
		"f000d.jpg": crafted.Random(4096, 1),
		"f000e.jpg": nil,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d, err := Open(Config{Source: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	want := []error{nil, imagecheck.ErrTooLarge, imagecheck.ErrTooLarge, imagecheck.ErrTooLarge, imagecheck.ErrUnsupported, imagecheck.ErrEmpty, nil}
	for i, w := range want {
		f, err := d.Read()
		switch {
		case w == nil && (err != nil || f.W != 32):
			t.Errorf("read %d: %v (%dx%d), want the good frame", i, err, f.W, f.H)
		case w != nil && !errors.Is(err, w):
			t.Errorf("read %d: %v, want %v", i, err, w)
		}
		if err != nil {
			t.Logf("read %d: %v", i, err)
		}
	}
	if _, err := d.Read(); !errors.Is(err, ErrEndOfStream) {
		t.Errorf("after the last file: %v", err)
	}
}
