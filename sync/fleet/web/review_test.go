package web

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/periocular/atm-agent/internal/testenv/browser"
	"github.com/periocular/atm-agent/sync/fleet/command"
	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/wire"
)

// reviewVisitsOf are the visits the simulated agents hold: p-1 with four
// (two cards, one masked, with a second card insert folded into it), p-2
// with two. The card strings stay on the
// agent; the answers number them.
func reviewVisitsOf(now time.Time) map[string][]fleettest.Visit {
	sim := func(v float64) *float64 { return &v }
	return map[string][]fleettest.Visit{
		"p-1": {
			{ID: "v-1", TxnID: "T-1001", TS: now.Add(-4 * time.Hour), Card: "4970101234567890", Sim: sim(0.87)},
			{ID: "v-2", TxnID: "T-1002", TS: now.Add(-3 * time.Hour), Card: "4970101234567890", Sim: sim(0.31)},
			{ID: "v-3", TxnID: "T-1003", TS: now.Add(-2 * time.Hour), Card: "5131000011112222", Masked: true, Sim: sim(0.28),
				Coalesced: []string{"T-1003b"}, CoalescedCards: []string{"4970101234567890"}},
			{ID: "v-4", TxnID: "T-1004", TS: now.Add(-time.Hour), Sim: sim(0.9)},
		},
		"p-2": {
			{ID: "v-5", TxnID: "T-2001", TS: now.Add(-5 * time.Hour), Card: "4970101234567890"},
			{ID: "v-6", TxnID: "T-2002", TS: now.Add(-90 * time.Minute)},
		},
	}
}

// reviewFleet runs the service with commands on a real mosquitto, with
// lyon-07/atm-0042 (reviewer) online with a summary of p-1 and p-2 and
// an alert on p-1.
func reviewFleet(t *testing.T) (svc *service, m *fleettest.Mosquitto, base string, pub ed25519.PublicKey, rv *fleettest.Reviewer, agent *fleettest.Agent) {
	t.Helper()
	m = fleettest.StartMosquitto(t, "")
	pk, priv, _ := wire.GenerateCommandKey()
	addr := fmt.Sprintf("127.0.0.1:%d", fleettest.FreePort(t))
	svc = startServiceCommands(t, filepath.Join(t.TempDir(), "fleet.db"), m.URL(), addr, priv)
	t.Cleanup(func() { svc.stop(t) })
	rv = fleettest.NewReviewer(reviewVisitsOf(time.Now().UTC()))
	a := fleettest.StartAgent(t, m.URL(), browserPrefix, "lyon-07", "atm-0042", fleettest.Commands(pk, rv))
	a.Summary(t, 4, "p-1", "p-2")
	a.Alert(t, "many-visits-24h", "p-1", 9)
	fleettest.WaitFor(t, 10*time.Second, "summary and alert ingested", func() bool { return svc.in.Stats().Applied == 2 })
	waitState(t, svc.st, "lyon-07", "atm-0042", "online")
	return svc, m, "http://" + addr, pk, rv, a
}

func waitState(t *testing.T, st storage.Store, site, dev, state string) {
	t.Helper()
	fleettest.WaitFor(t, 10*time.Second, site+"/"+dev+" "+state, func() bool {
		d, err := st.Device(context.Background(), site, dev)
		return err == nil && d.State() == state
	})
}

