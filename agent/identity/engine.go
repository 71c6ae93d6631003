package identity

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
)

// Status of an identity.
type Status string

const (
	// Pending: seen, not yet confirmed by consistent repeat visits.
	Pending Status = "pending"
	// Confirmed: at least ConfirmVisits visits, each within threshold of
	// another member.
	Confirmed Status = "confirmed"
)

// Observation is one visit offered to the engine.
type Observation struct {
	VisitID   string
	Time      time.Time
	Embedding []float32 // normalised by the engine if it is not already
	Mask      visit.MaskState
}

// Assignment is the engine's decision about one visit.
type Assignment struct {
	IdentityID string
	// Distance is the mean cosine distance to the identity's compared
	// members (like-with-like when there are any); 0 for a new identity.
	Distance float32
	New      bool   // a new pending identity was created
	Status   Status // status after this visit
	// NowConfirmed: this visit confirmed the identity.
	NowConfirmed bool
}

// Identity is a read-only view of one identity.
type Identity struct {
	ID         string    `json:"id"`
	Status     Status    `json:"status"`
	Confidence float64   `json:"confidence"` // in [0,1]; 0 for a single visit
	Created    time.Time `json:"created"`
	FirstSeen  time.Time `json:"first_seen"`
	LastSeen   time.Time `json:"last_seen"`
	Visits     int       `json:"visits"`
	Masked     int       `json:"masked"` // visits with a masked face
}

// ChangeKind says what consolidation did to visits of an identity.
type ChangeKind string

const (
	// Merge: identity From no longer exists; its visits joined identity To,
	// which existed before.
	Merge ChangeKind = "merge"
	// Split: identity From still exists; some of its visits left for To.
	Split ChangeKind = "split"
	// Relabel: identity From no longer exists; its visits went to a new
	// identity To.
	Relabel ChangeKind = "relabel"
)

// Change is one group of visits that consolidation moved from one identity to
// another.
type Change struct {
	Kind     ChangeKind `json:"kind"`
	From     string     `json:"from"`
	To       string     `json:"to"`
	VisitIDs []string   `json:"visit_ids"`
}

type ident struct {
	id         string
	seq        uint64
	created    time.Time
	status     Status
	members    []int32
	first      time.Time
	last       time.Time
	masked     int
	sumL, sumM float64 // sums of normalised intra-identity distances
	nL, nM     int
	cnt        [2]int      // members per mask class
	ent        [2]int32    // centroid table slot per mask class, -1 if none
	cen        [2]centroid // per mask class: sum, sketch, cutoffs
	dirty      bool        // members changed: cen must be recomputed
}

// Engine assigns visits to identities online and consolidates them. It is
// safe for concurrent use.
type Engine struct {
	mu    sync.Mutex
	cfg   Config
	dim   int
	newID IDGenerator
	sp    *space
	vid   []string
	tm    []time.Time
	mask  []visit.MaskState
	who   []int32 // index into ids
	lnk   []bool  // member has an intra-identity match
	ids   []*ident
	byID  map[string]int32
	vidx  map[string]int32 // visit id -> member index
	seq   uint64
	cen   [2]centroids // per mask class: identity sums for assignment
	cbuf  []int32
	q2    [sketchWords]uint64 // second sketch of the visit being assigned
	q2ok  bool
	// gen counts changes that renumber or move stored visits (consolidation,
	// retention, removal, restore); a consolidation plan from an older
	// generation no longer applies.
	gen uint64
	// planHi is the most visits a plan of this generation covers: removing
	// only visits at or past it leaves those plans valid.
	planHi int
	// planning counts consolidation plans in flight; planRead is the most
	// rows they read. Rows below it are never rewritten in place (nor,
	// after a truncation, by the next Assign) while planning > 0.
	planning int
	planRead int
	// cons are the analysts' corrections consolidation respects
	// (SetConstraints).
	cons []Constraint
}

// Option configures an Engine.
type Option func(*Engine)

// WithIDGenerator replaces RandomID, e.g. with SequentialIDs in tests.
func WithIDGenerator(g IDGenerator) Option { return func(e *Engine) { e.newID = g } }

