package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/rules"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/store"
	"github.com/periocular/atm-agent/store/record"
	"github.com/periocular/atm-agent/sync/wire"
)

var (
	cardA = strings.Repeat("a1", 32)
	cardB = strings.Repeat("b2", 32)
)

func repeat4(d *Deps) {
	d.Rules, _ = rules.New([]rules.Rule{{Name: "repeat4", Kind: rules.KindVisits, Threshold: 4, Window: time.Hour, Cooldown: time.Hour}})
}

// command runs one command as the MQTT handler does and returns the
// result as the reply would carry it.
func (h *harness) command(name wire.CommandName, args wire.CommandArgs) ([]byte, error) {
	h.t.Helper()
	res, err := h.ag.HandleCommand(context.Background(), wire.Command{Command: name, Args: args})
	if err != nil {
		if res != nil {
			h.t.Errorf("%s failed with a result: %v", name, res)
		}
		return nil, err
	}
	b, err := json.Marshal(res)
	if err != nil {
		h.t.Fatal(err)
	}
	return b, nil
}

func (h *harness) review(id string) (wire.IdentityVisitsResult, []byte) {
	h.t.Helper()
	b, err := h.command(wire.CmdIdentityVisits, wire.CommandArgs{ID: id})
	if err != nil {
		h.t.Fatal(err)
	}
	var r wire.IdentityVisitsResult
	if err := json.Unmarshal(b, &r); err != nil {
		h.t.Fatal(err)
	}
	return r, b
}

func (h *harness) identities() map[string]string {
	h.t.Helper()
	out := map[string]string{}
	for _, v := range h.visits() {
		out[v.ID] = v.IdentityID
	}
	return out
}

// ofKind is the outbox messages of one kind, oldest first.
func (h *harness) ofKind(kind string) []visit.OutboxMessage {
	h.t.Helper()
	var out []visit.OutboxMessage
	for _, m := range h.outbox() {
		if m.Kind == kind {
			out = append(out, m)
		}
	}
	return out
}

