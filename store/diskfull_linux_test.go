//go:build linux

package store

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/store/record"
)

const diskFullEnv = "ATM_STORE_DISKFULL_DB"

// TestDiskFullChild commits until the file size limit (RLIMIT_FSIZE, the
// process-level stand-in for a full disk) makes a write fail, then reports.
func TestDiskFullChild(t *testing.T) {
	path := os.Getenv(diskFullEnv)
	if path == "" {
		t.Skip("subprocess of TestDiskFull")
	}
	signal.Ignore(syscall.SIGXFSZ) // get EFBIG instead of being killed
	s, err := Open(path, Options{})
	if err != nil {
		fmt.Println("error open", err)
		os.Exit(2)
	}
	lim := syscall.Rlimit{Cur: 512 << 10, Max: 512 << 10}
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		fmt.Println("error rlimit", err)
		os.Exit(2)
	}
	for i := 0; i < 100000; i++ {
		v := crashVisit(i)
		_, err := s.CommitVisit(context.Background(), record.Commit{
			Visit:      v,
			Identities: []record.Identity{{ID: v.IdentityID}},
			Outbox:     []visit.OutboxMessage{{Kind: "event", Topic: "visit", Payload: []byte(v.ID)}},
		})
		if err != nil {
			// bbolt formats the resize error with %s, so EFBIG is only in the text.
			efbig := errors.Is(err, syscall.EFBIG) || strings.Contains(err.Error(), syscall.EFBIG.Error())
			fmt.Printf("failed %d %t %s\n", i, efbig, strings.ReplaceAll(err.Error(), "\n", " "))
			// The store stays usable for reads after a failed write.
			if _, err := s.Visit(context.Background(), fmt.Sprint("crash-", i-1)); err != nil {
				fmt.Println("error read after failure", err)
			}
			os.Exit(0)
		}
	}
	fmt.Println("error never failed")
}

func TestDiskFull(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a subprocess")
	}
	path := filepath.Join(t.TempDir(), "full.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestDiskFullChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), diskFullEnv+"="+path)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	failed := -1
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 0 && f[0] == "error" {
			t.Fatalf("child: %s", sc.Text())
		}
		if len(f) >= 3 && f[0] == "failed" {
			failed, _ = strconv.Atoi(f[1])
			if f[2] != "true" {
				t.Errorf("write failure does not report EFBIG: %s", sc.Text())
			}
			if !strings.Contains(sc.Text(), "commit visit") {
				t.Errorf("error lacks the operation: %s", sc.Text())
			}
		}
	}
	if failed <= 0 {
		t.Fatalf("child output:\n%s", out)
	}
	// Without the limit the file opens, holds exactly the successful commits,
	// and takes new ones with the next sequence number.
	checkAfterCrash(t, path, failed-1)
	s, err := Open(path, Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, _ := s.Stats(context.Background())
	if st.Buckets["visits"] != failed || st.VisitSeq != uint64(failed) || st.OutboxDepth != failed {
		t.Errorf("after failure at commit %d: %d visits, seq %d, outbox %d", failed, st.Buckets["visits"], st.VisitSeq, st.OutboxDepth)
	}
	res, err := s.CommitVisit(context.Background(), record.Commit{Visit: crashVisit(failed), Identities: []record.Identity{{ID: crashVisit(failed).IdentityID}}})
	if err != nil || res.VisitSeq != uint64(failed+1) {
		t.Errorf("commit after recovery: seq %d, %v", res.VisitSeq, err)
	}
}