// The review through the real path (mosquitto, the agent's own command
// checks, the simulated agent's identities): the page lists the visits
// the agent returned; a split sends exactly the chosen visits and shows
// the result; a merge; an agent's refusal; the JSON API; each correction
// in the audit log; anonymous requests and POSTs without the CSRF token
// are refused and send nothing.
func TestReviewAndCorrect(t *testing.T) {
	svc, m, base, _, rv, _ := reviewFleet(t)
	replies := fleettest.Sniff(t, m.URL(), browserPrefix+"/+/+/reply")
	ana := newClient(t, base)
	csrf := ana.login("ana", "correct horse")
	const review = "/devices/lyon-07/atm-0042/identities/p-1/review"

	if _, body := ana.get("/alerts"); !strings.Contains(body, `href="`+review+`"`) {
		t.Errorf("the alert on p-1 has no Review link")
	}
	if _, body := ana.get("/devices/lyon-07/atm-0042"); !strings.Contains(body, `href="/devices/lyon-07/atm-0042/identities/p-2/review"`) {
		t.Errorf("the device page's identity list has no Review link for p-2")
	}
	r, body := ana.get(review)
	if r.StatusCode != 200 {
		t.Fatalf("review: %d %s", r.StatusCode, body)
	}
	for _, want := range []string{"T-1001", "T-1002", "T-1003", "T-1004", "also T-1003b", "card 1, card 2", "card 2", "no card", "masked", "0.87", "0.31",
		"4 visits", "bank's own records and CCTV", `name="visits" value="v-3"`, `<option value="p-2">`, `id="static"`} {
		if !strings.Contains(body, want) {
			t.Errorf("review page lacks %q", want)
		}
	}
	if strings.Contains(body, "4970101234567890") || strings.Contains(body, `id="live"`) {
		t.Error("the review page shows card data, or refreshes live (it would ask the device again at every change)")
	}
	// Newest first, as the agent lists them.
	if i, j := strings.Index(body, "T-1004"), strings.Index(body, "T-1001"); i > j {
		t.Error("visits not newest first")
	}
	if cmds := rv.Commands(); len(cmds) != 1 || cmds[0].Command != wire.CmdIdentityVisits || cmds[0].Args.ID != "p-1" || cmds[0].Args.ReplyKey == "" {
		t.Fatalf("the agent handled %+v", cmds)
	}
	// What a client of the broker reading the reply topics saw: the
	// result sealed, no transaction id.
	fleettest.WaitFor(t, 5*time.Second, "the reply sniffed", func() bool { return len(replies()) > 0 })
	for _, b := range replies() {
		var r wire.Reply
		if err := json.Unmarshal(b, &r); err != nil || r.Result != nil || r.Sealed == "" || strings.Contains(string(b), "T-100") {
			t.Errorf("a reply on the broker not sealed: %s", b)
		}
	}

	// Refused: anonymous, no token, a forged token, another origin.
	split := url.Values{"visits": {"v-2", "v-3"}}
	anon := newClient(t, base)
	if r, _ := anon.post("/devices/lyon-07/atm-0042/identities/p-1/split", split); r.StatusCode != 401 {
		t.Errorf("anonymous split: %d, want 401", r.StatusCode)
	}
	if r, _ := anon.get(review); r.StatusCode != 303 {
		t.Errorf("anonymous review: %d, want 303 to sign in", r.StatusCode)
	}
	ana.refusesUnguarded("/devices/lyon-07/atm-0042/identities/p-1/split", split, csrf)
	if r, _ := anon.json("POST", "/api/v1/identities/split", "application/json", `{"site":"lyon-07","device":"atm-0042","identity":"p-1","visits":["v-2"]}`); r.StatusCode != 401 {
		t.Errorf("anonymous API split: %d", r.StatusCode)
	}
	if len(rv.Commands()) != 1 {
		t.Fatalf("a refused request reached the agent: %+v", rv.Commands())
	}

	// The split, with the token.
	r, body = ana.post("/devices/lyon-07/atm-0042/identities/p-1/split", split)
	if r.StatusCode != 200 || !strings.Contains(body, "2 visits of p-1 split off into the new identity p-split-1") {
		t.Fatalf("split: %d %s", r.StatusCode, body)
	}
	cmds := rv.Commands()
	if last := cmds[len(cmds)-1]; last.Command != wire.CmdSplitVisits || last.Args.ID != "p-1" || !slices.Equal(last.Args.Visits, []string{"v-2", "v-3"}) {
		t.Errorf("the agent got %+v, want split_visits of v-2 and v-3", last)
	}
	if got := rv.Visits("p-split-1"); !slices.Equal(got, []string{"v-3", "v-2"}) {
		t.Errorf("the new identity holds %v", got)
	}
	_, body = ana.get(review)
	if !strings.Contains(body, "2 visits") || strings.Contains(body, "T-1002") || !strings.Contains(body, `class="apart" href="/devices/lyon-07/atm-0042/identities/p-split-1/review"`) {
		t.Errorf("after the split the review shows:\n%s", body)
	}

	// A merge; a merge of the identities the split keeps apart, which
	// the agent accepts (the newer decision: it replaces the split's
	// constraint), so the page offers it; a merge the agent refuses.
	r, body = ana.post("/devices/lyon-07/atm-0042/identities/p-2/merge", url.Values{"csrf": {csrf}, "into": {"p-1"}})
	if r.StatusCode != 200 || !strings.Contains(body, "p-2 merged into p-1: 2 visits moved") {
		t.Fatalf("merge: %d %s", r.StatusCode, body)
	}
	if _, body := ana.get("/devices/lyon-07/atm-0042/identities/p-split-1/review"); !strings.Contains(body, `<option value="p-1">`) {
		t.Errorf("the review of p-split-1 does not offer the merge into p-1, which a split keeps apart")
	}
	r, body = ana.post("/devices/lyon-07/atm-0042/identities/p-split-1/merge", url.Values{"csrf": {csrf}, "into": {"p-1"}})
	if r.StatusCode != 200 || !strings.Contains(body, "p-split-1 merged into p-1: 2 visits moved") {
		t.Errorf("a merge of identities kept apart: %d %s", r.StatusCode, body)
	}
	if _, body := ana.get(review); strings.Contains(body, `class="apart"`) {
		t.Errorf("p-1 is still kept apart from p-split-1 after their merge:\n%s", body)
	}
	// Refused by the agent, answered by its code: no such identity 404.
	r, body = ana.post("/devices/lyon-07/atm-0042/identities/p-9/merge", url.Values{"csrf": {csrf}, "into": {"p-1"}})
	if r.StatusCode != http.StatusNotFound || !strings.Contains(body, "no identity p-9") {
		t.Errorf("a merge the agent refuses: %d %s", r.StatusCode, body)
	}
	r, _ = ana.post("/devices/lyon-07/atm-0042/identities/p-1/split", url.Values{"csrf": {csrf}})
	if r.StatusCode != 400 {
		t.Errorf("a split of no visit: %d, want 400", r.StatusCode)
	}

	// The JSON API: read, split.
	resp, out := ana.json("GET", "/api/v1/devices/lyon-07/atm-0042/identities/p-1/visits", "", "")
	if resp.StatusCode != 200 || out["identity"] != "p-1" || out["total"] != float64(6) {
		t.Errorf("API visits: %d %v", resp.StatusCode, out)
	}
	resp, out = ana.json("POST", "/api/v1/identities/split", "application/json", `{"site":"lyon-07","device":"atm-0042","identity":"p-1","visits":["v-6"]}`,
		"X-CSRF-Token", csrf)
	if resp.StatusCode != 200 || out["new_identity"] != "p-split-2" || out["visits_moved"] != float64(1) {
		t.Errorf("API split: %d %v", resp.StatusCode, out)
	}

	// The audit log: who, when, device, identities, how many visits.
	audit, err := svc.st.Audit(context.Background(), 10)
	if err != nil {
		t.Fatal(err)
	}
	var notes []string
	for _, e := range audit {
		if e.User != "ana" || e.Key.Site != "lyon-07" || e.Key.Device != "atm-0042" || e.At.IsZero() {
			t.Errorf("audit entry %+v", e)
		}
		if strings.Contains(e.Note, "T-1") || strings.Contains(e.Note, "v-") || strings.Contains(e.Note, "4970") {
			t.Errorf("audit note names visits or cards: %q", e.Note)
		}
		notes = append(notes, e.Action+": "+e.Note)
	}
	// Each correction twice: its request before it was sent, its
	// outcome, with the same command id.
	want := []string{
		"split identity: 1 visit of p-1 split off into p-split-2",
		"split identity: requested: 1 visit of p-1 to split off",
		"merge identities: refused by the device, nothing changed: p-9 into p-1: the device refused the command: no identity p-9",
		"merge identities: requested: p-9 into p-1",
		"merge identities: p-split-1 merged into p-1: 2 visits moved",
		"merge identities: requested: p-split-1 into p-1",
		"merge identities: p-2 merged into p-1: 2 visits moved",
		"merge identities: requested: p-2 into p-1",
		"split identity: 2 visits of p-1 split off into p-split-1",
		"split identity: requested: 2 visits of p-1 to split off",
	}
	ok := len(audit) == len(want)
	for i := 0; ok && i < len(want); i++ {
		id, _, _ := storage.CorrectionCommand(audit[i])
		id2, _, _ := storage.CorrectionCommand(audit[i^1])
		ok = strings.HasPrefix(notes[i], want[i]) && id != "" && id == id2
	}
	if !ok {
		t.Errorf("audit:\n%s", strings.Join(notes, "\n"))
	}
	root := newClient(t, base)
	root.login("root", "correct horse")
	if _, body := root.get("/admin"); !strings.Contains(body, "p-2 merged into p-1") || !strings.Contains(body, `answered`) ||
		strings.Contains(body, `class="pending"`) {
		t.Error("the settings page lacks the correction or the command counters, or shows an answered one as pending")
	}
	// A request whose outcome never came (the fleet stopped while
	// waiting) reads as unknown.
	if err := svc.st.RecordCorrection(context.Background(), storage.Correction{Site: "lyon-07", Device: "atm-0042", Action: storage.ActionMergeIdentity,
		Outcome: storage.OutcomeRequested, Identity: "p-7", Other: "p-1", MessageID: "fleet-x-1", User: "ana", Role: "analyst",
		At: time.Now().Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, body := root.get("/admin"); !strings.Contains(body, `requested: p-7 into p-1 (command fleet-x-1) <strong class="pending">no outcome recorded: unknown whether the device applied it`) {
		t.Error("the settings page does not show a request without outcome as unknown")
	}
}

// When no answer can come the analyst is told at once or within the reply
// timeout, never left waiting: a device stopped (nothing sent), one that
// does not answer, an agent older than the review, a service without
// commands. The agent runs a command once although the fleet resends it
// while the agent works (the copies are refused as replays).
func TestReviewWhenTheDeviceCannotAnswer(t *testing.T) {
	svc, m, base, pub, rv, agent := reviewFleet(t)
	ana := newClient(t, base)
	csrf := ana.login("ana", "correct horse")
	rv2 := fleettest.NewReviewer(reviewVisitsOf(time.Now().UTC()))
	gone := fleettest.StartAgent(t, m.URL(), browserPrefix, "lyon-07", "atm-gone", fleettest.Commands(pub, rv2))
	silent := fleettest.StartAgent(t, m.URL(), browserPrefix, "lyon-07", "atm-silent") // commands off
	gone.Summary(t, 1, "p-1")
	silent.Summary(t, 1, "p-1")
	waitState(t, svc.st, "lyon-07", "atm-silent", "online")
	gone.Stop()
	waitState(t, svc.st, "lyon-07", "atm-gone", "stopped")

	start := time.Now()
	r, body := ana.get("/devices/lyon-07/atm-gone/identities/p-1/review")
	if r.StatusCode != http.StatusConflict || !strings.Contains(body, "lyon-07 / atm-gone is not online") || !strings.Contains(body, "Nothing was sent") ||
		time.Since(start) > time.Second {
		t.Errorf("stopped device: %d in %v: %s", r.StatusCode, time.Since(start), body)
	}
	if len(rv2.Commands()) != 0 {
		t.Error("a command was sent to a stopped device")
	}
	r, body = ana.post("/devices/lyon-07/atm-gone/identities/p-1/split", url.Values{"csrf": {csrf}, "visits": {"v-1"}})
	if audit, _ := svc.st.Audit(context.Background(), 1); r.StatusCode != http.StatusConflict || len(audit) != 1 ||
		!strings.HasPrefix(audit[0].Note, "not sent, nothing changed: 1 visit of p-1 to split off: device not online") {
		t.Errorf("a split for a stopped device: %d, audited as %+v", r.StatusCode, audit)
	}
	r, out := ana.json("GET", "/api/v1/devices/lyon-07/atm-gone/identities/p-1/visits", "", "")
	if r.StatusCode != http.StatusConflict || !strings.Contains(fmt.Sprint(out["error"]), "not online") {
		t.Errorf("API, stopped device: %d %v", r.StatusCode, out)
	}

	start = time.Now()
	r, body = ana.get("/devices/lyon-07/atm-silent/identities/p-1/review")
	if d := time.Since(start); r.StatusCode != http.StatusGatewayTimeout || !strings.Contains(body, "No answer from lyon-07 / atm-silent within 2s") || d > 4*time.Second {
		t.Errorf("a device that does not answer: %d after %v: %s", r.StatusCode, d, body)
	}
	// The request is in the audit log before any answer could come (the
	// fleet may stop while waiting; the agent may apply it still).
	type resp struct {
		code int
		body string
	}
	rc := make(chan resp, 1)
	go func() {
		r, body := ana.post("/devices/lyon-07/atm-silent/identities/p-1/merge", url.Values{"csrf": {csrf}, "into": {"p-2"}})
		rc <- resp{r.StatusCode, body}
	}()
	fleettest.WaitFor(t, time.Second, "the merge's request audited while it waits", func() bool {
		audit, _ := svc.st.Audit(context.Background(), 1)
		return len(audit) == 1 && strings.HasPrefix(audit[0].Note, "requested: p-1 into p-2 (command fleet-")
	})
	if res := <-rc; res.code != http.StatusGatewayTimeout || !strings.Contains(res.body, "may or may not have been applied") {
		t.Errorf("a merge without answer: %d %s", res.code, res.body)
	}
	if audit, _ := svc.st.Audit(context.Background(), 1); len(audit) != 1 || !strings.Contains(audit[0].Note, "no usable answer from the device") {
		t.Errorf("a merge without answer is not audited as such: %+v", audit)
	}

	rv.SetOlder(true)
	r, body = ana.get("/devices/lyon-07/atm-0042/identities/p-1/review")
	if r.StatusCode != http.StatusBadGateway || !strings.Contains(body, "older than the identity review") || strings.Count(body, "upgrade it") != 1 {
		t.Errorf("an older agent: %d %s", r.StatusCode, body)
	}
	rv.SetOlder(false)

	// The agent takes 1 s; the fleet resends every 300 ms meanwhile.
	rv.SetDelay(time.Second)
	n := len(rv.Commands())
	if r, body := ana.get("/devices/lyon-07/atm-0042/identities/p-1/review"); r.StatusCode != 200 || !strings.Contains(body, "T-1004") {
		t.Errorf("a slow agent: %d", r.StatusCode)
	}
	if got := len(rv.Commands()) - n; got != 1 {
		t.Errorf("the command ran %d times", got)
	}
	// The agent's own counters: the copies were refused as replays.
	if _, rejected := agent.CommandStats(); rejected["replayed"] < 2 {
		t.Errorf("the agent refused %d copies as replays, want >= 2 (one resent every 300 ms for 1 s): %v", rejected["replayed"], rejected)
	}

	// A service without commands says so.
	_, hs := newTestServer(t, svc.st)
	c := newClient(t, hs.URL)
	c.login("ana", "correct horse")
	if r, body := c.get("/devices/lyon-07/atm-0042/identities/p-1/review"); r.StatusCode != http.StatusNotImplemented || !strings.Contains(body, "Commands are not configured") {
		t.Errorf("no commands: %d %s", r.StatusCode, body)
	}
}

// A real headless Chromium: from the alert to the review page, which
// lists the visits the agent returned; two visits ticked and split off in
// the page; a third party on the broker sees one split_visits command,
// signed with the fleet's key, holding exactly those two visits; the page
// shows the result and links to the new identity, whose review lists
// them as corrected; the audit log has the split.
func TestBrowserReviewAndSplit(t *testing.T) {
	browser.Path(t)
	svc, m, base, pub, _, _ := reviewFleet(t)
	sniffed := fleettest.Sniff(t, m.URL(), browserPrefix+"/lyon-07/atm-0042/cmd")
	br := browser.Start(t, 1280, 900, "ATM_FLEET_SCREENSHOTS")
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }
	br.Do("sign in, open the alerts and follow the alert's Review link",
		chromedp.Navigate(base+"/alerts"),
		chromedp.WaitVisible(css(`input[name=user]`)),
		signIn(),
		chromedp.WaitVisible(css(`tr.alert a.review`)),
		chromedp.Click(css(`tr.alert a.review`)),
		chromedp.WaitVisible(css(`table#visits`)),
		br.Shot("review"),
	)
	table := br.Get(chromedp.Text(css(`table#visits`)))
	for _, want := range []string{"T-1001", "T-1002", "T-1003", "T-1004", "card 1", "card 2", "masked", "0.87"} {
		if !strings.Contains(table, want) {
			t.Errorf("the review table lacks %q:\n%s", want, table)
		}
	}
	if how := br.Get(chromedp.Text(css(`#review-how`))); !strings.Contains(how, "CCTV") {
		t.Errorf("the page does not say where the visits are checked: %q", how)
	}
	br.Do("tick two visits and split them off",
		chromedp.Click(css(`tr.visit[data-visit="v-2"] input[type=checkbox]`)),
		chromedp.Click(css(`tr.visit[data-visit="v-3"] input[type=checkbox]`)),
		chromedp.Click(css(`#split`)),
		chromedp.WaitVisible(css(`#correction-done`)),
		br.Shot("corrected"),
	)
	if done := br.Get(chromedp.Text(css(`#correction-done`))); !strings.Contains(done, "2 visits of p-1 split off into the new identity p-split-1") {
		t.Errorf("result: %q", done)
	}
	var splits []wire.Command
	for _, b := range sniffed() {
		payload, _, err := wire.OpenSignedCommand(b, []ed25519.PublicKey{pub})
		if err != nil {
			t.Fatalf("a command on the broker does not verify with the fleet's key: %v", err)
		}
		cmd, err := wire.DecodeCommand(payload)
		if err != nil {
			t.Fatal(err)
		}
		if cmd.Command == wire.CmdSplitVisits && !slices.ContainsFunc(splits, func(c wire.Command) bool { return c.MessageID == cmd.MessageID }) {
			splits = append(splits, cmd)
		}
	}
	if len(splits) != 1 || splits[0].Args.ID != "p-1" || !slices.Equal(slices.Sorted(slices.Values(splits[0].Args.Visits)), []string{"v-2", "v-3"}) ||
		splits[0].Site != "lyon-07" || splits[0].Device != "atm-0042" {
		t.Fatalf("split commands on the broker: %+v", splits)
	}
	br.Do("review the new identity",
		chromedp.Click(css(`#review-other`)),
		chromedp.WaitVisible(css(`table#visits`)),
	)
	table = br.Get(chromedp.Text(css(`table#visits`)))
	if !strings.Contains(table, "T-1002") || !strings.Contains(table, "T-1003") || strings.Contains(table, "T-1001") || !strings.Contains(table, "by an analyst") {
		t.Errorf("the new identity's review:\n%s", table)
	}
	if audit, _ := svc.st.Audit(context.Background(), 1); len(audit) != 1 || audit[0].User != "ana" || audit[0].Action != storage.ActionSplitIdentity ||
		!strings.Contains(audit[0].Note, "2 visits of p-1 split off into p-split-1") {
		t.Errorf("audit: %+v", audit)
	}
	t.Logf("screenshots in %s", br.ShotsDir())
}

// loopback is a broker in the process for the command client: each
// published command is checked as an agent does (the signature with the
// fleet's key, the strict decoding, a message id used once) and handed to
// the device's reviewer, whose answer comes back as a wire.Reply on the
// device's reply topic. A device without a reviewer never answers.
type loopback struct {
	pub    ed25519.PublicKey
	c      *command.Client
	agents map[string]*fleettest.Reviewer // by device
	// sign: the device key the replies are signed with (nil: unsigned).
	sign ed25519.PrivateKey
	mu   sync.Mutex
	seen map[string]bool
}

func (l *loopback) Publish(_ context.Context, topic string, msg []byte) error {
	payload, _, err := wire.OpenSignedCommand(msg, []ed25519.PublicKey{l.pub})
	if err != nil {
		return nil // an agent drops it unanswered
	}
	cmd, err := wire.DecodeCommand(payload)
	if err != nil || topic != browserPrefix+"/"+cmd.Site+"/"+cmd.Device+"/cmd" {
		return nil
	}
	l.mu.Lock()
	replayed := l.seen[cmd.MessageID]
	l.seen[cmd.MessageID] = true
	l.mu.Unlock()
	rv := l.agents[cmd.Device]
	if replayed || rv == nil {
		return nil
	}
	go func() {
		res, err := rv.HandleCommand(context.Background(), cmd)
		r := wire.Reply{Envelope: wire.NewEnvelope(cmd.Site, cmd.Device, time.Now()), CorrelationID: cmd.MessageID, Command: cmd.Command, OK: true}
		r.MessageID = "r-" + cmd.MessageID
		if err != nil {
			r.Refuse(err) // with its code, as the agent answers
		} else {
			r.Result, _ = json.Marshal(res)
		}
		if err := r.Seal(cmd.Args.ReplyKey); err != nil { // as the agent answers
			r.Refuse(err)
		}
		b, _ := wire.SignReply(l.sign, r)
		l.c.Handle(browserPrefix+"/"+cmd.Site+"/"+cmd.Device+"/reply", b)
	}()
	return nil
}

// loopbackCommands is a command client (reply timeout 1 s, one command in
// flight) over a loopback whose devices answer with agents' reviewers.
func loopbackCommands(t *testing.T, agents map[string]*fleettest.Reviewer) *command.Client {
	t.Helper()
	return loopbackCommandsWith(t, agents, nil)
}

// loopbackCommandsWith is loopbackCommands with its config changed by mut.
func loopbackCommandsWith(t *testing.T, agents map[string]*fleettest.Reviewer, mut func(*command.Config)) *command.Client {
	t.Helper()
	return loopbackSigned(t, agents, nil, mut)
}

// loopbackSigned is loopbackCommandsWith whose devices sign their replies
// with devKey (nil: unsigned).
func loopbackSigned(t *testing.T, agents map[string]*fleettest.Reviewer, devKey ed25519.PrivateKey, mut func(*command.Config)) *command.Client {
	t.Helper()
	pub, priv, _ := wire.GenerateCommandKey()
	l := &loopback{pub: pub, agents: agents, seen: map[string]bool{}, sign: devKey}
	cfg := command.DefaultConfig()
	cfg.Enabled, cfg.PrivateKeyFile, cfg.ReplyTimeout, cfg.ResendInterval, cfg.MaxInFlight = true, "unused", time.Second, 300*time.Millisecond, 1
	if mut != nil {
		mut(&cfg)
	}
	c, err := command.New(cfg, browserPrefix, priv, l, nil)
	if err != nil {
		t.Fatal(err)
	}
	l.c = c
	return c
}

// What the fleet sends one device is bounded, so that reviews cannot
// fill its agent's replay set (max_seen) and get every command refused:
// a reload of the same review within review_cache asks the device
// nothing; past the reviews' share of device_budget a review is answered
// 429 with Retry-After, and nothing is sent, while a correction still
// goes. An oversized API body is answered 413.
func TestReviewBudgetAndLimits(t *testing.T) {
	_, _, base, _, rv, _ := reviewFleet(t)
	ana := newClient(t, base)
	csrf := ana.login("ana", "correct horse")
	const visits = "/api/v1/devices/lyon-07/atm-0042/identities/%s/visits"

	for range 3 {
		if r, _ := ana.json("GET", fmt.Sprintf(visits, "p-1"), "", ""); r.StatusCode != 200 {
			t.Fatalf("review: %d", r.StatusCode)
		}
	}
	if n := len(rv.Commands()); n != 1 {
		t.Errorf("3 loads of one review within review_cache sent %d commands, want 1", n)
	}

	share := command.DefaultConfig().DeviceBudget * 3 / 4
	for i := 1; i < share; i++ { // unknown identities: refused by the agent, never cached
		if r, _ := ana.json("GET", fmt.Sprintf(visits, fmt.Sprintf("p-x%d", i)), "", ""); r.StatusCode != http.StatusNotFound {
			t.Fatalf("review %d: %d, want 404 (no such identity)", i, r.StatusCode)
		}
	}
	n := len(rv.Commands())
	r, out := ana.json("GET", fmt.Sprintf(visits, "p-2"), "", "")
	if ra, _ := strconv.Atoi(r.Header.Get("Retry-After")); r.StatusCode != http.StatusTooManyRequests || ra < 60 || ra > 300 ||
		!strings.Contains(fmt.Sprint(out["error"]), "try again in") {
		t.Errorf("a review past the budget: %d, Retry-After %q: %v", r.StatusCode, r.Header.Get("Retry-After"), out)
	}
	if r, body := ana.get("/devices/lyon-07/atm-0042/identities/p-2/review"); r.StatusCode != http.StatusTooManyRequests || r.Header.Get("Retry-After") == "" ||
		!strings.Contains(body, "Not sent") {
		t.Errorf("the review page past the budget: %d %s", r.StatusCode, body)
	}
	if got := len(rv.Commands()); got != n {
		t.Errorf("%d commands sent past the budget", got-n)
	}
	if r, body := ana.post("/devices/lyon-07/atm-0042/identities/p-2/merge", url.Values{"csrf": {csrf}, "into": {"p-1"}}); r.StatusCode != 200 {
		t.Errorf("a correction once the reviews' share is spent: %d %s", r.StatusCode, body)
	}

	big := `{"site":"lyon-07","device":"atm-0042","identity":"p-1","visits":["` + strings.Repeat("v", 100<<10) + `"]}`
	if r, out := ana.json("POST", "/api/v1/identities/split", "application/json", big, "X-CSRF-Token", csrf); r.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("a 100 KiB body: %d %v, want 413", r.StatusCode, out)
	}
}

