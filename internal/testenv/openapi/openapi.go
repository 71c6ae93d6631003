// Package openapi checks a real HTTP handler's answers against an OpenAPI
// 3.1 document of the repository (docs/openapi/*.yaml): every answer's
// status code, content type, body schema and headers must be documented,
// and every documented response must be produced by some test exchange.
// Its schemas are JSON Schema 2020-12, checked with the library that checks
// the MQTT schemas. For tests only.
package openapi

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"gopkg.in/yaml.v3"
)

// Doc is one OpenAPI document, compiled.
type Doc struct {
	t    testing.TB
	name string
	Doc  map[string]any
	c    *jsonschema.Compiler
	url  string
	// Fallback names the response documenting a status code for paths
	// the document does not have (e.g. 404: components/responses/NotFound),
	// and a 405 for a path whose operations do not document one.
	Fallback map[int][]string
	seen     map[string]bool
}

// Load reads and compiles the document at file.
func Load(t testing.TB, file string) *Doc {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if v, _ := doc["openapi"].(string); !strings.HasPrefix(v, "3.1.") {
		t.Fatalf("%s: openapi %q, want 3.1.x", file, v)
	}
	for _, k := range []string{"info", "paths", "components"} {
		if _, ok := doc[k].(map[string]any); !ok {
			t.Fatalf("%s: no %s object", file, k)
		}
	}
	j, err := json.Marshal(doc)
	if err != nil {
		t.Fatalf("%s as JSON: %v", file, err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(j))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	url := "mem://" + strings.ReplaceAll(file, "/", "_") + ".json"
	if err := c.AddResource(url, inst); err != nil {
		t.Fatal(err)
	}
	return &Doc{t: t, name: file, Doc: doc, c: c, url: url, seen: map[string]bool{}}
}

// At walks the document along a JSON pointer's tokens.
func (d *Doc) At(path ...string) (any, bool) {
	var v any = d.Doc
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

// Pointer is the JSON pointer of path.
func Pointer(path ...string) string {
	r := strings.NewReplacer("~", "~0", "/", "~1")
	var b strings.Builder
	for _, p := range path {
		b.WriteString("/" + r.Replace(p))
	}
	return b.String()
}

// Schema compiles the schema at path.
func (d *Doc) Schema(path ...string) *jsonschema.Schema {
	d.t.Helper()
	if _, ok := d.At(path...); !ok {
		d.t.Fatalf("%s has no %s", d.name, Pointer(path...))
	}
	s, err := d.c.Compile(d.url + "#" + Pointer(path...))
	if err != nil {
		d.t.Fatalf("compile %s: %v", Pointer(path...), err)
	}
	return s
}

// Response returns the path of the documented response, following a $ref.
func (d *Doc) Response(path, method, code string) ([]string, bool) {
	p := []string{"paths", path, method, "responses", code}
	v, ok := d.At(p...)
	if !ok {
		return nil, false
	}
	if ref, ok := v.(map[string]any)["$ref"].(string); ok {
		p = strings.Split(strings.TrimPrefix(ref, "#/"), "/")
		if _, ok := d.At(p...); !ok {
			d.t.Fatalf("dangling $ref %s", ref)
		}
	}
	return p, true
}

// ValidateJSON validates a JSON document against a schema.
func ValidateJSON(s *jsonschema.Schema, b []byte) error {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		return err
	}
	return s.Validate(inst)
}

// Exchange is one request to the real handler and its response. Route is
// the documented path (a template such as /api/v1/devices/{site}/{device});
// "" means Path.
type Exchange struct {
	Name, Method, Path, Route, Body string
	Code                            int
	Header                          http.Header
	Resp                            []byte
}

// Check requires x's answer to be documented: its status code under the
// route's operation (a 405 under the path's one operation, or else under
// Fallback; a path the document does not have under Fallback), a JSON content type, a body of
// the response's schema and its documented headers. It returns the
// response's path in the document (nil when undocumented).
func (d *Doc) Check(x Exchange) []string {
	d.t.Helper()
	route := x.Route
	if route == "" {
		route = x.Path
	}
	method := strings.ToLower(x.Method)
	if x.Code == http.StatusMethodNotAllowed {
		// A wrong method has no operation of its own: the 405 is
		// documented under the path's one operation.
		if ops, ok := d.At("paths", route); ok {
			for m, op := range ops.(map[string]any) {
				if _, isOp := op.(map[string]any); isOp {
					method = m
				}
			}
		}
	}
	code := strconv.Itoa(x.Code)
	rp, ok := d.Response(route, method, code)
	if _, known := d.At("paths", route); !known || !ok && x.Code == http.StatusMethodNotAllowed {
		rp, ok = d.Fallback[x.Code]
		if ok {
			d.seen["fallback "+code] = true
		}
	}
	if !ok {
		d.t.Errorf("%s: %s %s answered %d (%s), not documented in %s", x.Name, x.Method, x.Path, x.Code, http.StatusText(x.Code), d.name)
		return nil
	}
	d.seen[route+" "+method+" "+code] = true
	if ct := x.Header.Get("Content-Type"); ct != "application/json" {
		d.t.Errorf("%s: Content-Type %q", x.Name, ct)
	}
	s := d.Schema(append(rp, "content", "application/json", "schema")...)
	if err := ValidateJSON(s, x.Resp); err != nil {
		d.t.Errorf("%s: %d body %s does not match %s: %v", x.Name, x.Code, x.Resp, Pointer(rp...), err)
	}
	if hs, ok := d.At(append(rp, "headers")...); ok {
		for name, h := range hs.(map[string]any) {
			v := x.Header.Get(name)
			if v == "" {
				// Stricter than OpenAPI: a documented header must be
				// there unless it says required: false.
				if req, _ := h.(map[string]any)["required"].(bool); req || !hasKey(h, "required") {
					d.t.Errorf("%s: documented header %s missing", x.Name, name)
				}
				continue
			}
			js, _ := json.Marshal(v)
			if err := ValidateJSON(d.Schema(append(rp, "headers", name, "schema")...), js); err != nil {
				d.t.Errorf("%s: header %s %q: %v", x.Name, name, v, err)
			}
		}
	}
	return rp
}

// Missing lists the documented responses (and fallbacks) no checked
// exchange produced.
func (d *Doc) Missing() []string {
	var missing []string
	for path, pv := range d.Doc["paths"].(map[string]any) {
		for method, mv := range pv.(map[string]any) {
			op, isOp := mv.(map[string]any)
			if !isOp { // the path's parameters, summary, description
				continue
			}
			for code := range op["responses"].(map[string]any) {
				if !d.seen[path+" "+method+" "+code] {
					missing = append(missing, method+" "+path+" "+code)
				}
			}
		}
	}
	for code := range d.Fallback {
		if !d.seen["fallback "+strconv.Itoa(code)] {
			missing = append(missing, "fallback "+strconv.Itoa(code))
		}
	}
	sort.Strings(missing)
	return missing
}

// hasKey reports whether v is an object with key.
func hasKey(v any, key string) bool {
	m, ok := v.(map[string]any)
	if !ok {
		return false
	}
	_, ok = m[key]
	return ok
}
