package cvcam

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/periocular/atm-agent/hal/camera"
	"github.com/periocular/atm-agent/internal/imagecheck"
	"github.com/periocular/atm-agent/internal/imagecheck/crafted"
)

// A replay folder with hostile frames between good ones: each hostile file
// is skipped, and reported once through Skipped naming the reason (before,
// the 69-byte PNG aborted the process through an uncaught OpenCV exception
// and the bombs decoded to gigabytes; then each was one failed read); the
// good frames around them come through, read after read.
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
	for i := range 2 {
		if f, err := d.Read(); err != nil || f.W != 32 {
			t.Errorf("read %d: %v (%dx%d), want a good frame", i, err, f.W, f.H)
		}
	}
	want := []error{imagecheck.ErrTooLarge, imagecheck.ErrTooLarge, imagecheck.ErrTooLarge, imagecheck.ErrUnsupported, imagecheck.ErrEmpty}
	got := d.(Skipper).Skipped()
	if len(got) != len(want) {
		t.Fatalf("skipped %v, want %d files", got, len(want))
	}
	for i, w := range want {
		if !errors.Is(got[i], w) {
			t.Errorf("skipped %d: %v, want %v", i, got[i], w)
		}
	}
	if _, err := d.Read(); !errors.Is(err, ErrEndOfStream) {
		t.Errorf("after the last file: %v", err)
	}
	if s := d.(Skipper).Skipped(); len(s) != 0 {
		t.Errorf("skipped again: %v", s)
	}
}

// TestReplayBadFileFirst: a PNG whose header claims 60000x60000, first in
// name order beside a good image, is skipped (logged and counted once):
// the camera opens, bursts deliver the good image, and it stays up
// through reopens. Before, the probe read after every open read the bad
// file first, so the camera stayed down for good and every visit was
// stored as camera_error. A folder where nothing decodes is down.
func TestReplayBadFileFirst(t *testing.T) {
	dir := t.TempDir()
	writeImages(t, dir, 1, 32, 24) // f000.png
	if err := os.WriteFile(filepath.Join(dir, "a-bad.png"), crafted.HugeClaimPNG(), 0o644); err != nil {
		t.Fatal(err)
	}
	cam, err := newCam(Config{Source: dir, Loop: true, ReopenMin: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop := startCamera(t, cam)
	frames, err := cam.Burst(context.Background(), 3, 0)
	if err != nil || len(frames) != 3 || frames[0].W != 32 {
		t.Fatalf("burst: %d frames, %v; want 3 of the good image", len(frames), err)
	}
	if h := cam.Health(); h.State != StateOK || h.Skipped != 1 {
		t.Errorf("health %+v: want ok, 1 skipped", h)
	}
	stop()

	bad := t.TempDir()
	for _, n := range []string{"a.png", "b.png"} {
		if err := os.WriteFile(filepath.Join(bad, n), crafted.HugeClaimPNG(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if cam, err = newCam(Config{Source: bad, Loop: true, ReopenMin: 10 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	stop = startCamera(t, cam)
	defer stop()
	if _, err := cam.Burst(context.Background(), 1, 0); err == nil {
		t.Fatal("a folder where nothing decodes gave a frame")
	}
	if h := cam.Health(); h.State == StateOK || !strings.Contains(h.LastError, "none of its 2 files decodes") {
		t.Errorf("health %+v: want down, none of its 2 files decodes", h)
	}
}
