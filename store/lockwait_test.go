package store

import (
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The wait for the file lock another process holds ends when the context
// does (SIGTERM or SIGINT during `run`'s start or a db command), not only
// after store.lock_timeout (up to 10 minutes, slept through before: systemd
// then killed the agent with SIGKILL). Both waits are covered: the check's
// shared lock while a writer holds the store, and bbolt's exclusive lock
// while a reader holds it.
func TestLockWaitEndsWithContext(t *testing.T) {
	held, path := openTest(t, Options{}) // holds the exclusive lock
	reader := func(t *testing.T) {
		// A reader's shared lock only: the check passes, bbolt's exclusive
		// lock waits.
		held.Close()
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T)
		op    func(ctx context.Context) error
	}{
		{"open, writer holds it", nil, func(ctx context.Context) error {
			s, err := OpenContext(ctx, path, Options{Timeout: time.Minute})
			if err == nil {
				s.Close()
			}
			return err
		}},
		{"open read-only, writer holds it", nil, func(ctx context.Context) error {
			s, err := OpenContext(ctx, path, Options{Timeout: time.Minute, ReadOnly: true, NoCreate: true})
			if err == nil {
				s.Close()
			}
			return err
		}},
		{"check, writer holds it", nil, func(ctx context.Context) error {
			_, err := CheckFile(ctx, path, CheckOptions{Timeout: time.Minute})
			return err
		}},
		{"open, reader holds it", reader, func(ctx context.Context) error {
			s, err := OpenContext(ctx, path, Options{Timeout: time.Minute})
			if err == nil {
				s.Close()
			}
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup(t)
			}
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(200*time.Millisecond, cancel)
			start := time.Now()
			done := make(chan error, 1)
			go func() { done <- tc.op(ctx) }()
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("still waiting for the lock 10s after the context ended (lock timeout 1m)")
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("returned %v after the start, want soon after the cancel at 200ms", d)
			}
			if !errors.Is(err, ErrLockWaitCancelled) || !errors.Is(err, context.Canceled) ||
				!strings.Contains(err.Error(), "stopped waiting for the database lock held by another process") {
				t.Fatalf("err %v, want the lock wait stopped by the context", err)
			}
			t.Log(err)
		})
	}
}

// Without a cancel, the lock timeout still bounds the wait and says so.
func TestLockWaitTimesOut(t *testing.T) {
	_, path := openTest(t, Options{})
	start := time.Now()
	_, err := OpenContext(context.Background(), path, Options{Timeout: 300 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("err %v, want locked", err)
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > 3*time.Second {
		t.Errorf("waited %v, want about the 300ms lock timeout", d)
	}
}
