package web

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/periocular/atm-agent/sync/fleet/command"
	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/fleet/storage/storetest"
	"github.com/periocular/atm-agent/sync/wire"
)

// roleCase is a signed-in user of testUsers as the route tests see it:
// what its role may do (written out here, not read from auth.go, so a
// route given the wrong permission fails) and whether it is scoped to the
// paris-* sites.
type roleCase struct {
	user   string
	can    []Permission
	scoped bool
}

var roleCases = []roleCase{
	{"vic", []Permission{PermRead}, false},
	{"val", []Permission{PermRead}, true},
	{"ana", []Permission{PermRead, PermAct, PermReview}, false},
	{"pat", []Permission{PermRead, PermAct, PermReview}, true},
	{"root", []Permission{PermRead, PermAct, PermReview, PermAdmin}, false},
}

// routeCase is one route's request for the role tests: in the scoped
// users' sites (paris-01/atm-2, its identity p-9 and alert a-9), and, for a
// route that names a site, the same outside it (lyon-07/atm-1).
type routeCase struct {
	need       Permission
	path, body string // body: a form, or JSON under /api/
	ok         int    // the answer to a user allowed the route
	outPath    string // outside the scope ("" : the route names no site)
	outBody    string
	lists      bool // a listing: holds paris-01, and lyon-07 only unscoped
	forms      bool // a page with alert rows and identity links
}

const (
	actIn    = `{"action":"acknowledge","site":"paris-01","device":"atm-2","alert":"a-9"}`
	actOut   = `{"action":"acknowledge","site":"lyon-07","device":"atm-1","alert":"a-1"}`
	splitIn  = `{"site":"paris-01","device":"atm-2","identity":"p-9","visits":["v-1"]}`
	splitOut = `{"site":"lyon-07","device":"atm-1","identity":"p-1","visits":["v-1"]}`
	mergeIn  = `{"site":"paris-01","device":"atm-2","identity":"p-9","into":"p-8"}`
	mergeOut = `{"site":"lyon-07","device":"atm-1","identity":"p-1","into":"p-2"}`
	keyIn    = `{"public_key":"su/y5w+nhsEt9DQgn+6JkK9ethrTFRyvLPjUD7im19U="}`
)

