package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/hal/trigger"
)

// TestCoalesceLimitAcrossRestart: 40 concurrent triggers, each with its
// own txn_id, on the daemon's socket (real models, store, agent and
// endpoint; a fake camera device under the real supervisor). Each is
// answered 202 (accepted or coalesced) or 503 coalesce_limit with
// Retry-After; after a restart on the same store, every txn_id answered
// 202 is a duplicate of the visit its reply named, and is stored once.
// Before, the triggers past visit.MaxCoalesced (16) were answered
// coalesced but not stored, and their retries after a restart made new
// visits (22 of 40 in the review's run).
func TestCoalesceLimitAcrossRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the models")
	}
	sock := filepath.Join(t.TempDir(), "trigger.sock")
	cfg := modelsTestConfig(t)
	cfg.Trigger.HTTP.Enabled, cfg.Trigger.HTTP.Socket = true, sock
	cfg.Camera.Source, cfg.Camera.Kind = "fake0", "device"
	cfg.fill()
	var broken atomic.Bool
	start := func() (*Daemon, func()) {
		d, err := New(cfg, Options{Version: "test", Logger: testLog(t), CameraOpen: flakyOpen(&broken)})
		if err != nil {
			t.Fatal(err)
		}
		return d, runDaemon(t, d)
	}
	hc := socketClient(sock) // the 40 requests queue for its 16 connections, all at once
	type reply struct {
		code       int
		retryAfter string
		trigger.VisitReply
		trigger.ErrorReply
	}
	post := func(txn string) (reply, error) {
		resp, err := hc.Post("http://agent/v1/visit", "application/json", bytes.NewBufferString(`{"txn_id":"`+txn+`"}`))
		if err != nil {
			return reply{}, err
		}
		defer resp.Body.Close()
		r := reply{code: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After")}
		var raw json.RawMessage
		if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
			return r, err
		}
		_ = json.Unmarshal(raw, &r.VisitReply)
		_ = json.Unmarshal(raw, &r.ErrorReply)
		return r, nil
	}

	d, stop := start()
	waitServing(t, hc)
	const n = 40
	replies := make([]reply, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			r, err := post(fmt.Sprintf("CC-%d", i))
			if err != nil {
				t.Error(err)
			}
			replies[i] = r
		})
	}
	wg.Wait()
	taken := map[string]string{} // txn_id: visit id
	var refused int
	for i, r := range replies {
		txn := fmt.Sprintf("CC-%d", i)
		switch {
		case r.code == http.StatusAccepted && (r.Status == trigger.StatusAccepted || r.Status == trigger.StatusCoalesced):
			taken[txn] = r.ID
		case r.code == http.StatusServiceUnavailable && r.Code == trigger.CodeCoalesceLimit && r.retryAfter == "1":
			refused++
		default:
			t.Fatalf("%s: %+v", txn, r)
		}
	}
	t.Logf("%d concurrent triggers: %d taken, %d refused coalesce_limit", n, len(taken), refused)
	if refused == 0 {
		t.Errorf("no trigger was refused: the flood did not reach the limit of %d", visit.MaxCoalesced)
	}
	// Every txn_id answered 202 is stored with the visit its reply named.
	deadline := time.Now().Add(20 * time.Second)
	for txn, id := range taken {
		for {
			v, err := d.Store().Visit(context.Background(), id)
			if err == nil {
				if v.Context.TxnID != txn && !slices.Contains(v.Context.Coalesced, txn) {
					t.Errorf("%s answered as visit %s, which does not hold it: %+v", txn, id, v.Context)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("visit %s of %s not stored: %v", id, txn, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	stop()

	_, stop = start()
	defer stop()
	waitServing(t, hc)
	for i := range n {
		txn := fmt.Sprintf("CC-%d", i)
		r, err := post(txn)
		if err != nil {
			t.Fatal(err)
		}
		if id, ok := taken[txn]; ok && (r.code != http.StatusOK || r.Status != trigger.StatusDuplicate || r.ID != id) {
			t.Errorf("%s, answered 202 (visit %s) before the restart, retried after it: %d %+v, want a duplicate of %s", txn, id, r.code, r.VisitReply, id)
		}
	}
}
