package agent

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/store/record"
	"github.com/periocular/atm-agent/sync/wire"
)

// Kinds of analysts' corrections (CorrectionObserver, the log).
const (
	CorrectionSplit = "split"
	CorrectionMerge = "merge"
)

// CorrectionObserver is an optional Observer capability: Corrected is
// called once per analyst's correction applied (kind CorrectionSplit or
// CorrectionMerge), with the visits it moved.
type CorrectionObserver interface {
	Corrected(kind string, visits int)
}

// Errors of the review commands, compared with errors.Is.
var (
	ErrUnknownIdentity = identity.ErrUnknownIdentity
	ErrUnknownVisit    = identity.ErrUnknownVisit
)

// epoch: every stored visit is after it (the store refuses times <= 0).
var epoch = time.Unix(0, 0)

// loadConstraints reads the analysts' corrections from the store into the
// agent and the engine; called on the worker (or before it starts).
func (a *Agent) loadConstraints(ctx context.Context) error {
	cs, err := a.d.Store.Constraints(ctx)
	if err != nil {
		return fmt.Errorf("load identity corrections: %w", err)
	}
	a.setConstraints(cs)
	return nil
}

// setConstraints installs cs as the agent's copy of the stored constraints
// and gives them to the engine.
func (a *Agent) setConstraints(cs []record.Constraint) {
	a.cons = cs
	ec := make([]identity.Constraint, 0, len(cs))
	for _, c := range cs {
		ec = append(ec, identity.Constraint{Apart: c.Kind == record.ConstraintApart, A: c.A, B: c.B})
	}
	a.d.Identities.SetConstraints(ec)
}

// storedVisits returns the stored visits of an identity, oldest first,
// or ErrUnknownIdentity when it has none.
func (a *Agent) storedVisits(ctx context.Context, id string) ([]visit.Visit, error) {
	vs, err := a.d.Store.VisitsSince(ctx, id, epoch)
	if err != nil {
		return nil, fmt.Errorf("identity %q: %w", id, err)
	}
	if len(vs) == 0 {
		return nil, wire.WithCode(wire.CodeNotFound, fmt.Errorf("identity %q: %w", id, ErrUnknownIdentity))
	}
	return vs, nil
}

// IdentityVisits lists an identity's visits for an analyst's review
// (identity_visits): newest first, at most wire.MaxReviewVisits, cards
// numbered within the reply, no template and no card data.
func (a *Agent) IdentityVisits(ctx context.Context, id string) (wire.IdentityVisitsResult, error) {
	return doResult(ctx, a, "identity visits", func(ctx context.Context) (wire.IdentityVisitsResult, error) {
		return a.identityVisits(ctx, id)
	})
}

// doResult is do for a task with a result.
func doResult[T any](ctx context.Context, a *Agent, name string, fn func(ctx context.Context) (T, error)) (T, error) {
	var res T
	err := a.do(ctx, name, func(ctx context.Context) error {
		var err error
		res, err = fn(ctx)
		return err
	})
	return res, err
}

