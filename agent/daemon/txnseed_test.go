package daemon

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/hal/trigger"
	"github.com/periocular/atm-agent/store"
	"github.com/periocular/atm-agent/store/record"
)

// At start the trigger endpoint remembers the txn_ids of the stored visits,
// those of triggers coalesced into a visit included: a retry of either after
// a restart is a duplicate of that visit, not a new one.
func TestSeedTxnIDsRemembersCoalesced(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "agent.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	v := &visit.Visit{Time: time.Now().Add(-time.Minute), Trigger: "socket",
		Context: visit.Context{TxnID: "txn-A", Coalesced: []string{"txn-B"}}}
	res, err := st.CommitVisit(context.Background(), record.Commit{Visit: v})
	if err != nil {
		t.Fatal(err)
	}
	h, err := trigger.NewHTTP(trigger.HTTPConfig{Socket: filepath.Join(t.TempDir(), "t.sock")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := &Daemon{st: st, log: slog.New(slog.DiscardHandler)}
	d.seedTxnIDs(h)
	srv := httptest.NewServer(h.AdmitHandler(func(visit.Trigger) visit.Admission {
		t.Error("a remembered txn_id started a new visit")
		return visit.Admission{ID: "new"}
	}))
	defer srv.Close()
	for _, txn := range []string{"txn-A", "txn-B"} {
		resp, err := http.Post(srv.URL+"/v1/visit", "application/json", bytes.NewBufferString(`{"txn_id":"`+txn+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(b.String(), `"duplicate"`) || !strings.Contains(b.String(), res.VisitID) {
			t.Errorf("%s after the restart: %d %s, want a duplicate of %s", txn, resp.StatusCode, b.String(), res.VisitID)
		}
	}
}
