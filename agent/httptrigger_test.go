package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/periocular/atm-agent/hal/trigger"
)

// httpSource is the daemon's adapter of the HTTP endpoint (agent/daemon).
type httpSource struct{ h *trigger.HTTP }

func (s httpSource) Run(ctx context.Context, emit Emit) error {
	return errors.New("an AdmitSource is run with RunAdmit")
}

func (s httpSource) RunAdmit(ctx context.Context, admit Admit) error { return s.h.RunAdmit(ctx, admit) }

// The real endpoint in front of the real agent and bbolt store: a retried
// txn_id is answered with the first visit's id and stored once, and a
// trigger coalesced into the queued visit is answered with that visit's id,
// which is the id stored.
func TestHTTPTriggerRetryAndCoalesceStoredOnce(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "trigger.sock")
	src, err := trigger.NewHTTP(trigger.HTTPConfig{Socket: sock}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Listen(); err != nil {
		t.Fatal(err)
	}
	gate, calls := make(chan struct{}), make(chan struct{}, 10)
	h := newHarnessWith(t, "", nil, Config{}, func(d *Deps) {
		d.Sources = []Source{httpSource{src}}
		cam := d.Camera.(*fakeCamera)
		cam.gate, cam.calls = gate, calls
	})
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
	post := func(body string) (int, trigger.VisitReply) {
		t.Helper()
		resp, err := c.Post("http://atm/v1/visit", "application/json", bytes.NewBufferString(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var r trigger.VisitReply
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, r
	}
	want := func(name string, code int, r trigger.VisitReply, wantCode int, status, id string) {
		t.Helper()
		if code != wantCode || r.Status != status || (id != "" && r.ID != id) {
			t.Fatalf("%s: %d %+v, want %d %s id %q", name, code, r, wantCode, status, id)
		}
	}

	code, a := post(`{"txn_id":"T-1"}`)
	want("T-1", code, a, 202, trigger.StatusAccepted, "")
	<-calls // visit A is in its burst
	code, r := post(`{"txn_id":"T-1"}`)
	want("T-1 retried while running", code, r, 200, trigger.StatusDuplicate, a.ID)
	code, b := post(`{"txn_id":"T-2"}`)
	want("T-2", code, b, 202, trigger.StatusAccepted, "")
	code, r = post(`{"txn_id":"T-3"}`)
	want("T-3 while T-2 queued", code, r, 202, trigger.StatusCoalesced, b.ID)
	code, r = post(`{"txn_id":"T-3"}`)
	want("T-3 retried", code, r, 200, trigger.StatusDuplicate, b.ID)
	gate <- struct{}{}
	<-calls
	gate <- struct{}{}
	h.waitProcessed(2)
	code, r = post(`{"txn_id":"T-2"}`)
	want("T-2 retried after it was stored", code, r, 200, trigger.StatusDuplicate, b.ID)

	vs := h.visits()
	if len(vs) != 2 || vs[0].ID != a.ID || vs[1].ID != b.ID {
		t.Fatalf("stored %d visits %+v, want ids %s and %s", len(vs), vs, a.ID, b.ID)
	}
	if vs[0].Context.TxnID != "T-1" || vs[1].Context.TxnID != "T-2" {
		t.Fatalf("stored txn ids %q %q", vs[0].Context.TxnID, vs[1].Context.TxnID)
	}
	if s := h.ag.Stats(); s.Triggers != 3 || s.Coalesced != 1 {
		t.Fatalf("agent stats %+v: want 3 triggers, 1 coalesced", s)
	}
}