func (a *Agent) identityVisits(ctx context.Context, id string) (wire.IdentityVisitsResult, error) {
	vs, err := a.storedVisits(ctx, id)
	if err != nil {
		return wire.IdentityVisitsResult{}, err
	}
	res := wire.IdentityVisitsResult{Identity: id, Total: len(vs), Visits: []wire.ReviewVisit{}}
	listed := slices.Clone(vs)
	slices.Reverse(listed)
	listed = listed[:min(len(listed), wire.MaxReviewVisits)]
	ids := make([]string, len(listed))
	for i, v := range listed {
		ids[i] = v.ID
	}
	sim := a.d.Identities.Similarities(id, ids)
	corrected := map[string]bool{}
	for _, c := range a.cons {
		// The visits an analyst's correction moved: those a split moved
		// off (an apart's A), those a merge brought in (a together's
		// Moved), not those that were there already.
		placed := c.A
		if c.Kind == record.ConstraintTogether {
			placed = c.Moved
		}
		for _, v := range placed {
			corrected[v] = true
		}
	}
	cards := map[string]int{}
	for _, v := range listed {
		rv := wire.ReviewVisit{VisitID: v.ID, TxnID: v.Context.TxnID, TS: v.Time.UTC(), Masked: v.Mask == visit.Masked,
			Corrected: corrected[v.ID]}
		for k, h := range v.Context.Cards() {
			n, ok := cards[h]
			if !ok {
				n = len(cards) + 1
				cards[h] = n
			}
			if k == 0 {
				rv.Card = n
			} else {
				rv.CoalescedCards = append(rv.CoalescedCards, n)
			}
		}
		rv.CoalescedTxnIDs = slices.Clone(v.Context.Coalesced)
		if s, ok := sim[v.ID]; ok {
			rv.Similarity = &s
		}
		res.Visits = append(res.Visits, rv)
	}
	mine := make(map[string]bool, len(vs))
	for _, v := range vs {
		mine[v.ID] = true
	}
	apart := map[string]bool{}
	for _, c := range a.cons {
		if c.Kind != record.ConstraintApart {
			continue
		}
		for _, sides := range [2][2][]string{{c.A, c.B}, {c.B, c.A}} {
			if !slices.ContainsFunc(sides[0], func(v string) bool { return mine[v] }) {
				continue
			}
			for _, v := range sides[1] {
				if o := a.identityOf(ctx, v); o != "" && o != id {
					apart[o] = true
				}
			}
		}
	}
	res.Apart = sortedKeys(apart)
	return res, nil
}

// identityOf is the identity of a stored visit ("" when none).
func (a *Agent) identityOf(ctx context.Context, visitID string) string {
	if id, ok := a.d.Identities.IdentityOf(visitID); ok {
		return id
	}
	v, err := a.d.Store.Visit(ctx, visitID)
	if err != nil {
		return ""
	}
	return v.IdentityID
}

// SplitVisits moves visits of identity id to a new identity and keeps the
// two groups apart from then on (split_visits, an analyst's correction).
// Every visit must belong to id and one must stay; otherwise nothing
// changes.
func (a *Agent) SplitVisits(ctx context.Context, id string, visits []string) (wire.SplitResult, error) {
	res, err := doResult(ctx, a, "split visits", func(ctx context.Context) (wire.SplitResult, error) {
		return a.splitVisits(ctx, id, visits)
	})
	a.refused(CorrectionSplit, err)
	return res, err
}

