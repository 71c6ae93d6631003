package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/internal/testenv/openapi"
	"github.com/periocular/atm-agent/sync/fleet/command"
	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/fleet/ingest"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/fleet/storage/storetest"
	"github.com/periocular/atm-agent/sync/wire"
)

// Every answer of the real server to the JSON API is a documented
// response of docs/openapi/fleet.yaml (status code, body schema, headers),
// and every documented response is produced. Every error carries a code of
// the Error schema's enum, and each code of the enum is produced
// (checkCodes).
func TestOpenAPIMatchesServer(t *testing.T) {
	d := openapi.Load(t, filepath.Join("..", "..", "..", "docs", "openapi", "fleet.yaml"))
	d.Fallback = map[int][]string{http.StatusNotFound: {"components", "responses", "NotFound"},
		http.StatusMethodNotAllowed: {"components", "responses", "MethodNotAllowed"}}
	st := openBolt(t)
	seed(t, st)
	now := time.Now().UTC()
	if _, err := st.Apply(context.Background(), []storage.Message{
		storetest.Alert("lyon-07", "atm-1", 5, now.Add(-20*time.Minute), "a-2", "p-2", 8),
		storetest.Alert("paris-01", "atm-2", 2, now.Add(-10*time.Minute), "a-9", "p-9", 5),
	}); err != nil {
		t.Fatal(err)
	}
	stopped := wire.Status{Envelope: wire.NewEnvelope("paris-01", "atm-2", now), State: wire.StateStopped}
	online := wire.Status{Envelope: wire.NewEnvelope("lyon-07", "atm-1", now), State: wire.StateOnline}
	for _, s := range []storage.Status{{Site: "paris-01", Device: "atm-2", Received: now, Status: stopped},
		{Site: "lyon-07", Device: "atm-1", Received: now, Status: online}} {
		if err := st.PutStatus(context.Background(), s); err != nil {
			t.Fatal(err)
		}
	}
	srv, hs := newTestServer(t, st)

	var xs []openapi.Exchange
	call := func(c *http.Client, name, method, path, route, body string, hdr ...string) {
		t.Helper()
		req, _ := http.NewRequest(method, hs.URL+path, strings.NewReader(body))
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		xs = append(xs, openapi.Exchange{Name: name, Method: method, Path: strings.SplitN(path, "?", 2)[0], Route: route,
			Body: body, Code: resp.StatusCode, Header: resp.Header, Resp: b})
	}
	const (
		J    = "application/json"
		form = "application/x-www-form-urlencoded"
	)
	anon := newClient(t, hs.URL)
	call(anon.Client, "health", "GET", "/healthz", "", "")
	call(anon.Client, "session signed out", "GET", "/api/v1/session", "", "")
	call(anon.Client, "devices signed out", "GET", "/api/v1/devices", "", "")
	call(anon.Client, "device signed out", "GET", "/api/v1/devices/lyon-07/atm-1", "/api/v1/devices/{site}/{device}", "")
	call(anon.Client, "alerts signed out", "GET", "/api/v1/alerts", "", "")
	call(anon.Client, "act signed out", "POST", "/api/v1/alerts/act", "", `{}`, "Content-Type", J)
	call(anon.Client, "remove signed out", "POST", "/api/v1/devices/remove", "", `{}`, "Content-Type", J)
	call(anon.Client, "purge signed out", "POST", "/api/v1/identities/purge", "", `{}`, "Content-Type", J)

	// Sign-in as a program: the token, a wrong password, a missing token,
	// a throttled name, then ana.
	ana := newClient(t, hs.URL)
	call(ana.Client, "sign-in token", "GET", "/login", "", "", "Accept", J)
	tok := jsonField(t, xs[len(xs)-1].Resp, "csrf")
	signIn := func(name, user, pw, csrf string) {
		call(ana.Client, name, "POST", "/login", "", url.Values{"csrf": {csrf}, "user": {user}, "password": {pw}}.Encode(),
			"Content-Type", form, "Accept", J)
	}
	signIn("sign-in without token", "ana", "correct horse", "")
	signIn("wrong password", "ana", "wrong horse", tok)
	// Five failures lock the name from this address for 1 s, doubling
	// with each one after: on a loaded machine a try may come after the
	// first lock ran out, so try until one is answered 429.
	for range 12 {
		signIn("throttled", "ghost", "nope", tok)
		if xs[len(xs)-1].Code == http.StatusTooManyRequests {
			break
		}
	}
	busy(srv, func() { signIn("every check slot busy", "ana", "correct horse", tok) })
	signIn("signed in", "ana", "correct horse", tok)
	csrf := jsonField(t, xs[len(xs)-1].Resp, "csrf_token")
	root := newClient(t, hs.URL)
	rootCSRF := root.login("root", "correct horse")

	call(ana.Client, "session", "GET", "/api/v1/session", "", "")
	// A viewer and an analyst scoped to paris-*: what their roles and
	// sites refuse.
	vic, pat := newClient(t, hs.URL), newClient(t, hs.URL)
	vicCSRF, patCSRF := vic.login("vic", "correct horse"), pat.login("pat", "correct horse")
	call(pat.Client, "scoped session", "GET", "/api/v1/session", "", "")
	call(pat.Client, "device of another site", "GET", "/api/v1/devices/lyon-07/atm-1", "/api/v1/devices/{site}/{device}", "")
	call(pat.Client, "act on another site", "POST", "/api/v1/alerts/act", "", `{"action":"acknowledge","site":"lyon-07","device":"atm-1","alert":"a-1"}`,
		"Content-Type", J, "X-CSRF-Token", patCSRF)
	call(vic.Client, "act as viewer", "POST", "/api/v1/alerts/act", "", `{"action":"acknowledge","site":"lyon-07","device":"atm-1","alert":"a-1"}`,
		"Content-Type", J, "X-CSRF-Token", vicCSRF)
	call(ana.Client, "devices", "GET", "/api/v1/devices?limit=1", "", "")
	call(ana.Client, "devices bad limit", "GET", "/api/v1/devices?limit=0", "", "")
	// Paths and methods the API does not have: JSON, as every error.
	for _, p := range []string{"/api/v1/nothing", "/api/v1/devices/", "/api/v1/alerts/", "/api/v2/alerts"} {
		call(ana.Client, "unknown path "+p, "GET", p, "", "")
	}
	call(anon.Client, "unknown path signed out", "GET", "/api/v1/nothing", "", "")
	call(ana.Client, "DELETE devices", "DELETE", "/api/v1/devices", "", "", "X-CSRF-Token", csrf)
	call(ana.Client, "GET act", "GET", "/api/v1/alerts/act", "", "")
	call(ana.Client, "POST a device key", "POST", "/api/v1/devices/lyon-07/atm-1/key", "/api/v1/devices/{site}/{device}/key", "{}", "X-CSRF-Token", csrf)
	for _, want := range []struct{ name, allow string }{{"DELETE devices", "GET, HEAD"}, {"GET act", "POST"}, {"POST a device key", "DELETE, PUT"}} {
		for _, x := range xs {
			if x.Name == want.name && (x.Code != http.StatusMethodNotAllowed || x.Header.Get("Allow") != want.allow) {
				t.Errorf("%s: %d, Allow %q; want 405, Allow %q", x.Name, x.Code, x.Header.Get("Allow"), want.allow)
			}
		}
	}
	call(ana.Client, "device", "GET", "/api/v1/devices/lyon-07/atm-1", "/api/v1/devices/{site}/{device}", "")
	if err := st.PutDeviceKey(context.Background(), storage.DeviceKey{Site: "lyon-07", Device: "atm-1",
		PublicKey: make([]byte, 32), Pinned: now, By: "root"}, storage.KeyChange{User: "test", Role: "cli"}); err != nil {
		t.Fatal(err)
	}
	call(ana.Client, "device with a pinned reply key", "GET", "/api/v1/devices/lyon-07/atm-1", "/api/v1/devices/{site}/{device}", "")
	call(ana.Client, "unknown device", "GET", "/api/v1/devices/lyon-07/atm-404", "/api/v1/devices/{site}/{device}", "")
	call(ana.Client, "alerts", "GET", "/api/v1/alerts?state=all&limit=1", "", "")
	call(ana.Client, "alerts by receipt", "GET", "/api/v1/alerts?state=all&order=received&received_since="+url.QueryEscape(now.Add(-time.Hour).Format(time.RFC3339)), "", "")
	call(ana.Client, "alerts bad order", "GET", "/api/v1/alerts?order=newest", "", "")
	call(ana.Client, "alerts bad limit", "GET", "/api/v1/alerts?limit=0", "", "")
	call(ana.Client, "alerts bad offset", "GET", "/api/v1/alerts?offset=-1", "", "")

	act := func(c *client, token, name, body string) {
		call(c.Client, name, "POST", "/api/v1/alerts/act", "", body, "Content-Type", J, "X-CSRF-Token", token)
	}
	act(ana, "", "act without token", `{"action":"acknowledge","site":"lyon-07","device":"atm-1","alert":"a-1"}`)
	act(ana, csrf, "act not JSON", `{"action":`)
	act(ana, csrf, "act a string field as a number", `{"action":"acknowledge","site":7}`)
	act(ana, csrf, "act without action", `{"site":"lyon-07","device":"atm-1","alert":"a-1"}`)
	act(ana, csrf, "act unknown field", `{"action":"acknowledge","site":"lyon-07","device":"atm-1","alert":"a-1","by":"x"}`)
	act(ana, csrf, "act unknown alert", `{"action":"acknowledge","site":"lyon-07","device":"atm-1","alert":"a-404"}`)
	act(ana, csrf, "ack", `{"action":"acknowledge","site":"lyon-07","device":"atm-1","alert":"a-1","note":"calling"}`)
	act(ana, csrf, "ack again", `{"action":"acknowledge","site":"lyon-07","device":"atm-1","alert_id":"a-1","note":"calling"}`)
	act(root, rootCSRF, "ack by another", `{"action":"acknowledge","site":"lyon-07","device":"atm-1","alert":"a-1"}`)
	act(root, rootCSRF, "resolve", `{"action":"resolve","site":"lyon-07","device":"atm-1","alert":"a-1"}`)
	act(ana, csrf, "ack a resolved alert", `{"action":"acknowledge","site":"lyon-07","device":"atm-1","alert":"a-1"}`)

	// The identity review: its commands go to the agents through a
	// command client on a loopback (review_test.go); lyon-07/atm-1
	// answers, lyon-07/atm-3 is online but silent, paris-01/atm-2 stopped.
	rv := fleettest.NewReviewer(reviewVisitsOf(now))
	cmds := loopbackCommands(t, map[string]*fleettest.Reviewer{"atm-1": rv})
	srv.d.Commands = cmds
	silent := wire.Status{Envelope: wire.NewEnvelope("lyon-07", "atm-3", now), State: wire.StateOnline}
	if err := st.PutStatus(context.Background(), storage.Status{Site: "lyon-07", Device: "atm-3", Received: now, Status: silent}); err != nil {
		t.Fatal(err)
	}
	const visitsRoute, split, merge = "/api/v1/devices/{site}/{device}/identities/{id}/visits", "/api/v1/identities/split", "/api/v1/identities/merge"
	visits := func(c *client, name, site, dev, id string) {
		call(c.Client, name, "GET", "/api/v1/devices/"+site+"/"+dev+"/identities/"+id+"/visits", visitsRoute, "")
	}
	correct := func(c *client, token, name, path, body string) {
		call(c.Client, name, "POST", path, "", body, "Content-Type", J, "X-CSRF-Token", token)
	}
	visits(anon, "visits signed out", "lyon-07", "atm-1", "p-1")
	correct(anon, "", "split signed out", split, `{}`)
	correct(anon, "", "merge signed out", merge, `{}`)
	visits(vic, "visits as viewer", "lyon-07", "atm-1", "p-1")
	correct(vic, vicCSRF, "split as viewer", split, `{"site":"lyon-07","device":"atm-1","identity":"p-1","visits":["v-2"]}`)
	correct(vic, vicCSRF, "merge as viewer", merge, `{"site":"lyon-07","device":"atm-1","identity":"p-2","into":"p-1"}`)
	visits(pat, "visits on another site", "lyon-07", "atm-1", "p-1")
	visits(ana, "visits", "lyon-07", "atm-1", "p-1")
	visits(ana, "visits bad identity", "lyon-07", "atm-1", "p%201")
	visits(ana, "visits unknown device", "lyon-07", "atm-404", "p-1")
	visits(ana, "visits of a stopped device", "paris-01", "atm-2", "p-9")
	// Online by its last status, silent for 10 minutes (web.stale_after
	// is 5).
	quiet := wire.Status{Envelope: wire.NewEnvelope("lyon-07", "atm-5", now.Add(-10*time.Minute)), State: wire.StateOnline}
	if err := st.PutStatus(context.Background(), storage.Status{Site: "lyon-07", Device: "atm-5", Received: now.Add(-10 * time.Minute), Status: quiet}); err != nil {
		t.Fatal(err)
	}
	visits(ana, "visits of a stale device", "lyon-07", "atm-5", "p-1")
	correct(ana, "", "split without token", split, `{"site":"lyon-07","device":"atm-1","identity":"p-1","visits":["v-2"]}`)
	correct(ana, "", "merge without token", merge, `{"site":"lyon-07","device":"atm-1","identity":"p-2","into":"p-1"}`)
	correct(ana, csrf, "split of no visit", split, `{"site":"lyon-07","device":"atm-1","identity":"p-1","visits":[]}`)
	correct(ana, csrf, "merge into itself", merge, `{"site":"lyon-07","device":"atm-1","identity":"p-1","into":"p-1"}`)
	correct(ana, csrf, "split on an unknown device", split, `{"site":"lyon-07","device":"atm-404","identity":"p-1","visits":["v-2"]}`)
	correct(ana, csrf, "merge on an unknown device", merge, `{"site":"lyon-07","device":"atm-404","identity":"p-2","into":"p-1"}`)
	correct(ana, csrf, "split on a stopped device", split, `{"site":"paris-01","device":"atm-2","identity":"p-9","visits":["v-2"]}`)
	correct(ana, csrf, "merge on a stopped device", merge, `{"site":"paris-01","device":"atm-2","identity":"p-9","into":"p-8"}`)
	correct(ana, csrf, "split", split, `{"site":"lyon-07","device":"atm-1","identity":"p-1","visits":["v-2"]}`)
	correct(ana, csrf, "merge", merge, `{"site":"lyon-07","device":"atm-1","identity":"p-2","into":"p-1"}`)
	correct(ana, csrf, "split of another identity's visit", split, `{"site":"lyon-07","device":"atm-1","identity":"p-1","visits":["v-404"]}`)
	correct(ana, csrf, "split of a visit moved to another identity", split, `{"site":"lyon-07","device":"atm-1","identity":"p-split-1","visits":["v-1"]}`)
	rv.SetFail(wire.WithCode(wire.CodeBusy, errors.New("split visits: not started: context deadline exceeded")))
	correct(ana, csrf, "split the agent did not take in time", split, `{"site":"lyon-07","device":"atm-1","identity":"p-1","visits":["v-1"]}`)
	visits(ana, "visits the agent did not take in time", "lyon-07", "atm-1", "p-2")
	rv.SetFail(errors.New("commit: input/output error"))
	correct(ana, csrf, "split the agent failed", split, `{"site":"lyon-07","device":"atm-1","identity":"p-1","visits":["v-1"]}`)
	correct(ana, csrf, "merge the agent failed", merge, `{"site":"lyon-07","device":"atm-1","identity":"p-split-1","into":"p-1"}`)
	rv.SetFail(nil)
	correct(ana, csrf, "merge of identities kept apart", merge, `{"site":"lyon-07","device":"atm-1","identity":"p-split-1","into":"p-1"}`)
	correct(ana, csrf, "merge of an identity the agent lacks", merge, `{"site":"lyon-07","device":"atm-1","identity":"p-404","into":"p-1"}`)
	big := `{"site":"lyon-07","device":"atm-1","identity":"p-1","visits":["` + strings.Repeat("v", 70<<10) + `"]}`
	correct(ana, csrf, "split of 70 KiB", split, big)
	correct(ana, csrf, "merge of 70 KiB", merge, strings.Replace(big, `"visits":[`, `"into":[`, 1))
	rv.SetOlder(true)
	visits(ana, "visits of an older agent", "lyon-07", "atm-1", "p-1")
	rv.SetOlder(false)
	visits(ana, "visits without answer", "lyon-07", "atm-3", "p-1")
	correct(ana, csrf, "split without answer", split, `{"site":"lyon-07","device":"atm-3","identity":"p-1","visits":["v-2"]}`)
	correct(ana, csrf, "merge without answer", merge, `{"site":"lyon-07","device":"atm-3","identity":"p-2","into":"p-1"}`)
	// One command in flight (it waits for the silent device): the next
	// three are refused at once.
	pending := make(chan struct{})
	go func() {
		defer close(pending)
		_, _, _ = cmds.IdentityVisits(context.Background(), "lyon-07", "atm-3", "p-1")
	}()
	fleettest.WaitFor(t, 5*time.Second, "a command in flight", func() bool { return cmds.Stats().InFlight == 1 })
	visits(ana, "visits while busy", "lyon-07", "atm-1", "p-1")
	correct(ana, csrf, "split while busy", split, `{"site":"lyon-07","device":"atm-1","identity":"p-1","visits":["v-1"]}`)
	correct(ana, csrf, "merge while busy", merge, `{"site":"lyon-07","device":"atm-1","identity":"p-1","into":"p-2"}`)
	<-pending
	// A device's command budget spent (4: reviews 3 of it).
	srv.d.Commands = loopbackCommandsWith(t, map[string]*fleettest.Reviewer{"atm-1": rv}, func(c *command.Config) { c.DeviceBudget = 4 })
	for _, id := range []string{"p-x1", "p-x2", "p-x3"} {
		visits(ana, "visits within the budget", "lyon-07", "atm-1", id)
	}
	visits(ana, "visits past the budget", "lyon-07", "atm-1", "p-1")
	correct(ana, csrf, "merge within the budget", merge, `{"site":"lyon-07","device":"atm-1","identity":"p-x1","into":"p-1"}`)
	correct(ana, csrf, "split past the budget", split, `{"site":"lyon-07","device":"atm-1","identity":"p-1","visits":["v-1"]}`)
	correct(ana, csrf, "merge past the budget", merge, `{"site":"lyon-07","device":"atm-1","identity":"p-1","into":"p-2"}`)
	// Signed replies required, and no key pinned for atm-3.
	srv.d.Commands = loopbackCommandsWith(t, nil, func(c *command.Config) { c.RequireSignedReplies = true })
	visits(ana, "visits of a device without a pinned key", "lyon-07", "atm-3", "p-1")
	// A service without commands.
	srv.d.Commands = nil
	visits(ana, "visits without commands", "lyon-07", "atm-1", "p-1")
	correct(ana, csrf, "split without commands", split, `{"site":"lyon-07","device":"atm-1","identity":"p-1","visits":["v-1"]}`)
	correct(ana, csrf, "merge without commands", merge, `{"site":"lyon-07","device":"atm-1","identity":"p-1","into":"p-2"}`)

	admin := func(c *client, token, name, path, body string) {
		call(c.Client, name, "POST", path, "", body, "Content-Type", J, "X-CSRF-Token", token)
	}
	const rm, purge = "/api/v1/devices/remove", "/api/v1/identities/purge"
	admin(ana, csrf, "remove as analyst", rm, `{"site":"paris-01","device":"atm-2"}`)
	admin(root, rootCSRF, "remove without device", rm, `{"site":"paris-01"}`)
	admin(root, rootCSRF, "remove unknown", rm, `{"site":"paris-01","device":"atm-404"}`)
	admin(root, rootCSRF, "remove online", rm, `{"site":"lyon-07","device":"atm-1"}`)
	admin(root, rootCSRF, "remove not JSON", rm, `["paris-01"]`)
	admin(root, rootCSRF, "remove with another field", rm, `{"site":"paris-01","device":"atm-2","force":"yes"}`)
	admin(root, rootCSRF, "remove with active alerts", rm, `{"site":"paris-01","device":"atm-2"}`)
	act(root, rootCSRF, "resolve the last active alert", `{"action":"resolve","site":"paris-01","device":"atm-2","alert":"a-9"}`)
	admin(root, rootCSRF, "remove", rm, `{"site":"paris-01","device":"atm-2"}`)
	admin(ana, csrf, "purge as analyst", purge, `{"site":"lyon-07","device":"atm-1","identity":"p-2"}`)
	admin(root, rootCSRF, "purge bad identity", purge, `{"site":"lyon-07","device":"atm-1","identity":"p 2"}`)
	admin(root, rootCSRF, "purge unknown device", purge, `{"site":"lyon-07","device":"atm-404","identity":"p-2"}`)
	admin(root, rootCSRF, "purge", purge, `{"site":"lyon-07","device":"atm-1","identity":"p-2"}`)

	// Device keys through the service.
	const keyRoute, pinned = "/api/v1/devices/{site}/{device}/key", `{"public_key":"su/y5w+nhsEt9DQgn+6JkK9ethrTFRyvLPjUD7im19U="}`
	key := func(c *client, token, name, method, site, dev, body string) {
		call(c.Client, name, method, "/api/v1/devices/"+site+"/"+dev+"/key", keyRoute, body, "Content-Type", J, "X-CSRF-Token", token)
	}
	key(anon, "", "pin signed out", "PUT", "lyon-07", "atm-1", pinned)
	key(ana, csrf, "pin as analyst", "PUT", "lyon-07", "atm-1", pinned)
	key(root, rootCSRF, "pin a bad key", "PUT", "lyon-07", "atm-1", `{"public_key":"AAAA"}`)
	key(root, rootCSRF, "pin", "PUT", "lyon-07", "atm-1", pinned)
	key(root, rootCSRF, "pin an unknown device", "PUT", "lyon-07", "atm-404", pinned)
	key(anon, "", "unpin signed out", "DELETE", "lyon-07", "atm-1", "")
	key(ana, csrf, "unpin as analyst", "DELETE", "lyon-07", "atm-1", "")
	key(root, rootCSRF, "unpin a bad name", "DELETE", "lyon-07", "atm%2B1", "")
	key(root, rootCSRF, "unpin", "DELETE", "lyon-07", "atm-1", "")
	key(root, rootCSRF, "unpin again", "DELETE", "lyon-07", "atm-1", "")

	// A service whose ingest has not written a batch for two minutes.
	stuckSrv, stuckHS := newTestServer(t, st)
	stuckSrv.d.IngestStats = func() any { return ingest.Stats{Connected: true, StuckSince: time.Now().Add(-2 * time.Minute)} }
	resp, err := http.Get(stuckHS.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	xs = append(xs, openapi.Exchange{Name: "health stuck", Method: "GET", Path: "/healthz", Code: resp.StatusCode, Header: resp.Header, Resp: b})
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(b), `"ok":false`) {
		t.Errorf("stuck ingest: %d %s, want 503 and ok false", resp.StatusCode, b)
	}
	// A refused reload of the users file (this server's is "unused": no
	// such file): /healthz's users with every field, its text to the
	// admin alone.
	if err := srv.ReloadUsers(); err == nil {
		t.Error("a reload of a users file that does not exist passed")
	}
	call(anon.Client, "health after a refused reload", "GET", "/healthz", "", "")
	call(root.Client, "health after a refused reload, to an admin", "GET", "/healthz", "", "")
	if h := string(xs[len(xs)-1].Resp); !strings.Contains(h, `"last_reload_ok":false`) || !strings.Contains(h, "no such file") {
		t.Errorf("/healthz to an admin after a refused reload: %s", h)
	}
	xs = append(xs, brokerDown(t))
	// The agent's refusal codes, and an older agent's text, decide these.
	want := map[string]int{"split of a visit moved to another identity": http.StatusConflict,
		"split the agent did not take in time": http.StatusServiceUnavailable, "visits the agent did not take in time": http.StatusServiceUnavailable,
		"merge of an identity the agent lacks": http.StatusNotFound, "visits of an older agent": http.StatusBadGateway,
		"split the agent failed": http.StatusBadGateway, "merge the agent failed": http.StatusBadGateway}
	for _, x := range xs {
		if code, ok := want[x.Name]; ok && x.Code != code {
			t.Errorf("%s: %d, want %d: %s", x.Name, x.Code, code, x.Resp)
		}
		d.Check(x)
	}
	checkCodes(t, d, append(xs, undocumentedErrors(t, hs.URL)...))
	if missing := d.Missing(); len(missing) > 0 {
		t.Errorf("documented but never produced: %v", missing)
	}
	// Every API route the server has is documented.
	for _, route := range []string{"/api/v1/session", "/api/v1/devices", "/api/v1/devices/{site}/{device}", "/api/v1/devices/remove",
		"/api/v1/identities/purge", "/api/v1/alerts", "/api/v1/alerts/act", "/healthz", "/login", "/api/v1/devices/{site}/{device}/key",
		"/api/v1/devices/{site}/{device}/identities/{id}/visits", "/api/v1/identities/split", "/api/v1/identities/merge"} {
		if _, ok := d.At("paths", route); !ok {
			t.Errorf("%s is served but not documented", route)
		}
	}
	t.Logf("%d exchanges validated against docs/openapi/fleet.yaml", len(xs))
}