func (h *harness) constraints() []record.Constraint {
	h.t.Helper()
	cs, err := h.st.Constraints(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	return cs
}

// identity_visits lists an identity's visits newest first, cards numbered
// within the reply, with similarities and no card hash or template; a
// visit that later card inserts were folded into lists their transaction
// ids and their cards' numbers.
func TestReviewIdentityVisits(t *testing.T) {
	h := newHarness(t, "", nil, Config{})
	for i, c := range []string{cardA, cardB, cardA, ""} {
		ctx := visit.Context{CardHash: c, TxnID: "T" + string(rune('1'+i))}
		if i == 2 {
			ctx.Coalesced, ctx.CoalescedCards = []string{"T3b", "T3c"}, []string{cardB}
		}
		h.visit(scene{angle: float64(i)}, time.Minute, ctx)
	}
	vs := h.visits()
	x := vs[0].IdentityID
	r, raw := h.review(x)
	if r.Identity != x || r.Total != 4 || len(r.Visits) != 4 || len(r.Apart) != 0 {
		t.Fatalf("review %s", raw)
	}
	wantCards := []int{0, 1, 2, 1} // newest first: no card, A, B, A
	for i, rv := range r.Visits {
		v := vs[3-i]
		if rv.VisitID != v.ID || rv.TxnID != v.Context.TxnID || !rv.TS.Equal(v.Time) || rv.Card != wantCards[i] || rv.Corrected {
			t.Errorf("visit %d: %+v, want %s card %d", i, rv, v.ID, wantCards[i])
		}
		if rv.Similarity == nil || *rv.Similarity < 0.99 || *rv.Similarity > 1 {
			t.Errorf("visit %d: similarity %v", i, rv.Similarity)
		}
		wantTxns, wantOther := "[]", "[]"
		if i == 1 { // T3, with T3b and T3c folded in, card A then B
			wantTxns, wantOther = "[T3b T3c]", "[2]"
		}
		if fmt.Sprint(rv.CoalescedTxnIDs) != wantTxns || fmt.Sprint(rv.CoalescedCards) != wantOther {
			t.Errorf("visit %d: coalesced %v cards %v, want %s %s", i, rv.CoalescedTxnIDs, rv.CoalescedCards, wantTxns, wantOther)
		}
	}
	for _, forbidden := range []string{cardA, cardB, "embedding", "card_hash"} {
		if strings.Contains(string(raw), forbidden) {
			t.Errorf("reply holds %q: %s", forbidden, raw)
		}
	}
	if _, err := h.command(wire.CmdIdentityVisits, wire.CommandArgs{ID: "p-nobody"}); !errors.Is(err, ErrUnknownIdentity) {
		t.Errorf("unknown identity: %v", err)
	}
}

// split_visits moves visits to a new identity at once (store, counts,
// alert rules), keeps them apart through consolidation and a restart, and
// bad input changes nothing.
func TestSplitVisitsCommand(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.db")
	clk := &fixedClock{t: time.Date(2025, 3, 1, 9, 0, 0, 0, time.UTC)}
	h := newHarnessWith(t, path, clk, Config{}, repeat4)
	for i := range 4 {
		h.visit(scene{angle: float64(i)}, time.Minute, visit.Context{})
	}
	h.visit(scene{angle: 90}, time.Minute, visit.Context{}) // someone else
	vs := h.visits()
	x, z := vs[0].IdentityID, vs[4].IdentityID
	if x == z || vs[3].IdentityID != x {
		t.Fatalf("setup: identities %v", h.identities())
	}
	if n := len(h.outbox()); n != 1 {
		t.Fatalf("setup: %d alerts, want 1 (repeat4 at the 4th visit)", n)
	}

	before := h.identities()
	for _, tc := range []struct {
		name  string
		args  wire.CommandArgs
		want  error
		words string
	}{
		{"unknown identity", wire.CommandArgs{ID: "p-nobody", Visits: []string{vs[0].ID}}, ErrUnknownIdentity, "p-nobody"},
		{"unknown visit", wire.CommandArgs{ID: x, Visits: []string{vs[0].ID, "v-nope"}}, ErrUnknownVisit, "v-nope"},
		{"another identity's visit", wire.CommandArgs{ID: x, Visits: []string{vs[0].ID, vs[4].ID}}, nil, "belongs to identity " + `"` + z + `"`},
		{"all visits", wire.CommandArgs{ID: x, Visits: []string{vs[0].ID, vs[1].ID, vs[2].ID, vs[3].ID}}, nil, "at least one must stay"},
	} {
		_, err := h.command(wire.CmdSplitVisits, tc.args)
		if err == nil || tc.want != nil && !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.words) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	if after := h.identities(); !reflect.DeepEqual(before, after) || len(h.constraints()) != 0 || h.ag.Stats().Corrections != 0 {
		t.Fatalf("refused splits changed something: %v -> %v, constraints %v", before, after, h.constraints())
	}

	moved := []string{vs[2].ID, vs[3].ID}
	b, err := h.command(wire.CmdSplitVisits, wire.CommandArgs{ID: x, Visits: moved})
	if err != nil {
		t.Fatal(err)
	}
	var sr wire.SplitResult
	json.Unmarshal(b, &sr)
	y := sr.NewIdentity
	if sr.Identity != x || y == "" || y == x || y == z || sr.VisitsMoved != 2 {
		t.Fatalf("split result %s", b)
	}
	ids := h.identities()
	if ids[vs[0].ID] != x || ids[vs[1].ID] != x || ids[vs[2].ID] != y || ids[vs[3].ID] != y {
		t.Fatalf("after the split: %v", ids)
	}
	for id, n := range map[string]int{x: 2, y: 2} {
		if rec, _ := h.st.Identity(context.Background(), id); rec.Count != 2 {
			t.Errorf("identity %s count %d, want %d", id, rec.Count, n)
		}
	}
	// A summary with the corrected counts is queued at once.
	sums := h.ofKind(KindSummary)
	var s wire.Summary
	if len(sums) != 1 || json.Unmarshal(sums[0].Payload, &s) != nil {
		t.Fatalf("%d summaries queued by the split", len(sums))
	}
	counted := 0
	for _, ic := range s.Identities {
		if ic.ID == x || ic.ID == y {
			counted++
			if ic.Visits.H1 != 2 {
				t.Errorf("summary counts %s: %+v", ic.ID, ic.Visits)
			}
		}
	}
	if counted != 2 {
		t.Errorf("summary lists %+v, want %s and %s", s.Identities, x, y)
	}
	rx, _ := h.review(x)
	ry, _ := h.review(y)
	if !reflect.DeepEqual(rx.Apart, []string{y}) || !reflect.DeepEqual(ry.Apart, []string{x}) {
		t.Errorf("apart: %s %v, %s %v", x, rx.Apart, y, ry.Apart)
	}
	if !ry.Visits[0].Corrected || !ry.Visits[1].Corrected || rx.Visits[0].Corrected {
		t.Errorf("corrected flags: x %+v, y %+v", rx.Visits, ry.Visits)
	}
	if st := h.ag.Stats(); st.Corrections != 1 {
		t.Errorf("corrections %d", st.Corrections)
	}

	// The four visits are one face: consolidation would join them; the
	// analyst's split holds, now and after a restart.
	if err := h.ag.Consolidate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := h.identities(); !reflect.DeepEqual(got, ids) {
		t.Fatalf("consolidation undid the split: %v", got)
	}
	h.close()
	h = newHarnessWith(t, path, clk, Config{}, repeat4)
	if err := h.ag.Consolidate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := h.identities(); !reflect.DeepEqual(got, ids) {
		t.Fatalf("consolidation after a restart undid the split: %v", got)
	}
	// A new visit of the face is assigned normally.
	h.visit(scene{angle: 1.5}, time.Minute, visit.Context{})
	if nv := h.visits()[5]; nv.IdentityID != x && nv.IdentityID != y {
		t.Fatalf("new visit assigned to %q", nv.IdentityID)
	}

	// purge_identity of the new identity leaves the split's constraint
	// naming no visit on one side: it goes.
	if _, err := h.command(wire.CmdPurgeIdentity, wire.CommandArgs{ID: y}); err != nil {
		t.Fatal(err)
	}
	if cs := h.constraints(); len(cs) != 0 {
		t.Fatalf("constraints after purging %s: %+v", y, cs)
	}
	if rx, _ := h.review(x); len(rx.Apart) != 0 {
		t.Fatalf("apart after the purge: %v", rx.Apart)
	}
}

// merge_identities joins two identities at once (an alert the joined
// counts reach is raised), holds through consolidation (which would split
// two faces) and replaces an earlier split's constraint.
func TestMergeIdentitiesCommand(t *testing.T) {
	h := newHarnessWith(t, "", nil, Config{}, repeat4)
	for i := range 4 {
		h.visit(scene{angle: float64(90 * (i % 2))}, time.Minute, visit.Context{})
	}
	vs := h.visits()
	x, y := vs[0].IdentityID, vs[1].IdentityID
	if x == y || len(h.outbox()) != 0 {
		t.Fatalf("setup: %v, %d alerts", h.identities(), len(h.outbox()))
	}
	for _, args := range []wire.CommandArgs{{ID: "p-nobody", Into: x}, {ID: y, Into: "p-nobody"}} {
		if _, err := h.command(wire.CmdMergeIdentities, args); !errors.Is(err, ErrUnknownIdentity) || !strings.Contains(err.Error(), "p-nobody") {
			t.Errorf("merge %+v: %v", args, err)
		}
	}
	b, err := h.command(wire.CmdMergeIdentities, wire.CommandArgs{ID: y, Into: x})
	if err != nil {
		t.Fatal(err)
	}
	var mr wire.MergeResult
	json.Unmarshal(b, &mr)
	if mr != (wire.MergeResult{Identity: x, Merged: y, VisitsMoved: 2}) {
		t.Fatalf("merge result %s", b)
	}
	if _, err := h.st.Identity(context.Background(), y); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("merged identity still stored: %v", err)
	}
	if rec, _ := h.st.Identity(context.Background(), x); rec.Count != 4 {
		t.Fatalf("count %d after the merge", rec.Count)
	}
	ob := h.ofKind(KindAlert)
	var a wire.Alert
	if len(ob) != 1 || json.Unmarshal(ob[0].Payload, &a) != nil || a.IdentityID != x || a.Count != 4 {
		t.Fatalf("after the merge: %d messages, alert %+v; want repeat4 for %s", len(ob), a, x)
	}
	// Two faces 90 degrees apart: consolidation alone would split them.
	if err := h.ag.Consolidate(context.Background()); err != nil {
		t.Fatal(err)
	}
	for v, id := range h.identities() {
		if id != x {
			t.Fatalf("consolidation moved %s to %s", v, id)
		}
	}
	if cs := h.constraints(); len(cs) != 1 || cs[0].Kind != record.ConstraintTogether || len(cs[0].A) != 4 {
		t.Fatalf("constraints %+v", cs)
	}

	// Split the other face off again: the split is newer than the merge.
	b, err = h.command(wire.CmdSplitVisits, wire.CommandArgs{ID: x, Visits: []string{vs[1].ID, vs[3].ID}})
	if err != nil {
		t.Fatal(err)
	}
	var sr wire.SplitResult
	json.Unmarshal(b, &sr)
	kinds := map[string]int{}
	for _, c := range h.constraints() {
		kinds[c.Kind]++
	}
	if kinds[record.ConstraintApart] != 1 || kinds[record.ConstraintTogether] != 2 {
		t.Fatalf("after merge then split: %+v", h.constraints())
	}
	// And merged again: the merge replaces the split's constraint.
	if _, err := h.command(wire.CmdMergeIdentities, wire.CommandArgs{ID: sr.NewIdentity, Into: x}); err != nil {
		t.Fatal(err)
	}
	cs := h.constraints()
	if len(cs) != 1 || cs[0].Kind != record.ConstraintTogether || len(cs[0].A) != 4 {
		t.Fatalf("after merge, split, merge: %+v", cs)
	}
	if err := h.ag.Consolidate(context.Background()); err != nil {
		t.Fatal(err)
	}
	for v, id := range h.identities() {
		if id != x {
			t.Fatalf("consolidation moved %s to %s", v, id)
		}
	}
	if st := h.ag.Stats(); st.Corrections != 3 {
		t.Errorf("corrections %d, want 3", st.Corrections)
	}
}

