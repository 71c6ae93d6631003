package trigger

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
)

const goodHash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

func unixClient(path string) *http.Client {
	return &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}
}

// startHTTP listens, runs h and returns a stop func that checks Run's exit.
func startHTTP(t *testing.T, h *HTTP, out chan visit.Trigger) {
	t.Helper()
	if err := h.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx, out) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("HTTP Run did not return")
		}
	})
}

// socketEndpoint is an endpoint running on a unix socket.
type socketEndpoint struct {
	h    *HTTP
	sock string
	out  chan visit.Trigger // its events, buffered
	c    *http.Client       // a client of sock
}

// startSocket runs an endpoint configured by cfg on cfg.Socket (a new
// socket in a temp dir when empty) with an event channel of queue; it
// stops when the test ends (startHTTP).
func startSocket(t *testing.T, cfg HTTPConfig, queue int, opts ...HTTPOption) socketEndpoint {
	t.Helper()
	if cfg.Socket == "" {
		cfg.Socket = filepath.Join(t.TempDir(), "trigger.sock")
	}
	h, err := NewHTTP(cfg, nil, opts...)
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan visit.Trigger, queue)
	startHTTP(t, h, out)
	return socketEndpoint{h: h, sock: cfg.Socket, out: out, c: unixClient(cfg.Socket)}
}

func post(t *testing.T, c *http.Client, url, token, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

func TestUnixSocketEndpoint(t *testing.T) {
	e := startSocket(t, HTTPConfig{}, 1)
	out, c := e.out, e.c
	fi, err := os.Stat(e.sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v, want socket 0660", fi.Mode())
	}

	code, m := post(t, c, "http://atm/v1/visit", "", `{"card_hash":"`+goodHash+`","txn_id":"T-0001"}`)
	if code != http.StatusAccepted || len(m["id"].(string)) != 16 {
		t.Fatalf("POST: %d %v", code, m)
	}
	ev := <-out
	want := visit.Context{CardHash: goodHash, TxnID: "T-0001"}
	if ev.Source != SourceSocket || !reflect.DeepEqual(ev.Context, want) || ev.ID != m["id"] {
		t.Fatalf("event %+v", ev)
	}

	// Empty body: a visit without context.
	if code, _ := post(t, c, "http://atm/v1/visit", "", ""); code != http.StatusAccepted {
		t.Fatalf("empty POST: %d", code)
	}
	// Channel full (nobody read the last event): 503, counted as dropped.
	if code, m := post(t, c, "http://atm/v1/visit", "", ""); code != http.StatusServiceUnavailable {
		t.Fatalf("POST while busy: %d %v", code, m)
	}
	<-out
	// A card number is refused with a clear message and never reaches out.
	code, m = post(t, c, "http://atm/v1/visit", "", `{"card_hash":"4111 1111 1111 1111"}`)
	if code != http.StatusBadRequest || !strings.Contains(m["error"].(string), "card number") {
		t.Fatalf("PAN: %d %v", code, m)
	}
	if strings.Contains(m["error"].(string), "4111") {
		t.Fatal("error echoes the card number")
	}
	// Oversized body.
	big := `{"txn_id":"` + strings.Repeat("a", 5000) + `"}`
	if code, _ := post(t, c, "http://atm/v1/visit", "", big); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("big body: %d", code)
	}
	// Wrong method.
	resp, err := c.Get("http://atm/v1/visit")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET /v1/visit: %d", resp.StatusCode)
	}
	resp, err = c.Get("http://atm/v1/health")
	if err != nil {
		t.Fatal(err)
	}
	var hm map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&hm)
	resp.Body.Close()
	if resp.StatusCode != 200 || hm["status"] != "ok" || hm["accepted"].(float64) != 2 || hm["dropped"].(float64) != 1 {
		t.Fatalf("health: %d %v", resp.StatusCode, hm)
	}
	select {
	case ev := <-out:
		t.Fatalf("unexpected event %+v", ev)
	default:
	}
}