// New returns an empty engine for embeddings of dim dimensions.
func New(cfg Config, dim int, opts ...Option) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if dim <= 0 {
		return nil, fmt.Errorf("identity engine: dimension %d", dim)
	}
	e := &Engine{cfg: cfg, dim: dim, newID: RandomID, byID: map[string]int32{}, vidx: map[string]int32{}}
	for _, o := range opts {
		o(e)
	}
	e.sp = newSpace(dim, cfg.Thresholds, cfg.Exact)
	return e, nil
}

// Len is the number of stored visits.
func (e *Engine) Len() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.vid)
}

// Assign decides the identity of one visit and stores it: the nearest
// identity within the cut of the pair type, else a new pending identity.
func (e *Engine) Assign(o Observation) (Assignment, error) {
	as, _, err := e.assign(o, true)
	return as, err
}

// Join is Assign for a visit that may join an identity but must not found
// one (too poor a face, vision.new_identity_quality): the same nearest
// identity within the same cut, or, when none is, nothing stored and ok
// false. The agent offers such a visit again at each consolidation, when
// identities founded or grown since may hold its person.
func (e *Engine) Join(o Observation) (as Assignment, ok bool, err error) {
	return e.assign(o, false)
}

// assign is Assign, founding an identity only when found is true; ok says
// whether the visit was stored.
func (e *Engine) assign(o Observation, found bool) (Assignment, bool, error) {
	if len(o.Embedding) != e.dim {
		return Assignment{}, false, fmt.Errorf("assign visit %q: embedding has %d dimensions, want %d", o.VisitID, len(o.Embedding), e.dim)
	}
	x, err := normalized(o.Embedding)
	if err != nil {
		return Assignment{}, false, fmt.Errorf("assign visit %q: %w", o.VisitID, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, dup := e.findVisit(o.VisitID); dup && o.VisitID != "" {
		return Assignment{}, false, fmt.Errorf("assign visit %q: already stored", o.VisitID)
	}
	sp := e.sp
	cx := maskClass(o.Mask)
	var sk [sketchWords]uint64
	sp.skr.sketch(x, sk[:], sp.buf)

	// Candidate identities: those whose sums may be within threshold.
	n := sp.n()
	cand := e.candidateIdents(x, cx, &sk, e.cbuf)
	// Exact linkage to every candidate; the smallest <= 1 wins, ties to the
	// older identity.
	best, bestKey, bestDist := int32(-1), math.Inf(1), 0.0
	var bestD []float64
	for _, w := range cand {
		id := e.ids[w]
		ds := make([]float64, len(id.members))
		var sL, sM, dL, dM float64
		var kL, kM int
		for k, j := range id.members {
			pt := pairType(sp.cls[j], cx)
			d := 1 - float64(dot(sp.row(int(j)), x))
			ds[k] = d
			if pt == ptMU {
				sM += d * sp.inv[ptMU]
				dM += d
				kM++
			} else {
				sL += d * sp.inv[pt]
				dL += d
				kL++
			}
		}
		var key, dist float64
		switch {
		case kL > 0:
			key, dist = sL/float64(kL), dL/float64(kL)
		case sp.muOn && kM > 0:
			key, dist = sM/float64(kM), dM/float64(kM)
		default:
			continue
		}
		if key <= 1 && (key < bestKey || key == bestKey && id.seq < e.ids[best].seq) {
			best, bestKey, bestDist, bestD = w, key, dist, ds
		}
	}

	if best < 0 && !found {
		return Assignment{}, false, nil
	}
	i := int32(n)
	sp.vec = append(sp.vec, x...)
	sp.cls = append(sp.cls, cx)
	sp.sk = append(sp.sk, sk[:]...)
	e.vid = append(e.vid, o.VisitID)
	if o.VisitID != "" {
		e.vidx[o.VisitID] = i
	}
	e.tm = append(e.tm, o.Time)
	e.mask = append(e.mask, o.Mask)
	e.lnk = append(e.lnk, false)

	if best < 0 {
		w := e.newIdent(o.Time)
		e.who = append(e.who, w)
		e.addMember(e.ids[w], i)
		e.addMemberCentroid(w, i, x, &sk)
		id := e.ids[w]
		e.updateStatus(id)
		return Assignment{IdentityID: id.id, New: true, Status: id.status, NowConfirmed: id.status == Confirmed}, true, nil
	}
	id := e.ids[best]
	e.who = append(e.who, best)
	for k, j := range id.members {
		pt := pairType(sp.cls[j], cx)
		if sp.inv[pt] == 0 {
			id.nM++
			id.sumM += 2
			continue
		}
		nd := bestD[k] * sp.inv[pt]
		if pt == ptMU {
			id.sumM += nd
			id.nM++
		} else {
			id.sumL += nd
			id.nL++
		}
		if nd <= 1 {
			e.lnk[i], e.lnk[j] = true, true
		}
	}
	e.addMember(id, i)
	e.addMemberCentroid(best, i, x, &sk)
	was := id.status
	e.updateStatus(id)
	// A cosine distance is at least 0; the float32 dot product of a
	// template with itself can exceed 1 by a rounding step (-1.19e-7).
	return Assignment{IdentityID: id.id, Distance: float32(max(bestDist, 0)), Status: id.status,
		NowConfirmed: was != Confirmed && id.status == Confirmed}, true, nil
}

func (e *Engine) findVisit(vid string) (int, bool) {
	i, ok := e.vidx[vid]
	return int(i), ok && vid != ""
}

func (e *Engine) newIdent(created time.Time) int32 {
	id := e.newID()
	for _, dup := e.byID[id]; dup; _, dup = e.byID[id] {
		id = e.newID()
	}
	e.seq++
	w := int32(len(e.ids))
	e.ids = append(e.ids, &ident{id: id, seq: e.seq, created: created, status: Pending, ent: [2]int32{-1, -1}})
	e.byID[id] = w
	return w
}

func (e *Engine) addMember(id *ident, i int32) {
	id.members = append(id.members, i)
	t := e.tm[i]
	if id.first.IsZero() || t.Before(id.first) {
		id.first = t
	}
	if t.After(id.last) {
		id.last = t
	}
	if e.mask[i] == visit.Masked {
		id.masked++
	}
}

// updateStatus confirms an identity once it has enough visits, each matching
// another member. A confirmed identity stays confirmed until consolidation
// or retention shrinks it.
func (e *Engine) updateStatus(id *ident) {
	if id.status == Confirmed {
		return
	}
	if len(id.members) < e.cfg.ConfirmVisits {
		return
	}
	if len(id.members) > 1 {
		for _, i := range id.members {
			if !e.lnk[i] {
				return
			}
		}
	}
	id.status = Confirmed
}

// recompute rebuilds an identity's intra statistics, links and status from
// its members (after consolidation, retention or restore).
func (e *Engine) recompute(id *ident, keepConfirmed bool) {
	sp := e.sp
	id.dirty = true
	id.sumL, id.sumM, id.nL, id.nM = 0, 0, 0, 0
	id.first, id.last, id.masked = time.Time{}, time.Time{}, 0
	ms := id.members
	id.members = id.members[:0:0]
	for _, i := range ms {
		e.lnk[i] = false
		e.addMember(id, i)
	}
	for a := 0; a < len(ms); a++ {
		for b := a + 1; b < len(ms); b++ {
			d, pt, ok := sp.nd(int(ms[a]), int(ms[b]))
			if !ok {
				id.sumM += 2
				id.nM++
				continue
			}
			if pt == ptMU {
				id.sumM += d
				id.nM++
			} else {
				id.sumL += d
				id.nL++
			}
			if d <= 1 {
				e.lnk[ms[a]], e.lnk[ms[b]] = true, true
			}
		}
	}
	was := id.status
	id.status = Pending
	e.updateStatus(id)
	if keepConfirmed && was == Confirmed && len(id.members) >= e.cfg.ConfirmVisits {
		id.status = Confirmed
	}
}

func (e *Engine) view(id *ident) Identity {
	return Identity{ID: id.id, Status: id.status, Confidence: e.confidence(id), Created: id.created,
		FirstSeen: id.first, LastSeen: id.last, Visits: len(id.members), Masked: id.masked}
}

// confidence combines tightness and size: (1 - mean normalised intra
// distance) * (1 - 0.5^(visits-1)). A single visit has confidence 0; two
// identical visits 0.5; five tight visits approach the tightness margin.
func (e *Engine) confidence(id *ident) float64 {
	n := len(id.members)
	if n < 2 {
		return 0
	}
	var link float64
	switch {
	case id.nL > 0:
		link = id.sumL / float64(id.nL)
	case id.nM > 0 && e.sp.muOn:
		link = id.sumM / float64(id.nM)
	default:
		return 0
	}
	margin := max(0, min(1, 1-link))
	return margin * (1 - math.Pow(0.5, float64(n-1)))
}

// IdentityCount is the number of identities held (pending and confirmed).
func (e *Engine) IdentityCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.ids)
}