// A merge goes through consolidation's commit path: the identity merged
// away hands its cooldowns to the one it joined, so the person alerted as
// Y is not alerted again as X right after the merge.
func TestMergeIdentitiesCarriesCooldown(t *testing.T) {
	h := newHarnessWith(t, "", nil, Config{}, repeat4)
	h.visit(scene{angle: 0}, time.Minute, visit.Context{})
	for range 4 {
		h.visit(scene{angle: 90}, time.Minute, visit.Context{})
	}
	vs := h.visits()
	x, y := vs[0].IdentityID, vs[1].IdentityID
	if ob := h.outbox(); x == y || len(ob) != 1 {
		t.Fatalf("setup: %v, %d alerts (want Y's)", h.identities(), len(ob))
	}
	if _, err := h.command(wire.CmdMergeIdentities, wire.CommandArgs{ID: y, Into: x}); err != nil {
		t.Fatal(err)
	}
	if rec, _ := h.st.Identity(context.Background(), x); rec.Count != 5 {
		t.Fatalf("count %d after the merge", rec.Count)
	}
	if ob := h.ofKind(KindAlert); len(ob) != 1 {
		t.Fatalf("%d alerts after the merge, want still 1: X inherits Y's cooldown", len(ob))
	}
	if at, ok, _ := h.st.LastAlert(context.Background(), "repeat4", x); !ok || at.IsZero() {
		t.Fatal("X has no cooldown after the merge")
	}
}

