package web

import (
	"bufio"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/periocular/atm-agent/sync/fleet/ingest"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/fleet/storage/boltstore"
	"github.com/periocular/atm-agent/sync/fleet/storage/storetest"
	"github.com/periocular/atm-agent/sync/wire"
)

var (
	hashOnce  sync.Once
	usersYAML string
)

// testUsers, password "correct horse": ana (analyst), root (admin), vic
// (viewer), pat (analyst of the sites paris-*) and val (viewer of paris-01).
func testUsers(t testing.TB) Users {
	hashOnce.Do(func() {
		h, err := bcrypt.GenerateFromPassword([]byte("correct horse"), bcrypt.MinCost)
		if err != nil {
			panic(err)
		}
		usersYAML = fmt.Sprintf("users:\n  - {name: ana, role: analyst, password_hash: %[1]q}\n  - {name: root, role: admin, password_hash: %[1]q}\n"+
			"  - {name: vic, role: viewer, password_hash: %[1]q}\n  - {name: pat, role: analyst, password_hash: %[1]q, sites: [\"paris-*\"]}\n"+
			"  - {name: val, role: viewer, password_hash: %[1]q, sites: [paris-01]}\n", h)
	})
	u, err := ParseUsers([]byte(usersYAML))
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func newTestServer(t testing.TB, st storage.Store) (*Server, *httptest.Server) {
	s, hs, _ := startTestServer(t, st)
	return s, hs
}

// startTestServer is newTestServer with a stop func (also run when the
// test ends) for a test that restarts the server; every server of a test
// signs cookies with the same key.
func startTestServer(t testing.TB, st storage.Store) (*Server, *httptest.Server, func()) {
	cfg := DefaultConfig()
	cfg.UsersFile = "unused"
	s, err := New(cfg, st, testUsers(t), []byte(strings.Repeat("k", 32)),
		Deps{Retention: storage.Retention{History: 30 * 24 * time.Hour, Alerts: 90 * 24 * time.Hour},
			IngestStats: func() any { return ingest.Stats{Applied: 1} }})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	stop := func() {
		s.once.Do(func() { close(s.sseStop) })
		hs.Close()
	}
	t.Cleanup(stop)
	return s, hs, stop
}

// send does req with the default client: its status and body.
func send(t testing.TB, req *http.Request) (int, string) {
	t.Helper()
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return r.StatusCode, string(b)
}

type client struct {
	*http.Client
	base string
	t    testing.TB
}

func newClient(t testing.TB, base string) *client {
	jar, _ := cookiejar.New(nil)
	return &client{Client: &http.Client{Jar: jar, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}, base: base, t: t}
}

func (c *client) get(path string) (*http.Response, string) {
	c.t.Helper()
	r, err := c.Get(c.base + path)
	if err != nil {
		c.t.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return r, string(b)
}

func (c *client) post(path string, form url.Values, hdr ...string) (*http.Response, string) {
	c.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, c.base+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	r, err := c.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return r, string(b)
}

// refusesUnguarded checks that a signed-in POST of form to path is
// refused (403) without a CSRF token, with a forged one, and with the
// right one from a foreign Origin; form is left holding the right token.
func (c *client) refusesUnguarded(path string, form url.Values, csrf string) {
	c.t.Helper()
	form.Del("csrf")
	if r, _ := c.post(path, form); r.StatusCode != 403 {
		c.t.Errorf("POST %s without CSRF token: %d, want 403", path, r.StatusCode)
	}
	form.Set("csrf", "forged")
	if r, _ := c.post(path, form); r.StatusCode != 403 {
		c.t.Errorf("POST %s with a forged token: %d, want 403", path, r.StatusCode)
	}
	form.Set("csrf", csrf)
	if r, _ := c.post(path, form, "Origin", "http://evil.example"); r.StatusCode != 403 {
		c.t.Errorf("cross-origin POST %s: %d, want 403", path, r.StatusCode)
	}
}

// json sends a request asking for JSON and decodes the JSON object it
// answers (nil when the answer is not one).
func (c *client) json(method, path, contentType, body string, hdr ...string) (*http.Response, map[string]any) {
	c.t.Helper()
	req, _ := http.NewRequest(method, c.base+path, strings.NewReader(body))
	req.Header.Set("Accept", "application/json")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	r, err := c.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer r.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(r.Body).Decode(&out)
	return r, out
}

var hiddenRe = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// login signs in and returns the session's CSRF token.
func (c *client) login(user, pw string) string {
	c.t.Helper()
	_, page := c.get("/login")
	m := hiddenRe.FindStringSubmatch(page)
	if m == nil {
		c.t.Fatalf("no login token in %s", page)
	}
	r, _ := c.post("/login", url.Values{"csrf": {m[1]}, "user": {user}, "password": {pw}, "next": {"/alerts"}})
	if r.StatusCode != http.StatusSeeOther {
		c.t.Fatalf("login: %s", r.Status)
	}
	if loc := r.Header.Get("Location"); loc != "/alerts" {
		return ""
	}
	_, body := c.get("/")
	m = hiddenRe.FindStringSubmatch(body)
	if m == nil {
		c.t.Fatalf("no csrf token on the fleet page")
	}
	return m[1]
}

func seed(t testing.TB, st storage.Store) {
	now := time.Now().UTC()
	_, err := st.Apply(context.Background(), []storage.Message{
		storetest.Summary("lyon-07", "atm-1", 1, now.Add(-3*time.Hour), 4, "p-1", "p-2"),
		storetest.Summary("lyon-07", "atm-1", 2, now.Add(-time.Hour), 6, "p-1", "p-2"),
		storetest.Alert("lyon-07", "atm-1", 4, now.Add(-30*time.Minute), "a-1", "p-1", 7),
		storetest.Summary("paris-01", "atm-2", 1, now, 2, "p-9"),
	})
	if err != nil {
		t.Fatal(err)
	}
}

func openBolt(t testing.TB) *boltstore.Store {
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "fleet.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// Access control: sign-in, roles, CSRF on every POST, cross-origin refusal.
func TestAccessControl(t *testing.T) {
	st := openBolt(t)
	seed(t, st)
	_, hs := newTestServer(t, st)
	anon := newClient(t, hs.URL)
	for path, want := range map[string]int{"/": 303, "/alerts": 303, "/api/v1/devices": 401, "/events": 401, "/alerts.csv": 303,
		"/devices/lyon-07/atm-1": 303, "/admin": 303, "/healthz": 200, "/static/app.js": 200} {
		if r, _ := anon.get(path); r.StatusCode != want {
			t.Errorf("anonymous GET %s: %d, want %d", path, r.StatusCode, want)
		}
	}
	if r, _ := anon.post("/alerts/act", url.Values{"action": {"acknowledge"}, "site": {"lyon-07"}, "device": {"atm-1"}, "alert": {"a-1"}}); r.StatusCode != 401 {
		t.Errorf("anonymous POST: %d", r.StatusCode)
	}
	// Sign-in without the login form's token is refused.
	if r, _ := anon.post("/login", url.Values{"user": {"ana"}, "password": {"correct horse"}}); r.StatusCode != 403 {
		t.Errorf("login without token: %d", r.StatusCode)
	}
	if tok := anon.login("ana", "wrong"); tok != "" {
		t.Error("wrong password signed in")
	}
	ana := newClient(t, hs.URL)
	csrf := ana.login("ana", "correct horse")
	if r, body := ana.get("/"); r.StatusCode != 200 || !strings.Contains(body, "atm-1") || !strings.Contains(body, "paris-01 / atm-2") {
		t.Errorf("fleet page: %d", r.StatusCode)
	}
	if r, _ := ana.get("/admin"); r.StatusCode != 403 {
		t.Errorf("analyst GET /admin: %d, want 403", r.StatusCode)
	}
	act := url.Values{"action": {"acknowledge"}, "site": {"lyon-07"}, "device": {"atm-1"}, "alert": {"a-1"}, "note": {"calling branch"}, "next": {"/alerts"}}
	ana.refusesUnguarded("/alerts/act", act, csrf)
	a, _ := st.Alert(context.Background(), storage.AlertKey{Site: "lyon-07", Device: "atm-1", AlertID: "a-1"})
	if a.State != storage.AlertOpen {
		t.Fatalf("a refused POST changed the alert: %+v", a)
	}
	if r, _ := ana.post("/alerts/act", act); r.StatusCode != 303 || r.Header.Get("Location") != "/alerts" {
		t.Errorf("POST with token: %s %s", r.Status, r.Header.Get("Location"))
	}
	a, _ = st.Alert(context.Background(), storage.AlertKey{Site: "lyon-07", Device: "atm-1", AlertID: "a-1"})
	if a.State != storage.AlertAcknowledged || a.AckBy != "ana" || a.AckNote != "calling branch" {
		t.Errorf("after ack: %+v", a)
	}
	// ana's browser resubmits: her acknowledgement stands, nothing changes.
	if r, _ := ana.post("/alerts/act", act); r.StatusCode != 303 {
		t.Errorf("ana's second ack: %d, want 303 (idempotent)", r.StatusCode)
	}
	if b, _ := st.Alert(context.Background(), a.AlertKey); !b.AckAt.Equal(a.AckAt) {
		t.Errorf("ana's second ack changed the alert: %v -> %v", a.AckAt, b.AckAt)
	}
	// Another session's token does not work for this one.
	root := newClient(t, hs.URL)
	rootCSRF := root.login("root", "correct horse")
	if rootCSRF == csrf {
		t.Fatal("two sessions share a CSRF token")
	}
	act.Set("action", "resolve")
	act.Set("csrf", rootCSRF)
	if r, _ := ana.post("/alerts/act", act); r.StatusCode != 403 {
		t.Errorf("POST with another session's token: %d", r.StatusCode)
	}
	if r, body := root.get("/admin"); r.StatusCode != 200 || !strings.Contains(body, "calling branch") {
		t.Errorf("admin page (audit log): %d", r.StatusCode)
	}
	if r, body := root.get("/admin/backup"); r.StatusCode != 200 || !strings.HasPrefix(r.Header.Get("Content-Disposition"), "attachment") || len(body) < 4096 {
		t.Errorf("backup: %d, %d bytes", r.StatusCode, len(body))
	}
	if r, _ := ana.get("/admin/backup"); r.StatusCode != 403 {
		t.Errorf("analyst backup: %d", r.StatusCode)
	}
	if r, _ := root.post("/admin/prune", url.Values{"csrf": {rootCSRF}}); r.StatusCode != 303 {
		t.Errorf("prune: %d", r.StatusCode)
	}
	// Sign-out ends the session in this browser.
	ana.post("/logout", url.Values{"csrf": {csrf}})
	if r, _ := ana.get("/"); r.StatusCode != 303 {
		t.Errorf("after logout: %d", r.StatusCode)
	}
	if r, _ := anon.get("/login?next=//evil.example/"); r.StatusCode != 200 {
		t.Errorf("login page: %d", r.StatusCode)
	}
	if got := safeNext("//evil.example/x"); got != "/" {
		t.Errorf("open redirect: %s", got)
	}
}

// The pages and the API show the stored data; CSV export; SSE.
func TestPagesAPIAndEvents(t *testing.T) {
	st := openBolt(t)
	seed(t, st)
	_, hs := newTestServer(t, st)
	c := newClient(t, hs.URL)
	csrf := c.login("ana", "correct horse")
	_, body := c.get("/?site=paris-01")
	if strings.Contains(body, "lyon-07 / atm-1") || !strings.Contains(body, "paris-01 / atm-2") {
		t.Error("site filter")
	}
	_, body = c.get("/devices/lyon-07/atm-1")
	for _, want := range []string{"<svg class=\"chart\"", "p-1", "many-visits-24h", "1 missing"} {
		if !strings.Contains(body, want) {
			t.Errorf("device page lacks %q", want)
		}
	}
	if !strings.Contains(body, "6 visits</title>") {
		t.Error("device chart lacks the hour with 6 visits")
	}
	_, body = c.get("/devices/lyon-07/atm-1/identities/p-2")
	if !strings.Contains(body, "Identity p-2") || !strings.Contains(body, "polyline") {
		t.Error("identity page")
	}
	if r, _ := c.get("/devices/lyon-07/nope"); r.StatusCode != 404 {
		t.Errorf("missing device: %d", r.StatusCode)
	}
	_, body = c.get("/alerts?identity=p-1")
	if !strings.Contains(body, "a-1") || !strings.Contains(body, "4-aatm-1") || !strings.Contains(body, "txn T 4") {
		t.Error("alerts page lacks the alert or its message id")
	}
	r, body := c.get("/alerts.csv?site=lyon-07")
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/csv") {
		t.Errorf("csv content type %q", ct)
	}
	recs, err := csv.NewReader(strings.NewReader(body)).ReadAll()
	if err != nil || len(recs) != 2 || recs[1][3] != "a-1" || recs[1][6] != "p-1" || recs[1][8] != "7" || recs[1][22] != "v4" || recs[1][23] != "T 4" {
		t.Errorf("csv = %v, %v", recs, err)
	}
	var devs []apiDevice
	_, body = c.get("/api/v1/devices")
	if err := json.Unmarshal([]byte(body), &devs); err != nil || len(devs) != 2 || devs[0].Gaps != 1 || devs[0].OpenAlerts != 1 ||
		devs[0].FirstSeq != 1 || devs[0].MaxSeq != 4 || devs[0].Unique != 3 || !strings.Contains(body, `"first_seq": 1`) {
		t.Errorf("api devices = %+v, %v", devs, err)
	}
	// JSON API acknowledgement with the header token.
	req, _ := http.NewRequest(http.MethodPost, hs.URL+"/api/v1/alerts/act",
		strings.NewReader(`{"action":"resolve","site":"lyon-07","device":"atm-1","alert":"a-1","note":"case 42"}`))
	req.Header.Set("X-CSRF-Token", csrf)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var acted map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&acted); err != nil {
		t.Errorf("api act answer: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("api act: %s", resp.Status)
	}
	// The API speaks the wire's names, as /api/v1/devices does.
	if acted["alert_id"] != "a-1" || acted["state"] != "resolved" || acted["resolved_note"] != "case 42" || acted["AlertID"] != nil {
		t.Errorf("api act answer = %v; want snake_case keys", acted)
	}
	// A retry of the same action by the same user: 200 and the alert (its
	// answer may have been lost); the alert_id name is taken; unknown
	// fields and every API error are JSON.
	apiAct := func(body string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, hs.URL+"/api/v1/alerts/act", strings.NewReader(body))
		req.Header.Set("X-CSRF-Token", csrf)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s: Content-Type %q, want application/json", body, ct)
		}
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Errorf("%s: answer not JSON: %v", body, err)
		}
		return resp.StatusCode, out
	}
	if code, out := apiAct(`{"action":"resolve","site":"lyon-07","device":"atm-1","alert_id":"a-1","note":"case 42"}`); code != 200 ||
		out["state"] != "resolved" || out["resolved_at"] != acted["resolved_at"] {
		t.Errorf("repeated resolve by alert_id: %d %v; want 200 and the alert as first resolved", code, out)
	}
	if code, out := apiAct(`{"action":"resolve","site":"lyon-07","device":"atm-1","alert":"a-1","alertid":"x","note":"n"}`); code != 400 || out["error"] == nil {
		t.Errorf("unknown field: %d %v; want 400 with an error", code, out)
	}
	if code, out := apiAct(`{"action":"resolve","site":"lyon-07","device":"atm-1","alert":"nope"}`); code != 404 || out["error"] == nil {
		t.Errorf("unknown alert: %d %v; want 404 with an error", code, out)
	}
	// Another user's resolve of the same alert: 409, with the alert as it
	// stands (who resolved it).
	root := newClient(t, hs.URL)
	rootCSRF := root.login("root", "correct horse")
	req, _ = http.NewRequest(http.MethodPost, hs.URL+"/api/v1/alerts/act",
		strings.NewReader(`{"action":"resolve","site":"lyon-07","device":"atm-1","alert":"a-1"}`))
	req.Header.Set("X-CSRF-Token", rootCSRF)
	if resp, err := root.Do(req); err != nil {
		t.Fatal(err)
	} else {
		var out struct {
			Error string
			Alert map[string]any
		}
		json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if resp.StatusCode != 409 || out.Error == "" || out.Alert["resolved_by"] != "ana" {
			t.Errorf("another user's resolve: %d %+v; want 409 with the alert resolved by ana", resp.StatusCode, out)
		}
	}
	var listed []map[string]any
	if _, body := c.get("/api/v1/alerts?state=all"); json.Unmarshal([]byte(body), &listed) != nil || len(listed) == 0 ||
		listed[0]["alert_id"] == nil || listed[0]["identity_id"] != "p-1" || listed[0]["Site"] != nil {
		t.Errorf("api alerts = %v; want snake_case keys", listed)
	}

	// Server-sent events: a change in the store reaches an open stream.
	c.awaitEvent(func() {
		st.Apply(context.Background(), []storage.Message{storetest.Alert("lyon-07", "atm-1", 5, time.Now(), "a-2", "p-2", 9)})
	}, `"alert":"a-2"`, "")
}