// GET /v1/health reports the agent's version and whether it can film
// (WithVersion, WithReadiness), read at each request; without them only
// the endpoint's counters, as before.
func TestHealthReadiness(t *testing.T) {
	var r atomic.Pointer[Readiness]
	r.Store(&Readiness{Ready: true, Camera: "ok"})
	e := startSocket(t, HTTPConfig{}, 1, WithVersion("1.2.3"), WithReadiness(func() Readiness { return *r.Load() }))
	get := func(c *http.Client) map[string]any {
		t.Helper()
		resp, err := c.Get("http://atm/v1/health")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || resp.StatusCode != 200 {
			t.Fatalf("health: %d %v", resp.StatusCode, err)
		}
		return m
	}
	m := get(e.c)
	if m["status"] != "ok" || m["version"] != "1.2.3" || m["ready"] != true || m["camera"] != "ok" || len(m["reasons"].([]any)) != 0 {
		t.Fatalf("ready: %v", m)
	}
	r.Store(&Readiness{Camera: "down", Reasons: []string{"camera: down"}})
	m = get(e.c)
	if m["status"] != "ok" || m["ready"] != false || m["camera"] != "down" || m["reasons"].([]any)[0] != "camera: down" {
		t.Fatalf("camera down: %v", m)
	}
	plain := startSocket(t, HTTPConfig{}, 1)
	m = get(plain.c)
	for _, k := range []string{"version", "ready", "camera", "reasons"} {
		if _, ok := m[k]; ok {
			t.Errorf("without the options: %q in %v", k, m)
		}
	}
}

func TestLoopbackTCPWithToken(t *testing.T) {
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "token")
	token := "s3cret-token-0123456789"
	if err := os.WriteFile(tokFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h, err := NewHTTP(HTTPConfig{Listen: "127.0.0.1:0", TokenFile: tokFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan visit.Trigger, 4)
	startHTTP(t, h, out)
	url := "http://" + h.TCPAddr().String()
	c := &http.Client{Timeout: 2 * time.Second}
	for _, tc := range []struct {
		token string
		want  int
	}{{"", 401}, {"wrong", 401}, {token + "x", 401}, {token, 202}} {
		if code, _ := post(t, c, url+"/v1/visit", tc.token, ""); code != tc.want {
			t.Errorf("token %q: %d, want %d", tc.token, code, tc.want)
		}
	}
	resp, err := c.Get(url + "/v1/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("health without token: %d", resp.StatusCode)
	}
	if len(out) != 1 {
		t.Errorf("%d events, want 1", len(out))
	}
}

func TestHTTPConfigValidate(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "tok")
	_ = os.WriteFile(tok, []byte("0123456789abcdef0123"), 0o600)
	short := filepath.Join(dir, "short")
	_ = os.WriteFile(short, []byte("abc"), 0o600)
	tests := []struct {
		name string
		cfg  HTTPConfig
		want string
	}{
		{"socket", HTTPConfig{Socket: filepath.Join(dir, "s")}, ""},
		{"tcp v4", HTTPConfig{Listen: "127.0.0.1:8787", TokenFile: tok}, ""},
		{"tcp v6", HTTPConfig{Listen: "[::1]:8787", TokenFile: tok}, ""},
		{"tcp localhost", HTTPConfig{Listen: "localhost:8787", TokenFile: tok}, ""},
		{"nothing", HTTPConfig{}, "set socket"},
		{"all interfaces", HTTPConfig{Listen: ":8787", TokenFile: tok}, "only loopback"},
		{"lan", HTTPConfig{Listen: "192.168.1.5:8787", TokenFile: tok}, "only loopback"},
		{"wildcard", HTTPConfig{Listen: "0.0.0.0:8787", TokenFile: tok}, "only loopback"},
		{"hostname", HTTPConfig{Listen: "atm.example:8787", TokenFile: tok}, "only loopback"},
		{"tcp without token", HTTPConfig{Listen: "127.0.0.1:8787"}, "needs token_file"},
		{"short token", HTTPConfig{Listen: "127.0.0.1:8787", TokenFile: short}, "shorter than 16"},
		{"missing token", HTTPConfig{Listen: "127.0.0.1:8787", TokenFile: filepath.Join(dir, "none")}, "token file"},
		{"world mode", HTTPConfig{Socket: "/x", SocketMode: "0666"}, "others"},
		{"bad mode", HTTPConfig{Socket: "/x", SocketMode: "rw"}, "octal"},
		{"mode locks the owner out", HTTPConfig{Socket: "/x", SocketMode: "0000"}, "must give the owner read and write"},
		{"mode group only", HTTPConfig{Socket: "/x", SocketMode: "0060"}, "must give the owner read and write"},
		{"mode owner read only", HTTPConfig{Socket: "/x", SocketMode: "0460"}, "must give the owner read and write"},
		{"mode owner only", HTTPConfig{Socket: filepath.Join(dir, "s"), SocketMode: "0600"}, ""},
		{"unknown group", HTTPConfig{Socket: "/x", SocketGroup: "no-such-group-xyz"}, "socket_group"},
		{"short window", HTTPConfig{Socket: "/x", IdempotencyWindow: time.Millisecond}, "idempotency_window"},
		{"long window", HTTPConfig{Socket: "/x", IdempotencyWindow: 25 * time.Hour}, "idempotency_window"},
		{"negative max", HTTPConfig{Socket: "/x", IdempotencyMax: -1}, "idempotency_max"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewHTTP(tt.cfg, nil)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want containing %q", err, tt.want)
			}
		})
	}
}

func TestSocketRefusesToReplaceRegularFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "not-a-socket")
	if err := os.WriteFile(p, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	h, err := NewHTTP(HTTPConfig{Socket: p}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Listen(); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen: %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "keep me" {
		t.Fatal("regular file was replaced")
	}
}

func TestDecodeVisitRequest(t *testing.T) {
	b64 := "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg="
	tests := []struct {
		name    string
		body    string
		want    visit.Context
		wantErr error // nil: accepted; errAny: any error
	}{
		{"empty", "", visit.Context{}, nil},
		{"blank", "  \n", visit.Context{}, nil},
		// A UTF-8 byte order mark is ignored, like JSON's white space;
		// other white space is not JSON's.
		{"BOM then object", "\xef\xbb\xbf{\"txn_id\":\"T1\"}", visit.Context{TxnID: "T1"}, nil},
		{"BOM alone", "\xef\xbb\xbf \r\n", visit.Context{}, nil},
		{"no-break space", "\u00a0", visit.Context{}, errAny},
		{"BOM twice", "\xef\xbb\xbf\xef\xbb\xbf{}", visit.Context{}, errAny},
		{"empty object", "{}", visit.Context{}, nil},
		{"hex hash", `{"card_hash":"` + goodHash + `"}`, visit.Context{CardHash: goodHash}, nil},
		// One hash, one stored form: the lowercase hex of its bytes.
		{"base64 hash", `{"card_hash":"` + b64 + `"}`, visit.Context{CardHash: goodHash}, nil},
		{"upper-case hex hash", `{"card_hash":"` + strings.ToUpper(goodHash) + `"}`, visit.Context{CardHash: goodHash}, nil},
		{"base64url hash", `{"card_hash":"n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg"}`, visit.Context{CardHash: goodHash}, nil},
		{"unpadded base64 hash", `{"card_hash":"` + strings.TrimRight(b64, "=") + `"}`, visit.Context{CardHash: goodHash}, nil},
		{"odd-length hex", `{"card_hash":"` + goodHash[:63] + `"}`, visit.Context{}, visit.ErrCardHashEncoding},
		{"both base64 alphabets", `{"card_hash":"n4bQgYhMfWWaL+qgxVrQFaO_TxsrC4Is0V1sFbDwCgg="}`, visit.Context{}, visit.ErrCardHashEncoding},
		{"base64 bad length", `{"card_hash":"` + strings.TrimRight(b64, "=") + `xy="}`, visit.Context{}, visit.ErrCardHashEncoding},
		{"txn only", `{"txn_id":"RRN 123456789012"}`, visit.Context{TxnID: "RRN 123456789012"}, nil},
		{"12 digit rrn", `{"txn_id":"123456789012"}`, visit.Context{TxnID: "123456789012"}, nil},
		{"pan as hash", `{"card_hash":"4111111111111111"}`, visit.Context{}, ErrLooksLikePAN},
		{"pan with dashes", `{"card_hash":"4111-1111-1111-1111"}`, visit.Context{}, ErrLooksLikePAN},
		{"12 digits", `{"card_hash":"123456789012"}`, visit.Context{}, ErrLooksLikePAN},
		{"19 digits", `{"card_hash":"1234567890123456789"}`, visit.Context{}, ErrLooksLikePAN},
		{"luhn pan as txn", `{"txn_id":"4111111111111111"}`, visit.Context{}, ErrLooksLikePAN},
		{"short hash", `{"card_hash":"abcdef"}`, visit.Context{}, ErrBadCardHash},
		{"not a hash", `{"card_hash":"this is not a hash at all, clearly!!"}`, visit.Context{}, ErrBadCardHash},
		{"long txn", `{"txn_id":"` + strings.Repeat("x", 65) + `"}`, visit.Context{}, ErrBadTxnID},
		{"control txn", `{"txn_id":"a\nb"}`, visit.Context{}, ErrBadTxnID},
		{"unknown field", `{"pan":"4111111111111111"}`, visit.Context{}, errAny},
		{"number hash", `{"card_hash":4111111111111111}`, visit.Context{}, errAny},
		{"two objects", `{} {}`, visit.Context{}, errAny},
		{"array", `[]`, visit.Context{}, errAny},
		{"truncated", `{"card_hash":`, visit.Context{}, errAny},
		// Names are exact and each appears at most once.
		{"upper-case name", `{"TXN_ID":"T5"}`, visit.Context{}, errAny},
		{"mixed-case name", `{"Card_Hash":"` + goodHash + `"}`, visit.Context{}, errAny},
		{"duplicate txn_id", `{"txn_id":"T3","txn_id":"T4"}`, visit.Context{}, errAny},
		{"duplicate card_hash", `{"card_hash":"` + goodHash + `","txn_id":"T1","card_hash":"` + goodHash + `"}`, visit.Context{}, errAny},
		{"escaped name", `{"txn\u005fid":"T1"}`, visit.Context{TxnID: "T1"}, nil},
		{"null value", `{"txn_id":null}`, visit.Context{}, errAny},
		{"object value", `{"txn_id":{"a":1}}`, visit.Context{}, errAny},
		{"null body", `null`, visit.Context{}, errAny},
		{"pan as name", `{"4111111111111111":"x"}`, visit.Context{}, errAny},
		{"huge number", `{"txn_id":1e99999}`, visit.Context{}, errAny},
		{"trailing garbage", `{"txn_id":"T1"} x`, visit.Context{}, errAny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeVisitRequest(strings.NewReader(tt.body))
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tt.wantErr == errAny && err == nil, tt.wantErr != nil && tt.wantErr != errAny && !errors.Is(err, tt.wantErr):
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), "4111") {
				t.Fatalf("error echoes input: %v", err)
			}
			// The field is named once ("txn_id: txn_id must be ..." before).
			for _, f := range []string{"txn_id", "card_hash"} {
				if err != nil && strings.Count(err.Error(), f) > 1 {
					t.Errorf("%q named twice: %v", f, err)
				}
			}
		})
	}
}

