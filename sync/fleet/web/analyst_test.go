package web

import (
	"context"
	"html"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/fleet/storage/storetest"
	"github.com/periocular/atm-agent/sync/wire"
)

// contains fails the test for each of want that page lacks and each of
// refuse that it holds.
func contains(t *testing.T, what, page string, want, refuse []string) {
	t.Helper()
	page = html.UnescapeString(page) // html/template writes "+" as "&#43;", "'" as "&#39;"
	for _, w := range want {
		if !strings.Contains(page, w) {
			t.Errorf("%s lacks %q", what, w)
		}
	}
	for _, r := range refuse {
		if strings.Contains(page, r) {
			t.Errorf("%s holds %q", what, r)
		}
	}
}

// The Settings page reads as an administrator reads it: users change with
// a reload, retention as the config writes it, counters as a table, an
// audited correction under its device (no trailing slash) and "1 visit".
func TestSettingsPageReadable(t *testing.T) {
	st := openBolt(t)
	seed(t, st)
	if err := st.RecordCorrection(context.Background(), storage.Correction{Site: "lyon-07", Device: "atm-1", Action: storage.ActionMergeIdentity,
		Outcome: storage.OutcomeApplied, Identity: "p-2", Other: "p-1", Visits: 1, MessageID: "f-1", User: "root", Role: "admin",
		At: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	_, hs := newTestServer(t, st)
	root := newClient(t, hs.URL)
	root.login("root", "correct horse")
	_, page := root.get("/admin")
	contains(t, "the Settings page", page,
		[]string{"systemctl reload atm-fleet", "30d", "90d", `<th scope="row">applied</th><td>1</td>`, `<th scope="row">store errs</th><td>0</td>`,
			"<td>lyon-07/atm-1</td>", "p-2 merged into p-1: 1 visit moved", "not configured (no identity review)"},
		[]string{"restart to change", "720h0m0s", "2160h0m0s", "<pre", "lyon-07/atm-1/<", "1 visits"})
}

// row is the fleet page's row of site/device.
func row(t *testing.T, page, device string) string {
	t.Helper()
	i := strings.Index(page, `data-device="`+device+`"`)
	if i < 0 {
		t.Fatalf("the fleet page has no row of %s", device)
	}
	j := strings.Index(page[i:], "</tr>")
	return page[i : i+j]
}

// A device heard from only by its status: the device page's Delivery says
// when it was last heard as its heading does (a status counts), and that
// no summary or alert came, without a "seq 0–0". The fleet page says "no
// gaps" in words and "none reported" for a status without cameras, as the
// device page does.
func TestDeliveryAndCamerasAgree(t *testing.T) {
	st := openBolt(t)
	seed(t, st)
	now := time.Now().UTC()
	status := func(dev string, received time.Time, seq uint64, cams ...wire.CameraHealth) {
		t.Helper()
		s := wire.Status{Envelope: wire.NewEnvelope("lyon-07", dev, received), State: wire.StateOnline, Cameras: cams}
		s.Seq = seq
		if err := st.PutStatus(context.Background(), storage.Status{Site: "lyon-07", Device: dev, Received: received, Status: s}); err != nil {
			t.Fatal(err)
		}
	}
	status("atm-0042", now.Add(-6*time.Minute), 1)
	status("atm-1", now, 4, wire.CameraHealth{Name: "front", OK: true})
	_, hs := newTestServer(t, st)
	ana := newClient(t, hs.URL)
	ana.login("ana", "correct horse")
	_, page := ana.get("/devices/lyon-07/atm-0042")
	contains(t, "the stale device's page", page,
		[]string{"last heard from 6m ago", "last heard 6m ago: status 6m ago, summary or alert never",
			"no summary or alert received yet: its last status says the broker took 1 (seq up to 1)", "none reported"},
		[]string{"seq 0–0", "last message never"})
	_, page = ana.get("/")
	contains(t, "the fleet page's row of a device without cameras", row(t, page, "lyon-07/atm-0042"), []string{"<td>none reported</td>", "<td>-</td>"},
		[]string{">ok<", "fault"})
	contains(t, "the fleet page's row of a device with gaps", row(t, page, "lyon-07/atm-1"),
		[]string{`<span class="ok">ok</span>`, `4 / <span class="bad">1 missing</span>`}, []string{"no gaps"})
	contains(t, "the fleet page's row of a device without gaps or status", row(t, page, "paris-01/atm-2"), []string{"<td>1 / no gaps</td>", "<td>-</td>"},
		[]string{">ok<", "none reported"})
}

// The review page says what a similarity means (the scale, the default
// model's match from about 0.5) and, when a visit stands for folded card
// inserts, that their customers were not photographed and that a split
// moves the visit with all its transactions; without one, no such words.
func TestReviewExplainsSimilarityAndFoldedInserts(t *testing.T) {
	_, hs := reviewServer(t, nil)
	ana := newClient(t, hs.URL)
	ana.login("ana", "correct horse")
	_, page := ana.get("/devices/lyon-07/atm-1/identities/p-1/review")
	contains(t, "the review of p-1", page, []string{"0.28", "1 is the same face template", "matches two visits from about 0.5",
		"0.48 both unmasked, 0.50 one masked, 0.60 both masked", "matched from about 0.5)",
		`id="coalesced-how"`, "also T-1003b (folded in, not photographed)", "card 1, card 2",
		"The folded insert's customer was <b>not photographed</b>", "A split moves the visit with all its transactions."},
		[]string{"(-1..1)."})
	_, page = ana.get("/devices/lyon-07/atm-1/identities/p-2/review")
	contains(t, "the review of p-2", page, []string{"T-2001", "matches two visits from about 0.5"}, []string{`id="coalesced-how"`, "not photographed"})
}

// An alert's count reads as what it is: the agent's when it raised the
// alert, "at least" for one identity's count (a lower bound), exact for a
// device-wide faceless count; its rule in words from the alert's kind,
// threshold and window, and what to do next.
func TestAlertCountsAndRulesInWords(t *testing.T) {
	st := openBolt(t)
	seed(t, st)
	now := time.Now().UTC()
	faceless := storetest.Alert("lyon-07", "atm-1", 5, now.Add(-10*time.Minute), "a-f", "", 3)
	faceless.Alert.Rule, faceless.Alert.Kind, faceless.Alert.Window, faceless.Alert.Threshold = "faceless-burst", "faceless", "1h0m0s", 3
	if _, err := st.Apply(context.Background(), []storage.Message{faceless}); err != nil {
		t.Fatal(err)
	}
	_, hs := newTestServer(t, st)
	ana := newClient(t, hs.URL)
	ana.login("ana", "correct horse")
	for _, path := range []string{"/alerts", "/devices/lyon-07/atm-1"} {
		_, page := ana.get(path)
		contains(t, path, page, []string{"Count when raised", "stays as it was", "is a lower bound",
			`<td class="count">at least 7<br><small>threshold 5</small></td>`, "raised at 5 visits in 24h by one identity",
			"next: review the identity's visits", `<td class="count">3<br><small>threshold 3</small></td>`,
			"raised at 3 visits without a usable face in 1h at this ATM", "next: look at the ATM's CCTV"},
			[]string{"7 / 5", "3 / 3", "at least 3"})
	}
	_, page := ana.get("/devices/lyon-07/atm-1/identities/p-1")
	contains(t, "the identity page", page, []string{"at least 7", "raised at 5 visits in 24h by one identity"}, []string{"without a usable face"})
	if _, page := ana.get("/alerts?rule=none"); strings.Contains(page, "stays as it was") {
		t.Error("the alerts page explains counts with no alert listed")
	}
}