// awaitEvent opens c's live stream, runs publish once it is open and
// reads change events until one holds want, and returns their data lines;
// one holding refuse (when not empty) before it fails the test.
func (c *client) awaitEvent(publish func(), want, refuse string) []string {
	t := c.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/events", nil)
	c.Timeout = 0
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	go func() {
		time.Sleep(200 * time.Millisecond)
		publish()
	}()
	var seen []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, "data: ") {
			if refuse != "" && strings.Contains(l, refuse) {
				t.Fatalf("the stream carries %s", l)
			}
			if seen = append(seen, l); strings.Contains(l, want) {
				return seen
			}
		}
	}
	t.Errorf("no change event with %s: %v", want, sc.Err())
	return seen
}

// A users file is refused with what is wrong and, for what the YAML
// decoder finds, its line (the file is parsed once: ParseUsers).
func TestUsersFile(t *testing.T) {
	h, _ := bcrypt.GenerateFromPassword([]byte("x"), bcrypt.MinCost)
	block := fmt.Sprintf("users:\n  - name: a\n    role: analyst\n    sites: all\n    password_hash: %q\n", h)
	for name, c := range map[string]struct{ y, want string }{
		"unknown key":           {fmt.Sprintf("users:\n  - {name: a, role: analyst, password_hash: %q, pw: x}\n", h), "line 2: field pw not found"},
		"unknown key, a block":  {strings.Replace(block, "    sites:", "    site: [x]\n    sites:", 1), "line 4: field site not found"},
		"unknown top key":       {"user:\n" + strings.TrimPrefix(block, "users:\n"), "line 1: field user not found"},
		"a list for a name":     {strings.Replace(block, "name: a", "name: [a]", 1), "line 2: cannot unmarshal !!seq into string"},
		"not YAML":              {block + "  - {name: b\n", "yaml: line 5: did not find expected ','"},
		"bad role":              {fmt.Sprintf("users:\n  - {name: a, role: root, password_hash: %q}\n", h), `role "root"`},
		"plain text":            {"users:\n  - {name: a, role: analyst, password_hash: hunter2}\n", "not a bcrypt hash"},
		"duplicate":             {fmt.Sprintf("users:\n  - {name: a, role: analyst, password_hash: %q}\n  - {name: a, role: admin, password_hash: %q}\n", h, h), "listed twice"},
		"empty":                 {"users: []\n", "no users"},
		"a block, cut short":    {strings.TrimSuffix(block, "\n"), "line 5 does not end with a newline"},
		"a block without sites": {strings.Replace(block, "    sites: all\n", "", 1), `user "a" (line 2): a user written as a block`},
	} {
		if _, err := ParseUsers([]byte(c.y)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, c.want)
		}
	}
	// One {...} without a final newline is whole (cut short, it would not
	// parse); so is a block that ends with one.
	for _, y := range []string{block, fmt.Sprintf(`{"users": [{"name": "a", "role": "analyst", "password_hash": %q}]}`, h)} {
		if u, err := ParseUsers([]byte(y)); err != nil || u["a"].Role != RoleAnalyst {
			t.Errorf("%q: %v %v", y, u, err)
		}
	}
	if _, err := HashPassword("short"); err == nil {
		t.Error("short password hashed")
	}
}