// An identity with more visits than a reply lists: the newest
// wire.MaxReviewVisits, and the total.
func TestReviewListsTheNewest(t *testing.T) {
	h := newHarness(t, "", nil, Config{})
	n := wire.MaxReviewVisits + 2
	for i := range n {
		h.visit(scene{angle: float64(i%5) * 0.5}, time.Minute, visit.Context{})
	}
	vs := h.visits()
	r, raw := h.review(vs[0].IdentityID)
	if r.Total != n || len(r.Visits) != wire.MaxReviewVisits || r.Visits[0].VisitID != vs[n-1].ID ||
		r.Visits[wire.MaxReviewVisits-1].VisitID != vs[2].ID {
		t.Fatalf("review of %d visits: total %d, %d listed (%.200s...)", n, r.Total, len(r.Visits), raw)
	}
}

// An analyst's split raises no alert for the new identity on visits
// already alerted on under the identity they leave: the new identity
// inherits its cooldowns (and no rule runs at the split), so the person's
// next visit inside the cooldown raises none either.
func TestSplitVisitsRaisesNoAlertAgain(t *testing.T) {
	h := newHarness(t, "", nil, Config{})
	for i := range 6 {
		h.visit(scene{angle: float64(i) * 0.5}, time.Minute, visit.Context{CardHash: strings.Repeat(string(rune('a'+i)), 64)})
	}
	vs := h.visits()
	x := vs[0].IdentityID
	alerts := func() map[string]int {
		out := map[string]int{}
		for _, m := range h.ofKind(KindAlert) {
			var a wire.Alert
			if err := json.Unmarshal(m.Payload, &a); err != nil {
				t.Fatal(err)
			}
			out[a.IdentityID+"/"+a.Rule]++
		}
		return out
	}
	before := alerts()
	if before[x+"/repeat"] != 1 || before[x+"/cards"] != 1 || len(before) != 2 {
		t.Fatalf("alerts before the split: %v, want one of repeat and one of cards for %s", before, x)
	}
	b, err := h.command(wire.CmdSplitVisits, wire.CommandArgs{ID: x, Visits: []string{vs[3].ID, vs[4].ID, vs[5].ID}})
	if err != nil {
		t.Fatal(err)
	}
	var sr wire.SplitResult
	json.Unmarshal(b, &sr)
	if got := alerts(); !reflect.DeepEqual(got, before) {
		t.Fatalf("alerts after the split: %v, want those before it %v", got, before)
	}
	for _, rule := range []string{"repeat", "cards"} {
		xat, xok, _ := h.st.LastAlert(context.Background(), rule, x)
		yat, yok, err := h.st.LastAlert(context.Background(), rule, sr.NewIdentity)
		if err != nil || !xok || !yok || !yat.Equal(xat) {
			t.Errorf("%s cooldown: %s %v %v, new %s %v %v (%v), want the split identity's", rule, x, xat, xok, sr.NewIdentity, yat, yok, err)
		}
	}
	// The split-off person comes back inside the repeat cooldown.
	h.visit(scene{angle: 2.5}, time.Minute, visit.Context{})
	if got := h.visits(); got[len(got)-1].IdentityID != sr.NewIdentity {
		t.Skipf("the next visit went to %s, not the split-off %s", got[len(got)-1].IdentityID, sr.NewIdentity)
	}
	if got := alerts(); got[sr.NewIdentity+"/repeat"] != 0 {
		t.Errorf("alerts after the next visit: %v, want no repeat alert inside the inherited cooldown", got)
	}
}

