package trigger

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
)

// A client that retries a txn_id gets the first visit's id and starts no
// second visit, within the window and the entry bound; after them (or after
// a 503, which started nothing) the txn_id starts a visit again.
func TestVisitIdempotentByTxnID(t *testing.T) {
	clk := &instantClock{now: time.Date(2030, 1, 1, 9, 0, 0, 0, time.UTC)}
	e := startSocket(t, HTTPConfig{IdempotencyWindow: 10 * time.Minute, IdempotencyMax: 3}, 1, WithHTTPClock(clk))
	h, out, c := e.h, e.out, e.c
	url := "http://atm/v1/visit"

	code, first := post(t, c, url, "", `{"card_hash":"`+goodHash+`","txn_id":"T-1"}`)
	if code != http.StatusAccepted || first["status"] != StatusAccepted {
		t.Fatalf("first POST: %d %v", code, first)
	}
	if ev := <-out; ev.ID != first["id"] {
		t.Fatalf("event id %s, reply id %v", ev.ID, first["id"])
	}
	// The retry (5 minutes later, body changed or not): the first id and
	// time, 200, nothing sent.
	clk.After(5 * time.Minute)
	for _, body := range []string{`{"card_hash":"` + goodHash + `","txn_id":"T-1"}`, `{"txn_id":"T-1"}`} {
		code, m := post(t, c, url, "", body)
		if code != http.StatusOK || m["status"] != StatusDuplicate || m["id"] != first["id"] || m["time"] != first["time"] {
			t.Fatalf("retry %s: %d %v, want 200 duplicate of %v", body, code, m, first)
		}
	}
	if len(out) != 0 {
		t.Fatalf("a retry sent %d events", len(out))
	}

	// A 503 (consumer busy) started nothing and is not remembered.
	if code, _ := post(t, c, url, "", `{"txn_id":"T-2"}`); code != http.StatusAccepted {
		t.Fatalf("T-2: %d", code)
	}
	if code, _ := post(t, c, url, "", `{"txn_id":"T-3"}`); code != http.StatusServiceUnavailable {
		t.Fatalf("T-3 while busy: %d", code)
	}
	<-out
	code, m := post(t, c, url, "", `{"txn_id":"T-3"}`)
	if code != http.StatusAccepted || m["status"] != StatusAccepted {
		t.Fatalf("T-3 after busy: %d %v", code, m)
	}
	<-out

	// Past the window the txn_id is forgotten: a new visit.
	clk.After(6 * time.Minute) // T-1 is 11 minutes old
	code, m = post(t, c, url, "", `{"txn_id":"T-1"}`)
	if code != http.StatusAccepted || m["id"] == first["id"] {
		t.Fatalf("T-1 after the window: %d %v", code, m)
	}
	<-out

	// Bounded memory: with IdempotencyMax 3, a fourth txn_id evicts the oldest.
	for _, txn := range []string{"T-4", "T-5"} {
		if code, _ := post(t, c, url, "", `{"txn_id":"`+txn+`"}`); code != http.StatusAccepted {
			t.Fatalf("%s: %d", txn, code)
		}
		<-out
	}
	if n := h.txns.len(); n != 3 {
		t.Fatalf("%d txn_ids remembered, want 3", n)
	}
	if code, m := post(t, c, url, "", `{"txn_id":"T-2"}`); code != http.StatusAccepted { // evicted
		t.Fatalf("evicted T-2: %d %v", code, m)
	}
	<-out
	if code, m := post(t, c, url, "", `{"txn_id":"T-5"}`); code != http.StatusOK || m["status"] != StatusDuplicate {
		t.Fatalf("T-5 repeated: %d %v", code, m)
	}
	// Requests without txn_id are never deduplicated.
	for range 2 {
		if code, _ := post(t, c, url, "", `{}`); code != http.StatusAccepted {
			t.Fatalf("no txn_id: %d", code)
		}
		<-out
	}
}

