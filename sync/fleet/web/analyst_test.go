package web

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/storage"
)

// contains fails the test for each of want that page lacks and each of
// refuse that it holds.
func contains(t *testing.T, what, page string, want, refuse []string) {
	t.Helper()
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
