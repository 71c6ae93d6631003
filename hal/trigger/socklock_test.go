package trigger

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/periocular/atm-agent/agent/visit"
)

// staleSocket leaves a socket file at p that nobody listens on, as a
// killed run does.
func staleSocket(t *testing.T, p string) {
	t.Helper()
	l, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
}

// closeListeners closes what h.Listen opened (Run does on shutdown).
func closeListeners(h *HTTP) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, l := range h.lns {
		l.Close()
	}
	h.lns = nil
}

// Two endpoints started in the same instant on one socket path: exactly
// one listens, every time, and the other is refused naming the lock. The
// race was: both probed the stale socket (nobody answers), both judged it
// removable, the first bound its socket and the second then unlinked it
// and bound its own, so both started and the first was deaf.
func TestConcurrentStartOneWins(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "trigger.sock")
	const rounds = 300
	for i := range rounds {
		if i%3 != 2 { // mostly from a stale socket, sometimes from none
			staleSocket(t, sock)
		}
		var hs [2]*HTTP
		for j := range hs {
			h, err := NewHTTP(HTTPConfig{Socket: sock}, nil)
			if err != nil {
				t.Fatal(err)
			}
			hs[j] = h
		}
		var errs [2]error
		start := make(chan struct{})
		var wg sync.WaitGroup
		for j := range hs {
			wg.Go(func() { <-start; errs[j] = hs[j].Listen() })
		}
		close(start)
		wg.Wait()
		var won []int
		for j, err := range errs {
			if err == nil {
				won = append(won, j)
			}
		}
		if len(won) != 1 {
			for _, h := range hs {
				closeListeners(h)
			}
			t.Fatalf("round %d: %d of 2 concurrent starts listen (errors: %v), want exactly 1", i, len(won), errs)
		}
		lost := errs[1-won[0]]
		if !strings.Contains(lost.Error(), "in use by another process") {
			t.Errorf("round %d: the second start: %v, want refused as in use", i, lost)
		}
		// The winner is the one on the path: a connection reaches it.
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatalf("round %d: the winner's socket: %v", i, err)
		}
		c.Close()
		closeListeners(hs[won[0]])
		if _, err := os.Lstat(sock); err == nil {
			t.Fatalf("round %d: socket left after the winner closed", i)
		}
	}
}

// The lock is held for the listener's lifetime: while an endpoint runs a
// second is refused, once it has stopped (Run returned) the next one
// starts. The lock file is created 0600 and stays.
func TestSocketLockReleasedOnStop(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "trigger.sock")
	h1, err := NewHTTP(HTTPConfig{Socket: sock}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	if err := h1.Listen(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- h1.Run(ctx, make(chan visit.Trigger, 1)) }()
	fi, err := os.Lstat(sock + ".lock")
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Fatalf("lock file: %v %v, want a regular file 0600", fi, err)
	}
	h2, err := NewHTTP(HTTPConfig{Socket: sock}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := h2.Listen(); err == nil || !strings.Contains(err.Error(), "held by pid") {
		closeListeners(h2)
		t.Fatalf("start while the first runs: %v, want refused naming the holder", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e := startSocket(t, HTTPConfig{Socket: sock}, 1)
	if code, m := post(t, e.c, "http://atm/v1/visit", "", ""); code != http.StatusAccepted {
		t.Fatalf("the endpoint started after the first stopped: %d %v", code, m)
	}
}

// A lock path that is a symbolic link is not followed (it could make the
// agent create or truncate another file), and a socket held by a process
// that takes no lock (an older agent) is still found by the probe.
func TestSocketLockRefusals(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "trigger.sock")
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, sock+".lock"); err != nil {
		t.Fatal(err)
	}
	h, err := NewHTTP(HTTPConfig{Socket: sock}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Listen(); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		closeListeners(h)
		t.Fatalf("lock file a symlink: %v, want refused", err)
	}
	if b, _ := os.ReadFile(target); string(b) != "keep me" {
		t.Fatalf("the symlink's target was written: %q", b)
	}
	os.Remove(sock + ".lock")

	foreign, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	if err := h.Listen(); err == nil || !strings.Contains(err.Error(), "in use by another process") {
		closeListeners(h)
		t.Fatalf("socket of a process without the lock: %v, want refused as in use", err)
	}
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("the other process's socket was removed: %v", err)
	}
}