func jsonField(t *testing.T, b []byte, k string) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	v, _ := m[k].(string)
	if v == "" {
		t.Fatalf("no %s in %s", k, b)
	}
	return v
}

// undocumentedErrors are answers any request may get, which no operation
// of docs/openapi/fleet.yaml lists (its Error schema says so): a Host the
// service does not answer to (421), and the service's own failure (500:
// here its store closed under it; the user is named by a trusted proxy,
// as a session would need the store).
func undocumentedErrors(t *testing.T, base string) []openapi.Exchange {
	t.Helper()
	var xs []openapi.Exchange
	do := func(name, url, host string, hdr ...string) {
		req, _ := http.NewRequest("GET", url+"/api/v1/devices", nil)
		req.Host = host
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		xs = append(xs, openapi.Exchange{Name: name, Method: "GET", Path: "/api/v1/devices", Code: resp.StatusCode, Header: resp.Header, Resp: b})
	}
	do("a foreign host", base, "fleet.example.com")
	st := openBolt(t)
	cfg := DefaultConfig()
	cfg.UsersFile, cfg.ProxyAuth = "unused", ProxyAuthConfig{Header: "X-Remote-User", TrustedProxies: []string{"127.0.0.1/32"}}
	srv, err := New(cfg, st, testUsers(t), []byte(strings.Repeat("k", 32)), Deps{})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	do("the store closed", hs.URL, "", "X-Remote-User", "ana")
	return xs
}