// routeCases holds every route of Server.routes (TestEveryRouteByRole
// fails when one is missing). Commands are not configured: the review
// routes answer 501 to whoever may use them.
var routeCases = map[string]routeCase{
	"GET /static/":    {need: PermPublic, path: "/static/app.js", ok: 200},
	"GET /healthz":    {need: PermPublic, path: "/healthz", ok: 200},
	"GET /login":      {need: PermPublic, path: "/login", ok: 200},
	"POST /login":     {need: PermPublic, path: "/login", ok: 403}, // without its sign-in token
	"POST /logout":    {need: PermRead, path: "/logout", ok: 303},
	"GET /{$}":        {need: PermRead, path: "/", ok: 200, lists: true},
	"GET /alerts":     {need: PermRead, path: "/alerts?state=all", ok: 200, lists: true, forms: true},
	"GET /alerts.csv": {need: PermRead, path: "/alerts.csv", ok: 200, lists: true},
	"POST /alerts/act": {need: PermAct, path: "/alerts/act", body: "action=acknowledge&site=paris-01&device=atm-2&alert=a-9", ok: 303,
		outPath: "/alerts/act", outBody: "action=acknowledge&site=lyon-07&device=atm-1&alert=a-1"},
	"GET /devices/{site}/{device}": {need: PermRead, path: "/devices/paris-01/atm-2", ok: 200, outPath: "/devices/lyon-07/atm-1", forms: true},
	"GET /devices/{site}/{device}/identities/{id}": {need: PermRead, path: "/devices/paris-01/atm-2/identities/p-9", ok: 200,
		outPath: "/devices/lyon-07/atm-1/identities/p-1", forms: true},
	"GET /devices/{site}/{device}/identities/{id}/review": {need: PermReview, path: "/devices/paris-01/atm-2/identities/p-9/review", ok: 501,
		outPath: "/devices/lyon-07/atm-1/identities/p-1/review"},
	"POST /devices/{site}/{device}/identities/{id}/split": {need: PermReview, path: "/devices/paris-01/atm-2/identities/p-9/split", body: "visits=v-1", ok: 501,
		outPath: "/devices/lyon-07/atm-1/identities/p-1/split", outBody: "visits=v-1"},
	"POST /devices/{site}/{device}/identities/{id}/merge": {need: PermReview, path: "/devices/paris-01/atm-2/identities/p-9/merge", body: "into=p-8", ok: 501,
		outPath: "/devices/lyon-07/atm-1/identities/p-1/merge", outBody: "into=p-2"},
	"GET /api/v1/devices/{site}/{device}/identities/{id}/visits": {need: PermReview, path: "/api/v1/devices/paris-01/atm-2/identities/p-9/visits", ok: 501,
		outPath: "/api/v1/devices/lyon-07/atm-1/identities/p-1/visits"},
	"POST /api/v1/identities/split":       {need: PermReview, path: "/api/v1/identities/split", body: splitIn, ok: 501, outPath: "/api/v1/identities/split", outBody: splitOut},
	"POST /api/v1/identities/merge":       {need: PermReview, path: "/api/v1/identities/merge", body: mergeIn, ok: 501, outPath: "/api/v1/identities/merge", outBody: mergeOut},
	"GET /events":                         {need: PermRead, path: "/events", ok: 200},
	"GET /admin":                          {need: PermAdmin, path: "/admin", ok: 200},
	"POST /admin/prune":                   {need: PermAdmin, path: "/admin/prune", ok: 303},
	"GET /admin/backup":                   {need: PermAdmin, path: "/admin/backup", ok: 200},
	"POST /admin/devices/remove":          {need: PermAdmin, path: "/admin/devices/remove", body: "site=paris-01&device=atm-2", ok: 409}, // active alerts
	"POST /api/v1/devices/remove":         {need: PermAdmin, path: "/api/v1/devices/remove", body: `{"site":"paris-01","device":"atm-2"}`, ok: 409},
	"POST /admin/identities/purge":        {need: PermAdmin, path: "/admin/identities/purge", body: "site=paris-01&device=atm-2&identity=p-0", ok: 200},
	"POST /api/v1/identities/purge":       {need: PermAdmin, path: "/api/v1/identities/purge", body: `{"site":"paris-01","device":"atm-2","identity":"p-0"}`, ok: 200},
	"GET /api/v1/session":                 {need: PermRead, path: "/api/v1/session", ok: 200},
	"GET /api/v1/devices":                 {need: PermRead, path: "/api/v1/devices", ok: 200, lists: true},
	"GET /api/v1/devices/{site}/{device}": {need: PermRead, path: "/api/v1/devices/paris-01/atm-2", ok: 200, outPath: "/api/v1/devices/lyon-07/atm-1"},
	// PUT before DELETE (the routes' order): each removes the key its PUT pinned.
	"PUT /api/v1/devices/{site}/{device}/key": {need: PermAdmin, path: "/api/v1/devices/paris-01/atm-2/key", body: keyIn, ok: 200,
		outPath: "/api/v1/devices/lyon-07/atm-1/key", outBody: keyIn},
	"DELETE /api/v1/devices/{site}/{device}/key": {need: PermAdmin, path: "/api/v1/devices/paris-01/atm-2/key", ok: 200,
		outPath: "/api/v1/devices/lyon-07/atm-1/key"},
	"GET /api/v1/alerts":      {need: PermRead, path: "/api/v1/alerts?state=all", ok: 200, lists: true},
	"POST /api/v1/alerts/act": {need: PermAct, path: "/api/v1/alerts/act", body: actIn, ok: 200, outPath: "/api/v1/alerts/act", outBody: actOut},
}

