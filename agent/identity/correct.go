package identity

import (
	"errors"
	"fmt"
	"slices"
)

// Errors of the analysts' corrections (Split, Merge), compared with
// errors.Is.
var (
	ErrUnknownIdentity = errors.New("unknown identity")
	ErrUnknownVisit    = errors.New("unknown visit")
)

// Constraint is an analyst's correction that consolidation respects: with
// Apart, no visit of A is ever grouped with a visit of B (a split);
// without, the visits of A always stay in one identity (a merge; B
// unused). Visits the engine does not hold are ignored.
type Constraint struct {
	Apart bool
	A, B  []string
}

// SetConstraints replaces the constraints consolidation respects. They
// survive Restore (they name visits, not the engine's rows).
func (e *Engine) SetConstraints(cs []Constraint) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cons = make([]Constraint, len(cs))
	for i, c := range cs {
		e.cons[i] = Constraint{Apart: c.Apart, A: slices.Clone(c.A), B: slices.Clone(c.B)}
	}
	e.bumpGen() // a plan made under other constraints must not be applied
}

// planConstraints are the constraints resolved to member rows for one plan.
type planConstraints struct {
	together [][]int32
	apart    [][2][]int32
}

// resolveConstraints maps the constraints to member rows; e.mu must be
// held. A constraint left constraining nothing among the rows is dropped.
func (e *Engine) resolveConstraints() planConstraints {
	var pc planConstraints
	rows := func(vs []string) []int32 {
		var out []int32
		for _, v := range vs {
			if i, ok := e.findVisit(v); ok {
				out = append(out, int32(i))
			}
		}
		return out
	}
	for _, c := range e.cons {
		a := rows(c.A)
		switch {
		case !c.Apart && len(a) >= 2:
			pc.together = append(pc.together, a)
		case c.Apart && len(a) > 0:
			if b := rows(c.B); len(b) > 0 {
				pc.apart = append(pc.apart, [2][]int32{a, b})
			}
		}
	}
	return pc
}

// joinTogether gives the visits of each together constraint one label
// (level 1 may have cut them apart), and renumbers.
func joinTogether(labels []int, together [][]int32) []int {
	if len(together) == 0 {
		return labels
	}
	k := 0
	for _, l := range labels {
		k = max(k, l+1)
	}
	parent := make([]int, k)
	for i := range parent {
		parent[i] = i
	}
	var find func(int) int
	find = func(x int) int {
		for parent[x] != x {
			parent[x] = parent[parent[x]]
			x = parent[x]
		}
		return x
	}
	for _, ms := range together {
		r := find(labels[ms[0]])
		for _, i := range ms[1:] {
			if o := find(labels[i]); o != r {
				parent[o] = r
			}
		}
	}
	out := make([]int, len(labels))
	for i, l := range labels {
		out[i] = find(l)
	}
	return renumber(out)
}

// apartTags marks, per level-2 group, the sides of apart constraints its
// visits are on (bit 1: side A, bit 2: side B).
type apartTags map[int32]uint8

// conflicts says whether joining two groups would group a visit of one
// side of an apart constraint with one of the other.
func (t apartTags) conflicts(o apartTags) bool {
	if len(o) < len(t) {
		t, o = o, t
	}
	for c, s := range t {
		if x := o[c]; s != 0 && x != 0 && s|x == 3 {
			return true
		}
	}
	return false
}

