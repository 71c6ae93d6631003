package models

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/periocular/atm-agent/internal/regfile"
)

// ReadChecked returns the very bytes it verified: the caller (LoadNet, the
// heads) hands those to OpenCV, never reads the path a second time. A
// hostile review swapped a model file between a check by path and the
// read that followed: 12 runs in 60 gave OpenCV unchecked bytes.
func TestReadChecked(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "m.onnx")
	good := []byte("the network's bytes")
	if err := os.WriteFile(file, good, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(good)
	sha := hex.EncodeToString(sum[:])
	b, err := ReadChecked(file, int64(len(good)), sha)
	if err != nil || string(b) != string(good) {
		t.Fatalf("ReadChecked = %q, %v", b, err)
	}
	if err := os.WriteFile(file, []byte("the network's bytez"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadChecked(file, int64(len(good)), sha); !errors.Is(err, ErrIntegrity) || !strings.Contains(err.Error(), "sha256") {
		t.Errorf("same size, other bytes: %v", err)
	}
	if _, err := ReadChecked(file, 3, sha); !errors.Is(err, ErrIntegrity) {
		t.Errorf("wrong size: %v", err)
	}
	if _, err := ReadChecked(filepath.Join(dir, "none"), -1, sha); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing file: %v", err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skip(err)
	}
	if _, err := ReadChecked(fifo, -1, sha); !errors.Is(err, regfile.ErrNotRegular) {
		t.Errorf("named pipe: %v", err)
	}
}