// seedScoped is seed with an alert on paris-01 (a-9, identity p-9).
func seedScoped(t testing.TB, st storage.Store) {
	seed(t, st)
	if _, err := st.Apply(context.Background(), []storage.Message{
		storetest.Alert("paris-01", "atm-2", 2, time.Now().UTC().Add(-10*time.Minute), "a-9", "p-9", 8),
	}); err != nil {
		t.Fatal(err)
	}
}

// send sends a request as c with its session's CSRF token: a form or JSON
// body (JSON under /api/). The live stream is closed once it answers.
func (c *client) send(method, path, body, csrf string) (int, string) {
	c.t.Helper()
	req, _ := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if method != http.MethodGet {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if strings.HasPrefix(path, "/api/") {
			req.Header.Set("Content-Type", "application/json")
		}
		req.Header.Set("X-CSRF-Token", csrf)
	}
	r, err := c.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer r.Body.Close()
	if strings.HasPrefix(r.Header.Get("Content-Type"), "text/event-stream") {
		return r.StatusCode, ""
	}
	b, _ := io.ReadAll(r.Body)
	return r.StatusCode, string(b)
}

var (
	actFormRe = regexp.MustCompile(`action="/alerts/act"`)
	reviewRe  = regexp.MustCompile(`/review"`)
)

// Every route of the server, for each role and scope: a role without the
// route's permission gets 403 (JSON under /api/); a scoped user gets 404
// for a route naming a site outside its scope, and listings of its sites
// only; pages show no act form or review link to a role that cannot use
// them. A route added to Server.routes without a case here fails.
func TestEveryRouteByRole(t *testing.T) {
	probe, _ := newTestServer(t, openBolt(t))
	var patterns []string
	for _, rt := range probe.routes() {
		patterns = append(patterns, rt.Pattern)
		if _, ok := routeCases[rt.Pattern]; !ok {
			t.Errorf("route %s has no case in routeCases: say what each role and scope gets", rt.Pattern)
		}
	}
	for p, tc := range routeCases {
		if !slices.Contains(patterns, p) {
			t.Errorf("routeCases has %s, which the server does not register", p)
		}
		if strings.Contains(p, "{site}") && tc.outPath == "" {
			t.Errorf("%s names a site: its case needs outPath, the same request on a site outside the scope", p)
		}
	}
	// Sign-out last: it ends the session.
	slices.SortStableFunc(patterns, func(a, b string) int {
		return boolInt(a == "POST /logout") - boolInt(b == "POST /logout")
	})
	for _, rc := range roleCases {
		t.Run(rc.user, func(t *testing.T) {
			st := openBolt(t)
			seedScoped(t, st)
			_, hs := newTestServer(t, st)
			c := newClient(t, hs.URL)
			csrf := c.login(rc.user, "correct horse")
			for _, p := range patterns {
				tc, ok := routeCases[p]
				if !ok {
					continue // reported above
				}
				method, _, _ := strings.Cut(p, " ")
				allowed := tc.need == PermPublic || slices.Contains(rc.can, tc.need)
				want := tc.ok
				if !allowed {
					want = http.StatusForbidden
				}
				code, body := c.send(method, tc.path, tc.body, csrf)
				if code != want {
					t.Errorf("%s %s: %d, want %d: %.200s", method, tc.path, code, want, body)
				}
				if !allowed && strings.HasPrefix(tc.path, "/api/") && !strings.Contains(body, `"error"`) {
					t.Errorf("%s %s: refused without a JSON error: %.200s", method, tc.path, body)
				}
				if allowed && tc.lists {
					if !strings.Contains(body, "paris-01") || strings.Contains(body, "lyon-07") != !rc.scoped {
						t.Errorf("%s %s as %s: the listing %s paris-01, %s lyon-07", method, tc.path, rc.user,
							present(body, "paris-01"), present(body, "lyon-07"))
					}
				}
				if allowed && tc.forms {
					if actFormRe.MatchString(body) != slices.Contains(rc.can, PermAct) {
						t.Errorf("%s as %s: act form %s", tc.path, rc.user, present(body, `action="/alerts/act"`))
					}
					if reviewRe.MatchString(body) != slices.Contains(rc.can, PermReview) {
						t.Errorf("%s as %s: review link %s", tc.path, rc.user, present(body, `/review"`))
					}
				}
				if tc.outPath == "" || !allowed {
					continue
				}
				code, body = c.send(method, tc.outPath, tc.outBody, csrf)
				switch {
				case rc.scoped && code != http.StatusNotFound:
					t.Errorf("%s %s outside the scope of %s: %d, want 404: %.200s", method, tc.outPath, rc.user, code, body)
				case !rc.scoped && (code == http.StatusNotFound || code == http.StatusForbidden):
					t.Errorf("%s %s as %s: %d: %.200s", method, tc.outPath, rc.user, code, body)
				}
			}
		})
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func present(body, s string) string {
	if strings.Contains(body, s) {
		return "has"
	}
	return "lacks"
}

// Handlers read devices, alerts and series, and act on alerts, through
// the scope helpers (scope.go), never the store's methods that take a site
// directly: a new handler that did would show a scoped user other sites,
// or let them act there. (The identity review's commands and audit go
// through commandDevice, which is s.device.)
func TestStoreReadsGoThroughTheScope(t *testing.T) {
	// The store's method, and the helper to use instead.
	scoped := map[string]string{"Device": "device", "Devices": "devices", "Alerts": "alerts", "Alert": "alert", "Act": "actOn",
		"Summaries": "summaries", "IdentityPoints": "identityPoints"}
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") || name == "scope.go" {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if inner, ok := sel.X.(*ast.SelectorExpr); ok && inner.Sel.Name == "store" && scoped[sel.Sel.Name] != "" {
				t.Errorf("%s: store.%s outside scope.go: use s.%s", fset.Position(sel.Pos()), sel.Sel.Name, scoped[sel.Sel.Name])
			}
			return true
		})
	}
}

