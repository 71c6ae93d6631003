package trigger

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"gopkg.in/yaml.v3"

	"github.com/periocular/atm-agent/agent/visit"
)

// openAPIDoc is docs/openapi/trigger.yaml, compiled: its schemas are JSON
// Schema 2020-12 (OpenAPI 3.1), checked with the library that checks the
// MQTT schemas.
type openAPIDoc struct {
	t   *testing.T
	doc map[string]any
	c   *jsonschema.Compiler
}

const openAPIURL = "mem://trigger.json"

func loadOpenAPI(t *testing.T) *openAPIDoc {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "openapi", "trigger.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("trigger.yaml: %v", err)
	}
	if v, _ := doc["openapi"].(string); !strings.HasPrefix(v, "3.1.") {
		t.Fatalf("openapi %q, want 3.1.x", v)
	}
	for _, k := range []string{"info", "paths", "components"} {
		if _, ok := doc[k].(map[string]any); !ok {
			t.Fatalf("trigger.yaml: no %s object", k)
		}
	}
	j, err := json.Marshal(doc)
	if err != nil {
		t.Fatalf("trigger.yaml as JSON: %v", err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(j))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource(openAPIURL, inst); err != nil {
		t.Fatal(err)
	}
	return &openAPIDoc{t: t, doc: doc, c: c}
}

// at walks the document along a JSON pointer's tokens.
func (d *openAPIDoc) at(path ...string) (any, bool) {
	var v any = d.doc
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = m[p]; !ok {
			return nil, false
		}
	}
	return v, true
}

func pointer(path ...string) string {
	r := strings.NewReplacer("~", "~0", "/", "~1")
	var b strings.Builder
	for _, p := range path {
		b.WriteString("/" + r.Replace(p))
	}
	return b.String()
}

// schema compiles the schema at path.
func (d *openAPIDoc) schema(path ...string) *jsonschema.Schema {
	d.t.Helper()
	if _, ok := d.at(path...); !ok {
		d.t.Fatalf("trigger.yaml has no %s", pointer(path...))
	}
	s, err := d.c.Compile(openAPIURL + "#" + pointer(path...))
	if err != nil {
		d.t.Fatalf("compile %s: %v", pointer(path...), err)
	}
	return s
}

// response returns the path of the documented response, following a $ref.
func (d *openAPIDoc) response(path, method, code string) ([]string, bool) {
	p := []string{"paths", path, method, "responses", code}
	v, ok := d.at(p...)
	if !ok {
		return nil, false
	}
	if ref, ok := v.(map[string]any)["$ref"].(string); ok {
		p = strings.Split(strings.TrimPrefix(ref, "#/"), "/")
		if _, ok := d.at(p...); !ok {
			d.t.Fatalf("dangling $ref %s", ref)
		}
	}
	return p, true
}

func validateJSON(s *jsonschema.Schema, b []byte) error {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		return err
	}
	return s.Validate(inst)
}

// exchange is one request to the real handler and its response.
type exchange struct {
	name, method, path, body string
	code                     int
	header                   http.Header
	resp                     []byte
}

func do(t *testing.T, c *http.Client, base, name, method, path, token, body string) exchange {
	t.Helper()
	req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return exchange{name: name, method: method, path: path, body: body, code: resp.StatusCode, header: resp.Header, resp: b}
}