func (a *Agent) splitVisits(ctx context.Context, id string, visits []string) (wire.SplitResult, error) {
	vs, err := a.storedVisits(ctx, id)
	if err != nil {
		return wire.SplitResult{}, fmt.Errorf("split: %w", err)
	}
	move := map[string]bool{}
	for _, v := range visits {
		move[v] = true
	}
	var stay []string
	mine := make(map[string]bool, len(vs))
	for _, v := range vs {
		mine[v.ID] = true
		if !move[v.ID] {
			stay = append(stay, v.ID)
		}
	}
	for _, v := range visits {
		if mine[v] {
			continue
		}
		if o := a.identityOf(ctx, v); o != "" {
			// Moved since the review (consolidation, another
			// correction): the analyst reviews again.
			return wire.SplitResult{}, wire.WithCode(wire.CodeConflict,
				fmt.Errorf("split identity %q: visit %q belongs to identity %q", id, v, o))
		}
		return wire.SplitResult{}, wire.WithCode(wire.CodeNotFound, fmt.Errorf("split identity %q: visit %q: %w", id, v, ErrUnknownVisit))
	}
	if len(stay) == 0 {
		return wire.SplitResult{}, wire.WithCode(wire.CodeConflict,
			fmt.Errorf("split identity %q: all its %d visits would move; at least one must stay (merge_identities joins identities)", id, len(vs)))
	}
	ch, err := a.d.Identities.Split(id, visits)
	if err != nil {
		// The store holds the visits, the engine not all of them (a
		// template of another model): nothing was changed.
		return wire.SplitResult{}, wire.WithCode(wire.CodeConflict,
			fmt.Errorf("%w (only visits whose template the identity engine holds can be moved)", err))
	}
	moved := ch.VisitIDs
	put := []record.Constraint{{ID: newVisitID(), Kind: record.ConstraintApart, Created: a.clk.Now().UTC(), A: moved, B: stay}}
	var del []string
	inMoved := func(v string) bool { return move[v] }
	for _, c := range a.cons {
		if c.Kind != record.ConstraintTogether || !slices.ContainsFunc(c.A, inMoved) {
			continue
		}
		// The split is the newer decision: a merge that kept these visits
		// together keeps each side together, no longer both.
		left := slices.DeleteFunc(slices.Clone(c.A), func(v string) bool { return !move[v] })
		if len(left) == len(c.A) {
			continue // all of them moved: still together
		}
		rest := slices.DeleteFunc(slices.Clone(c.A), inMoved)
		del = append(del, c.ID)
		for _, part := range [][]string{rest, left} {
			if len(part) >= 2 {
				put = append(put, record.Constraint{ID: newVisitID(), Kind: record.ConstraintTogether, Created: c.Created, A: part,
					Moved: slices.DeleteFunc(slices.Clone(c.Moved), func(v string) bool { return !slices.Contains(part, v) })})
			}
		}
	}
	if err := a.commitCorrection(ctx, CorrectionSplit, ch, put, del); err != nil {
		return wire.SplitResult{}, err
	}
	return wire.SplitResult{Identity: id, NewIdentity: ch.To, VisitsMoved: len(moved)}, nil
}

// MergeIdentities moves every visit of identity id into identity into and
// keeps them together from then on (merge_identities, an analyst's
// correction). An earlier split that kept the two apart is replaced.
func (a *Agent) MergeIdentities(ctx context.Context, id, into string) (wire.MergeResult, error) {
	res, err := doResult(ctx, a, "merge identities", func(ctx context.Context) (wire.MergeResult, error) {
		return a.mergeIdentities(ctx, id, into)
	})
	a.refused(CorrectionMerge, err)
	return res, err
}

func (a *Agent) mergeIdentities(ctx context.Context, id, into string) (wire.MergeResult, error) {
	if id == into {
		return wire.MergeResult{}, wire.WithCode(wire.CodeBadCommand, fmt.Errorf("merge identity %q into itself", id))
	}
	from, err := a.storedVisits(ctx, id)
	if err != nil {
		return wire.MergeResult{}, fmt.Errorf("merge: %w", err)
	}
	to, err := a.storedVisits(ctx, into)
	if err != nil {
		return wire.MergeResult{}, fmt.Errorf("merge into: %w", err)
	}
	ch, err := a.d.Identities.Merge(id, into)
	if err != nil {
		return wire.MergeResult{}, wire.WithCode(wire.CodeConflict,
			fmt.Errorf("%w (only identities the identity engine holds can be merged)", err))
	}
	// Stored visits the engine does not hold (another model's templates)
	// move too: the identity merged away must be left without visits.
	union := map[string]bool{}
	ch.VisitIDs = ch.VisitIDs[:0]
	for _, v := range from {
		ch.VisitIDs = append(ch.VisitIDs, v.ID)
		union[v.ID] = true
	}
	for _, v := range to {
		union[v.ID] = true
	}
	inUnion := func(v string) bool { return union[v] }
	now := a.clk.Now().UTC()
	var put []record.Constraint
	var del []string
	together := map[string]bool{}
	for v := range union {
		together[v] = true
	}
	// The visits this merge moves, and those earlier merges moved.
	moved := map[string]bool{}
	for _, v := range from {
		moved[v.ID] = true
	}
	for _, c := range a.cons {
		switch {
		case c.Kind == record.ConstraintTogether && slices.ContainsFunc(c.A, inUnion):
			// Absorbed by the new one.
			for _, v := range c.A {
				together[v] = true
			}
			for _, v := range c.Moved {
				moved[v] = true
			}
			del = append(del, c.ID)
		case c.Kind == record.ConstraintApart && slices.ContainsFunc(c.A, inUnion) && slices.ContainsFunc(c.B, inUnion):
			// An earlier split kept part of these apart: the merge is the
			// newer decision. What it kept apart outside the merged
			// visits still holds: A\U from B, and A∩U from B\U.
			del = append(del, c.ID)
			aOut := slices.DeleteFunc(slices.Clone(c.A), inUnion)
			aIn := slices.DeleteFunc(slices.Clone(c.A), func(v string) bool { return !union[v] })
			bOut := slices.DeleteFunc(slices.Clone(c.B), inUnion)
			for _, p := range [][2][]string{{aOut, c.B}, {aIn, bOut}} {
				if len(p[0]) > 0 && len(p[1]) > 0 {
					put = append(put, record.Constraint{ID: newVisitID(), Kind: record.ConstraintApart, Created: c.Created, A: p[0], B: p[1]})
				}
			}
		}
	}
	put = append(put, record.Constraint{ID: newVisitID(), Kind: record.ConstraintTogether, Created: now, A: sortedKeys(together),
		Moved: sortedKeys(moved)})
	if err := a.commitCorrection(ctx, CorrectionMerge, ch, put, del); err != nil {
		return wire.MergeResult{}, err
	}
	return wire.MergeResult{Identity: into, Merged: id, VisitsMoved: len(ch.VisitIDs)}, nil
}

