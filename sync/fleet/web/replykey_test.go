package web

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/command"
	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/fleet/storage/storetest"
	"github.com/periocular/atm-agent/sync/wire"
)

// The device page says whether the device's review answers are signed
// only where there is a review (commands configured), calmly, with the
// operator's commands for administrators alone; the API gives reply_key
// (null without a pin) either way.
// Who pinned it (an admin's login) is told to an admin only.
func TestDeviceReplyKeyShown(t *testing.T) {
	st := openBolt(t)
	seed(t, st)
	srv, hs := newTestServer(t, st)
	ana := newClient(t, hs.URL)
	ana.login("ana", "correct horse")
	root := newClient(t, hs.URL)
	root.login("root", "correct horse")
	api := func() map[string]json.RawMessage {
		t.Helper()
		_, body := ana.get("/api/v1/devices/lyon-07/atm-1")
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(body), &m); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		return m
	}
	if m := api(); string(m["reply_key"]) != "null" {
		t.Errorf("no pin: reply_key %s", m["reply_key"])
	}
	if _, page := root.get("/devices/lyon-07/atm-1"); strings.Contains(page, "reply-key") || strings.Contains(page, "unauthenticated") {
		t.Error("commands off: the device page speaks of command replies")
	}
	srv.d.Commands = loopbackCommands(t, nil)
	_, page := ana.get("/devices/lyon-07/atm-1")
	contains(t, "the analyst's device page, no pin", page, []string{`<p class="reply-key">review answers unsigned: no device key pinned`},
		[]string{"atm-fleet devices key set", `class="bad">command replies`})
	_, page = root.get("/devices/lyon-07/atm-1")
	contains(t, "the admin's device page, no pin", page, []string{"review answers unsigned", "<code>atm-fleet devices key set</code>"}, nil)
	pub := ed25519.NewKeyFromSeed(make([]byte, 32)).Public().(ed25519.PublicKey)
	if err := st.PutDeviceKey(context.Background(), storage.DeviceKey{Site: "lyon-07", Device: "atm-1", PublicKey: pub,
		Pinned: time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC), By: "ops"}, storage.KeyChange{User: "test", Role: "cli"}); err != nil {
		t.Fatal(err)
	}
	var k apiReplyKey
	if err := json.Unmarshal(api()["reply_key"], &k); err != nil || k.Fingerprint != wire.Fingerprint(pub) ||
		k.PublicKey != wire.EncodePublicKey(pub) {
		t.Errorf("pinned: reply_key %+v, %v", k, err)
	}
	_, page = ana.get("/devices/lyon-07/atm-1")
	if page = html.UnescapeString(page); strings.Contains(page, "unsigned") || !strings.Contains(page, "review answers signed by device key <code>"+wire.Fingerprint(pub)) {
		t.Error("pinned: the device page does not show the key's fingerprint")
	}
	// Who pinned it (an admin's login): to an admin only.
	if strings.Contains(page, "by ops") || strings.Contains(string(api()["reply_key"]), `"by"`) {
		t.Errorf("an analyst is told who pinned the key: %s", api()["reply_key"])
	}
	ana.login("root", "correct horse")
	_, page = ana.get("/devices/lyon-07/atm-1")
	if json.Unmarshal(api()["reply_key"], &k) != nil || k.By != "ops" || !strings.Contains(page, "by ops") {
		t.Errorf("the admin is not told who pinned the key: %+v", k)
	}
}

