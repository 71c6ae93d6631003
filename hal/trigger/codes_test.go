package trigger

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/testenv/openapi"
)

// TestErrorCodes: every error reply carries the code a program decides
// by, each code of docs/openapi/trigger.yaml's Error enum is produced by a
// real request to the real endpoint (socket and TCP), with the status the
// file gives it, and every reply is a documented response. Before, an
// error was {"error": text} only: a client told a card number from a
// malformed body by the words.
func TestErrorCodes(t *testing.T) {
	d := openapi.Load(t, filepath.Join("..", "..", "docs", "openapi", "trigger.yaml"))
	d.Fallback = map[int][]string{http.StatusNotFound: {"components", "responses", "NotFound"}}
	enum, _ := d.At("components", "schemas", "Error", "properties", "code", "enum")

	e := startSocket(t, HTTPConfig{}, 1)
	const base = "http://localhost"
	tc, tbase := startTCP(t, tcpToken)
	token := tcpToken

	b64 := "n4bQgYhMfWWaL+qgxVrQFaO_TxsrC4Is0V1sFbDwCgg="
	tests := []struct {
		x    exchange
		code string
	}{
		{do(t, e.c, base, "not JSON", "POST", "/v1/visit", "", `card`), CodeBadJSON},
		{do(t, e.c, base, "array", "POST", "/v1/visit", "", `[]`), CodeBadJSON},
		{do(t, e.c, base, "number value", "POST", "/v1/visit", "", `{"txn_id":12}`), CodeBadJSON},
		{do(t, e.c, base, "two objects", "POST", "/v1/visit", "", `{}{}`), CodeBadJSON},
		{do(t, e.c, base, "unknown field", "POST", "/v1/visit", "", `{"pan":"x"}`), CodeUnknownField},
		{do(t, e.c, base, "upper-case field", "POST", "/v1/visit", "", `{"TXN_ID":"T5"}`), CodeUnknownField},
		{do(t, e.c, base, "duplicate field", "POST", "/v1/visit", "", `{"txn_id":"T3","txn_id":"T4"}`), CodeDuplicateField},
		{do(t, e.c, base, "card number", "POST", "/v1/visit", "", `{"card_hash":"4111 1111 1111 1111"}`), CodeLooksLikePAN},
		{do(t, e.c, base, "card number in txn_id", "POST", "/v1/visit", "", `{"txn_id":"PAN 4111111111111111 EXP 1225"}`), CodeLooksLikePAN},
		// Card data first: the malformed card_hash is named in the error too.
		{do(t, e.c, base, "card number and bad hash", "POST", "/v1/visit", "", `{"card_hash":"abc","txn_id":"4111111111111111"}`), CodeLooksLikePAN},
		{do(t, e.c, base, "track data", "POST", "/v1/visit", "", `{"txn_id":";4111111111111111=2512"}`), CodeTrackData},
		{do(t, e.c, base, "short hash", "POST", "/v1/visit", "", `{"card_hash":"abcdef"}`), CodeBadCardHash},
		{do(t, e.c, base, "odd-length hex", "POST", "/v1/visit", "", `{"card_hash":"`+goodHash[:63]+`"}`), CodeBadEncoding},
		{do(t, e.c, base, "mixed base64 alphabets", "POST", "/v1/visit", "", `{"card_hash":"`+b64+`"}`), CodeBadEncoding},
		{do(t, e.c, base, "long txn_id", "POST", "/v1/visit", "", `{"txn_id":"`+strings.Repeat("x", 65)+`"}`), CodeBadTxnID},
		{do(t, e.c, base, "non-ASCII txn_id", "POST", "/v1/visit", "", `{"txn_id":"caf\u00e9"}`), CodeBadTxnID},
		{do(t, e.c, base, "too big", "POST", "/v1/visit", "", `{"txn_id":"`+strings.Repeat("a", 5000)+`"}`), CodeTooLarge},
		{slowBody(t, e.sock), CodeBodyTimeout},
		{do(t, e.c, base, "GET visit", "GET", "/v1/visit", "", ""), CodeMethodNotAllowed},
		{do(t, e.c, base, "POST health", "POST", "/v1/health", "", ""), CodeMethodNotAllowed},
		{do(t, e.c, base, "unknown path", "GET", "/v1/visits", "", ""), CodeNotFound},
		{do(t, e.c, base, "accepted (fills the queue of one)", "POST", "/v1/visit", "", `{"txn_id":"T-1"}`), ""},
		{do(t, e.c, base, "busy", "POST", "/v1/visit", "", `{"txn_id":"T-2"}`), CodeBusy},
		{do(t, tc, tbase, "tcp no token", "POST", "/v1/visit", "", `{}`), CodeUnauthorized},
		{do(t, tc, tbase, "tcp wrong token", "GET", "/v1/health", "not-the-token-at-all", ""), CodeUnauthorized},
		{doHost(t, tc, tbase, "tcp foreign host", "POST", "/v1/visit", "evil.example:8787", token, `{}`), CodeWrongHost},
	}
	// A consumer whose queued visit is full (the agent past
	// visit.MaxCoalesced txn_ids: TestCoalesceLimitAcrossRestart,
	// ./agent/daemon/, has the real one).
	full := httptest.NewServer(e.h.AdmitHandler(func(visit.Trigger) visit.Admission {
		return visit.Admission{Refused: true, Full: true}
	}))
	defer full.Close()
	tests = append(tests, struct {
		x    exchange
		code string
	}{do(t, full.Client(), full.URL, "coalesce limit", "POST", "/v1/visit", "", `{"txn_id":"T-17"}`), CodeCoalesceLimit})

	// GET /v1/visits/{txn_id} in front of a stand-in store.
	ev := startSocket(t, HTTPConfig{}, 4, WithVisitLookup(standInLookup))
	for _, txn := range []string{"RRN 1", "T-pending", "T-broken"} {
		if x := do(t, ev.c, base, "take "+txn, "POST", "/v1/visit", "", `{"txn_id":"`+txn+`"}`); x.Code != http.StatusAccepted {
			t.Fatalf("POST %s: %d %s", txn, x.Code, x.Resp)
		}
	}
	for _, c := range []struct{ name, path, code string }{
		{"visit pending", "/v1/visits/T-pending", CodeVisitPending},
		{"visit unknown", "/v1/visits/T-never", CodeVisitUnknown},
		{"visit store error", "/v1/visits/T-broken", CodeStoreError},
		{"visit non-ASCII txn_id", "/v1/visits/caf%C3%A9", CodeBadTxnID},
		{"visit card number", "/v1/visits/4111%201111%201111%201111", CodeLooksLikePAN},
		{"visit track data", "/v1/visits/%3B4111111111111111%3D2512", CodeTrackData},
		{"visit POST", "/v1/visits/RRN%201", CodeMethodNotAllowed},
	} {
		method := "GET"
		if c.name == "visit POST" {
			method = "POST"
		}
		x := do(t, ev.c, base, c.name, method, c.path, "", "")
		x.Route = "/v1/visits/{txn_id}"
		tests = append(tests, struct {
			x    exchange
			code string
		}{x, c.code})
	}

	produced := map[string]bool{}
	for _, tt := range tests {
		x := tt.x
		d.Check(x) // fails the test unless documented, body and headers included
		if tt.code == "" {
			if x.Code != http.StatusAccepted {
				t.Fatalf("%s: %d %s", x.Name, x.Code, x.Resp)
			}
			continue
		}
		var r ErrorReply
		if err := json.Unmarshal(x.Resp, &r); err != nil || r.Code != tt.code || r.Error == "" {
			t.Errorf("%s: %d %s, want code %q", x.Name, x.Code, x.Resp, tt.code)
		}
		produced[r.Code] = true
	}
	for _, c := range enum.([]any) {
		if !produced[c.(string)] {
			t.Errorf("code %q is documented but no request produced it", c)
		}
	}
	var documented []string
	for _, c := range enum.([]any) {
		documented = append(documented, c.(string))
	}
	for c := range produced {
		if !slices.Contains(documented, c) {
			t.Errorf("code %q produced but not in the OpenAPI enum", c)
		}
	}
}