// A device or alert outside a scoped user's sites answers exactly what an
// absent one does: the same code and message, nothing stored for it.
func TestOutOfScopeLooksAbsent(t *testing.T) {
	st := openBolt(t)
	seedScoped(t, st)
	_, hs := newTestServer(t, st)
	ana, pat := newClient(t, hs.URL), newClient(t, hs.URL)
	anaCSRF, patCSRF := ana.login("ana", "correct horse"), pat.login("pat", "correct horse")
	for _, tc := range []struct{ method, path, body string }{
		{"GET", "/api/v1/devices/lyon-07/atm-1", ""},
		{"GET", "/devices/lyon-07/atm-1", ""},
		{"GET", "/devices/lyon-07/atm-1/identities/p-1", ""},
		{"POST", "/api/v1/alerts/act", actOut},
		{"POST", "/alerts/act", "action=resolve&site=lyon-07&device=atm-1&alert=a-1"},
		{"POST", "/api/v1/identities/split", splitOut},
	} {
		absent := strings.NewReplacer("atm-1", "atm-404", "a-1", "a-404").Replace
		aCode, aBody := ana.send(tc.method, absent(tc.path), absent(tc.body), anaCSRF)
		pCode, pBody := pat.send(tc.method, tc.path, tc.body, patCSRF)
		if pCode != http.StatusNotFound || aCode != pCode || absent(pBody) != aBody {
			t.Errorf("%s %s: outside the scope %d %q; absent %d %q: want the same 404", tc.method, tc.path, pCode, pBody, aCode, aBody)
		}
	}
	a, err := st.Alert(context.Background(), storage.AlertKey{Site: "lyon-07", Device: "atm-1", AlertID: "a-1"})
	if err != nil || a.State != storage.AlertOpen {
		t.Errorf("lyon-07's alert after a scoped user's tries: %v %v, want open", a.State, err)
	}
	if audit, _ := st.Audit(context.Background(), 100); len(audit) != 0 {
		t.Errorf("audited: %+v, want nothing", audit)
	}
}