// The review page, where a forged answer would be shown, says whether
// the answer it shows was authenticated: not, while no key is pinned
// (the API's "authenticated": false, in the review's, a split's and a
// merge's answers); once the device's key is pinned and its replies
// verify, authenticated by that key's fingerprint (true), and so does a
// correction's result page.
func TestReviewSaysWhetherAuthenticated(t *testing.T) {
	// This key's fingerprint holds a "+", which the page writes "&#43;".
	devKey := ed25519.NewKeyFromSeed(make([]byte, 32))
	devPub := devKey.Public().(ed25519.PublicKey)
	st, hs := reviewServer(t, devKey)
	ana := newClient(t, hs.URL)
	csrf := ana.login("ana", "correct horse")
	const review, visits = "/devices/lyon-07/atm-1/identities/p-1/review", "/api/v1/devices/lyon-07/atm-1/identities/p-1/visits"

	r, page := ana.get(review)
	contains(t, "the review page, no pin", page, []string{"T-1001", `id="reply-auth">The device's answer is <b>not authenticated</b>`,
		"could have answered in its place with visits of its own making"}, []string{"atm-fleet devices key set"})
	if r.StatusCode != 200 {
		t.Fatalf("review: %d", r.StatusCode)
	}
	if _, out := ana.json("GET", visits, "", ""); out["authenticated"] != false {
		t.Errorf("API, no pin: authenticated %v, want false", out["authenticated"])
	}
	if _, out := ana.json("POST", "/api/v1/identities/split", "application/json", `{"site":"lyon-07","device":"atm-1","identity":"p-1","visits":["v-4"]}`,
		"X-CSRF-Token", csrf); out["new_identity"] == nil || out["authenticated"] != false {
		t.Errorf("API split, no pin: %v, want authenticated false", out)
	}
	if err := st.PutDeviceKey(context.Background(), storage.DeviceKey{Site: "lyon-07", Device: "atm-1", PublicKey: devPub,
		Pinned: time.Now().UTC(), By: "ops"}, storage.KeyChange{User: "test", Role: "cli"}); err != nil {
		t.Fatal(err)
	}
	_, page = ana.get(review)
	contains(t, "the review page, pinned", page, []string{"T-1001", "The device's answer is authenticated: signed by the device key pinned for lyon-07 / atm-1 (<code>" +
		wire.Fingerprint(devPub) + "</code>"}, []string{"not authenticated", " by ops", " by )"})
	if _, out := ana.json("GET", visits, "", ""); out["authenticated"] != true {
		t.Errorf("API, pinned: authenticated %v, want true", out["authenticated"])
	}
	if _, out := ana.json("POST", "/api/v1/identities/split", "application/json", `{"site":"lyon-07","device":"atm-1","identity":"p-1","visits":["v-3"]}`,
		"X-CSRF-Token", csrf); out["new_identity"] == nil || out["authenticated"] != true {
		t.Errorf("API split, pinned: %v, want authenticated true", out)
	}
	if _, out := ana.json("POST", "/api/v1/identities/merge", "application/json", `{"site":"lyon-07","device":"atm-1","identity":"p-split-2","into":"p-1"}`,
		"X-CSRF-Token", csrf); out["merged"] != "p-split-2" || out["authenticated"] != true {
		t.Errorf("API merge, pinned: %v, want authenticated true", out)
	}
	r, page = ana.post("/devices/lyon-07/atm-1/identities/p-2/merge", url.Values{"csrf": {csrf}, "into": {"p-1"}})
	if r.StatusCode != 200 {
		t.Fatalf("merge: %d %s", r.StatusCode, page)
	}
	contains(t, "the correction's page, pinned", page, []string{"p-2 merged into p-1: 2 visits moved", "The device's answer is authenticated"}, nil)
}

// reviewServer is a web server over the seeded store whose lyon-07/atm-1
// is online and answers the review as reviewVisitsOf's agent through a
// loopback command client (no review cache), its replies signed with
// devKey (nil: unsigned) and checked against the keys pinned in the store.
func reviewServer(t *testing.T, devKey ed25519.PrivateKey) (storage.Store, *httptest.Server) {
	t.Helper()
	st := openBolt(t)
	seed(t, st)
	online := wire.Status{Envelope: wire.NewEnvelope("lyon-07", "atm-1", time.Now()), State: wire.StateOnline}
	if err := st.PutStatus(context.Background(), storage.Status{Site: "lyon-07", Device: "atm-1", Received: time.Now(), Status: online}); err != nil {
		t.Fatal(err)
	}
	srv, hs := newTestServer(t, st)
	rv := fleettest.NewReviewer(reviewVisitsOf(time.Now().UTC()))
	cmds := loopbackSigned(t, map[string]*fleettest.Reviewer{"atm-1": rv}, devKey, func(c *command.Config) { c.ReviewCache = 0 })
	cmds.UseKeys(st)
	srv.d.Commands = cmds
	return st, hs
}

