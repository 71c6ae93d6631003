package trigger

import (
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
)

// TestSocketNeverWiderThanItsMode: under umask 000 the trigger socket path
// never exists with more permissions than socket_mode, not even for the
// moment between bind and chmod (a connection made in that moment stays
// open: any local user could post card inserts). A watcher stats the path
// in a tight loop while the endpoint starts and stops 300 times; before the
// fix it saw 0777 within the first rounds. Close removes the socket it
// bound, and the temporary folder is gone.
func TestSocketNeverWiderThanItsMode(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := t.TempDir()
	sock := filepath.Join(dir, "trigger.sock")
	var wide atomic.Uint32
	var seen atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if fi, err := os.Lstat(sock); err == nil {
				seen.Add(1)
				if m := fi.Mode().Perm(); m&^0o660 != 0 {
					wide.Store(uint32(m))
				}
			}
		}
	})
	for i := 0; i < 300 && wide.Load() == 0; i++ {
		h, err := NewHTTP(HTTPConfig{Socket: sock, SocketMode: "0660"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.Listen(); err != nil {
			t.Fatal(err)
		}
		closeListeners(h)
		if _, err := os.Lstat(sock); !os.IsNotExist(err) {
			t.Fatalf("round %d: socket left after Close: %v", i, err)
		}
	}
	close(stop)
	wg.Wait()
	if m := wide.Load(); m != 0 {
		t.Fatalf("the socket path existed with mode %#o (socket_mode 0660) while the endpoint started", m)
	}
	if seen.Load() == 0 {
		t.Fatal("the watcher never saw the socket: the test no longer tests anything")
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Name() != "trigger.sock.lock" {
			t.Errorf("left in the socket's folder: %s", e.Name())
		}
	}
	t.Logf("socket seen %d times, never wider than 0660", seen.Load())
}
