package web

import (
	"context"
	"encoding/json"
	"fmt"
	"html"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/fleet/storage"
)

// An agent online on a real broker whose messages then stop, without a
// Last Will: past web.stale_after (5 min) since the last message of any
// kind the fleet page, the device page and the API say stale; a summary
// counts as being heard from; a device that said stopped is never stale.
// The web server's clock is moved, the broker and the ingest are real.
func TestStaleDevice(t *testing.T) {
	m := fleettest.StartMosquitto(t, "")
	addr := fmt.Sprintf("127.0.0.1:%d", fleettest.FreePort(t))
	svc := startService(t, filepath.Join(t.TempDir(), "fleet.db"), m.URL(), addr)
	t.Cleanup(func() { svc.stop(t) })
	var mu sync.Mutex
	clock := time.Now()
	svc.srv.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	set := func(at time.Time) { mu.Lock(); clock = at; mu.Unlock() }

	a := fleettest.StartAgent(t, m.URL(), browserPrefix, "lyon-07", "atm-0042")
	waitState(t, svc.st, "lyon-07", "atm-0042", "online")
	ana := newClient(t, "http://"+addr)
	ana.login("ana", "correct horse")
	heard := func() time.Time {
		d, err := svc.st.Device(context.Background(), "lyon-07", "atm-0042")
		if err != nil {
			t.Fatal(err)
		}
		return d.LastHeard()
	}
	expect := func(when, state string) {
		t.Helper()
		_, fleet := ana.get("/")
		_, notOnline := ana.get("/?state=notonline")
		_, dev := ana.get("/devices/lyon-07/atm-0042")
		_, api := ana.json("GET", "/api/v1/devices/lyon-07/atm-0042", "", "")
		_, listBody := ana.get("/api/v1/devices")
		var list []map[string]any
		if err := json.Unmarshal([]byte(listBody), &list); err != nil {
			t.Fatalf("%s: device list: %v: %s", when, err, listBody)
		}
		span := fmt.Sprintf(`<span class="state %[1]s">%[1]s</span>`, state)
		stale := state == StaleState
		if !strings.Contains(fleet, span) || !strings.Contains(dev, span) {
			t.Errorf("%s: the fleet or device page lacks %s", when, span)
		}
		if got := strings.Contains(notOnline, "atm-0042"); got != (state != "online") {
			t.Errorf("%s: listed as not online: %v", when, got)
		}
		if api["stale"] != stale || api["state"] != map[bool]string{true: "online", false: state}[stale] || api["last_heard"] == nil {
			t.Errorf("%s: API stale %v, state %v, last_heard %v; want %v", when, api["stale"], api["state"], api["last_heard"], stale)
		}
		if len(list) != 1 || list[0]["stale"] != stale {
			t.Errorf("%s: the device list says %v", when, list)
		}
	}
	t0 := heard()
	set(t0.Add(DefaultStaleAfter))
	expect("5 min after its status", "online")
	set(t0.Add(DefaultStaleAfter + time.Second))
	expect("5 min 1 s after its status", StaleState)

	// Any message is being heard from: a summary.
	time.Sleep(10 * time.Millisecond)
	a.Summary(t, 3, "p-1")
	fleettest.WaitFor(t, 10*time.Second, "summary ingested", func() bool { return svc.in.Stats().Applied == 1 })
	t1 := heard()
	if !t1.After(t0) {
		t.Fatalf("last heard %v, not after the status's %v", t1, t0)
	}
	set(t1.Add(DefaultStaleAfter))
	expect("5 min after the summary", "online")
	set(t1.Add(DefaultStaleAfter + time.Second))
	expect("5 min 1 s after the summary", StaleState)

	// Stopped (or offline) says what it is, never stale.
	a.Stop()
	waitState(t, svc.st, "lyon-07", "atm-0042", "stopped")
	set(heard().Add(24 * time.Hour))
	ana.login("ana", "correct horse") // the session of the day before has expired
	expect("a day after stopping", "stopped")
}