// corrected marks the visits a correction moved, not every visit of the
// identity it touched: after a merge, those of the identity merged away;
// after a split, those moved off (and, on the side that stayed, those an
// earlier merge moved in).
func TestReviewMarksTheMovedVisits(t *testing.T) {
	h := newHarness(t, "", nil, Config{})
	for i := range 4 {
		h.visit(scene{angle: float64(90 * (i % 2))}, time.Minute, visit.Context{})
	}
	vs := h.visits()
	x, y := vs[0].IdentityID, vs[1].IdentityID
	if x == y {
		t.Fatalf("setup: %v", h.identities())
	}
	marked := func(id string) map[string]bool {
		t.Helper()
		r, _ := h.review(id)
		out := map[string]bool{}
		for _, v := range r.Visits {
			out[v.VisitID] = v.Corrected
		}
		return out
	}
	if _, err := h.command(wire.CmdMergeIdentities, wire.CommandArgs{ID: y, Into: x}); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{vs[0].ID: false, vs[1].ID: true, vs[2].ID: false, vs[3].ID: true}
	if got := marked(x); !reflect.DeepEqual(got, want) {
		t.Fatalf("after merging %s into %s: corrected %v, want %v", y, x, got, want)
	}
	b, err := h.command(wire.CmdSplitVisits, wire.CommandArgs{ID: x, Visits: []string{vs[2].ID}})
	if err != nil {
		t.Fatal(err)
	}
	var sr wire.SplitResult
	json.Unmarshal(b, &sr)
	if got := marked(sr.NewIdentity); !reflect.DeepEqual(got, map[string]bool{vs[2].ID: true}) {
		t.Errorf("split-off identity: corrected %v", got)
	}
	want = map[string]bool{vs[0].ID: false, vs[1].ID: true, vs[3].ID: true}
	if got := marked(x); !reflect.DeepEqual(got, want) {
		t.Errorf("after the split, %s: corrected %v, want %v", x, got, want)
	}
	// The marks are stored: a restarted agent gives the same.
	h.close()
	h = newHarness(t, h.path, h.clk, Config{})
	if got := marked(x); !reflect.DeepEqual(got, want) {
		t.Errorf("after a restart, %s: corrected %v, want %v", x, got, want)
	}
}
