package models

import (
	"bytes"
	"errors"
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// A sealed file reads back exactly its bytes through its path, and nothing
// can change them: not a write through a new open of the path, nor through
// the descriptor itself, nor a truncate; the seals cannot be lifted.
func TestSealedFile(t *testing.T) {
	want := []byte("the checked bytes of a Torch model")
	s, err := NewSealedFile("m.t7", want)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := os.ReadFile(s.Path())
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %s: %q, %v", s.Path(), got, err)
	}
	if f, err := os.OpenFile(s.Path(), os.O_WRONLY, 0); err == nil {
		_, werr := f.Write([]byte("swapped"))
		f.Close()
		if werr == nil {
			t.Error("wrote through a new open of the path")
		}
	}
	if _, err := s.f.WriteAt([]byte("x"), 0); !errors.Is(err, syscall.EPERM) {
		t.Errorf("write through the descriptor: %v, want EPERM", err)
	}
	if err := s.f.Truncate(3); !errors.Is(err, syscall.EPERM) {
		t.Errorf("truncate: %v, want EPERM", err)
	}
	if _, err := unix.FcntlInt(s.f.Fd(), unix.F_ADD_SEALS, 0); !errors.Is(err, syscall.EPERM) {
		t.Errorf("seals not sealed: %v", err)
	}
	got, _ = os.ReadFile(s.Path())
	if !bytes.Equal(got, want) {
		t.Errorf("after the attempts: %q", got)
	}
	big := bytes.Repeat([]byte{7}, 5<<20)
	b, err := NewSealedFile("big", big)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got, err := os.ReadFile(b.Path()); err != nil || !bytes.Equal(got, big) {
		t.Errorf("5 MiB: %d bytes, %v", len(got), err)
	}
}