var errAny = errors.New("any error")

func FuzzDecodeVisitRequest(f *testing.F) {
	for _, s := range []string{"", "{}", `{"card_hash":"` + goodHash + `","txn_id":"T1"}`,
		`{"card_hash":"4111111111111111"}`, `{"txn_id":"4111111111111111"}`, `[1]`, `{"a":1}`, "null"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		c, err := DecodeVisitRequest(bytes.NewReader(body))
		if err != nil {
			if !reflect.DeepEqual(c, visit.Context{}) {
				t.Fatalf("context %+v returned with error", c)
			}
			return
		}
		// Whatever is accepted passes validation and is never a PAN.
		if verr := ValidateContext(c); verr != nil {
			t.Fatalf("accepted invalid context: %v", verr)
		}
		if looksLikePAN(c.CardHash, false) {
			t.Fatalf("accepted PAN-like card_hash")
		}
		if c.CardHash != "" && (len(c.CardHash) < 32 || len(c.CardHash) > 128) {
			t.Fatalf("accepted card_hash of length %d", len(c.CardHash))
		}
	})
}

// Field names are matched exactly and a repeated one is refused, with a
// message that says so; nothing reaches the agent.
func TestVisitFieldNamesStrict(t *testing.T) {
	e := startSocket(t, HTTPConfig{}, 4)
	out, c := e.out, e.c
	for _, tc := range []struct{ body, want string }{
		{`{"TXN_ID":"T5"}`, `unknown field "TXN_ID"`},
		{`{"Txn_Id":"T5"}`, `unknown field "Txn_Id"`},
		{`{"txn_id":"T3","txn_id":"T4"}`, `duplicate field "txn_id"`},
		{`{"card_hash":"` + goodHash + `","card_hash":"` + goodHash + `"}`, `duplicate field "card_hash"`},
		{`{"pan":"x"}`, `unknown field "pan"`},
		{`{"4111111111111111":"x"}`, `unknown field (name not shown)`},
	} {
		code, m := post(t, c, "http://atm/v1/visit", "", tc.body)
		msg, _ := m["error"].(string)
		if code != http.StatusBadRequest || !strings.Contains(msg, tc.want) {
			t.Errorf("%s: %d %q, want 400 containing %q", tc.body, code, msg, tc.want)
		}
		if strings.Contains(msg, "4111") {
			t.Errorf("%s: error echoes the name: %q", tc.body, msg)
		}
	}
	if len(out) != 0 {
		t.Fatalf("%d triggers reached the agent", len(out))
	}
}