// Identities returns all identities, oldest first.
func (e *Engine) Identities() []Identity {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]Identity, 0, len(e.ids))
	for _, id := range e.ids {
		out = append(out, e.view(id))
	}
	return out
}

// Identity returns one identity by id.
func (e *Engine) Identity(id string) (Identity, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	w, ok := e.byID[id]
	if !ok {
		return Identity{}, false
	}
	return e.view(e.ids[w]), true
}

// IdentityOf returns the identity id of a stored visit.
func (e *Engine) IdentityOf(visitID string) (string, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	i, ok := e.findVisit(visitID)
	if !ok {
		return "", false
	}
	return e.ids[e.who[i]].id, true
}

// Forget drops every visit older than before (retention) and the identities
// left without visits, whose ids it returns.
func (e *Engine) Forget(before time.Time) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.compact(func(i int) bool { return !e.tm[i].Before(before) })
}

// Remove drops an identity and all its visits (a deletion request). It
// reports whether the identity existed.
func (e *Engine) Remove(identityID string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	w, ok := e.byID[identityID]
	if !ok {
		return false
	}
	e.compact(func(i int) bool { return e.who[i] != w })
	return true
}

// compact keeps the members for which keep is true, in order, and drops
// identities left empty.
func (e *Engine) compact(keep func(i int) bool) []string {
	sp := e.sp
	n := sp.n()
	remap := make([]int32, n)
	k, first := 0, n // first: the first dropped member
	changed := map[int32]bool{}
	for i := 0; i < n; i++ {
		if !keep(i) {
			remap[i] = -1
			changed[e.who[i]] = true
			first = min(first, i)
			if v := e.vid[i]; v != "" {
				delete(e.vidx, v)
			}
			continue
		}
		remap[i] = int32(k)
		k++
	}
	if k == n {
		return nil
	}
	if e.planning > 0 && first < e.planRead {
		// A plan in flight reads rows from first on: moving rows there, or
		// truncating so that the next Assign appends there, would write
		// under it. Copy the slabs.
		sp.vec, sp.sk, sp.cls = slices.Clone(sp.vec), slices.Clone(sp.sk), slices.Clone(sp.cls)
	}
	for i := first; i < n; i++ {
		if r := int(remap[i]); r >= 0 {
			copy(sp.vec[r*sp.dim:(r+1)*sp.dim], sp.row(i))
			copy(sp.sk[r*sketchWords:(r+1)*sketchWords], sp.sketchOf(i))
			sp.cls[r], e.vid[r], e.tm[r], e.mask[r], e.who[r], e.lnk[r] = sp.cls[i], e.vid[i], e.tm[i], e.mask[i], e.who[i], e.lnk[i]
		}
	}
	if first < e.planHi {
		e.bumpGen() // visits a plan covers moved or left
	}
	sp.vec, sp.sk, sp.cls = sp.vec[:k*sp.dim], sp.sk[:k*sketchWords], sp.cls[:k]
	e.vid, e.tm, e.mask, e.who, e.lnk = e.vid[:k], e.tm[:k], e.mask[:k], e.who[:k], e.lnk[:k]
	for i := first; i < k; i++ {
		if v := e.vid[i]; v != "" {
			e.vidx[v] = int32(i)
		}
	}
	var gone []string
	var ids []*ident
	for w, id := range e.ids {
		ms := id.members[:0]
		for _, i := range id.members {
			if r := remap[i]; r >= 0 {
				ms = append(ms, r)
			}
		}
		id.members = ms
		if len(ms) == 0 {
			gone = append(gone, id.id)
			continue
		}
		if changed[int32(w)] {
			e.recompute(id, true)
		}
		ids = append(ids, id)
	}
	e.setIdents(ids)
	return gone
}

