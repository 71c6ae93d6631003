package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/hal/trigger"
	"github.com/periocular/atm-agent/store"
	"github.com/periocular/atm-agent/sync/wire"
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

// gatedHarness is the real agent and store behind the endpoint src, with
// a camera whose bursts start on calls and end on gate.
func gatedHarness(t *testing.T, src *trigger.HTTP) (*harness, chan struct{}, chan struct{}) {
	t.Helper()
	gate, calls := make(chan struct{}), make(chan struct{}, 10)
	h := newHarnessWith(t, "", nil, Config{}, func(d *Deps) {
		d.Sources = []Source{httpSource{src}}
		cam := d.Camera.(*fakeCamera)
		cam.gate, cam.calls = gate, calls
	})
	return h, gate, calls
}

// The real endpoint in front of the real agent and bbolt store: a retried
// txn_id is answered with the first visit's id and stored once, and a
// trigger coalesced into the queued visit is answered with that visit's id,
// which is the id stored.
func TestHTTPTriggerRetryAndCoalesceStoredOnce(t *testing.T) {
	src, post, want := listenHTTP(t)
	h, gate, calls := gatedHarness(t, src)

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

// One card sent as lowercase hex, uppercase hex and base64 (two code paths
// or versions of the ATM application) is one card: stored in one form and
// counted once, so it raises no distinct-cards alert; another card does.
// Before, the three strings were compared as they came and the second one
// raised a false "multiple cards" alert.
func TestHTTPTriggerCardHashEncodingsAreOneCard(t *testing.T) {
	src, post, want := listenHTTP(t)
	h := newHarnessWith(t, "", &fixedClock{t: time.Now().Add(time.Minute)}, Config{}, func(d *Deps) {
		d.Sources = []Source{httpSource{src}}
	})
	const hexHash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	bodies := []string{
		`{"txn_id":"E-1","card_hash":"` + hexHash + `"}`,
		`{"txn_id":"E-2","card_hash":"` + strings.ToUpper(hexHash) + `"}`,
		`{"txn_id":"E-3","card_hash":"n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg="}`,
		`{"txn_id":"E-4","card_hash":"n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg"}`,
	}
	cardAlerts := func() []wire.Alert {
		var out []wire.Alert
		for _, m := range h.outbox() {
			var a wire.Alert
			if json.Unmarshal(m.Payload, &a) == nil && a.Rule == "cards" {
				out = append(out, a)
			}
		}
		return out
	}
	for i, b := range bodies {
		code, r := post(b)
		want(b, code, r, 202, trigger.StatusAccepted, "")
		h.waitProcessed(uint64(i + 1))
	}
	if a := cardAlerts(); len(a) != 0 {
		t.Fatalf("one card in four encodings raised %d distinct-cards alerts: %+v", len(a), a)
	}
	for _, v := range h.visits() {
		if v.Context.CardHash != hexHash {
			t.Fatalf("visit %s stored card_hash %q, want the lowercase hex %q", v.ID, v.Context.CardHash, hexHash)
		}
	}
	code, r := post(`{"txn_id":"E-5","card_hash":"` + strings.Repeat("ab", 32) + `"}`)
	want("another card", code, r, 202, trigger.StatusAccepted, "")
	h.waitProcessed(5)
	if a := cardAlerts(); len(a) != 1 || a[0].Count != 2 {
		t.Fatalf("a second card: distinct-cards alerts %+v, want one with count 2", a)
	}
}

// The real endpoint in front of the real agent and bbolt store: past
// visit.MaxCoalesced txn_ids (or card hashes) joined to the queued visit,
// a trigger that brings one more is refused 503 (its txn_id not
// remembered: a retry starts a visit), not answered "coalesced" and lost.
// A trigger whose context the queued visit holds already, or that has
// none, still joins it. Every txn_id answered 202 is stored with the visit
// its reply named, and every card hash counts.
func TestHTTPTriggerCoalesceLimitRefused(t *testing.T) {
	src, post, want := listenHTTP(t)
	h, gate, calls := gatedHarness(t, src)
	card := func(i int) string {
		return fmt.Sprintf("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a%02x", i)
	}

	code, a := post(`{"txn_id":"T-0"}`)
	want("T-0", code, a, 202, trigger.StatusAccepted, "")
	<-calls // visit A is in its burst
	code, b := post(`{"txn_id":"T-1","card_hash":"` + card(0) + `"}`)
	want("T-1", code, b, 202, trigger.StatusAccepted, "")
	for i := 2; i < 2+visit.MaxCoalesced; i++ {
		code, r := post(fmt.Sprintf(`{"txn_id":"T-%d","card_hash":"%s"}`, i, card(i-1)))
		want(fmt.Sprintf("T-%d", i), code, r, 202, trigger.StatusCoalesced, b.ID)
	}
	over := fmt.Sprintf("T-%d", 2+visit.MaxCoalesced)
	code, r := post(`{"txn_id":"` + over + `"}`)
	want(over+" past the limit", code, r, 503, "", "")
	code, r = post(`{"card_hash":"` + card(2+visit.MaxCoalesced) + `"}`)
	want("a card past the limit", code, r, 503, "", "")
	code, r = post(`{}`)
	want("no context", code, r, 202, trigger.StatusCoalesced, b.ID)
	code, r = post(`{"txn_id":"T-1","card_hash":"` + card(0) + `"}`)
	want("T-1 retried", code, r, 200, trigger.StatusDuplicate, b.ID)
	code, r = post(`{"txn_id":"T-5"}`)
	want("T-5 retried", code, r, 200, trigger.StatusDuplicate, b.ID)

	gate <- struct{}{}
	<-calls
	code, c := post(`{"txn_id":"` + over + `"}`)
	want(over+" retried once B runs", code, c, 202, trigger.StatusAccepted, "")
	gate <- struct{}{}
	<-calls
	gate <- struct{}{}
	h.waitProcessed(3)
	vs := h.visits()
	if len(vs) != 3 || vs[1].ID != b.ID || vs[2].ID != c.ID || vs[2].Context.TxnID != over {
		t.Fatalf("stored %+v, want A, B and %s as its own visit", vs, over)
	}
	if n := len(vs[1].Context.Coalesced); n != visit.MaxCoalesced {
		t.Errorf("B holds %d coalesced txn_ids, want %d", n, visit.MaxCoalesced)
	}
	if n := len(vs[1].Context.Cards()); n != 1+visit.MaxCoalesced { // its own and the coalesced ones
		t.Errorf("B holds %d cards, want %d", n, 1+visit.MaxCoalesced)
	}
}