// checkCodes: every error answer of xs carries a code of the Error
// schema's enum with that code's status (codeStatus), each code the
// server has is in the enum, and each one of the enum is produced.
func checkCodes(t *testing.T, d *openapi.Doc, xs []openapi.Exchange) {
	t.Helper()
	enum, _ := d.At("components", "schemas", "Error", "properties", "code", "enum")
	documented := map[Code]bool{}
	for _, c := range enum.([]any) {
		documented[Code(c.(string))] = true
	}
	for c := range codeStatus {
		if !documented[c] {
			t.Errorf("code %s is not in the Error schema's enum", c)
		}
	}
	errSchema := d.Schema("components", "schemas", "Error")
	produced := map[Code]int{}
	for _, x := range xs {
		if x.Code < 400 || x.Path == "/healthz" {
			continue
		}
		var e apiError
		if err := openapi.ValidateJSON(errSchema, x.Resp); err != nil || json.Unmarshal(x.Resp, &e) != nil {
			t.Errorf("%s: %d %s: not an Error: %v", x.Name, x.Code, x.Resp, err)
			continue
		}
		if st, ok := codeStatus[e.Code]; !ok || st != x.Code {
			t.Errorf("%s: %d with code %q (whose status is %d)", x.Name, x.Code, e.Code, st)
		}
		produced[e.Code]++
	}
	for c := range documented {
		if produced[c] == 0 {
			t.Errorf("code %s is documented but no request produced it", c)
		}
	}
	t.Logf("%d codes, each produced (%v)", len(produced), produced)
}