// A scoped user's listings are filtered by the store, not after its
// limit: every page is full until the last, by offset and by the API's
// cursor, and the pages hold every alert of the scope once.
func TestScopedAlertPaging(t *testing.T) {
	st := openBolt(t)
	now := time.Now().UTC()
	var msgs []storage.Message
	paris := 0
	for i := range 90 {
		site, dev := "lyon-07", "atm-1" // outside: newer, and more of them
		if i%5 == 0 {
			site, dev = "paris-01", "atm-2"
			paris++
		}
		msgs = append(msgs, storetest.Alert(site, dev, uint64(i+1), now.Add(-time.Duration(i)*time.Minute), fmt.Sprintf("a-%02d", i), "p-1", 7))
	}
	if _, err := st.Apply(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
	_, hs := newTestServer(t, st)
	pat := newClient(t, hs.URL)
	pat.login("pat", "correct horse")
	seen := map[string]bool{}
	next := "/api/v1/alerts?limit=4"
	for pages := 0; next != ""; pages++ {
		r, body := pat.get(next)
		var page []APIAlert
		if err := json.Unmarshal([]byte(body), &page); err != nil || r.StatusCode != 200 {
			t.Fatalf("%s: %d %v", next, r.StatusCode, err)
		}
		for _, a := range page {
			if a.Site != "paris-01" || seen[a.AlertID] {
				t.Fatalf("%s lists %s/%s (outside the scope, or again)", next, a.Site, a.AlertID)
			}
			seen[a.AlertID] = true
		}
		next = ""
		if m := regexp.MustCompile(`<([^>]+)>; rel="next"`).FindStringSubmatch(r.Header.Get("Link")); m != nil {
			if len(page) != 4 {
				t.Errorf("page %d: %d alerts with a next page, want 4", pages, len(page))
			}
			next = m[1]
		}
	}
	if len(seen) != paris {
		t.Errorf("cursor paging listed %d alerts, want the scope's %d", len(seen), paris)
	}
	for off := 0; off < paris; off += 4 {
		_, body := pat.get(fmt.Sprintf("/api/v1/alerts?limit=4&offset=%d", off))
		var page []APIAlert
		_ = json.Unmarshal([]byte(body), &page)
		if want := min(4, paris-off); len(page) != want {
			t.Errorf("offset %d: %d alerts, want %d", off, len(page), want)
		}
	}
	// The page and the CSV: the scope's alerts, counted right (18 of
	// them: the second page of 10 is its last, with 8).
	_, body := pat.get("/alerts?state=all&per=10")
	if n := strings.Count(body, `data-alert="`); n != 10 || !strings.Contains(body, "alerts 1–10") || !strings.Contains(body, `rel="next"`) {
		t.Errorf("alerts page 1 of 10: %d rows, want 10 and a next page", n)
	}
	_, body = pat.get("/alerts?state=all&per=10&page=2")
	if n := strings.Count(body, `data-alert="`); n != paris-10 || !strings.Contains(body, fmt.Sprintf("alerts 11–%d", paris)) || strings.Contains(body, `rel="next"`) {
		t.Errorf("alerts page 2 of 10: %d rows, want %d and no next page", n, paris-10)
	}
	_, body = pat.get("/alerts.csv")
	recs, err := csv.NewReader(strings.NewReader(body)).ReadAll()
	if err != nil || len(recs) != paris+1 {
		t.Errorf("csv: %d records (%v), want a header and %d alerts", len(recs), err, paris)
	}
}

// The live stream of a scoped user carries no change of another site, and
// still the changes of no one site (resync: refresh every page).
func TestEventsScoped(t *testing.T) {
	st := openBolt(t)
	seed(t, st)
	_, hs := newTestServer(t, st)
	c := newClient(t, hs.URL)
	c.login("pat", "correct horse")
	// lyon-07's first: delivered in order, it would come before.
	seen := c.awaitEvent(func() {
		st.Apply(context.Background(), []storage.Message{storetest.Alert("lyon-07", "atm-1", 5, time.Now(), "a-2", "p-2", 9)})
		st.Publish(storage.Change{Kind: "resync"})
		st.Apply(context.Background(), []storage.Message{storetest.Alert("paris-01", "atm-2", 5, time.Now(), "a-3", "p-9", 9)})
	}, `"alert":"a-3"`, "lyon-07")
	if len(seen) != 2 || !strings.Contains(seen[0], `"kind":"resync"`) {
		t.Errorf("a scoped user's stream: %q, want the resync, then a-3", seen)
	}
}

// The session API says who is signed in, their role, sites and
// permissions; a scoped analyst's action is audited under their name and
// role as any other.
func TestSessionAndAuditOfScopedUsers(t *testing.T) {
	st := openBolt(t)
	seedScoped(t, st)
	_, hs := newTestServer(t, st)
	for _, tc := range []struct {
		user, role string
		sites      []string
		perms      []Permission
	}{
		{"vic", RoleViewer, nil, []Permission{PermRead}},
		{"val", RoleViewer, []string{"paris-01"}, []Permission{PermRead}},
		{"pat", RoleAnalyst, []string{"paris-*"}, []Permission{PermRead, PermAct, PermReview}},
		{"root", RoleAdmin, nil, []Permission{PermRead, PermAct, PermReview, PermAdmin}},
	} {
		c := newClient(t, hs.URL)
		csrf := c.login(tc.user, "correct horse")
		_, body := c.get("/api/v1/session")
		var got sessionInfo
		if err := json.Unmarshal([]byte(body), &got); err != nil || got.User != tc.user || got.Role != tc.role ||
			!slices.Equal(got.Sites, tc.sites) || !slices.Equal(got.Permissions, tc.perms) || got.CSRFToken != csrf {
			t.Errorf("%s: session %s", tc.user, body)
		}
		if tc.sites == nil && strings.Contains(body, `"sites"`) {
			t.Errorf("%s: an unscoped session names sites: %s", tc.user, body)
		}
		if _, page := c.get("/"); tc.sites != nil && !strings.Contains(page, "("+tc.role+": "+tc.sites[0]+")") {
			t.Errorf("%s: the page header does not show the scope", tc.user)
		}
	}
	pat := newClient(t, hs.URL)
	csrf := pat.login("pat", "correct horse")
	if code, body := pat.send("POST", "/api/v1/alerts/act", strings.Replace(actIn, "acknowledge", "resolve", 1), csrf); code != 200 {
		t.Fatalf("pat resolves a-9: %d %s", code, body)
	}
	audit, err := st.Audit(context.Background(), 10)
	if err != nil || len(audit) != 1 || audit[0].User != "pat" || audit[0].Role != RoleAnalyst || audit[0].Key.AlertID != "a-9" {
		t.Errorf("audit %+v %v, want pat (analyst) resolving a-9", audit, err)
	}
}

// A proxy-signed user gets the users file's role and sites.
func TestProxyAuthScoped(t *testing.T) {
	st := openBolt(t)
	seedScoped(t, st)
	hs := proxyAuthServer(t, st, "127.0.0.0/8")
	as := func(user, method, path, body string) (int, string) {
		req, _ := http.NewRequest(method, hs.URL+path, strings.NewReader(body))
		req.Header.Set("X-Remote-User", user)
		return send(t, req)
	}
	if code, body := as("pat", "GET", "/api/v1/devices", ""); code != 200 || strings.Contains(body, "lyon-07") || !strings.Contains(body, "paris-01") {
		t.Errorf("proxy-signed pat lists devices: %d %s", code, body)
	}
	if code, _ := as("pat", "GET", "/devices/lyon-07/atm-1", ""); code != 404 {
		t.Errorf("proxy-signed pat on lyon-07: %d, want 404", code)
	}
	if code, _ := as("vic", "GET", "/devices/paris-01/atm-2/identities/p-9/review", ""); code != 403 {
		t.Errorf("proxy-signed viewer on the review: %d, want 403", code)
	}
}

// The users file's roles and sites: what is accepted, and what is refused
// with a message that names the problem.
func TestUsersFileRolesAndSites(t *testing.T) {
	h, _ := bcrypt.GenerateFromPassword([]byte("x"), bcrypt.MinCost)
	entry := func(rest string) string {
		return fmt.Sprintf("users:\n  - {name: a, password_hash: %q, %s}\n", h, rest)
	}
	u, err := ParseUsers([]byte(entry(`role: viewer, sites: [lisbon-01, "porto-*"]`)))
	if err != nil {
		t.Fatal(err)
	}
	if a := u["a"]; a.Role != RoleViewer || !a.Sites.Allows("porto-9") || !a.Sites.Allows("lisbon-01") || a.Sites.Allows("lisbon-02") {
		t.Errorf("scoped viewer: %+v", a)
	}
	if u, err := ParseUsers([]byte(entry("role: analyst"))); err != nil || u["a"].Sites != nil {
		t.Errorf("an analyst without sites: %+v %v, want every site", u["a"], err)
	}
	for name, tc := range map[string]struct{ rest, says string }{
		"admin with sites":   {"role: admin, sites: [lisbon-01]", "admin is not scoped"},
		"empty sites":        {"role: analyst, sites: []", "empty list"},
		"sites without any":  {"role: analyst, sites: ", "want a list"},
		"sites not a list":   {"role: viewer, sites: lisbon-01", "want a list"},
		"glob in the middle": {`role: viewer, sites: ["lis*bon"]`, "only a trailing '*'"},
		"glob class":         {`role: viewer, sites: ["site-[12]"]`, "only a trailing '*'"},
		"star alone":         {`role: viewer, sites: ["*"]`, "write sites: all"},
		"slash":              {`role: viewer, sites: [a/b]`, "'/'"},
		"unknown role":       {"role: auditor", `want "viewer", "analyst" or "admin"`},
	} {
		_, err := ParseUsers([]byte(entry(tc.rest)))
		if err == nil || !strings.Contains(err.Error(), tc.says) || !strings.Contains(err.Error(), `user "a"`) {
			t.Errorf("%s: %v, want an error naming user a and saying %q", name, err, tc.says)
		}
	}
}

// Behind an authenticating proxy the proxy says who the user is: a
// session cookie left in the browser by another user (a shared
// workstation, an SSO sign-out the service never heard of) does not win
// over the proxy's header. A header naming another user replaces the
// session; one naming a user the users file lacks is refused, cookie or
// not.
func TestProxyAuthHeaderWinsOverCookie(t *testing.T) {
	st := openBolt(t)
	seedScoped(t, st)
	hs := proxyAuthServer(t, st, "127.0.0.0/8")
	c := newClient(t, hs.URL)
	as := func(user, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, hs.URL+path, nil)
		req.Header.Set("X-Remote-User", user)
		r, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		b, _ := io.ReadAll(r.Body)
		return r.StatusCode, string(b)
	}
	if code, body := as("ana", "/api/v1/session"); code != 200 || !strings.Contains(body, `"user": "ana"`) {
		t.Fatalf("proxy-signed ana: %d %s", code, body)
	}
	// The browser keeps ana's cookie; the proxy now signs val in.
	code, body := as("val", "/api/v1/session")
	if code != 200 || !strings.Contains(body, `"user": "val"`) || !strings.Contains(body, `"paris-01"`) {
		t.Errorf("the proxy names val, the cookie ana: %d %s, want val's session", code, body)
	}
	if code, body := as("val", "/devices/lyon-07/atm-1"); code != 404 {
		t.Errorf("val (paris-01) through ana's old cookie on lyon-07: %d %.100s, want 404", code, body)
	}
	for _, path := range []string{"/api/v1/session", "/events"} {
		if code, body := as("mallory", path); code != http.StatusUnauthorized {
			t.Errorf("the proxy names mallory (not in the users file) with a valid cookie: %s %d %.100s, want 401", path, code, body)
		}
	}
	// Without the header (a password sign-in through the proxy), the
	// cookie is the user, as before.
	c2 := newClient(t, hs.URL)
	c2.login("pat", "correct horse")
	if _, body := c2.get("/api/v1/session"); !strings.Contains(body, `"user": "pat"`) {
		t.Errorf("a password session through the proxy without the header: %s", body)
	}
}