// setIdents installs ids (sorted by seq) and rebuilds the lookups.
func (e *Engine) setIdents(ids []*ident) {
	slices.SortStableFunc(ids, func(a, b *ident) int { return cmp.Compare(a.seq, b.seq) })
	e.ids = ids
	e.byID = make(map[string]int32, len(ids))
	for w, id := range ids {
		e.byID[id.id] = int32(w)
		for _, i := range id.members {
			e.who[i] = int32(w)
		}
	}
	e.rebuildCentroids()
}

// bumpGen makes every consolidation plan made so far stale.
func (e *Engine) bumpGen() {
	e.gen++
	e.planHi = 0
}

func (e *Engine) applyLabels(labels []int) []Change {
	e.bumpGen()
	k := 0
	for _, l := range labels {
		k = max(k, l+1)
	}
	members := make([][]int32, k)
	for i, l := range labels {
		members[l] = append(members[l], int32(i))
	}
	// overlap[c][w]: visits of old identity w in cluster c.
	owner := make([]int32, len(e.ids)) // cluster holding the majority of w, or -1
	for w := range owner {
		owner[w] = -1
	}
	for c, ms := range members {
		cnt := map[int32]int{}
		for _, i := range ms {
			cnt[e.who[i]]++
		}
		for w, v := range cnt {
			if 2*v > len(e.ids[w].members) {
				owner[w] = int32(c)
			}
		}
	}
	keepID := make([]int32, k) // old identity index kept by cluster c, or -1
	for c := range keepID {
		keepID[c] = -1
	}
	for w, c := range owner { // e.ids is sorted by seq: the first owner is the oldest
		if c >= 0 && keepID[c] < 0 {
			keepID[c] = int32(w)
		}
	}
	old := slices.Clone(e.who)
	oldIDs := e.ids
	oldMembers := make([][]int32, len(oldIDs))
	taken := make(map[string]bool, len(oldIDs))
	for w, id := range oldIDs {
		oldMembers[w] = id.members
		taken[id.id] = true
	}
	var ids []*ident
	newOf := make([]*ident, k)
	for c, ms := range members {
		var id *ident
		if w := keepID[c]; w >= 0 {
			id = oldIDs[w]
		} else {
			created := e.tm[ms[0]]
			for _, i := range ms {
				if e.tm[i].Before(created) {
					created = e.tm[i]
				}
			}
			e.seq++
			nid := e.newID()
			for taken[nid] {
				nid = e.newID()
			}
			taken[nid] = true
			id = &ident{id: nid, seq: e.seq, created: created, status: Pending}
		}
		id.members = ms
		newOf[c] = id
		ids = append(ids, id)
	}
	for c, id := range newOf {
		if w := keepID[c]; w >= 0 && slices.Equal(id.members, oldMembers[w]) {
			continue // same visits: statistics and sums still hold
		}
		e.recompute(id, keepID[c] >= 0)
	}
	e.setIdents(ids)

	// Report moved visits grouped by (from, to).
	alive := map[string]bool{}
	for _, id := range ids {
		alive[id.id] = true
	}
	existed := map[string]bool{}
	for _, id := range oldIDs {
		existed[id.id] = true
	}
	type key struct{ from, to string }
	groups := map[key]*Change{}
	var order []key
	for i := range labels {
		from, to := oldIDs[old[i]].id, newOf[labels[i]].id
		if from == to {
			continue
		}
		kk := key{from, to}
		ch, ok := groups[kk]
		if !ok {
			kind := Relabel
			switch {
			case alive[from]:
				kind = Split
			case existed[to]:
				kind = Merge
			}
			ch = &Change{Kind: kind, From: from, To: to}
			groups[kk] = ch
			order = append(order, kk)
		}
		ch.VisitIDs = append(ch.VisitIDs, e.vid[i])
	}
	out := make([]Change, 0, len(order))
	for _, kk := range order {
		out = append(out, *groups[kk])
	}
	return out
}