// A stale device (its last status says online, nothing heard from it for
// web.stale_after) is treated as not online wherever it matters: the
// review, a split and a merge are answered 409 at once, saying it is
// stale, with nothing published to it and the correction audited as not
// sent (a heard-from device is reviewed as before); the fleet page counts
// it as not online; an administrator is offered its removal and the API
// removes it, which both refuse while it is heard from. The agent is real
// on a real mosquitto; the web server's clock is moved.
func TestStaleDeviceCommandsAndRemoval(t *testing.T) {
	svc, _, base, _, rv, _ := reviewFleet(t)
	var mu sync.Mutex
	clock := time.Now()
	svc.srv.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	set := func(at time.Time) { mu.Lock(); clock = at; mu.Unlock() }
	d, err := svc.st.Device(context.Background(), "lyon-07", "atm-0042")
	if err != nil {
		t.Fatal(err)
	}
	heard := d.LastHeard()
	ana, root := newClient(t, base), newClient(t, base)
	csrf, rootCSRF := ana.login("ana", "correct horse"), root.login("root", "correct horse")
	const visits = "/api/v1/devices/lyon-07/atm-0042/identities/p-1/visits"
	counts := func() (online, notOnline, stale string) {
		t.Helper()
		_, page := ana.get("/")
		m := countsRe.FindStringSubmatch(page)
		if m == nil {
			t.Fatalf("no counts on the fleet page")
		}
		return m[1], m[2], m[3]
	}
	remove := func() (*http.Response, map[string]any) {
		return root.json("POST", "/api/v1/devices/remove", "application/json", `{"site":"lyon-07","device":"atm-0042"}`, "X-CSRF-Token", rootCSRF)
	}

	set(heard.Add(DefaultStaleAfter))
	if r, out := ana.json("GET", visits, "", ""); r.StatusCode != 200 || out["total"] != 4.0 {
		t.Fatalf("review 5 min after its last message: %d %v", r.StatusCode, out)
	}
	if on, off, st := counts(); on != "1" || off != "0" || st != "" {
		t.Errorf("fleet page counts, heard from: %s online, %s not online (%q stale)", on, off, st)
	}
	if _, page := root.get("/devices/lyon-07/atm-0042"); strings.Contains(page, `action="/admin/devices/remove"`) {
		t.Error("the removal is offered for a device heard from within stale_after")
	}
	if r, out := remove(); r.StatusCode != http.StatusConflict || !strings.Contains(fmt.Sprint(out["error"]), "is online (last heard from 5m0s ago)") {
		t.Errorf("removing a device heard from 5 min ago: %d %v, want 409 saying it is online", r.StatusCode, out)
	}

	set(heard.Add(DefaultStaleAfter + time.Second))
	sent := len(rv.Commands())
	begin := time.Now()
	const why = "lyon-07 / atm-0042 is stale: its last status said online, but nothing has come from it for 5m1s (web.stale_after 5m0s)"
	for _, c := range []struct{ name, method, path, body string }{
		{"review", "GET", visits, ""},
		{"split", "POST", "/api/v1/identities/split", `{"site":"lyon-07","device":"atm-0042","identity":"p-1","visits":["v-2"]}`},
		{"merge", "POST", "/api/v1/identities/merge", `{"site":"lyon-07","device":"atm-0042","identity":"p-2","into":"p-1"}`},
	} {
		r, out := ana.json(c.method, c.path, "application/json", c.body, "X-CSRF-Token", csrf)
		if e := fmt.Sprint(out["error"]); r.StatusCode != http.StatusConflict || !strings.HasPrefix(e, why) || !strings.HasSuffix(e, "Nothing was sent.") {
			t.Errorf("%s of a stale device: %d %v, want 409 saying it is stale", c.name, r.StatusCode, out)
		}
	}
	r, page := ana.get("/devices/lyon-07/atm-0042/identities/p-1/review")
	if r.StatusCode != http.StatusConflict || !strings.Contains(html.UnescapeString(page), why) {
		t.Errorf("the review page of a stale device: %d, want 409 saying it is stale", r.StatusCode)
	}
	if took := time.Since(begin); took > svc.srv.d.Commands.Timeout()/2 {
		t.Errorf("four commands to a stale device took %v: they waited for a reply (timeout %v)", took, svc.srv.d.Commands.Timeout())
	}
	if n := len(rv.Commands()); n != sent {
		t.Errorf("the stale device was sent %d commands", n-sent)
	}
	audit, err := svc.st.Audit(context.Background(), 2)
	if err != nil || len(audit) != 2 || !strings.HasPrefix(audit[0].Note, storage.OutcomeNotSent) || !strings.Contains(audit[0].Note, "device stale") ||
		!strings.HasPrefix(audit[1].Note, storage.OutcomeNotSent) {
		t.Errorf("the corrections to a stale device audited as %+v, %v; want not sent", audit, err)
	}
	if on, off, st := counts(); on != "0" || off != "1" || st != "1" {
		t.Errorf("fleet page counts, stale: %s online, %s not online (%s stale)", on, off, st)
	}

	// Removed: its active alert resolved first, as for any device.
	var alerts []struct {
		ID string `json:"alert_id"`
	}
	if _, body := ana.get("/api/v1/alerts?device=atm-0042"); json.Unmarshal([]byte(body), &alerts) != nil || len(alerts) != 1 {
		t.Fatalf("alerts of atm-0042: %s", body)
	}
	act := fmt.Sprintf(`{"action":"resolve","site":"lyon-07","device":"atm-0042","alert":%q}`, alerts[0].ID)
	if r, out := ana.json("POST", "/api/v1/alerts/act", "application/json", act, "X-CSRF-Token", csrf); r.StatusCode != 200 {
		t.Fatalf("resolve: %d %v", r.StatusCode, out)
	}
	if _, page := root.get("/devices/lyon-07/atm-0042"); !strings.Contains(page, `action="/admin/devices/remove"`) ||
		!strings.Contains(page, "it comes back as a new device") {
		t.Error("the removal of a stale device is not offered, or without saying it comes back if it sends again")
	}
	if r, out := remove(); r.StatusCode != 200 || out["removed"] != "lyon-07/atm-0042" {
		t.Fatalf("removing a stale device: %d %v", r.StatusCode, out)
	}
	if audit, err := svc.st.Audit(context.Background(), 1); err != nil || audit[0].Action != storage.ActionRemoveDevice ||
		!strings.HasPrefix(audit[0].Note, "stale: its last status said online, last heard from ") {
		t.Errorf("the stale device's removal audited as %+v, %v", audit, err)
	}
}

// countsRe reads the fleet page's online and not-online counts and the
// stale among them.
var countsRe = regexp.MustCompile(`>(\d+) online</a> · <a [^>]*>(\d+) not online(?: \((\d+) stale\))?</a>`)