// An administrator pins and unpins a device's key through the running
// service (PUT and DELETE /api/v1/devices/<site>/<device>/key), over the
// store the service holds: the next review's answer is authenticated by
// it, then not once unpinned; the pin records the administrator and the
// time. Refused: an analyst, no CSRF token, another origin, a key that is
// not an Ed25519 point or a small-order one, a name the topics cannot
// carry; a device not heard from is pinned with a warning.
func TestDeviceKeyAPI(t *testing.T) {
	devKey := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))
	devPub := devKey.Public().(ed25519.PublicKey)
	st, hs := reviewServer(t, devKey)
	ana, root := newClient(t, hs.URL), newClient(t, hs.URL)
	csrf, rootCSRF := ana.login("ana", "correct horse"), root.login("root", "correct horse")
	const path, visits = "/api/v1/devices/lyon-07/atm-1/key", "/api/v1/devices/lyon-07/atm-1/identities/p-1/visits"
	body := fmt.Sprintf(`{"public_key":%q}`, wire.EncodePublicKey(devPub))
	authenticated := func() any {
		t.Helper()
		_, out := ana.json("GET", visits, "", "")
		return out["authenticated"]
	}
	if got := authenticated(); got != false {
		t.Fatalf("before the pin: authenticated %v", got)
	}
	for name, c := range map[string]struct {
		cl   *client
		body string
		hdr  []string
		want int
	}{
		"an analyst":          {ana, body, []string{"X-CSRF-Token", csrf}, http.StatusForbidden},
		"no CSRF token":       {root, body, nil, http.StatusForbidden},
		"another origin":      {root, body, []string{"X-CSRF-Token", rootCSRF, "Origin", "https://evil.example"}, http.StatusForbidden},
		"not a key":           {root, `{"public_key":"AAAA"}`, []string{"X-CSRF-Token", rootCSRF}, http.StatusBadRequest},
		"a small-order point": {root, `{"public_key":"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`, []string{"X-CSRF-Token", rootCSRF}, http.StatusBadRequest},
		"an unknown field":    {root, `{"public_key":"AAAA","by":"eve"}`, []string{"X-CSRF-Token", rootCSRF}, http.StatusBadRequest},
	} {
		if r, out := c.cl.json("PUT", path, "application/json", c.body, c.hdr...); r.StatusCode != c.want || out["error"] == nil {
			t.Errorf("%s: %d %v, want %d with an error", name, r.StatusCode, out, c.want)
		}
	}
	if k, err := st.DeviceKey(context.Background(), "lyon-07", "atm-1"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a refused request pinned %+v (%v)", k, err)
	}
	before := time.Now().UTC()
	r, out := root.json("PUT", path, "application/json", body, "X-CSRF-Token", rootCSRF)
	if r.StatusCode != 200 || out["fingerprint"] != wire.Fingerprint(devPub) || out["by"] != "root" || out["site"] != "lyon-07" || out["warning"] != nil {
		t.Fatalf("pin: %d %v", r.StatusCode, out)
	}
	k, err := st.DeviceKey(context.Background(), "lyon-07", "atm-1")
	if err != nil || !k.PublicKey.Equal(devPub) || k.By != "root" || k.Pinned.Before(before.Truncate(time.Second)) {
		t.Fatalf("stored pin %+v, %v", k, err)
	}
	if got := authenticated(); got != true {
		t.Errorf("after the pin through the API: authenticated %v", got)
	}
	if r, out := root.json("PUT", "/api/v1/devices/lyon-07/atm-99/key", "application/json", body, "X-CSRF-Token", rootCSRF); r.StatusCode != 200 ||
		!strings.HasPrefix(fmt.Sprint(out["warning"]), "the fleet has not heard from lyon-07/atm-99 yet") {
		t.Errorf("pin of a device not heard from: %d %v, want 200 with a warning", r.StatusCode, out)
	}
	if r, _ := root.json("PUT", "/api/v1/devices/lyon-07/atm%2B1/key", "application/json", body, "X-CSRF-Token", rootCSRF); r.StatusCode != http.StatusBadRequest {
		t.Errorf("pin for a wildcard device name: %d, want 400", r.StatusCode)
	}

	if r, _ := ana.json("DELETE", path, "", "", "X-CSRF-Token", csrf); r.StatusCode != http.StatusForbidden {
		t.Errorf("unpin as an analyst: %d, want 403", r.StatusCode)
	}
	if r, _ := root.json("DELETE", path, "", ""); r.StatusCode != http.StatusForbidden {
		t.Errorf("unpin without the CSRF token: %d, want 403", r.StatusCode)
	}
	if r, out := root.json("DELETE", path, "", "", "X-CSRF-Token", rootCSRF); r.StatusCode != 200 || out["unpinned"] != "lyon-07/atm-1" {
		t.Fatalf("unpin: %d %v", r.StatusCode, out)
	}
	if got := authenticated(); got != false {
		t.Errorf("after the unpin: authenticated %v", got)
	}
	if r, _ := root.json("DELETE", path, "", "", "X-CSRF-Token", rootCSRF); r.StatusCode != http.StatusNotFound {
		t.Errorf("unpin again: %d, want 404", r.StatusCode)
	}
	// The admin page's audit log: the two pins and the unpin, by root,
	// with the fingerprints; nothing for the refused requests.
	_, page := root.get("/admin")
	page = html.UnescapeString(page)
	for _, want := range []string{
		"unpin device key</td><td>lyon-07/atm-1</td><td>unpinned; was " + wire.Fingerprint(devPub) + " (pinned ",
		"pin device key</td><td>lyon-07/atm-1</td><td>pinned " + wire.Fingerprint(devPub) + "; none pinned before",
		"pin device key</td><td>lyon-07/atm-99</td><td>pinned " + wire.Fingerprint(devPub) + "; none pinned before",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the admin page's audit log lacks %q", want)
		}
	}
	if n := strings.Count(page, "pin device key</td>"); n != 3 {
		t.Errorf("the audit log has %d pins and unpins, want 3", n)
	}
}