// A trigger the consumer coalesces into its queued visit is answered with
// that visit's id and status "coalesced"; its retry too.
func TestVisitCoalescedReply(t *testing.T) {
	h, err := NewHTTP(HTTPConfig{Socket: filepath.Join(t.TempDir(), "trigger.sock")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var queued string
	admit := func(ev visit.Trigger) visit.Admission {
		if queued == "" {
			queued = ev.ID
			return visit.Admission{ID: ev.ID}
		}
		return visit.Admission{ID: queued, Coalesced: true}
	}
	srv := httptest.NewServer(h.AdmitHandler(admit))
	defer srv.Close()
	c, url := srv.Client(), srv.URL+"/v1/visit"
	code, a := post(t, c, url, "", `{"txn_id":"A"}`)
	if code != http.StatusAccepted || a["status"] != StatusAccepted {
		t.Fatalf("A: %d %v", code, a)
	}
	code, b := post(t, c, url, "", `{"txn_id":"B"}`)
	if code != http.StatusAccepted || b["status"] != StatusCoalesced || b["id"] != a["id"] {
		t.Fatalf("B: %d %v, want coalesced into %v", code, b, a["id"])
	}
	code, b2 := post(t, c, url, "", `{"txn_id":"B"}`)
	if code != http.StatusOK || b2["status"] != StatusDuplicate || b2["id"] != a["id"] {
		t.Fatalf("B retried: %d %v", code, b2)
	}
}

// Remember carries visits admitted before a restart into the window: a
// retry of one is a duplicate with the stored visit's id; one older than
// the window, or a txn_id never seen, starts a visit.
func TestRememberAcrossRestart(t *testing.T) {
	clk := &instantClock{now: time.Date(2030, 1, 1, 9, 0, 0, 0, time.UTC)}
	sock := filepath.Join(t.TempDir(), "trigger.sock")
	h, err := NewHTTP(HTTPConfig{Socket: sock, IdempotencyWindow: 10 * time.Minute}, nil, WithHTTPClock(clk))
	if err != nil {
		t.Fatal(err)
	}
	h.Remember("T-old", "visit-old", clk.now.Add(-11*time.Minute))
	h.Remember("T-recent", "visit-recent", clk.now.Add(-2*time.Minute))
	h.Remember("T-recent", "visit-other", clk.now.Add(-time.Minute)) // known: kept as first seen
	out := make(chan visit.Trigger, 4)
	startHTTP(t, h, out)
	c := unixClient(sock)
	url := "http://atm/v1/visit"
	code, m := post(t, c, url, "", `{"txn_id":"T-recent"}`)
	if code != http.StatusOK || m["status"] != StatusDuplicate || m["id"] != "visit-recent" {
		t.Fatalf("retry of a remembered visit: %d %v, want 200 duplicate of visit-recent", code, m)
	}
	for _, txn := range []string{"T-old", "T-new"} {
		code, m := post(t, c, url, "", `{"txn_id":"`+txn+`"}`)
		if code != http.StatusAccepted || m["status"] != StatusAccepted {
			t.Fatalf("%s: %d %v, want 202 accepted", txn, code, m)
		}
		<-out
	}
	if len(out) != 0 {
		t.Fatalf("%d events beyond the two visits", len(out))
	}
}

// One txn_id with another card_hash: still the first visit's answer (the
// contract), but a warning of its own in the log, where the same retry
// with the same card is an info line. Before, the second card vanished
// without a trace.
func TestDuplicateWithAnotherCardWarned(t *testing.T) {
	var buf lockedLog
	sock := filepath.Join(t.TempDir(), "trigger.sock")
	h, err := NewHTTP(HTTPConfig{Socket: sock}, slog.New(slog.NewTextHandler(&buf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	startHTTP(t, h, make(chan visit.Trigger, 2))
	e := socketEndpoint{c: unixClient(sock)}
	url := "http://atm/v1/visit"
	other := strings.Repeat("b", 64)
	if code, _ := post(t, e.c, url, "", `{"card_hash":"`+goodHash+`","txn_id":"T-9"}`); code != http.StatusAccepted {
		t.Fatalf("first: %d", code)
	}
	if code, m := post(t, e.c, url, "", `{"card_hash":"`+goodHash+`","txn_id":"T-9"}`); code != http.StatusOK || m["status"] != StatusDuplicate {
		t.Fatalf("same card: %d %v", code, m)
	}
	if strings.Contains(buf.String(), "another card_hash") {
		t.Fatalf("a plain retry warned:\n%s", buf.String())
	}
	if code, m := post(t, e.c, url, "", `{"card_hash":"`+other+`","txn_id":"T-9"}`); code != http.StatusOK || m["status"] != StatusDuplicate {
		t.Fatalf("other card: %d %v", code, m)
	}
	if log := buf.String(); !strings.Contains(log, "level=WARN") || !strings.Contains(log, "repeated with another card_hash") || strings.Contains(log, other) {
		t.Fatalf("no warning for another card (or the hash in it):\n%s", log)
	}
}

type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