// A second endpoint on the socket of a running one refuses to start and
// leaves it alone: the first keeps receiving card inserts.
func TestSocketInUseRefused(t *testing.T) {
	e := startSocket(t, HTTPConfig{}, 2)
	h2, err := NewHTTP(HTTPConfig{Socket: e.sock}, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = h2.Listen()
	if err == nil || !strings.Contains(err.Error(), "in use by another process") || !strings.Contains(err.Error(), e.sock+".lock") {
		closeListeners(h2)
		t.Fatalf("second Listen on a live socket: %v, want refused as in use, naming the lock", err)
	}
	t.Logf("second endpoint: %v", err)
	if code, m := post(t, e.c, "http://atm/v1/visit", "", `{"txn_id":"T1"}`); code != http.StatusAccepted {
		t.Fatalf("the first endpoint after the second was refused: %d %v", code, m)
	}
	if ev := <-e.out; ev.Context.TxnID != "T1" {
		t.Fatalf("event %+v", ev)
	}
}

// A socket left behind by a killed run (nobody listens on it) is replaced.
func TestStaleSocketReused(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "trigger.sock")
	staleSocket(t, sock)
	if fi, err := os.Lstat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("no stale socket: %v", err)
	}
	e := startSocket(t, HTTPConfig{Socket: sock}, 1)
	if code, m := post(t, e.c, "http://atm/v1/visit", "", ""); code != http.StatusAccepted {
		t.Fatalf("POST: %d %v", code, m)
	}
}

// slowBodyFlood opens n connections with dial, each sending the headers
// of a POST (with the extra header lines hdr) that announce a 4000-byte
// body, then one byte of it and nothing more; they stay open until the
// test ends. Only a failed dial fails the test.
func slowBodyFlood(t *testing.T, dial func() (net.Conn, error), n int, hdr string) {
	t.Helper()
	conns := make([]net.Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c, err := dial()
			if err != nil {
				errs[i] = err
				return
			}
			conns[i] = c
			// A write fails when the server has already closed (evicted) it.
			fmt.Fprintf(c, "POST /v1/visit HTTP/1.1\r\nHost: x\r\n%sContent-Length: 4000\r\n\r\n{", hdr)
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	for i, err := range errs {
		if err != nil {
			t.Fatalf("flood connection %d: %v", i, err)
		}
	}
	time.Sleep(200 * time.Millisecond) // the server has their headers
}

// A flood of connections that announce a body and never send it does not
// delay a card insert: on the TCP port without the token or with a wrong
// one (any local user), and on the socket. Before the fix a 401 waited
// for the body and the socket's handler read it, for the server's 10 s
// read timeout, and the guard never evicted those connections: the insert
// waited about 10 s.
func TestSlowBodyFloodDoesNotDelayTrigger(t *testing.T) {
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "token")
	token := "s3cret-token-0123456789"
	if err := os.WriteFile(tokFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		n    int
		hdr  string
		tcp  bool
	}{
		{"tcp without token", 300, "", true},
		{"tcp wrong token", 300, "Authorization: Bearer wrong-token-0123456789\r\n", true},
		{"unix socket", 100, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := HTTPConfig{Socket: filepath.Join(t.TempDir(), "trigger.sock")}
			if tc.tcp {
				cfg = HTTPConfig{Listen: "127.0.0.1:0", TokenFile: tokFile}
			}
			h, err := NewHTTP(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			out := make(chan visit.Trigger, 8)
			startHTTP(t, h, out)
			url, tok := "http://atm/v1/visit", ""
			c := unixClient(cfg.Socket)
			dial := func() (net.Conn, error) { return net.DialTimeout("unix", cfg.Socket, 2*time.Second) }
			if tc.tcp {
				url, tok = "http://"+h.TCPAddr().String()+"/v1/visit", token
				c = &http.Client{}
				dial = func() (net.Conn, error) { return net.DialTimeout("tcp", h.TCPAddr().String(), 2*time.Second) }
			}
			c.Timeout = 15 * time.Second
			slowBodyFlood(t, dial, tc.n, tc.hdr)
			for i := range 3 {
				t0 := time.Now()
				code, m := post(t, c, url, tok, fmt.Sprintf(`{"txn_id":"T-%d"}`, i))
				d := time.Since(t0)
				if code != http.StatusAccepted {
					t.Fatalf("card insert %d during the flood: %d %v after %v", i, code, m, d)
				}
				if d > 2*time.Second {
					t.Fatalf("card insert %d during a flood of %d slow-body connections took %v", i, tc.n, d)
				}
				<-out
				t.Logf("card insert %d answered in %v", i, d.Round(time.Millisecond))
			}
		})
	}
}