func TestHourlyVisits(t *testing.T) {
	now := time.Date(2026, 3, 14, 12, 30, 0, 0, time.UTC)
	pts := []storage.SummaryPoint{
		{TS: now.Add(-2*time.Hour - 20*time.Minute), Visits1h: 3}, // 10:10
		{TS: now.Add(-1*time.Hour - 40*time.Minute), Visits1h: 5}, // 10:50: the last of 10h
		{TS: now.Add(-10 * time.Minute), Visits1h: 2},             // 12:20
		{TS: now.Add(-30 * time.Hour), Visits1h: 99},              // outside
	}
	bars := HourlyVisits(pts, now, 4) // 9h, 10h, 11h, 12h
	want := []HourBar{{Hour: now.Add(-3*time.Hour - 30*time.Minute)}, {Hour: now.Add(-2*time.Hour - 30*time.Minute), Visits: 5, Known: true},
		{Hour: now.Add(-time.Hour - 30*time.Minute)}, {Hour: now.Add(-30 * time.Minute), Visits: 2, Known: true}}
	for i := range want {
		if bars[i] != want[i] {
			t.Errorf("bar %d = %+v, want %+v", i, bars[i], want[i])
		}
	}
}

// A trusted reverse proxy's header signs a known user in with the users
// file's role; the header from an untrusted address, or naming an unknown
// user, does not.
func TestProxyAuth(t *testing.T) {
	st := openBolt(t)
	seed(t, st)
	for _, tc := range []struct {
		trusted, user string
		want          int
	}{
		{"127.0.0.0/8", "ana", 200},
		{"127.0.0.0/8", "mallory", 303},
		{"10.0.0.0/8", "ana", 303},
	} {
		hs := proxyAuthServer(t, st, tc.trusted)
		c := newClient(t, hs.URL)
		req, _ := http.NewRequest(http.MethodGet, hs.URL+"/", nil)
		req.Header.Set("X-Remote-User", tc.user)
		r, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		if r.StatusCode != tc.want {
			t.Errorf("trusted %s, user %s: %d, want %d", tc.trusted, tc.user, r.StatusCode, tc.want)
		}
		if tc.want == 200 {
			if r, _ := c.get("/admin"); r.StatusCode != 403 {
				t.Errorf("proxy-signed analyst on /admin: %d", r.StatusCode)
			}
		}
	}
	bad := DefaultConfig()
	bad.UsersFile, bad.ProxyAuth.Header = "u", "X-Remote-User"
	if bad.Validate() == nil {
		t.Error("proxy_auth.header without trusted_proxies accepted")
	}
}