// Every reply of the real handler, over the socket and over TCP, is a
// documented response of docs/openapi/trigger.yaml: its status code, body
// schema and headers; every documented response is produced; the request
// bodies the handler accepts are valid requests and a body with an unknown
// field is not.
func TestOpenAPIMatchesHandler(t *testing.T) {
	d := loadOpenAPI(t)
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
	if x := do(t, noFollow, base, "double slash", "POST", "/v1//visit", "", `{"txn_id":"T-slash"}`); x.code != http.StatusAccepted ||
		x.header.Get("Content-Type") != "application/json" {
		t.Errorf("POST /v1//visit: %d %q %s, want 202 accepted", x.code, x.header.Get("Content-Type"), x.resp)
	}

	// With the agent's version and readiness (as atm-agent run has them):
	// the optional fields.
	er := startSocket(t, HTTPConfig{}, 1, WithVersion("1.2.3"), WithReadiness(func() Readiness {
		return Readiness{Camera: "down", Reasons: []string{"camera: down"}}
	}))
	xs = append(xs, do(t, er.c, base, "health not ready", "GET", "/v1/health", "", ""))

	// Loopback TCP with a token.
	tok := filepath.Join(t.TempDir(), "token")
	token := "0123456789abcdef-token"
	if err := os.WriteFile(tok, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	ht, err := NewHTTP(HTTPConfig{Listen: "127.0.0.1:0", TokenFile: tok}, nil)
	if err != nil {
		t.Fatal(err)
	}
	outT := make(chan visit.Trigger, 4)
	startHTTP(t, ht, outT)
	tc, tbase := &http.Client{Timeout: 2 * time.Second}, "http://"+ht.TCPAddr().String()
	xs = append(xs,
		do(t, tc, tbase, "tcp no token", "POST", "/v1/visit", "", `{}`),
		do(t, tc, tbase, "tcp health no token", "GET", "/v1/health", "", ""),
		do(t, tc, tbase, "tcp unknown path", "GET", "/metrics", token, ""),
		do(t, tc, tbase, "tcp accepted", "POST", "/v1/visit", token, `{"txn_id":"T-9"}`),
		do(t, tc, tbase, "tcp health", "GET", "/v1/health", token, ""))

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

	reqSchema := d.schema("paths", "/v1/visit", "post", "requestBody", "content", "application/json", "schema")
	seen := map[string]bool{}
	statuses := map[string]string{}
	for _, x := range xs {
		method := strings.ToLower(x.method)
		if x.code == http.StatusMethodNotAllowed {
			// A wrong method has no operation of its own: the 405 is
			// documented under the path's one operation.
			ops, _ := d.at("paths", x.path)
			for m := range ops.(map[string]any) {
				method = m
			}
		}
		code := http.StatusText(x.code)
		rp, ok := d.response(x.path, method, itoa(x.code))
		if _, known := d.at("paths", x.path); !known {
			// A path the API does not have: the NotFound response.
			rp, ok = []string{"components", "responses", "NotFound"}, x.code == http.StatusNotFound
			if ok {
				seen["NotFound"] = true
			}
		}
		if !ok {
			t.Errorf("%s: %s %s answered %d (%s), not documented", x.name, x.method, x.path, x.code, code)
			continue
		}
		seen[x.path+" "+method+" "+itoa(x.code)] = true
		if ct := x.header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s: Content-Type %q", x.name, ct)
		}
		s := d.schema(append(rp, "content", "application/json", "schema")...)
		if err := validateJSON(s, x.resp); err != nil {
			t.Errorf("%s: %d body %s does not match %s: %v", x.name, x.code, x.resp, pointer(rp...), err)
		}
		if hs, ok := d.at(append(rp, "headers")...); ok {
			for name := range hs.(map[string]any) {
				v := x.header.Get(name)
				if v == "" {
					t.Errorf("%s: documented header %s missing", x.name, name)
					continue
				}
				js, _ := json.Marshal(v)
				if err := validateJSON(d.schema(append(rp, "headers", name, "schema")...), js); err != nil {
					t.Errorf("%s: header %s %q: %v", x.name, name, v, err)
				}
			}
		}
		if x.path == "/v1/visit" && x.method == "POST" && strings.TrimSpace(x.body) != "" && x.code != http.StatusUnauthorized {
			err := validateJSON(reqSchema, []byte(x.body))
			if x.code < 300 && err != nil {
				t.Errorf("%s: accepted body %s is not a valid request: %v", x.name, x.body, err)
			}
			if (x.name == "unknown field" || x.name == "upper-case field") && err == nil {
				t.Errorf("%s: the request schema accepts %s", x.name, x.body)
			}
		}
		if x.code < 300 && x.path == "/v1/visit" {
			var r VisitReply
			_ = json.Unmarshal(x.resp, &r)
			statuses[x.name] = r.Status
		}
	}
	for name, want := range map[string]string{"accepted": "accepted", "duplicate": "duplicate", "coalesced": "coalesced", "queued": "accepted"} {
		if statuses[name] != want {
			t.Errorf("%s: status %q, want %q", name, statuses[name], want)
		}
	}
	// Every documented response was produced.
	var missing []string
	for path, pv := range d.doc["paths"].(map[string]any) {
		for method, mv := range pv.(map[string]any) {
			for code := range mv.(map[string]any)["responses"].(map[string]any) {
				if !seen[path+" "+method+" "+code] {
					missing = append(missing, method+" "+path+" "+code)
				}
			}
		}
	}
	if !seen["NotFound"] {
		missing = append(missing, "NotFound")
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("documented but never produced: %v", missing)
	}
	t.Logf("%d exchanges validated against docs/openapi/trigger.yaml", len(xs))
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
	return exchange{name: "body too slow", method: "POST", path: "/v1/visit", body: body, code: resp.StatusCode, header: resp.Header, resp: b}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}
