package store

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/store/record"
)

const crashEnv = "ATM_STORE_CRASH_DB"

// TestCrashChild is the subprocess of TestCrashSafety: it commits visits in a
// loop and prints each committed visit id until it is killed.
func TestCrashChild(t *testing.T) {
	path := os.Getenv(crashEnv)
	if path == "" {
		t.Skip("subprocess of TestCrashSafety")
	}
	s, err := Open(path, Options{})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	st, err := s.Stats(context.Background())
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	for i := int(st.VisitSeq); ; i++ { // resume after a previous kill
		v := crashVisit(i)
		_, err := s.CommitVisit(context.Background(), record.Commit{
			Visit:      v,
			Identities: []record.Identity{{ID: v.IdentityID, Status: "pending"}},
			Outbox:     []visit.OutboxMessage{{Kind: "event", Topic: "visit", Payload: []byte(v.ID)}},
		})
		if err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		fmt.Println("committed", i)
	}
}

func crashVisit(i int) *visit.Visit {
	v := faceVisit(fmt.Sprint("crash-", i), t0.Add(time.Duration(i)*time.Second), fmt.Sprint("id", i%7))
	v.Embedding = emb(float32(i), 128)
	return v
}

func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a subprocess")
	}
	path := filepath.Join(t.TempDir(), "crash.db")
	for round := range 2 { // the second round continues on the recovered file
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashEnv+"="+path)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		reported := -1
		sc := bufio.NewScanner(out)
		deadline := time.Now().Add(20 * time.Second)
		for sc.Scan() && time.Now().Before(deadline) {
			f := strings.Fields(sc.Text())
			if len(f) == 2 && f[0] == "committed" {
				reported, _ = strconv.Atoi(f[1])
				if reported >= 150*(round+1) {
					break
				}
			} else if len(f) > 0 && f[0] == "error" {
				t.Fatalf("child: %s", sc.Text())
			}
		}
		if err := cmd.Process.Kill(); err != nil { // SIGKILL, mid-commit most likely
			t.Fatal(err)
		}
		_ = cmd.Wait()
		if reported < 0 {
			t.Fatal("child committed nothing")
		}
		checkAfterCrash(t, path, reported)
	}
}

func checkAfterCrash(t *testing.T, path string, reported int) {
	t.Helper()
	ctx := context.Background()
	s, err := Open(path, Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("reopen after kill: %v", err)
	}
	defer s.Close()
	if err := s.db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return err
		}
		return nil
	}); err != nil {
		t.Fatalf("bbolt consistency check: %v", err)
	}
	all, err := s.VisitsBetween(ctx, t0, t0.Add(1000*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(all) < reported+1 {
		t.Fatalf("%d visits stored, %d were reported committed", len(all), reported+1)
	}
	for i, v := range all {
		if v.Seq != uint64(i+1) {
			t.Fatalf("visit %d has seq %d: gap or duplicate", i, v.Seq)
		}
	}
	for i := 0; i <= reported; i++ {
		v, err := s.Visit(ctx, fmt.Sprint("crash-", i))
		if err != nil {
			t.Fatalf("committed visit %d lost: %v", i, err)
		}
		want := crashVisit(i)
		if !slices.Equal(v.Embedding, want.Embedding) || v.IdentityID != want.IdentityID || !v.Time.Equal(want.Time) {
			t.Fatalf("visit %d damaged", i)
		}
	}
	msgs, err := s.OutboxPending(ctx, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != len(all) {
		t.Fatalf("%d outbox messages for %d visits", len(msgs), len(all))
	}
	for i, m := range msgs {
		if m.Seq != uint64(i+1) || string(m.Payload) != all[i].ID {
			t.Fatalf("outbox message %d: seq %d payload %q", i, m.Seq, m.Payload)
		}
	}
	ids, _ := s.Identities(ctx)
	total := 0
	for _, id := range ids {
		total += id.Count
	}
	if total != len(all) {
		t.Fatalf("identity counts sum to %d, %d visits", total, len(all))
	}
	t.Logf("reported %d, stored %d visits after reopen", reported+1, len(all))
}