// The device page and the API say whether the device's last status and
// summary, and the message that raised an alert, were signed by its
// pinned device key (storage's Authenticated, set by the ingest).
func TestDeviceAndAlertSayAuthenticated(t *testing.T) {
	st := openBolt(t)
	seed(t, st) // atm-1: unsigned summaries and alert a-1, no status
	now := time.Now().UTC()
	ctx := context.Background()
	if err := st.PutStatus(ctx, storage.Status{Site: "lyon-07", Device: "atm-1", Received: now,
		Status: wire.Status{Envelope: wire.NewEnvelope("lyon-07", "atm-1", now), State: wire.StateOnline}}); err != nil {
		t.Fatal(err)
	}
	_, hs := newTestServer(t, st)
	ana := newClient(t, hs.URL)
	ana.login("ana", "correct horse")
	check := func(when string, want bool) {
		t.Helper()
		_, body := ana.get("/api/v1/devices/lyon-07/atm-1")
		var d apiDevice
		if err := json.Unmarshal([]byte(body), &d); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		if d.StatusAuthenticated != want || d.SummaryAuthenticated != want {
			t.Errorf("%s: API status_authenticated %v, summary_authenticated %v, want %v", when, d.StatusAuthenticated, d.SummaryAuthenticated, want)
		}
		_, page := ana.get("/devices/lyon-07/atm-1")
		if n := strings.Count(page, "signed by its device key"); want && n != 2 || !want && (n != 0 || strings.Count(page, `class="bad">not authenticated`) != 2) {
			t.Errorf("%s: the device page does not say the status and summary are %v", when, map[bool]string{true: "signed", false: "not authenticated"}[want])
		}
	}
	check("unsigned", false)
	signed := storetest.Summary("lyon-07", "atm-1", 5, now, 6, "p-1")
	signed.Authenticated = true
	alert := storetest.Alert("lyon-07", "atm-1", 6, now, "a-9", "p-1", 9)
	alert.Authenticated = true
	if _, err := st.Apply(ctx, []storage.Message{signed, alert}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutStatus(ctx, storage.Status{Site: "lyon-07", Device: "atm-1", Received: now, Authenticated: true,
		Status: wire.Status{Envelope: wire.NewEnvelope("lyon-07", "atm-1", now), State: wire.StateOnline}}); err != nil {
		t.Fatal(err)
	}
	check("signed", true)
	_, body := ana.get("/api/v1/alerts?device=atm-1")
	var alerts []APIAlert
	if err := json.Unmarshal([]byte(body), &alerts); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	got := map[string]bool{}
	for _, a := range alerts {
		got[a.AlertID] = a.Authenticated
	}
	if len(got) != 2 || got["a-1"] || !got["a-9"] {
		t.Errorf("alerts API authenticated: %v, want a-1 false, a-9 true", got)
	}
	// The alerts page says it on each alert's row.
	_, page := ana.get("/alerts?device=atm-1")
	for id, want := range map[string]string{"a-1": `not authenticated</small>`, "a-9": `>signed</small>`} {
		i := strings.Index(page, `data-alert="`+id+`"`)
		if i < 0 {
			t.Fatalf("alert %s not on the alerts page", id)
		}
		row, _, _ := strings.Cut(page[i:], "</tr>")
		if !strings.Contains(row, want) {
			t.Errorf("alerts page, row of %s: no %q", id, want)
		}
	}
}