// The agent's refusal codes decide the answer: a visit that now belongs
// to another identity is a conflict (409, nothing changed, review again),
// a command the agent's worker did not take is busy (503, nothing ran),
// both audited as refused; an agent that sends no codes (older) is read
// by its text, as before.
func TestRefusalCodes(t *testing.T) {
	svc, _, base, _, rv, _ := reviewFleet(t)
	ana := newClient(t, base)
	csrf := ana.login("ana", "correct horse")
	split := func(visits string) (*http.Response, map[string]any) {
		return ana.json("POST", "/api/v1/identities/split", "application/json",
			`{"site":"lyon-07","device":"atm-0042","identity":"p-1","visits":[`+visits+`]}`, "X-CSRF-Token", csrf)
	}
	r, out := split(`"v-1","v-5"`)
	if r.StatusCode != http.StatusConflict || !strings.Contains(fmt.Sprint(out["error"]), "review the identity again") || out["agent_code"] != "conflict" {
		t.Errorf("a split of another identity's visit: %d %v, want 409, agent_code conflict", r.StatusCode, out)
	}
	r, out = split(`"v-1","v-2","v-3","v-4"`)
	if r.StatusCode != http.StatusConflict {
		t.Errorf("a split of every visit: %d %v, want 409", r.StatusCode, out)
	}
	r, out = split(`"v-nobody"`)
	if r.StatusCode != http.StatusNotFound || out["agent_code"] != "not_found" {
		t.Errorf("a split of no such visit: %d %v, want 404, agent_code not_found", r.StatusCode, out)
	}
	rv.SetFail(wire.WithCode(wire.CodeBusy, fmt.Errorf("split visits: not started: %w", context.DeadlineExceeded)))
	r, out = split(`"v-1"`)
	if r.StatusCode != http.StatusServiceUnavailable || !strings.Contains(fmt.Sprint(out["error"]), "did not run the command") {
		t.Errorf("a busy agent: %d %v, want 503", r.StatusCode, out)
	}
	// When to try again: the reply timeout (2 s here).
	if ra := r.Header.Get("Retry-After"); ra != "2" {
		t.Errorf("a busy agent's 503: Retry-After %q, want 2 (commands.reply_timeout)", ra)
	}
	if r, _ := ana.get("/devices/lyon-07/atm-0042/identities/p-1/review"); r.StatusCode != 503 || r.Header.Get("Retry-After") != "2" {
		t.Errorf("the review page of a busy agent: %d, Retry-After %q, want 503 and 2", r.StatusCode, r.Header.Get("Retry-After"))
	}
	audit, err := svc.st.Audit(context.Background(), 8)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(audit); i += 2 {
		if !strings.HasPrefix(audit[i].Note, "refused by the device, nothing changed") {
			t.Errorf("audited %q, want refused", audit[i].Note)
		}
	}
	// internal: the device may have applied it, and the audit says so.
	rv.SetFail(errors.New("split: commit: input/output error"))
	if r, out = split(`"v-1"`); r.StatusCode != http.StatusBadGateway {
		t.Errorf("an agent's internal error: %d %v, want 502", r.StatusCode, out)
	}
	if audit, _ := svc.st.Audit(context.Background(), 1); len(audit) != 1 || !strings.Contains(audit[0].Note, "(it may have applied it)") {
		t.Errorf("an internal refusal audited as %+v, want as maybe applied", audit)
	}
	// A code this build does not know (a newer agent's): the reply is
	// taken, answered 502, and audited as maybe applied, like internal.
	rv.SetFail(wire.WithCode("quota_exceeded", errors.New("split: over a quota this fleet has not heard of")))
	if r, out = split(`"v-1"`); r.StatusCode != http.StatusBadGateway || !strings.Contains(fmt.Sprint(out["error"]), "over a quota") || out["agent_code"] != "quota_exceeded" {
		t.Errorf("an unknown code: %d %v, want 502 with the agent's text", r.StatusCode, out)
	}
	if audit, _ := svc.st.Audit(context.Background(), 1); len(audit) != 1 || !strings.Contains(audit[0].Note, "(it may have applied it)") {
		t.Errorf("an unknown code audited as %+v, want as maybe applied", audit)
	}
	rv.SetFail(nil)
	if got := rv.Visits("p-1"); len(got) != 4 {
		t.Errorf("refused splits changed p-1: %v", got)
	}

	// An older agent, without codes: its "unknown command" still says it.
	rv.SetOlder(true)
	r, out = split(`"v-1"`)
	if _, has := out["agent_code"]; r.StatusCode != http.StatusBadGateway || !strings.Contains(fmt.Sprint(out["error"]), "older than the identity review") || has {
		t.Errorf("an older agent: %d %v, want 502", r.StatusCode, out)
	}
}