// Split moves visits of identity from to a new identity (an analyst's
// split): at least one visit must stay. It returns the change as
// consolidation reports one. The caller keeps the two groups apart with a
// Constraint.
func (e *Engine) Split(from string, visitIDs []string) (Change, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	w, ok := e.byID[from]
	if !ok {
		return Change{}, fmt.Errorf("split identity %q: %w", from, ErrUnknownIdentity)
	}
	id := e.ids[w]
	move := map[int32]bool{}
	for _, v := range visitIDs {
		i, ok := e.findVisit(v)
		if !ok {
			return Change{}, fmt.Errorf("split identity %q: visit %q: %w", from, v, ErrUnknownVisit)
		}
		if e.who[i] != w {
			return Change{}, fmt.Errorf("split identity %q: visit %q belongs to identity %q", from, v, e.ids[e.who[i]].id)
		}
		move[int32(i)] = true
	}
	if len(move) == 0 {
		return Change{}, fmt.Errorf("split identity %q: no visit to move", from)
	}
	if len(move) == len(id.members) {
		return Change{}, fmt.Errorf("split identity %q: all its %d visits would move; at least one must stay", from, len(id.members))
	}
	var stay, moved []int32
	for _, i := range id.members {
		if move[i] {
			moved = append(moved, i)
		} else {
			stay = append(stay, i)
		}
	}
	created := e.tm[moved[0]]
	for _, i := range moved {
		if e.tm[i].Before(created) {
			created = e.tm[i]
		}
	}
	nw := e.newIdent(created)
	nid := e.ids[nw]
	id.members, nid.members = stay, moved
	e.recompute(id, true)
	e.recompute(nid, false)
	e.setIdents(e.ids)
	e.bumpGen()
	ch := Change{Kind: Split, From: from, To: nid.id}
	for _, i := range moved {
		ch.VisitIDs = append(ch.VisitIDs, e.vid[i])
	}
	return ch, nil
}

// Merge moves every visit of identity from into identity into (an
// analyst's merge); from no longer exists. It returns the change as
// consolidation reports one. The caller keeps the visits together with a
// Constraint.
func (e *Engine) Merge(from, into string) (Change, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	wf, ok := e.byID[from]
	if !ok {
		return Change{}, fmt.Errorf("merge identity %q: %w", from, ErrUnknownIdentity)
	}
	wi, ok := e.byID[into]
	if !ok {
		return Change{}, fmt.Errorf("merge into identity %q: %w", into, ErrUnknownIdentity)
	}
	if wf == wi {
		return Change{}, fmt.Errorf("merge identity %q into itself", from)
	}
	f, t := e.ids[wf], e.ids[wi]
	ch := Change{Kind: Merge, From: from, To: into}
	for _, i := range f.members {
		ch.VisitIDs = append(ch.VisitIDs, e.vid[i])
	}
	t.members = append(t.members, f.members...)
	slices.Sort(t.members)
	e.recompute(t, true)
	e.setIdents(slices.DeleteFunc(slices.Clone(e.ids), func(x *ident) bool { return x == f }))
	e.bumpGen()
	return ch, nil
}

// Members returns the visit ids of an identity, in arrival order.
func (e *Engine) Members(identityID string) ([]string, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	w, ok := e.byID[identityID]
	if !ok {
		return nil, false
	}
	out := make([]string, 0, len(e.ids[w].members))
	for _, i := range e.ids[w].members {
		out = append(out, e.vid[i])
	}
	return out, true
}

// Similarities returns, for each of visitIDs the engine holds in identity
// identityID, its best cosine similarity to the identity's other visits
// among the pairs the engine compares (by their mask states); a visit with
// no such pair is absent.
func (e *Engine) Similarities(identityID string, visitIDs []string) map[string]float64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string]float64{}
	w, ok := e.byID[identityID]
	if !ok {
		return out
	}
	ms := e.ids[w].members
	for _, v := range visitIDs {
		i, ok := e.findVisit(v)
		if !ok || e.who[i] != w {
			continue
		}
		best, found := -2.0, false
		for _, j := range ms {
			if int(j) == i || e.sp.inv[pairType(e.sp.cls[i], e.sp.cls[j])] == 0 {
				continue
			}
			best, found = max(best, float64(dot(e.sp.row(i), e.sp.row(int(j))))), true
		}
		if found {
			out[v] = min(1, max(-1, best))
		}
	}
	return out
}
