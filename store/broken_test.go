package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/periocular/atm-agent/store/record"
)

// within runs fn, failing the test when it has not returned after d (a
// call stuck on a lock bbolt never releases).
func within(t *testing.T, d time.Duration, what string, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("%s: still blocked after %v", what, d)
		return nil
	}
}

// A file damaged under the open store (truncated, as by a disk fault or a
// careless operator) makes bbolt panic inside a transaction, and the panic
// leaves bbolt's write lock held. The store must break: every later call
// fails at once (so the agent's retries run out and the visit is counted
// lost), and Close returns and releases the file.
func TestBrokenAfterFileTruncatedUnderOpenStore(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "agent.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// No Close in t.Cleanup: without the fix it blocks for good.
	for i := range 50 {
		commitFace(t, s, fmt.Sprintf("v%d", i), t0.Add(time.Duration(i)*time.Second), "p-1")
	}
	if err := os.Truncate(path, 8192); err != nil {
		t.Fatal(err)
	}
	commit := func(id string) func() error {
		return func() error {
			_, err := s.CommitVisit(ctx, record.Commit{Visit: faceVisit(id, t0.Add(time.Hour), "p-1"),
				Identities: []record.Identity{{ID: "p-1", Status: "pending"}}})
			return err
		}
	}
	err = within(t, 5*time.Second, "first commit after the truncation", commit("w0"))
	if !errors.Is(err, ErrDamaged) {
		t.Fatalf("first commit after the truncation: %v, want ErrDamaged", err)
	}
	if s.Broken() == nil {
		t.Fatal("Broken() = nil after bbolt panicked in a transaction")
	}
	calls := map[string]func() error{
		"commit":  commit("w1"),
		"commit2": commit("w2"),
		"visits":  func() error { _, err := s.VisitsBetween(ctx, t0, t0.Add(2*time.Hour)); return err },
		"stats":   func() error { _, err := s.Stats(ctx); return err },
		"ack":     func() error { return s.OutboxAck(ctx, 1) },
		"purge":   func() error { _, err := s.PurgeExpired(ctx); return err },
		"compact": func() error { return s.Compact(ctx, "") },
	}
	for _, name := range []string{"commit", "commit2", "visits", "stats", "ack", "purge", "compact"} {
		start := time.Now()
		err := within(t, 5*time.Second, name, calls[name])
		if !errors.Is(err, ErrBroken) {
			t.Errorf("%s on the broken store: %v, want ErrBroken", name, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s on the broken store took %v, want an error at once", name, d)
		}
	}
	err = within(t, 5*time.Second, "Close", s.Close)
	if !errors.Is(err, ErrBroken) {
		t.Errorf("Close: %v, want the ErrBroken that says why", err)
	}
	if err := within(t, 5*time.Second, "second Close", s.Close); !errors.Is(err, ErrBroken) {
		t.Errorf("second Close: %v", err)
	}
	// The file (and its lock) was released: a new open is not kept out by
	// a lock, it finds the damage.
	s2, err := Open(path, Options{Timeout: 500 * time.Millisecond})
	if err == nil {
		s2.Close()
		t.Fatal("reopening the truncated file succeeded")
	}
	if !errors.Is(err, ErrDamaged) {
		t.Errorf("reopen after Close: %v, want ErrDamaged (the file lock must be released)", err)
	}
}

// A call stuck inside bbolt when the store breaks holds the store's read
// lock for good; Close, Compact and calls waiting behind them must still
// return.
func TestBrokenStoreDoesNotWaitForStuckCalls(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.mu.RLock() // a call stuck in bbolt's beginRWTx
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	time.Sleep(50 * time.Millisecond) // Close waits for the lock
	read := make(chan error, 1)
	go func() { _, err := s.Stats(context.Background()); read <- err }()
	time.Sleep(50 * time.Millisecond)
	s.markBroken(&panicError{"test: fault in bbolt"})
	for name, ch := range map[string]chan error{"Close": closed, "Stats": read} {
		select {
		case err := <-ch:
			if !errors.Is(err, ErrBroken) {
				t.Errorf("%s: %v, want ErrBroken", name, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s still blocked after the store broke", name)
		}
	}
	if err := within(t, 5*time.Second, "Compact", func() error { return s.Compact(context.Background(), "") }); !errors.Is(err, ErrBroken) {
		t.Errorf("Compact: %v, want ErrBroken", err)
	}
}
