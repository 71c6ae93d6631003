package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A client that retries a txn_id across a restart of the agent (it sent the
// insert, the agent stored the visit and was restarted before the client
// read the reply) gets the stored visit's id back as a duplicate, and the
// store holds one visit: the daemon gives the trigger endpoint the txn_ids
// of the visits within its window at start.
func TestTxnIDIdempotentAcrossRestart(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	frames := filepath.Join(dir, "frames")
	writeFrames(t, frames, 3)
	db := filepath.Join(dir, "agent.db")
	sock := filepath.Join(dir, "trigger.sock")
	cfg := filepath.Join(dir, "config.yaml")
	body := baseConfig(modelsDir(t), db, freePort(t)) + fmt.Sprintf(`camera:
  source: %s
  read_timeout: 500ms
  open_timeout: 1s
trigger:
  http:
    enabled: true
    socket: %s
mqtt:
  enabled: false
`, frames, sock)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	c := socketClient(sock)
	post := func(txn string) (int, map[string]string) {
		t.Helper()
		resp, err := c.Post("http://agent/v1/visit", "application/json", bytes.NewBufferString(`{"txn_id":"`+txn+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]string
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, m
	}
	run := func() *agentProc {
		os.Remove(sock)
		p := start(t, "run", "--config", cfg)
		waitFor(t, 30*time.Second, "the trigger socket", func() bool { _, err := os.Stat(sock); return err == nil })
		return p
	}
	stop := func(p *agentProc) {
		t.Helper()
		p.cmd.Process.Signal(syscall.SIGTERM)
		if err, done := p.wait(20 * time.Second); !done || err != nil {
			t.Fatalf("agent stop: %v (done %v)\n%s", err, done, tail(p.log.String(), 10))
		}
	}

	p := run()
	code, first := post("txn-restart-A")
	if code != http.StatusAccepted {
		t.Fatalf("first insert: %d %v", code, first)
	}
	waitFor(t, 30*time.Second, "the visit stored", func() bool { return strings.Contains(p.log.String(), "visit="+first["id"]) })
	stop(p)

	p = run()
	code, again := post("txn-restart-A")
	if code != http.StatusOK || again["status"] != "duplicate" || again["id"] != first["id"] {
		t.Errorf("retry after the restart: %d %v, want 200 duplicate of %s", code, again, first["id"])
	}
	if !strings.Contains(p.log.String(), "txn_ids of recent visits remembered") {
		t.Errorf("the restarted agent did not say it remembered the txn_ids:\n%s", tail(p.log.String(), 10))
	}
	code, other := post("txn-restart-B")
	if code != http.StatusAccepted || other["id"] == first["id"] {
		t.Fatalf("a new txn_id after the restart: %d %v", code, other)
	}
	waitFor(t, 30*time.Second, "the second visit stored", func() bool { return strings.Contains(p.log.String(), "visit="+other["id"]) })
	stop(p)

	st := openStore(t, db)
	defer st.Close()
	vs, err := st.VisitsSince(context.Background(), "", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, v := range vs {
		ids = append(ids, v.ID+"/"+v.Context.TxnID)
	}
	if len(vs) != 2 {
		t.Fatalf("stored %d visits %v, want 2 (A once, B)", len(vs), ids)
	}
	t.Logf("stored %v; the retry after the restart answered %v", ids, again)
}
