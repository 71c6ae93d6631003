package boltstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/fleet/storage/storetest"
)

// A truncated fleet.db is refused with a clear error instead of faulting
// inside bbolt.Open. The open runs in a child process: without the check
// bbolt dies with SIGSEGV/SIGBUS, which must fail this test, not kill the
// whole test binary.
func TestOpenTruncatedFile(t *testing.T) {
	if path := os.Getenv("BOLTSTORE_OPEN_CHILD"); path != "" {
		s, err := Open(path, time.Second)
		if err == nil {
			s.Close()
			fmt.Println("OPENED")
			return
		}
		fmt.Printf("ERROR %v ISCORRUPT %v\n", err, errors.Is(err, ErrCorrupt))
		return
	}
	path := filepath.Join(t.TempDir(), "fleet.db")
	s, err := Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 0; i < 40; i++ {
		var msgs []storage.Message
		for j := 0; j < 50; j++ {
			msgs = append(msgs, storetest.Summary("s", fmt.Sprintf("d%03d", j), uint64(i+1), storetest.T0.Add(time.Duration(i)*time.Minute), i, "p-1", "p-2"))
		}
		if _, err := s.Apply(ctx, msgs); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Size() < 100000 {
		t.Fatalf("test store only %d bytes", fi.Size())
	}
	if err := os.Truncate(path, 20000); err != nil {
		t.Fatal(err)
	}
	if err := checkFile(path); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("checkFile: %v, want a truncated-file error", err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestOpenTruncatedFile$", "-test.count=1")
	cmd.Env = append(os.Environ(), "BOLTSTORE_OPEN_CHILD="+path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("Open on a truncated file crashed: %v\n%s", err, firstLines(string(out), 5))
	}
	if !strings.Contains(string(out), "ISCORRUPT true") || !strings.Contains(string(out), "truncated") {
		t.Fatalf("Open on a truncated file: want a clear corrupt-store error, got:\n%s", out)
	}
	// A valid file still opens.
	ok := filepath.Join(t.TempDir(), "ok.db")
	s, err = Open(ok, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = Open(ok, time.Second); err != nil {
		t.Fatalf("reopen a sound file: %v", err)
	}
	s.Close()
}

func firstLines(s string, n int) string {
	l := strings.SplitN(s, "\n", n+1)
	return strings.Join(l[:min(n, len(l))], "\n")
}