// rawRequest sends req on conn and reads the reply, failing after limit.
func rawRequest(t *testing.T, conn net.Conn, req string, limit time.Duration) (*http.Response, []byte, time.Duration) {
	t.Helper()
	t0 := time.Now()
	conn.SetDeadline(t0.Add(limit))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no reply within %v: %v", limit, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	d := time.Since(t0)
	// The server closes the connection right after the reply.
	if n, err := br.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("connection not closed after the reply: %d bytes, %v after %v", n, err, time.Since(t0))
	}
	return resp, b, d
}

// A request refused before its body matters (no or a wrong token, a wrong
// method) is answered at once, without waiting for the body the client
// announced, and its connection is closed. Before the fix the reply came
// only when the server gave up reading that body (10 s).
func TestRefusalAnsweredBeforeBody(t *testing.T) {
	tokFile := filepath.Join(t.TempDir(), "token")
	token := "s3cret-token-0123456789"
	if err := os.WriteFile(tokFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	h, err := NewHTTP(HTTPConfig{Listen: "127.0.0.1:0", TokenFile: tokFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	startHTTP(t, h, make(chan visit.Trigger, 1))
	for _, tc := range []struct {
		name, path, auth string
		want             int
	}{
		{"no token", "/v1/visit", "", http.StatusUnauthorized},
		{"wrong token", "/v1/visit", "Authorization: Bearer wrong-token-0123456789\r\n", http.StatusUnauthorized},
		{"POST health", "/v1/health", "Authorization: Bearer " + token + "\r\n", http.StatusMethodNotAllowed},
		// Past the token check (the scheme is case-insensitive, RFC 9110):
		// the method is what is refused.
		{"lowercase scheme", "/v1/health", "Authorization: bearer " + token + "\r\n", http.StatusMethodNotAllowed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", h.TCPAddr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			req := "POST " + tc.path + " HTTP/1.1\r\nHost: localhost\r\n" + tc.auth + "Content-Length: 4000\r\n\r\n{"
			resp, _, d := rawRequest(t, conn, req, 3*time.Second)
			if resp.StatusCode != tc.want || d > time.Second {
				t.Fatalf("%d after %v, want %d at once", resp.StatusCode, d, tc.want)
			}
		})
	}
}

// A body that stops arriving is answered 408 after BodyTimeout and its
// connection closed, not held for the server's read timeout (10 s).
func TestSlowBodyTimesOut(t *testing.T) {
	e := startSocket(t, HTTPConfig{}, 1)
	out := e.out
	conn, err := net.Dial("unix", e.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, b, d := rawRequest(t, conn, "POST /v1/visit HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n{\"txn_id\":", BodyTimeout+2*time.Second)
	if resp.StatusCode != http.StatusRequestTimeout || d < BodyTimeout-100*time.Millisecond {
		t.Fatalf("%d %s after %v, want 408 after %v", resp.StatusCode, b, d, BodyTimeout)
	}
	if len(out) != 0 {
		t.Fatal("a trigger reached the agent")
	}
}