// brokerDown is a review asked of the real service (ingest and commands
// on a real mosquitto) once the broker has stopped: nothing can be sent
// (503 unavailable).
func brokerDown(t *testing.T) openapi.Exchange {
	t.Helper()
	m := fleettest.StartMosquitto(t, "")
	_, priv, _ := wire.GenerateCommandKey()
	addr := fmt.Sprintf("127.0.0.1:%d", fleettest.FreePort(t))
	svc := startServiceCommands(t, filepath.Join(t.TempDir(), "fleet.db"), m.URL(), addr, priv)
	defer svc.stop(t)
	now := time.Now().UTC()
	online := wire.Status{Envelope: wire.NewEnvelope("lyon-07", "atm-1", now), State: wire.StateOnline}
	if err := svc.st.PutStatus(context.Background(), storage.Status{Site: "lyon-07", Device: "atm-1", Received: now, Status: online}); err != nil {
		t.Fatal(err)
	}
	ana := newClient(t, "http://"+addr)
	ana.login("ana", "correct horse")
	m.Stop()
	fleettest.WaitFor(t, 10*time.Second, "ingest disconnected", func() bool { return !svc.in.Stats().Connected })
	const path = "/api/v1/devices/lyon-07/atm-1/identities/p-1/visits"
	resp, body := ana.get(path)
	return openapi.Exchange{Name: "visits with the broker down", Method: "GET", Path: path, Route: "/api/v1/devices/{site}/{device}/identities/{id}/visits",
		Code: resp.StatusCode, Header: resp.Header, Resp: []byte(body)}
}
