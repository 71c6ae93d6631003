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
	"github.com/periocular/atm-agent/store"
)

// httpSource is the daemon's adapter of the HTTP endpoint (agent/daemon).
type httpSource struct{ h *trigger.HTTP }

func (s httpSource) Run(ctx context.Context, emit Emit) error {
	return errors.New("an AdmitSource is run with RunAdmit")
}

func (s httpSource) RunAdmit(ctx context.Context, admit Admit) error { return s.h.RunAdmit(ctx, admit) }

func (s httpSource) Forget(visitID string) int { return s.h.Forget(visitID) }

// listenHTTP starts the real endpoint on a unix socket and returns it with
// a poster of trigger bodies and a checker of the replies.
func listenHTTP(t *testing.T) (*trigger.HTTP, func(body string) (int, trigger.VisitReply), func(name string, code int, r trigger.VisitReply, wantCode int, status, id string)) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "trigger.sock")
	src, err := trigger.NewHTTP(trigger.HTTPConfig{Socket: sock}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Listen(); err != nil {
		t.Fatal(err)
	}
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
	return src, post, want
}

// The real endpoint in front of the real agent and bbolt store: a retried
// txn_id is answered with the first visit's id and stored once, and a
// trigger coalesced into the queued visit is answered with that visit's id,
// which is the id stored.
func TestHTTPTriggerRetryAndCoalesceStoredOnce(t *testing.T) {
	src, post, want := listenHTTP(t)
	gate, calls := make(chan struct{}), make(chan struct{}, 10)
	h := newHarnessWith(t, "", nil, Config{}, func(d *Deps) {
		d.Sources = []Source{httpSource{src}}
		cam := d.Camera.(*fakeCamera)
		cam.gate, cam.calls = gate, calls
	})

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

// A visit the store refused (a full disk) is lost; the endpoint must then
// forget its txn_id, so the client's retry starts a new visit that is
// stored, instead of being answered "duplicate" with the id of a visit
// that does not exist. The txn_id coalesced into a lost queued visit is
// forgotten with it.
func TestHTTPTriggerRetryAfterLostVisit(t *testing.T) {
	src, post, want := listenHTTP(t)
	var fs *faultyStore
	gate, calls := make(chan struct{}), make(chan struct{}, 10)
	h := newHarnessWith(t, "", nil, Config{CommitRetries: 1}, func(d *Deps) {
		d.Sources = []Source{httpSource{src}}
		fs = &faultyStore{Store: d.Store.(*store.Store)}
		d.Store = fs
		cam := d.Camera.(*fakeCamera)
		cam.gate, cam.calls = gate, calls
	})
	fs.failCommit.Store(true)
	code, a := post(`{"txn_id":"L-1"}`)
	want("L-1", code, a, 202, trigger.StatusAccepted, "")
	<-calls // visit A is in its burst
	code, b := post(`{"txn_id":"L-2"}`)
	want("L-2", code, b, 202, trigger.StatusAccepted, "")
	code, r := post(`{"txn_id":"L-3"}`)
	want("L-3 while L-2 queued", code, r, 202, trigger.StatusCoalesced, b.ID)
	gate <- struct{}{}
	<-calls
	gate <- struct{}{}
	h.waitProcessed(2)
	if s := h.ag.Stats(); s.CommitErrors != 2 || s.Committed != 0 {
		t.Fatalf("stats %+v: want both visits lost", s)
	}

	fs.failCommit.Store(false)
	for i, txn := range []string{"L-1", "L-3"} {
		code, r := post(`{"txn_id":"` + txn + `"}`)
		want(txn+" retried after its visit was lost", code, r, 202, trigger.StatusAccepted, "")
		if r.ID == a.ID || r.ID == b.ID {
			t.Fatalf("%s retried: id %s of a lost visit", txn, r.ID)
		}
		<-calls
		gate <- struct{}{}
		h.waitProcessed(uint64(3 + i))
		code, d := post(`{"txn_id":"` + txn + `"}`)
		want(txn+" retried after it was stored", code, d, 200, trigger.StatusDuplicate, r.ID)
	}
	vs := h.visits()
	if len(vs) != 2 || vs[0].Context.TxnID != "L-1" || vs[1].Context.TxnID != "L-3" {
		t.Fatalf("stored %+v, want the retries of L-1 and L-3", vs)
	}
}