// One user cannot hold every command slot (commands.max_in_flight): a
// scoped analyst reviewing their sites' ATMs that do not answer would
// have had every other site's reviews refused (503) until the replies
// timed out. Past MaxUserCommands waiting at once, that user's next
// command is refused (503, nothing sent) and the others' still go.
func TestOneUserCannotHoldEveryCommandSlot(t *testing.T) {
	st := openBolt(t)
	seedScoped(t, st)
	now := time.Now().UTC()
	for _, d := range [][2]string{{"paris-01", "atm-5"}, {"lyon-07", "atm-1"}} {
		status := wire.Status{Envelope: wire.NewEnvelope(d[0], d[1], now), State: wire.StateOnline}
		if err := st.PutStatus(context.Background(), storage.Status{Site: d[0], Device: d[1], Received: now, Status: status}); err != nil {
			t.Fatal(err)
		}
	}
	s, hs := newTestServer(t, st)
	// paris-01/atm-5 never answers (no reviewer); lyon-07/atm-1 does.
	rv := fleettest.NewReviewer(reviewVisitsOf(now))
	s.d.Commands = loopbackCommandsWith(t, map[string]*fleettest.Reviewer{"atm-1": rv}, func(c *command.Config) {
		c.MaxInFlight, c.ReplyTimeout = MaxUserCommands+1, 3*time.Second
	})
	pat, ana := newClient(t, hs.URL), newClient(t, hs.URL)
	pat.login("pat", "correct horse")
	ana.login("ana", "correct horse")
	var wg sync.WaitGroup
	for i := range MaxUserCommands {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pat.send("GET", fmt.Sprintf("/api/v1/devices/paris-01/atm-5/identities/p-%d/visits", i), "", "")
		}()
	}
	defer wg.Wait()
	cmds := s.d.Commands.(*command.Client)
	fleettest.WaitFor(t, 2*time.Second, "pat's commands in flight", func() bool { return cmds.Stats().InFlight == MaxUserCommands })
	r, out := pat.json("GET", "/api/v1/devices/paris-01/atm-5/identities/p-9/visits", "", "")
	if r.StatusCode != http.StatusServiceUnavailable || !strings.Contains(fmt.Sprint(out["error"]), "already wait") {
		t.Errorf("pat's command past %d waiting: %d %v, want 503 at once", MaxUserCommands, r.StatusCode, out)
	}
	// When a slot is sure to be free: the reply timeout (3 s here).
	if ra := r.Header.Get("Retry-After"); ra != "3" {
		t.Errorf("pat's 503: Retry-After %q, want 3 (commands.reply_timeout)", ra)
	}
	if code, body := ana.send("GET", "/api/v1/devices/lyon-07/atm-1/identities/p-1/visits", "", ""); code != 200 {
		t.Errorf("ana's review while pat's commands wait: %d %.200s, want 200", code, body)
	}
	// Every slot taken (pat's 4 and ana's fifth, to the device that
	// never answers): the next user's command too.
	wg.Add(1)
	go func() {
		defer wg.Done()
		ana.send("GET", "/api/v1/devices/paris-01/atm-5/identities/p-1/visits", "", "")
	}()
	fleettest.WaitFor(t, 2*time.Second, "every slot in flight", func() bool { return cmds.Stats().InFlight == MaxUserCommands+1 })
	root := newClient(t, hs.URL)
	root.login("root", "correct horse")
	r, out = root.json("GET", "/api/v1/devices/lyon-07/atm-1/identities/p-2/visits", "", "") // p-1 is in the review cache
	if r.StatusCode != http.StatusServiceUnavailable || r.Header.Get("Retry-After") != "3" {
		t.Errorf("a command past max_in_flight: %d %v, Retry-After %q; want 503 and 3", r.StatusCode, out, r.Header.Get("Retry-After"))
	}
}