// proxyAuthServer serves st with proxy_auth on X-Remote-User, trusted from
// the CIDR trusted, until the test ends.
func proxyAuthServer(t *testing.T, st storage.Store, trusted string) *httptest.Server {
	t.Helper()
	cfg := DefaultConfig()
	cfg.UsersFile = "unused"
	cfg.ProxyAuth = ProxyAuthConfig{Header: "X-Remote-User", TrustedProxies: []string{trusted}}
	s, err := New(cfg, st, testUsers(t), []byte(strings.Repeat("k", 32)), Deps{})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)
	return hs
}

// The fleet page shows one page of the matching devices; the counts cover
// every device of the site; filters by state and name are server-side.
func TestFleetPagination(t *testing.T) {
	st := openBolt(t)
	now := time.Now().UTC()
	var msgs []storage.Message
	for i := range 25 {
		site, dev := fmt.Sprintf("site-%d", i%2), fmt.Sprintf("atm-%02d", i)
		msgs = append(msgs, storetest.Summary(site, dev, 1, now, 1, "p-1"))
		if i < 5 {
			if err := st.PutStatus(context.Background(), storage.Status{Site: site, Device: dev, Received: now,
				Status: wire.Status{Envelope: wire.NewEnvelope(site, dev, now), State: wire.StateOnline}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := st.Apply(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
	_, hs := newTestServer(t, st)
	c := newClient(t, hs.URL)
	c.login("ana", "correct horse")
	rowsOf := func(body string) int { return strings.Count(body, `<tr class="device"`) }
	for _, tc := range []struct {
		path string
		rows int
		want []string
	}{
		{"/?per=10", 10, []string{"1–10 of 25 ATMs", "page 1 of 3", `href="?page=2&amp;per=10&amp;sort=site"`, "5 online", "20 not online"}},
		{"/?per=10&page=3", 5, []string{"21–25 of 25 ATMs", "page 3 of 3", `href="?page=2&amp;per=10&amp;sort=site"`}},
		{"/?per=10&page=99", 5, []string{"page 3 of 3"}},
		{"/", 25, []string{"1–25 of 25 ATMs"}},
		{"/?state=online", 5, []string{"1–5 of 5 ATMs", "5 online", "20 not online"}},
		{"/?state=notonline&site=site-1", 10, []string{"1–10 of 10 ATMs", "2 online", "10 not online"}},
		{"/?q=ATM-1", 10, []string{"1–10 of 10 ATMs", "site-1 / atm-11"}},
		{"/?q=nothing", 0, []string{"0 ATMs", "No device matches."}},
	} {
		_, body := c.get(tc.path)
		if n := rowsOf(body); n != tc.rows {
			t.Errorf("%s: %d rows, want %d", tc.path, n, tc.rows)
		}
		for _, w := range tc.want {
			if !strings.Contains(body, w) {
				t.Errorf("%s: page lacks %q", tc.path, w)
			}
		}
	}

	// The JSON API pages too (every device's full summary at once was
	// hundreds of MB for a thousand ATMs), in site, device order.
	api := func(q string) (int, []apiDevice) {
		r, body := c.get("/api/v1/devices" + q)
		var ds []apiDevice
		if r.StatusCode == http.StatusOK {
			if err := json.Unmarshal([]byte(body), &ds); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		return r.StatusCode, ds
	}
	var all []string
	for off := 0; ; off += 10 {
		code, ds := api(fmt.Sprintf("?limit=10&offset=%d", off))
		if code != http.StatusOK {
			t.Fatalf("page at %d: %d", off, code)
		}
		for _, d := range ds {
			all = append(all, d.Site+"/"+d.Device)
		}
		if len(ds) < 10 {
			break
		}
	}
	if len(all) != 25 || !slices.IsSorted(all) || all[0] != "site-0/atm-00" {
		t.Errorf("devices paged: %d, sorted %v, first %v", len(all), slices.IsSorted(all), all[:min(1, len(all))])
	}
	if _, ds := api("?site=site-1&limit=4&offset=10"); len(ds) != 2 || ds[0].Device != "atm-21" {
		t.Errorf("site-1 from 10 (of 12): %+v", ds)
	}
	for _, q := range []string{"?limit=0", "?limit=10001", "?limit=x", "?offset=-1"} {
		if code, _ := api(q); code != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", q, code)
		}
	}
}

// TestAlertsPagination: with more alerts than one listing holds, the alerts
// page pages through every one of them (no alert is out of reach), the CSV
// export holds every matching alert, the API pages with offset, and a
// "last hours" value that is not a number is an error, not "every alert".
func TestAlertsPagination(t *testing.T) {
	st := openBolt(t)
	now := time.Now().UTC()
	const n = 730 // more than storage.DefaultAlertLimit
	var msgs []storage.Message
	for i := range n {
		msgs = append(msgs, storetest.Alert(fmt.Sprintf("site-%d", i%3), fmt.Sprintf("atm-%d", i%7), uint64(i+1),
			now.Add(-time.Duration(i)*time.Minute), fmt.Sprintf("a-%04d", i), "p-1", 6))
	}
	if _, err := st.Apply(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
	_, hs := newTestServer(t, st)
	c := newClient(t, hs.URL)
	c.login("ana", "correct horse")

	idRe := regexp.MustCompile(`<tr class="alert [a-z]+" data-alert="([^"]+)"`)
	nextRe := regexp.MustCompile(`<a rel="next" href="([^"]+)"`)
	seen := map[string]bool{}
	path, pages := "/alerts", 0
	for path != "" && pages < 20 {
		pages++
		r, body := c.get(path)
		if r.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d", path, r.StatusCode)
		}
		ids := idRe.FindAllStringSubmatch(body, -1)
		if len(ids) > 100 {
			t.Fatalf("%s: %d rows, want at most 100 a page", path, len(ids))
		}
		for _, m := range ids {
			if seen[m[1]] {
				t.Errorf("%s: alert %s shown on two pages", path, m[1])
			}
			seen[m[1]] = true
		}
		path = ""
		if m := nextRe.FindStringSubmatch(body); m != nil {
			path = "/alerts" + strings.ReplaceAll(m[1], "&amp;", "&")
		}
	}
	if len(seen) != n || pages != 8 {
		t.Errorf("paging the alerts page reached %d of %d alerts in %d pages, want all in 8", len(seen), n, pages)
	}
	if _, body := c.get("/alerts?page=8"); !strings.Contains(body, "701–730") || !strings.Contains(body, `rel="prev"`) {
		t.Errorf("last page lacks its range 701–730 or a previous link")
	}
	if _, body := c.get("/alerts?site=site-1&per=50&page=2"); !strings.Contains(body, "51–100") ||
		!strings.Contains(body, `href="?page=3&amp;per=50&amp;site=site-1&amp;state=active"`) {
		t.Errorf("filtered page 2 lacks its range or a next link keeping the filter")
	}

	r, body := c.get("/alerts.csv")
	recs, err := csv.NewReader(strings.NewReader(body)).ReadAll()
	if r.StatusCode != http.StatusOK || err != nil || len(recs) != n+1 {
		t.Errorf("CSV export: %d, %d records (err %v), want a header and %d alerts", r.StatusCode, len(recs), err, n)
	}

	var got []APIAlert
	r, body = c.get("/api/v1/alerts?limit=500&offset=500")
	if err := json.Unmarshal([]byte(body), &got); r.StatusCode != http.StatusOK || err != nil || len(got) != n-500 {
		t.Errorf("API offset 500: %d, %d alerts (err %v), want %d", r.StatusCode, len(got), err, n-500)
	}

	// The API pages by cursor through its Link header: alerts raised while
	// a reader pages, newer and older, neither repeat nor skip an alert.
	seenAPI := map[string]int{}
	path, pages = "/api/v1/alerts?state=all&limit=100", 0
	linkRe := regexp.MustCompile(`^<(/api/v1/alerts\?[^>]+)>; rel="next"$`)
	for path != "" && pages < 20 {
		pages++
		r, body := c.get(path)
		var page []APIAlert
		if err := json.Unmarshal([]byte(body), &page); r.StatusCode != http.StatusOK || err != nil {
			t.Fatalf("%s: %d %v", path, r.StatusCode, err)
		}
		for _, a := range page {
			seenAPI[a.Site+"/"+a.Device+"/"+a.AlertID]++
		}
		path = ""
		if m := linkRe.FindStringSubmatch(r.Header.Get("Link")); m != nil {
			path = m[1]
		} else if l := r.Header.Get("Link"); l != "" {
			t.Fatalf("Link %q: not a next link", l)
		}
		// Raised while paging: one newer than all, one older than all.
		i := n + pages
		if _, err := st.Apply(context.Background(), []storage.Message{
			storetest.Alert("site-0", "atm-0", uint64(1000+2*i), now.Add(time.Hour), fmt.Sprintf("new-%d", i), "p-1", 6),
			storetest.Alert("site-0", "atm-0", uint64(1001+2*i), now.Add(-1000*time.Hour), fmt.Sprintf("old-%d", i), "p-1", 6),
		}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		if k := fmt.Sprintf("site-%d/atm-%d/a-%04d", i%3, i%7, i); seenAPI[k] != 1 {
			t.Errorf("API paging by cursor listed %s %d times, want once", k, seenAPI[k])
		}
	}
	if pages != 8 || len(seenAPI) != n+7 {
		t.Errorf("API paging by cursor: %d pages, %d alerts, want 8 pages of the %d alerts and the 7 older ones raised meanwhile", pages, len(seenAPI), n)
	}
	for _, bad := range []string{"x", "bm90IGEgY3Vyc29y", storage.AlertCursor{}.String(),
		storage.AlertCursor{Order: storage.ByReceived, At: now, Key: storage.AlertKey{Site: "a", Device: "b", AlertID: "c"}}.String()} {
		if r, _ := c.get("/api/v1/alerts?after=" + bad); r.StatusCode != http.StatusBadRequest {
			t.Errorf("after=%s: %d, want 400", bad, r.StatusCode)
		}
	}
	for _, bad := range []string{"order=newest", "order=received&received_since=yesterday", "offset=100001"} {
		if r, _ := c.get("/api/v1/alerts?" + bad); r.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", bad, r.StatusCode)
		}
	}

	// Polling in receipt order: follow the Link until a page is empty,
	// then an alert raised long ago reaches the fleet (an outbox after an
	// outage) and the next poll, from the last Link, lists it alone.
	poll := func(path string) (next string, keys []string) {
		t.Helper()
		for path != "" {
			r, body := c.get(path)
			var page []APIAlert
			if err := json.Unmarshal([]byte(body), &page); r.StatusCode != http.StatusOK || err != nil {
				t.Fatalf("%s: %d %v", path, r.StatusCode, err)
			}
			for _, a := range page {
				keys = append(keys, a.AlertID)
			}
			if len(page) == 0 {
				return path, keys
			}
			m := linkRe.FindStringSubmatch(r.Header.Get("Link"))
			if m == nil {
				t.Fatalf("%s: %d alerts in receipt order and no Link to poll next", path, len(page))
			}
			path = m[1]
		}
		return "", keys
	}
	next, all := poll("/api/v1/alerts?state=all&order=received&limit=300")
	if len(all) != n+2*pages {
		t.Errorf("receipt order listed %d alerts, want all %d", len(all), n+2*pages)
	}
	late := storetest.Alert("site-2", "atm-5", 9999, now.Add(-72*time.Hour), "late-1", "p-1", 6)
	late.Received = now.Add(2 * time.Hour)
	if _, err := st.Apply(context.Background(), []storage.Message{late}); err != nil {
		t.Fatal(err)
	}
	if _, got := poll(next); !slices.Equal(got, []string{"late-1"}) {
		t.Errorf("the poll after a late alert listed %v, want [late-1]", got)
	}
	if _, body := c.get("/api/v1/alerts?state=all&hours=1"); strings.Contains(body, `"late-1"`) {
		t.Errorf("hours=1 (raised) listed the alert raised 72 h ago")
	}
	if _, body := c.get("/api/v1/alerts?state=all&order=received&received_since=" + url.QueryEscape(now.Add(90*time.Minute).Format(time.RFC3339))); !strings.Contains(body, `"late-1"`) || strings.Count(body, `"alert_id"`) != 1 {
		t.Errorf("received_since 90 min ahead: want late-1 alone, got %.300s", body)
	}

	for _, h := range []string{"24h", "-3", "99999999999"} {
		if _, body := c.get("/alerts?hours=" + url.QueryEscape(h)); !strings.Contains(body, `class="error"`) || idRe.MatchString(body) {
			t.Errorf("hours=%s: no error shown, or alerts listed as if unfiltered", h)
		}
		if r, _ := c.get("/api/v1/alerts?hours=" + url.QueryEscape(h)); r.StatusCode != http.StatusBadRequest {
			t.Errorf("API hours=%s: %d, want 400", h, r.StatusCode)
		}
	}
}

// TestFleetSortHugeGaps: a device whose seqs span more than 2^63 (a hostile
// or broken publisher) sorts first by gaps, not last through an int
// overflow.
// Paging values the alerts API does not take are answered 400
// bad_request naming the parameter, as the devices API answers the same
// values; before, the alerts API listed the default page for limit=0,
// limit=abc and offset=-1, and 10,000 alerts for limit=10001. An empty
// or absent value is the default. The CSV export refuses them too (text);
// the alerts page, for people, takes only page and per and forgives
// what it cannot read.
func TestAlertsPagingParameters(t *testing.T) {
	st := openBolt(t)
	seed(t, st)
	_, hs := newTestServer(t, st)
	c := newClient(t, hs.URL)
	c.login("ana", "correct horse")
	for _, q := range []string{"limit=0", "limit=abc", "limit=-1", "limit=1.5", "limit=10001", "offset=-1", "offset=abc", "offset=100001&limit=1"} {
		for _, path := range []string{"/api/v1/alerts", "/api/v1/devices"} {
			if path == "/api/v1/devices" && strings.HasPrefix(q, "offset=100001") {
				continue // devices have no offset bound
			}
			param, _, _ := strings.Cut(q, "=")
			r, out := c.json("GET", path+"?"+q, "", "")
			if r.StatusCode != http.StatusBadRequest || out["code"] != string(CodeBadRequest) || !strings.HasPrefix(fmt.Sprint(out["error"]), param+" ") {
				t.Errorf("%s?%s: %d %v, want 400 bad_request naming %s", path, q, r.StatusCode, out, param)
			}
		}
		if q == "limit=10001" {
			continue // the export's limit goes to 1,000,000
		}
		param, _, _ := strings.Cut(q, "=")
		if r, body := c.get("/alerts.csv?" + q); r.StatusCode != http.StatusBadRequest || !strings.HasPrefix(body, param+" ") {
			t.Errorf("/alerts.csv?%s: %d %q, want 400 naming %s", q, r.StatusCode, body, param)
		}
	}
	for _, q := range []string{"", "limit=&offset=", "limit=10000", "limit=1&offset=0", "offset=100000"} {
		r, body := c.get("/api/v1/alerts?state=all&" + q)
		var got []APIAlert
		if err := json.Unmarshal([]byte(body), &got); r.StatusCode != http.StatusOK || err != nil {
			t.Errorf("/api/v1/alerts?%s: %d %s", q, r.StatusCode, body)
		}
	}
	if r, body := c.get("/alerts.csv?limit=10001"); r.StatusCode != http.StatusOK {
		t.Errorf("/alerts.csv?limit=10001: %d %q", r.StatusCode, body)
	}
	if r, body := c.get("/alerts.csv?limit=1"); r.StatusCode != http.StatusOK || strings.Count(body, "\n") != 2 {
		t.Errorf("/alerts.csv?limit=1: %d %q, want the header and one alert", r.StatusCode, body)
	}
	// The page: what it cannot read is its default; limit and offset are
	// not its parameters.
	if r, body := c.get("/alerts?limit=abc&offset=-1&per=abc&page=-3"); r.StatusCode != http.StatusOK || !strings.Contains(body, "a-1") {
		t.Errorf("/alerts with unreadable paging: %d, want the first page listing a-1", r.StatusCode)
	}
}

func TestFleetSortHugeGaps(t *testing.T) {
	st := openBolt(t)
	now := time.Now().UTC()
	if _, err := st.Apply(context.Background(), []storage.Message{
		storetest.Summary("s", "few-gaps", 1, now, 1), storetest.Summary("s", "few-gaps", 3, now, 1),
		storetest.Summary("s", "huge-gaps", 1, now, 1), storetest.Summary("s", "huge-gaps", 1<<63+10, now, 1),
		storetest.Summary("s", "no-gaps", 1, now, 1),
	}); err != nil {
		t.Fatal(err)
	}
	_, hs := newTestServer(t, st)
	c := newClient(t, hs.URL)
	c.login("ana", "correct horse")
	_, body := c.get("/?sort=gaps")
	order := regexp.MustCompile(`data-device="s/([a-z-]+)"`).FindAllStringSubmatch(body, -1)
	var got []string
	for _, m := range order {
		got = append(got, m[1])
	}
	if strings.Join(got, ",") != "huge-gaps,few-gaps,no-gaps" {
		t.Errorf("sort=gaps: %v, want huge-gaps, few-gaps, no-gaps", got)
	}
}

// TestFleetAlertCountLinksAndNoteLabel: the fleet page's alert count, which
// counts open and acknowledged alerts, says "active" (the alerts page's
// name for exactly those) and links to the alerts of the selected site;
// every note field on the alerts page has an accessible name; the alert's
// window reads as the config writes it.
func TestFleetAlertCountLinksAndNoteLabel(t *testing.T) {
	st := openBolt(t)
	seed(t, st)
	_, hs := newTestServer(t, st)
	c := newClient(t, hs.URL)
	c.login("ana", "correct horse")
	if _, body := c.get("/?site=lyon-07"); !strings.Contains(body, `<a href="/alerts?site=lyon-07" title="open or acknowledged, not yet resolved">1 active alerts</a>`) {
		t.Errorf("fleet page of lyon-07: no count of active alerts linking to the site's alerts")
	}
	_, body := c.get("/alerts")
	if !strings.Contains(body, "<td>24h</td>") || strings.Contains(body, "24h0m0s") {
		t.Errorf("the alert's window is not shown as the config writes it (24h)")
	}
	notes := regexp.MustCompile(`<input name="note"[^>]*>`).FindAllString(body, -1)
	if len(notes) == 0 {
		t.Fatal("no note field")
	}
	for _, n := range notes {
		if !strings.Contains(n, `aria-label="note on the many-visits-24h alert of lyon-07 / atm-1"`) {
			t.Errorf("note field without its accessible name: %s", n)
		}
	}
}

// An administrator removes a stopped device from its page; an analyst
// cannot, an online device is refused (JSON 409 through the API), and the
// audit log on the settings page names who removed it.
func TestRemoveDevice(t *testing.T) {
	st := openBolt(t)
	seed(t, st)
	now := time.Now().UTC()
	for _, d := range []struct {
		dev   string
		state wire.State
	}{{"atm-1", wire.StateStopped}, {"atm-2", wire.StateOnline}} {
		site := map[string]string{"atm-1": "lyon-07", "atm-2": "paris-01"}[d.dev]
		sts := wire.Status{Envelope: wire.NewEnvelope(site, d.dev, now), State: d.state}
		if err := st.PutStatus(context.Background(), storage.Status{Site: site, Device: d.dev, Received: now, Status: sts}); err != nil {
			t.Fatal(err)
		}
	}
	// atm-1's alert resolved: nothing active left on it.
	if _, err := st.Act(context.Background(), storage.Action{Key: storage.AlertKey{Site: "lyon-07", Device: "atm-1", AlertID: "a-1"},
		Action: storage.ActionResolve, User: "ana", At: now}); err != nil {
		t.Fatal(err)
	}
	_, hs := newTestServer(t, st)
	ana, root := newClient(t, hs.URL), newClient(t, hs.URL)
	anaCSRF, rootCSRF := ana.login("ana", "correct horse"), root.login("root", "correct horse")

	if _, body := ana.get("/devices/lyon-07/atm-1"); strings.Contains(body, `action="/admin/devices/remove"`) {
		t.Error("an analyst is offered the removal")
	}
	if r, _ := ana.post("/admin/devices/remove", url.Values{"csrf": {anaCSRF}, "site": {"lyon-07"}, "device": {"atm-1"}}); r.StatusCode != http.StatusForbidden {
		t.Errorf("an analyst's removal: %d, want 403", r.StatusCode)
	}
	if _, body := root.get("/devices/paris-01/atm-2"); strings.Contains(body, `action="/admin/devices/remove"`) {
		t.Error("the removal is offered for an online device")
	}
	req, _ := http.NewRequest(http.MethodPost, hs.URL+"/api/v1/devices/remove", strings.NewReader(`{"site":"paris-01","device":"atm-2"}`))
	req.Header.Set("X-CSRF-Token", rootCSRF)
	resp, err := root.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var e struct{ Error string }
	json.NewDecoder(resp.Body).Decode(&e)
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict || !strings.Contains(e.Error, "is online") {
		t.Errorf("removing an online device: %d %q, want 409 saying it is online", resp.StatusCode, e.Error)
	}
	_, body := root.get("/devices/lyon-07/atm-1")
	if !strings.Contains(body, `action="/admin/devices/remove"`) {
		t.Fatal("the administrator is not offered the removal of a stopped device")
	}
	if r, _ := root.post("/admin/devices/remove", url.Values{"csrf": {rootCSRF}, "site": {"lyon-07"}, "device": {"atm-1"}}); r.StatusCode != http.StatusSeeOther {
		t.Errorf("removal: %d, want 303", r.StatusCode)
	}
	if r, _ := root.get("/devices/lyon-07/atm-1"); r.StatusCode != http.StatusNotFound {
		t.Errorf("removed device's page: %d, want 404", r.StatusCode)
	}
	if _, body := root.get("/admin"); !strings.Contains(body, "remove device") || !strings.Contains(body, "lyon-07/atm-1/") {
		t.Error("the audit log does not show the removal")
	}
}

// A program signs in without reading HTML: GET /login and POST /login
// with Accept: application/json answer JSON (the token to post back; 401
// for a wrong password; the session's CSRF token on success), as
// docs/fleet.md's "Signing in from a program" shows.
func TestProgramSignIn(t *testing.T) {
	st := openBolt(t)
	seed(t, st)
	_, hs := newTestServer(t, st)
	c := newClient(t, hs.URL)
	_, page := c.json("GET", "/login", "", "")
	tok, _ := page["csrf"].(string)
	if tok == "" {
		t.Fatalf("GET /login as JSON: %v, want the token", page)
	}
	signIn := func(pw string) (*http.Response, map[string]any) {
		return c.json("POST", "/login", "application/x-www-form-urlencoded",
			url.Values{"csrf": {tok}, "user": {"ana"}, "password": {pw}}.Encode())
	}
	if r, out := signIn("wrong horse"); r.StatusCode != http.StatusUnauthorized || out["error"] == nil {
		t.Errorf("wrong password: %d %v, want 401 with an error", r.StatusCode, out)
	}
	r, out := signIn("correct horse")
	if r.StatusCode != http.StatusOK || out["user"] != "ana" || out["csrf_token"] == nil {
		t.Fatalf("sign-in: %d %v", r.StatusCode, out)
	}
	if r, sess := c.json("GET", "/api/v1/session", "", ""); r.StatusCode != http.StatusOK || sess["csrf_token"] != out["csrf_token"] {
		t.Errorf("session after a program's sign-in: %d %v", r.StatusCode, sess)
	}
}

// An administrator erases one identity (API and the identity page's
// form); an analyst is neither offered nor allowed it.
func TestPurgeIdentity(t *testing.T) {
	st := openBolt(t)
	seed(t, st)
	_, hs := newTestServer(t, st)
	ana, root := newClient(t, hs.URL), newClient(t, hs.URL)
	anaCSRF, rootCSRF := ana.login("ana", "correct horse"), root.login("root", "correct horse")
	if _, body := ana.get("/devices/lyon-07/atm-1/identities/p-1"); strings.Contains(body, "/admin/identities/purge") {
		t.Error("an analyst is offered the erasure")
	}
	if r, _ := ana.post("/admin/identities/purge", url.Values{"csrf": {anaCSRF}, "site": {"lyon-07"}, "device": {"atm-1"}, "identity": {"p-1"}}); r.StatusCode != http.StatusForbidden {
		t.Errorf("an analyst's erasure: %d, want 403", r.StatusCode)
	}
	post := func(body string) (int, map[string]any) {
		r, out := root.json("POST", "/api/v1/identities/purge", "application/json", body, "X-CSRF-Token", rootCSRF)
		return r.StatusCode, out
	}
	if code, out := post(`{"site":"lyon-07","device":"atm-1","identity":"p-1","all":"yes"}`); code != 400 || out["error"] == nil {
		t.Errorf("unknown field: %d %v, want 400", code, out)
	}
	if code, out := post(`{"site":"lyon-07","device":"atm-1","identity":"p-1"}`); code != 200 || out["purged"] != "p-1" || out["alerts"] != float64(1) {
		t.Errorf("erasure: %d %v, want p-1 and its 1 alert", code, out)
	}
	if _, body := root.get("/devices/lyon-07/atm-1/identities/p-1"); !strings.Contains(body, "Not in any stored summary") {
		t.Error("the erased identity's page still shows counts")
	}
	if _, body := root.get("/devices/lyon-07/atm-1/identities/p-2"); !strings.Contains(body, `action="/admin/identities/purge"`) ||
		!strings.Contains(body, `<input name="confirm" required`) {
		t.Error("the administrator is not offered the erasure, or it asks for no confirmation")
	}
	// The form erases only once the identity is typed again: without it,
	// a page says what would be erased (its alert counted) and asks; a
	// wrong one is 400. Nothing is erased meanwhile (before 2026-12-08 one
	// click erased it).
	if _, err := st.Apply(context.Background(), []storage.Message{storetest.Alert("lyon-07", "atm-1", 5, time.Now().UTC(), "a-2", "p-2", 9)}); err != nil {
		t.Fatal(err)
	}
	form := url.Values{"csrf": {rootCSRF}, "site": {"lyon-07"}, "device": {"atm-1"}, "identity": {"p-2"}}
	if r, body := root.post("/admin/identities/purge", form); r.StatusCode != http.StatusOK || !strings.Contains(body, `id="erase-unconfirmed"`) ||
		!strings.Contains(body, "1 alert naming it in every state") || !strings.Contains(body, `<input name="confirm" required`) ||
		strings.Contains(body, `id="erasure-done"`) {
		t.Errorf("an unconfirmed erasure: %d\n%s", r.StatusCode, body)
	}
	form.Set("confirm", "p-1")
	if r, body := root.post("/admin/identities/purge", form); r.StatusCode != http.StatusBadRequest || !strings.Contains(body, `the confirmation reads "p-1", not p-2`) {
		t.Errorf("an erasure confirmed with another id: %d\n%s", r.StatusCode, body)
	}
	root.refusesUnguarded("/admin/identities/purge", url.Values{"site": {"lyon-07"}, "device": {"atm-1"}, "identity": {"p-2"}, "confirm": {"p-2"}}, rootCSRF)
	if _, body := root.get("/devices/lyon-07/atm-1/identities/p-2"); strings.Contains(body, "Not in any stored summary") {
		t.Fatal("an unconfirmed erasure erased the identity")
	}
	// The form's answer says what was erased (before: a redirect to the
	// device page that said nothing, and no scrub warning).
	form.Set("confirm", " p-2 ")
	if r, body := root.post("/admin/identities/purge", form); r.StatusCode != http.StatusOK ||
		!strings.Contains(body, `id="erasure-done"`) || !strings.Contains(body, "p-2 is erased from the fleet") || strings.Contains(body, `id="erasure-warning"`) {
		t.Errorf("erasure form: %d\n%s", r.StatusCode, body)
	}
	if _, body := root.get("/admin"); !strings.Contains(body, "purge identity") ||
		!strings.Contains(body, storage.PurgeNote(storage.IdentityPurge{Site: "lyon-07", Device: "atm-1", Identity: "p-1"}, 1)) {
		t.Error("the audit log does not show the erasure")
	}
}