// commitCorrection commits a correction the engine has applied as
// consolidation's changes are (relabels, identity upserts and deletions,
// the cooldowns of a merged identity carried), with the constraints, in one
// transaction; then, after a merge, the alert rules run for the identity
// that received visits; and a summary is queued. When the commit fails the
// engine is rebuilt from the store.
//
// A split hands the split identity's cooldowns to the new identity and
// runs no rule: the visits it moves were counted, and alerted on, under the
// identity they leave, and a split only takes visits away (no count
// crosses a threshold it had not crossed). Without that the new identity
// was alerted at once on visits already alerted on. The new identity's
// later visits are evaluated as always, under those cooldowns.
func (a *Agent) commitCorrection(ctx context.Context, kind string, ch identity.Change, put []record.Constraint, del []string) error {
	c := consolidationCommit([]identity.Change{ch}, a.d.Identities, a.d.Model)
	c.Constraints, c.DeleteConstraints = put, del
	if kind == CorrectionSplit {
		c.CarryCooldowns = []record.CooldownCarry{{From: ch.From, To: ch.To}}
	}
	_, err := a.d.Store.CommitVisit(ctx, c)
	a.commitResult("correction", err)
	if err != nil {
		a.resync(ctx)
		return fmt.Errorf("%s: commit: %w", kind, err)
	}
	cs := slices.DeleteFunc(slices.Clone(a.cons), func(c record.Constraint) bool { return slices.Contains(del, c.ID) })
	a.setConstraints(append(cs, put...))
	a.count(func(s *Stats) { s.Corrections++ })
	if o, ok := a.obs.(CorrectionObserver); ok {
		o.Corrected(kind, len(ch.VisitIDs))
	}
	a.log.Info("identity corrected by an analyst", "kind", kind, "from", ch.From, "to", ch.To, "visits", len(ch.VisitIDs),
		"constraints_stored", len(put), "constraints_replaced", len(del))
	if kind != CorrectionSplit {
		a.alertAfterConsolidation(ctx, changeTargets([]identity.Change{ch}))
	}
	// The dashboards see the corrected counts now, not at the next
	// periodic summary (an unsent older summary is superseded).
	if err := a.publishSummary(ctx); err != nil {
		a.log.Error("summary after a correction", "err", err)
	}
	return nil
}

// refused logs a correction that was not applied (nothing changed).
func (a *Agent) refused(kind string, err error) {
	if err != nil {
		a.log.Warn("identity correction refused, nothing changed", "kind", kind, "err", err)
	}
}
