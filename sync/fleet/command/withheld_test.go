package command

import (
	"context"
	"testing"
)

// A transaction id that holds a card number is withheld from the review,
// which still lists the visit, and so is one of a card insert folded into
// a visit; the others are shown as they came.
func TestReviewWithholdsCardNumbers(t *testing.T) {
	c, _ := newFake(t, DefaultConfig())
	res, _, err := c.IdentityVisits(context.Background(), "lyon-07", "atm-1", "p-1")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Visits) != 3 || res.Visits[0].TxnID != "T-1001" || res.Visits[1].TxnID != TxnWithheld || res.Visits[2].TxnID != TxnWithheld {
		t.Errorf("visits %+v", res.Visits)
	}
	if got := res.Visits[0].CoalescedTxnIDs; len(got) != 2 || got[0] != "T-1002" || got[1] != TxnWithheld {
		t.Errorf("coalesced txn ids %q, want T-1002 and the card number withheld", got)
	}
	if st := c.Stats(); st.Withheld != 3 {
		t.Errorf("stats %+v, want 3 withheld", st)
	}
}
