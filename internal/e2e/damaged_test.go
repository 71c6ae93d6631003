package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/store"
	"github.com/periocular/atm-agent/store/record"
)

// The daemon on a damaged store: it refuses to start with exit 65 (which
// the unit's RestartPreventExitStatus= lists, so systemd stops retrying),
// names the file, the damage and the commands, and leaves the file as it
// was; `db check` names the damage, `db salvage` makes a store that checks
// clean. Before: a zero-length file became a new empty store (exit 0,
// history lost), a damaged page header panicked in bbolt (exit 2, restart
// loop).
func TestDamagedStoreRefused(t *testing.T) {
	skipShort(t)
	unit, err := os.ReadFile(testenv.Path("systemd", "atm-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^RestartPreventExitStatus=.*\b65\b`).Match(unit) {
		t.Fatal("systemd/atm-agent.service does not list exit status 65 in RestartPreventExitStatus=")
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "good.db")
	st, err := store.Open(good, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i := range 60 {
		e := make([]float32, 128)
		e[i%128] = 1
		if _, err := st.CommitVisit(context.Background(), record.Commit{
			Identities: []record.Identity{{ID: fmt.Sprint("p-", i%5), Status: "pending"}},
			Visit: &visit.Visit{Time: now.Add(time.Duration(i-100) * time.Second), IdentityID: fmt.Sprint("p-", i%5),
				Descriptor: visit.Descriptor{Outcome: visit.FaceFound, Embedding: e}}}); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	orig, _ := os.ReadFile(good)

	cases := []struct {
		name, want string
		damage     func([]byte) []byte
	}{
		{"zero length", "empty", func([]byte) []byte { return nil }},
		{"page header", fmt.Sprintf("page %d", meta(orig, 32)), func(b []byte) []byte { b[int(meta(b, 32))*4096+8] ^= 0x7f; return b }},
		{"truncated", "truncated", func(b []byte) []byte { return b[:int(meta(b, 56))*4096-100] }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			db := filepath.Join(t.TempDir(), "agent.db")
			bad := c.damage(bytes.Clone(orig))
			os.WriteFile(db, bad, 0o600)
			f := filepath.Join(t.TempDir(), "config.yaml")
			os.WriteFile(f, []byte(baseConfig(modelsDir(t), db, freePort(t))+replayCfg(filepath.Join(dir, "frames"))), 0o644)
			p := start(t, "run", "--config", f)
			err, done := p.wait(60 * time.Second)
			var ee *exec.ExitError
			if !done || !errors.As(err, &ee) || ee.ExitCode() != 65 {
				t.Fatalf("run on a damaged store: done %v, %v (want exit 65)\n%s", done, err, p.log.String())
			}
			out := p.log.String()
			for _, w := range []string{db, c.want, "db check", "db salvage"} {
				if !strings.Contains(out, w) {
					t.Fatalf("message does not say %q:\n%s", w, out)
				}
			}
			if after, _ := os.ReadFile(db); !bytes.Equal(after, bad) {
				t.Fatal("the damaged file was changed")
			}
			t.Logf("exit 65: %s", strings.TrimSpace(out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:]))

			chk, err := exec.Command(agentBin, "db", "check", "--db", db).CombinedOutput()
			if code := exitCode(err); code != 65 || !strings.Contains(string(chk), c.want) {
				t.Fatalf("db check: exit %d\n%s", code, chk)
			}
			if c.name == "zero length" {
				return // nothing to salvage
			}
			newDB := db + ".new"
			sal, err := exec.Command(agentBin, "db", "salvage", "--db", db, "-o", newDB).CombinedOutput()
			if err != nil {
				t.Fatalf("db salvage: %v\n%s", err, sal)
			}
			chk, err = exec.Command(agentBin, "db", "check", "--db", newDB).CombinedOutput()
			if err != nil {
				t.Fatalf("db check of the salvaged store: %v\n%s", err, chk)
			}
			line := firstLine(string(sal), "visits kept")
			var kept int
			fmt.Sscanf(strings.TrimSpace(line), "visits kept %d", &kept)
			// A lost root page costs the last transaction (the previous
			// one's tree is read): at most one visit.
			if kept < 59 {
				t.Fatalf("salvage kept %d of 60 visits:\n%s", kept, sal)
			}
			t.Logf("salvage: %s", line)
		})
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// meta reads a little-endian u64 at off of the newest meta page (bbolt's
// layout: txid at 64, root page at 32, high-water page at 56).
func meta(b []byte, off int) uint64 {
	u := func(o int) uint64 {
		var v uint64
		for i := 7; i >= 0; i-- {
			v = v<<8 | uint64(b[o+i])
		}
		return v
	}
	if u(4096+64) > u(64) {
		return u(4096 + off)
	}
	return u(off)
}
