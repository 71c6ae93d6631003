package command

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/wire"
)

// CheckVisits refuses an identity_visits answer an analyst must not be
// shown as it came, the coalesced card inserts' ids and cards included.
func TestCheckVisits(t *testing.T) {
	ts := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	good := func() wire.IdentityVisitsResult {
		return wire.IdentityVisitsResult{Identity: "p-1", Total: 2, Visits: []wire.ReviewVisit{
			{VisitID: "v-1", TxnID: "T-1", TS: ts, Card: 1, CoalescedTxnIDs: []string{"T-1b"}, CoalescedCards: []int{2}},
			{VisitID: "v-2", TS: ts}}}
	}
	if err := CheckVisits(good(), "p-1"); err != nil {
		t.Fatalf("a good answer: %v", err)
	}
	for name, spoil := range map[string]func(*wire.IdentityVisitsResult){
		"another identity":          func(r *wire.IdentityVisitsResult) { r.Identity = "p-2" },
		"more listed than total":    func(r *wire.IdentityVisitsResult) { r.Total = 1 },
		"a visit twice":             func(r *wire.IdentityVisitsResult) { r.Visits[1].VisitID = "v-1" },
		"txn_id with a control":     func(r *wire.IdentityVisitsResult) { r.Visits[0].TxnID = "T\x1b[31m" },
		"coalesced id empty":        func(r *wire.IdentityVisitsResult) { r.Visits[0].CoalescedTxnIDs = []string{""} },
		"coalesced id too long":     func(r *wire.IdentityVisitsResult) { r.Visits[0].CoalescedTxnIDs = []string{strings.Repeat("x", 129)} },
		"coalesced id bidi control": func(r *wire.IdentityVisitsResult) { r.Visits[0].CoalescedTxnIDs = []string{"T\u202e1"} },
		"17 coalesced ids": func(r *wire.IdentityVisitsResult) {
			r.Visits[0].CoalescedTxnIDs = strings.Split(strings.Repeat("t,", 16)+"t", ",")
		},
		"coalesced card 0": func(r *wire.IdentityVisitsResult) { r.Visits[0].CoalescedCards = []int{0} },
		"negative card":    func(r *wire.IdentityVisitsResult) { r.Visits[0].Card = -1 },
		"no ts":            func(r *wire.IdentityVisitsResult) { r.Visits[1].TS = time.Time{} },
	} {
		r := good()
		spoil(&r)
		if err := CheckVisits(r, "p-1"); !errors.Is(err, ErrBadResult) {
			t.Errorf("%s: %v, want ErrBadResult", name, err)
		}
	}
}
