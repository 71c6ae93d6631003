package trigger

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/testenv/openapi"
)

// exchange is one request to the real handler and its response.
type exchange = openapi.Exchange

func do(t *testing.T, c *http.Client, base, name, method, path, token, body string) exchange {
	t.Helper()
	return doHost(t, c, base, name, method, path, "", token, body)
}

// doHost is do with the request's Host header set to host ("" = base's).
func doHost(t *testing.T, c *http.Client, base, name, method, path, host, token, body string) exchange {
	t.Helper()
	req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
	if host != "" {
		req.Host = host
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return exchange{Name: name, Method: method, Path: path, Body: body, Code: resp.StatusCode, Header: resp.Header, Resp: b}
}

// Every reply of the real handler, over the socket and over TCP, is a
// documented response of docs/openapi/trigger.yaml: its status code, body
// schema and headers; every documented response is produced; the request
// bodies the handler accepts are valid requests and a body with an unknown
// field is not.
func TestOpenAPIMatchesHandler(t *testing.T) {
	d := openapi.Load(t, filepath.Join("..", "..", "docs", "openapi", "trigger.yaml"))
	// A path the API does not have: the NotFound response.
	d.Fallback = map[int][]string{http.StatusNotFound: {"components", "responses", "NotFound"}}
	var xs []exchange

	// Unix socket, no token; an output channel of one.
	e := startSocket(t, HTTPConfig{}, 1)
	sock, out, c := e.sock, e.out, e.c
	const base = "http://localhost"
	full := `{"card_hash":"` + goodHash + `","txn_id":"RRN 123456789012"}`
	xs = append(xs,
		do(t, c, base, "accepted", "POST", "/v1/visit", "", full),
		do(t, c, base, "duplicate", "POST", "/v1/visit", "", full),
		do(t, c, base, "busy", "POST", "/v1/visit", "", `{"txn_id":"T-2"}`))
	<-out
	xs = append(xs,
		do(t, c, base, "empty body", "POST", "/v1/visit", "", ""))
	<-out
	xs = append(xs,
		do(t, c, base, "base64 hash", "POST", "/v1/visit", "", `{"card_hash":"n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg="}`))
	<-out
	xs = append(xs,
		do(t, c, base, "card number", "POST", "/v1/visit", "", `{"card_hash":"4111 1111 1111 1111"}`),
		do(t, c, base, "unknown field", "POST", "/v1/visit", "", `{"pan":"x"}`),
		do(t, c, base, "upper-case field", "POST", "/v1/visit", "", `{"TXN_ID":"T5"}`),
		do(t, c, base, "duplicate field", "POST", "/v1/visit", "", `{"txn_id":"T3","txn_id":"T4"}`),
		do(t, c, base, "not JSON", "POST", "/v1/visit", "", `card`),
		do(t, c, base, "too big", "POST", "/v1/visit", "", `{"txn_id":"`+strings.Repeat("a", 5000)+`"}`),
		do(t, c, base, "GET visit", "GET", "/v1/visit", "", ""),
		do(t, c, base, "POST health", "POST", "/v1/health", "", ""),
		do(t, c, base, "health", "GET", "/v1/health", "", ""),
		// Paths the API does not have: a JSON 404 each (not ServeMux's
		// text/plain page, nor a bodiless 307 for an unclean path).
		do(t, c, base, "root", "GET", "/", "", ""),
		do(t, c, base, "unknown path", "POST", "/v1/visits", "", `{"txn_id":"T-404"}`),
		do(t, c, base, "trailing slash", "POST", "/v1/visit/", "", ""),
		slowBody(t, sock))

	// An unclean path is served as its clean one, at once: ServeMux
	// answered it with a bodiless 307 that curl does not follow.
	noFollow := &http.Client{Transport: c.Transport, Timeout: c.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if x := do(t, noFollow, base, "double slash", "POST", "/v1//visit", "", `{"txn_id":"T-slash"}`); x.Code != http.StatusAccepted ||
		x.Header.Get("Content-Type") != "application/json" {
		t.Errorf("POST /v1//visit: %d %q %s, want 202 accepted", x.Code, x.Header.Get("Content-Type"), x.Resp)
	}

	// With the agent's version and readiness (as atm-agent run has them):
	// the optional fields.
	er := startSocket(t, HTTPConfig{}, 1, WithVersion("1.2.3"), WithReadiness(func() Readiness {
		return Readiness{Camera: "down", Reasons: []string{"camera: down"}}
	}))
	xs = append(xs, do(t, er.c, base, "health not ready", "GET", "/v1/health", "", ""))

	// Loopback TCP with a token.
	tc, tbase := startTCP(t, tcpToken)
	token := tcpToken
	xs = append(xs,
		do(t, tc, tbase, "tcp no token", "POST", "/v1/visit", "", `{}`),
		do(t, tc, tbase, "tcp health no token", "GET", "/v1/health", "", ""),
		do(t, tc, tbase, "tcp unknown path", "GET", "/metrics", token, ""),
		do(t, tc, tbase, "tcp accepted", "POST", "/v1/visit", token, `{"txn_id":"T-9"}`),
		do(t, tc, tbase, "tcp health", "GET", "/v1/health", token, ""),
		// A web page rebound to 127.0.0.1 sends its own name: 421, token
		// or not (before: served).
		doHost(t, tc, tbase, "tcp foreign host", "POST", "/v1/visit", "evil.example:8787", token, `{"txn_id":"T-evil"}`),
		doHost(t, tc, tbase, "tcp health foreign host", "GET", "/v1/health", "evil.example", token, ""))
	// The socket, which no browser reaches, answers any Host.
	if x := doHost(t, c, base, "socket foreign host", "GET", "/v1/health", "evil.example", "", ""); x.Code != http.StatusOK {
		t.Errorf("socket, Host evil.example: %d %s, want 200", x.Code, x.Resp)
	}
	for _, x := range xs[len(xs)-2:] {
		if x.Code != http.StatusMisdirectedRequest {
			t.Errorf("%s: %d %s, want 421", x.Name, x.Code, x.Resp)
		}
	}

	// Coalesced: the handler in front of a consumer that queues one visit.
	var queued string
	hc, err := NewHTTP(HTTPConfig{Socket: filepath.Join(t.TempDir(), "s")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(hc.AdmitHandler(func(ev visit.Trigger) visit.Admission {
		if queued == "" {
			queued = ev.ID
			return visit.Admission{ID: ev.ID}
		}
		return visit.Admission{ID: queued, Coalesced: true}
	}))
	defer srv.Close()
	xs = append(xs,
		do(t, srv.Client(), srv.URL, "queued", "POST", "/v1/visit", "", `{"txn_id":"A"}`),
		do(t, srv.Client(), srv.URL, "coalesced", "POST", "/v1/visit", "", `{"txn_id":"B"}`))

	// GET /v1/visits/{txn_id}, over the socket and TCP, in front of a
	// stand-in store.
	ev := startSocket(t, HTTPConfig{}, 4, WithVisitLookup(standInLookup))
	_, t2base := startTCP(t, tcpToken, WithVisitLookup(standInLookup))
	for _, txn := range []string{"RRN 1", "T-pending", "T-broken"} {
		do(t, ev.c, base, "take "+txn, "POST", "/v1/visit", "", `{"txn_id":"`+txn+`"}`)
	}
	do(t, tc, t2base, "take over TCP", "POST", "/v1/visit", token, `{"txn_id":"RRN 1"}`)
	for _, x := range []exchange{
		do(t, ev.c, base, "visit stored", "GET", "/v1/visits/RRN%201", "", ""),
		do(t, ev.c, base, "visit pending", "GET", "/v1/visits/T-pending", "", ""),
		do(t, ev.c, base, "visit unknown", "GET", "/v1/visits/T-never", "", ""),
		do(t, ev.c, base, "visit store error", "GET", "/v1/visits/T-broken", "", ""),
		do(t, ev.c, base, "visit bad txn_id", "GET", "/v1/visits/caf%C3%A9", "", ""),
		do(t, ev.c, base, "visit POST", "POST", "/v1/visits/RRN%201", "", ""),
		do(t, tc, t2base, "tcp visit", "GET", "/v1/visits/RRN%201", token, ""),
		do(t, tc, t2base, "tcp visit no token", "GET", "/v1/visits/RRN%201", "", ""),
		doHost(t, tc, t2base, "tcp visit foreign host", "GET", "/v1/visits/RRN%201", "evil.example", token, ""),
	} {
		x.Route = "/v1/visits/{txn_id}"
		xs = append(xs, x)
	}

	reqSchema := d.Schema("paths", "/v1/visit", "post", "requestBody", "content", "application/json", "schema")
	statuses := map[string]string{}
	for _, x := range xs {
		if d.Check(x) == nil {
			continue
		}
		if x.Path == "/v1/visit" && x.Method == "POST" && strings.TrimSpace(x.Body) != "" && x.Code != http.StatusUnauthorized {
			err := openapi.ValidateJSON(reqSchema, []byte(x.Body))
			if x.Code < 300 && err != nil {
				t.Errorf("%s: accepted body %s is not a valid request: %v", x.Name, x.Body, err)
			}
			if (x.Name == "unknown field" || x.Name == "upper-case field") && err == nil {
				t.Errorf("%s: the request schema accepts %s", x.Name, x.Body)
			}
		}
		if x.Code < 300 && x.Path == "/v1/visit" {
			var r VisitReply
			_ = json.Unmarshal(x.Resp, &r)
			statuses[x.Name] = r.Status
		}
	}
	for name, want := range map[string]string{"accepted": "accepted", "duplicate": "duplicate", "coalesced": "coalesced", "queued": "accepted"} {
		if statuses[name] != want {
			t.Errorf("%s: status %q, want %q", name, statuses[name], want)
		}
	}
	// Every documented response was produced.
	if missing := d.Missing(); len(missing) > 0 {
		t.Errorf("documented but never produced: %v", missing)
	}
	t.Logf("%d exchanges validated against docs/openapi/trigger.yaml", len(xs))
}

// tcpToken is the bearer token of startTCP's endpoints.
const tcpToken = "0123456789abcdef-token"

// startTCP runs an endpoint on loopback TCP that requires token, and
// returns a client and the base URL.
func startTCP(t *testing.T, token string, opts ...HTTPOption) (*http.Client, string) {
	t.Helper()
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	h, err := NewHTTP(HTTPConfig{Listen: "127.0.0.1:0", TokenFile: tok}, nil, opts...)
	if err != nil {
		t.Fatal(err)
	}
	startHTTP(t, h, make(chan visit.Trigger, 4))
	return &http.Client{Timeout: 2 * time.Second}, "http://" + h.TCPAddr().String()
}

// standInLookup is a store for GET /v1/visits/{txn_id}: "RRN 1" is a
// stored face visit, "T-pending" not stored yet, "T-broken" a store that
// fails.
func standInLookup(_ context.Context, visitID, txn string) (StoredVisit, error) {
	switch txn {
	case "RRN 1":
		return StoredVisit{Time: time.Date(2026, 12, 8, 9, 0, 0, 0, time.UTC), Outcome: "face", Mask: "unmasked", Identified: true}, nil
	case "T-broken":
		return StoredVisit{}, errors.New("store broken")
	}
	return StoredVisit{}, ErrVisitNotStored
}

// slowBody sends a POST over the socket whose body stops arriving: the
// 408 exchange.
func slowBody(t *testing.T, sock string) exchange {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `{"txn_id":`
	resp, b, _ := rawRequest(t, conn, "POST /v1/visit HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n"+body, BodyTimeout+2*time.Second)
	return exchange{Name: "body too slow", Method: "POST", Path: "/v1/visit", Body: body, Code: resp.StatusCode, Header: resp.Header, Resp: b}
}
