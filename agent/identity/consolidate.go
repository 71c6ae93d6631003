package identity

import (
	"cmp"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"runtime"
	"slices"
	"sync"
)

// Consolidation runs in two levels:
//
//  1. Within each identity, complete-linkage clustering over all its member
//     pairs (exact, no prefilter) splits it into groups whose every pair
//     matches: visits an online decision joined on weak evidence come apart.
//  2. Across identities, average-linkage clustering of those groups. For unit
//     vectors the mean pair distance between groups A and B of one mask
//     class is 1 - dot(SA, SB)/(nA nB) with S the sums, so the linkage (mean
//     normalised distance over like pairs, else MU pairs, as online) is a few
//     dot products of sums, exact up to float rounding. Candidate pairs come
//     from sign sketches of the sums: a class part can be <= its threshold T
//     only if cos(SA, SB) >= (1-T)/(rA rB) with r = |S|/n <= 1, so each
//     group has its own (tighter than per-visit) cutoff. The linkage of a
//     merged group to C is a weighted mean of its parts' linkages to C, so
//     the candidates of a merge are the union of its parts' candidates. A
//     missed candidate can only keep groups apart (a split), never merge.
//
// Level 2 re-joins the groups level 1 split too finely. On synthetic people
// close to the threshold the result agrees with average linkage from single
// visits (batch Cluster) on 93-100 % of pairs, with the same precision within
// 0.005 (TestConsolidationCloseToBatchHAC). The quadratic part is over groups
// instead of visits, and groups of one person are tighter than visits, so
// their sketches prune more impostors.

// ErrStalePlan means the engine changed (retention, removal, restore or
// another consolidation) after the plan was made: make a new plan. Removing
// only visits newer than the plan leaves it valid.
var ErrStalePlan = errors.New("identity: consolidation plan is stale")

// Plan is a consolidation computed on a snapshot of the engine, to be applied
// with ApplyPlan. Visits assigned after the snapshot are not re-clustered:
// they follow the identity they were assigned to.
type Plan struct {
	gen    uint64
	n      int
	labels []int
}

// Visits is the number of visits the plan re-clustered.
func (p *Plan) Visits() int { return len(p.labels) }

// ConsolidatePlan re-clusters the stored visits without holding the engine
// lock (only a short copy of the membership is taken under it), so Assign is
// not blocked while it runs. Apply the result with ApplyPlan.
func (e *Engine) ConsolidatePlan(ctx context.Context) (*Plan, error) {
	sp, groups := e.beginPlan()
	defer e.endPlan()
	labels, err := sp.consolidate(ctx, groups.members, groups.cons, e.cfg.Workers)
	if err != nil {
		return nil, fmt.Errorf("consolidate: %w", err)
	}
	return &Plan{gen: groups.gen, n: sp.n(), labels: labels}, nil
}

// planGroups is the membership a plan clusters and the generation it was
// taken at.
type planGroups struct {
	members [][]int32
	gen     uint64
	cons    planConstraints
}

// beginPlan takes a plan's view under the lock and registers it as in
// flight until endPlan: until then the rows it reads are never rewritten.
func (e *Engine) beginPlan() (*space, planGroups) {
	e.mu.Lock()
	defer e.mu.Unlock()
	sp, groups, gen := e.planView()
	e.planning++
	e.planRead = max(e.planRead, sp.n())
	return sp, planGroups{groups, gen, e.resolveConstraints()}
}

func (e *Engine) endPlan() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.planning--; e.planning == 0 {
		e.planRead = 0
	}
}

// planView copies what a plan reads; e.mu must be held. The embedding and
// sketch slabs are shared: Assign only appends past the view, and compact
// copies them while a plan is in flight.
func (e *Engine) planView() (*space, [][]int32, uint64) {
	sp := *e.sp
	n := sp.n()
	sp.vec = sp.vec[: n*sp.dim : n*sp.dim]
	sp.sk = sp.sk[: n*sketchWords : n*sketchWords]
	sp.cls = slices.Clone(sp.cls[:n])
	sp.buf = make([]float32, sp.skr.pad)
	groups := make([][]int32, len(e.ids))
	for w, id := range e.ids {
		groups[w] = slices.Clone(id.members)
	}
	e.planHi = max(e.planHi, n)
	return &sp, groups, e.gen
}

// ApplyPlan installs a plan's clusters and maps them to identity ids as
// Consolidate does. It returns ErrStalePlan when the engine changed in a way
// the plan cannot follow.
func (e *Engine) ApplyPlan(p *Plan) ([]Change, error) {
	if p == nil {
		return nil, errors.New("apply consolidation plan: nil plan")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if p.gen != e.gen || p.n > e.sp.n() {
		return nil, ErrStalePlan
	}
	if e.sp.n() == 0 {
		return nil, nil
	}
	return e.applyLabels(e.extendLabels(p)), nil
}

// extendLabels gives visits assigned after the plan the cluster holding most
// of their identity's planned visits (a new cluster for identities created
// since).
func (e *Engine) extendLabels(p *Plan) []int {
	n := e.sp.n()
	if n == p.n {
		return p.labels
	}
	labels := make([]int, n)
	copy(labels, p.labels)
	next := 0
	for _, l := range p.labels {
		next = max(next, l+1)
	}
	follow := map[int32]int{}
	for i := p.n; i < n; i++ {
		w := e.who[i]
		l, ok := follow[w]
		if !ok {
			cnt := map[int]int{}
			l = -1
			for _, j := range e.ids[w].members {
				if int(j) < p.n {
					c := p.labels[j]
					cnt[c]++
					if l < 0 || cnt[c] > cnt[l] || cnt[c] == cnt[l] && c < l {
						l = c
					}
				}
			}
			if l < 0 {
				l = next
				next++
			}
			follow[w] = l
		}
		labels[i] = l
	}
	return labels
}

// Consolidate re-clusters every stored visit and maps the clusters back to
// identity ids: a cluster keeps the id of the oldest identity whose majority
// of visits it holds; a cluster holding no identity's majority gets a new id.
// It returns the visits that changed identity. The clustering itself runs
// without the engine lock (ConsolidatePlan, then ApplyPlan).
func (e *Engine) Consolidate(ctx context.Context) ([]Change, error) {
	for range 3 {
		p, err := e.ConsolidatePlan(ctx)
		if err != nil {
			return nil, err
		}
		ch, err := e.ApplyPlan(p)
		if !errors.Is(err, ErrStalePlan) {
			return ch, err
		}
	}
	// The engine kept changing under the plans: plan under the lock.
	e.mu.Lock()
	defer e.mu.Unlock()
	sp, groups, gen := e.planView()
	labels, err := sp.consolidate(ctx, groups, e.resolveConstraints(), e.cfg.Workers)
	if err != nil {
		return nil, fmt.Errorf("consolidate: %w", err)
	}
	if sp.n() == 0 {
		return nil, nil
	}
	return e.applyLabels(e.extendLabels(&Plan{gen: gen, n: sp.n(), labels: labels})), nil
}

// consolidate returns a label per member: level 1 within groups, level 2
// across them. The analysts' constraints hold throughout: the visits of a
// together constraint are one group from level 1 on, and level 2 never
// joins groups holding the two sides of an apart one.
func (s *space) consolidate(ctx context.Context, groups [][]int32, pc planConstraints, workers int) ([]int, error) {
	n := s.n()
	if n == 0 {
		return nil, nil
	}
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	l1, err := s.splitGroups(ctx, groups, workers)
	if err != nil {
		return nil, err
	}
	return s.sumHAC(ctx, joinTogether(l1, pc.together), pc.apart, workers)
}

// level1Chunk bounds the members level 1 compares at once. An identity with
// more visits is split, in the order its visits came, into chunks of at most
// this many, each clustered alone: the pairs held at once (and the memory of
// consolidation) stay bounded however often one person comes back, and level
// 2 re-joins the chunks' groups by average linkage.
const level1Chunk = 256

// chunks cuts each group into runs of at most level1Chunk members.
func chunks(groups [][]int32) [][]int32 {
	var out [][]int32
	for _, ms := range groups {
		k := (len(ms) + level1Chunk - 1) / level1Chunk
		for c := range k {
			// Even sizes: 300 members give 150+150, not 256+44.
			lo, hi := c*len(ms)/k, (c+1)*len(ms)/k
			out = append(out, ms[lo:hi])
		}
	}
	return out
}

// splitGroups is level 1: complete linkage over every pair within each chunk
// of each group (exact, no prefilter). It returns a label per member; a
// member in no group is alone.
func (s *space) splitGroups(ctx context.Context, groups [][]int32, workers int) ([]int, error) {
	cs := chunks(groups)
	local := make([][]int, len(cs))
	workers = max(1, min(workers, len(cs)/16+1))
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var es []edge
			for c := w; c < len(cs); c += workers {
				if err := ctx.Err(); err != nil {
					errs[w] = err // chunks are too small for hac's own checks
					return
				}
				ms := cs[c]
				es = es[:0]
				for b := 1; b < len(ms); b++ {
					for a := range b {
						if d, _, ok := s.nd(int(ms[a]), int(ms[b])); ok && d <= 1 {
							es = append(es, edge{int32(a), int32(b), float32(d)})
						}
					}
				}
				l, err := s.hac(ctx, ms, es, linkComplete)
				if err != nil {
					errs[w] = err
					return
				}
				local[c] = l
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	labels := make([]int, s.n())
	for i := range labels {
		labels[i] = -1
	}
	next := 0
	for c, ms := range cs {
		top := 0
		for k, i := range ms {
			labels[i] = next + local[c][k]
			top = max(top, local[c][k]+1)
		}
		next += top
	}
	for i, l := range labels {
		if l < 0 {
			labels[i] = next
			next++
		}
	}
	return renumber(labels), nil
}

// sgroup is a level-2 cluster: members, per-class counts and sums.
type sgroup struct {
	members []int32
	cnt     [2]int
	sum     [2][]float32 // nil when the class is empty; may alias a slab row
	own     [2]bool      // sum was allocated here (may be added to in place)
	apart   apartTags    // sides of apart constraints held (nil: none)
	ver     uint32
	alive   bool
	nbr     map[int32]struct{}
}

// sentries are the (group, class) entries of one class for candidate search.
type sentries struct {
	g         []int32
	cut, cutX []int16
	r         []float32 // |S|/n: tightness of the group in this class
	sk, sk2   []uint64  // two independent sketches of the sums
}

// cutTabSize is the resolution of pairCuts over the cosine bound [0,1].
const cutTabSize = 4096

// pairCuts tabulates sketch cutoffs for nb bits by cosine bound c in [0,1],
// the bound rounded down (so the cutoff is never tighter than the exact one).
func pairCuts(nb int, exact bool) []int16 {
	t := make([]int16, cutTabSize+1)
	for k := range t {
		t[k] = cutoffBits(float64(k)/cutTabSize, nb, exact)
	}
	return t
}

// sumHAC runs level 2 on the clusters of l1 and returns final labels. It
// never joins two groups holding the two sides of an apart constraint.
func (s *space) sumHAC(ctx context.Context, l1 []int, apart [][2][]int32, workers int) ([]int, error) {
	k := 0
	for _, l := range l1 {
		k = max(k, l+1)
	}
	gs := make([]sgroup, k)
	for i, l := range l1 {
		gs[l].members = append(gs[l].members, int32(i))
	}
	for c, sides := range apart {
		for side, ms := range sides {
			for _, i := range ms {
				G := &gs[l1[i]]
				if G.apart == nil {
					G.apart = apartTags{}
				}
				G.apart[int32(c)] |= 1 << side
			}
		}
	}
	var ent [2]sentries
	for g := range gs {
		G := &gs[g]
		G.alive = true
		for _, i := range G.members {
			c := s.cls[i]
			G.cnt[c]++
			switch {
			case G.sum[c] == nil:
				G.sum[c] = s.row(int(i))
			case !G.own[c]:
				G.sum[c] = slices.Clone(G.sum[c])
				G.own[c] = true
				fallthrough
			default:
				addTo(G.sum[c], s.row(int(i)))
			}
		}
		for c := uint8(0); c < 2; c++ {
			if G.cnt[c] == 0 {
				continue
			}
			norm := math.Sqrt(float64(dot(G.sum[c], G.sum[c])))
			E := &ent[c]
			E.g = append(E.g, int32(g))
			E.cut = append(E.cut, s.groupCut(s.thr[pairType(c, c)], G.cnt[c], norm))
			E.cutX = append(E.cutX, s.groupCut(s.thr[ptMU], G.cnt[c], norm))
			E.r = append(E.r, float32(norm/float64(G.cnt[c])))
		}
	}
	// Sketches of the sums, and a second independent one used to confirm
	// pairs (1024 bits in all: half the relative noise of 512 for pairs
	// close to the cutoff), on all workers.
	for c := range ent {
		E := &ent[c]
		m := len(E.g)
		E.sk = make([]uint64, m*sketchWords)
		E.sk2 = make([]uint64, m*sketchWords)
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]float32, s.skr.pad)
				for k := w; k < m; k += workers {
					sum := gs[E.g[k]].sum[c]
					s.skr.sketch(sum, E.sk[k*sketchWords:(k+1)*sketchWords], buf)
					s.skr2.sketch(sum, E.sk2[k*sketchWords:(k+1)*sketchWords], buf)
				}
			}()
		}
		wg.Wait()
	}
	pairs, err := s.groupPairs(ctx, gs, &ent, workers)
	if err != nil {
		return nil, err
	}
	for _, p := range pairs {
		for _, x := range [2][2]int32{{p[0], p[1]}, {p[1], p[0]}} {
			if gs[x[0]].nbr == nil {
				gs[x[0]].nbr = map[int32]struct{}{}
			}
			gs[x[0]].nbr[x[1]] = struct{}{}
		}
	}
	h := &hheap{}
	for _, p := range pairs {
		if key, ok := s.sumLink(&gs[p[0]], &gs[p[1]]); ok {
			*h = append(*h, hentry{key: key, a: p[0], b: p[1], verified: true})
		}
	}
	heap.Init(h)
	steps := 0
	for h.Len() > 0 {
		if steps++; steps%1024 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		top := heap.Pop(h).(hentry)
		ga, gb := &gs[top.a], &gs[top.b]
		if !ga.alive || !gb.alive || ga.ver != top.va || gb.ver != top.vb || ga.apart.conflicts(gb.apart) {
			continue
		}
		keep, gone := top.a, top.b
		if len(gs[gone].members) > len(gs[keep].members) {
			keep, gone = gone, keep
		}
		gk, gg := &gs[keep], &gs[gone]
		for c := range 2 {
			switch {
			case gg.sum[c] == nil:
			case gk.sum[c] == nil:
				gk.sum[c], gk.own[c] = gg.sum[c], gg.own[c]
			default:
				if !gk.own[c] {
					gk.sum[c], gk.own[c] = slices.Clone(gk.sum[c]), true
				}
				addTo(gk.sum[c], gg.sum[c])
			}
			gk.cnt[c] += gg.cnt[c]
		}
		gk.members = append(gk.members, gg.members...)
		for c, side := range gg.apart {
			if gk.apart == nil {
				gk.apart = apartTags{}
			}
			gk.apart[c] |= side
		}
		delete(gk.nbr, gone)
		for x := range gg.nbr {
			delete(gs[x].nbr, gone)
			if x != keep {
				gk.nbr[x] = struct{}{}
				gs[x].nbr[keep] = struct{}{}
			}
		}
		gk.ver++
		*gg = sgroup{}
		for x := range gk.nbr {
			a, b := min(keep, x), max(keep, x)
			if key, ok := s.sumLink(&gs[a], &gs[b]); ok {
				heap.Push(h, hentry{key: key, a: a, b: b, va: gs[a].ver, vb: gs[b].ver, verified: true})
			}
		}
	}
	labels := make([]int, s.n())
	for g := range gs {
		for _, i := range gs[g].members {
			labels[i] = g
		}
	}
	return renumber(labels), nil
}

// groupCut is a group's sketch cutoff for threshold t: any partner group
// must be within it. With 1-t <= 0 the bound depends on the partner: none.
func (s *space) groupCut(t float64, n int, norm float64) int16 {
	if !(t > 0) {
		return -1
	}
	if 1-t-sumSlack <= 0 {
		return sketchBits
	}
	return s.entryCut(t, n, norm)
}

// sumLink is the linkage between two groups from their sums: the mean
// normalised distance over like pairs, else (MU enabled) over mixed pairs;
// ok is false when the groups cannot merge.
func (s *space) sumLink(a, b *sgroup) (float64, bool) {
	nUU, nMM := a.cnt[0]*b.cnt[0], a.cnt[1]*b.cnt[1]
	if nL := nUU + nMM; nL > 0 {
		var num float64
		if nUU > 0 {
			num += s.inv[ptUU] * (float64(nUU) - float64(dot(a.sum[0], b.sum[0])))
		}
		if nMM > 0 {
			num += s.inv[ptMM] * (float64(nMM) - float64(dot(a.sum[1], b.sum[1])))
		}
		key := num / float64(nL)
		return key, key <= 1
	}
	if !s.muOn {
		return 0, false
	}
	nM := a.cnt[0]*b.cnt[1] + a.cnt[1]*b.cnt[0]
	if nM == 0 {
		return 0, false
	}
	var d float64
	if a.cnt[0] > 0 && b.cnt[1] > 0 {
		d += float64(dot(a.sum[0], b.sum[1]))
	}
	if a.cnt[1] > 0 && b.cnt[0] > 0 {
		d += float64(dot(a.sum[1], b.sum[0]))
	}
	key := s.inv[ptMU] * (float64(nM) - d) / float64(nM)
	return key, key <= 1
}

// groupPairs returns the group pairs (a < b) with some class part possibly
// within its threshold: sketch within both groups' cutoffs, then the part's
// mean distance from the sums (with slack). Sorted, without duplicates.
func (s *space) groupPairs(ctx context.Context, gs []sgroup, ent *[2]sentries, workers int) ([][2]int32, error) {
	type job struct {
		c, o uint8 // row class, column class
		mu   bool
	}
	var jobs []job
	jobs = append(jobs, job{0, 0, false}, job{1, 1, false})
	if s.muOn {
		jobs = append(jobs, job{0, 1, true})
	}
	tab, tab2 := pairCuts(sketchBits, s.exact), pairCuts(2*sketchBits, s.exact)
	var all [][2]int32
	for _, jb := range jobs {
		rows, cols := &ent[jb.c], &ent[jb.o]
		rcut, ccut := rows.cut, cols.cut
		if jb.mu {
			rcut, ccut = rows.cutX, cols.cutX
		}
		t := s.thr[pairType(jb.c, jb.o)]
		base := float32(1 - t - sumSlack) // pair bound: cos >= base/(rA rB)
		nr := len(rows.g)
		nw := max(1, min(workers, nr/256+1))
		parts := make([][][2]int32, nw)
		errs := make([]error, nw)
		var wg sync.WaitGroup
		for w := range nw {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var out [][2]int32
				var buf []int32
				const chunk = 64
				for start := w * chunk; start < nr; start += nw * chunk {
					if ctx.Err() != nil {
						errs[w] = ctx.Err()
						return
					}
					for r := start; r < min(nr, start+chunk); r++ {
						hi := r // same class: columns before the row
						if jb.mu {
							hi = len(cols.g)
						}
						qc := rcut[r]
						if qc < 0 {
							continue
						}
						var q [sketchWords]uint64
						copy(q[:], rows.sk[r*sketchWords:(r+1)*sketchWords])
						buf = scanCutQ(cols.sk, ccut[:hi], &q, qc, buf[:0])
						if base > 0 {
							var q2 [sketchWords]uint64
							copy(q2[:], rows.sk2[r*sketchWords:(r+1)*sketchWords])
							buf = pairFilter(cols, &q, &q2, base/rows.r[r], tab, tab2, buf)
						}
						ra := rows.g[r]
						ga := &gs[ra]
						for _, k := range buf {
							cb := cols.g[k]
							if cb == ra {
								continue
							}
							gb := &gs[cb]
							nn := float64(ga.cnt[jb.c] * gb.cnt[jb.o])
							if 1-float64(dot(ga.sum[jb.c], gb.sum[jb.o]))/nn <= t+sumSlack {
								out = append(out, [2]int32{min(ra, cb), max(ra, cb)})
							}
						}
					}
				}
				parts[w] = out
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return nil, err
		}
		for _, p := range parts {
			all = append(all, p...)
		}
	}
	slices.SortFunc(all, func(a, b [2]int32) int {
		if c := cmp.Compare(a[0], b[0]); c != 0 {
			return c
		}
		return cmp.Compare(a[1], b[1])
	})
	return slices.Compact(all), nil
}

// scanCutQ appends the indices k < len(cuts) whose sketch is within both
// the query cutoff qc and cuts[k].
func scanCutQ(sk []uint64, cuts []int16, q *[sketchWords]uint64, qc int16, out []int32) []int32 {
	q0, q1, q2, q3, q4, q5, q6, q7 := q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]
	sk = sk[:len(cuts)*sketchWords]
	for k, ct := range cuts {
		ct = min(ct, qc)
		w := sk[k*sketchWords : k*sketchWords+sketchWords : k*sketchWords+sketchWords]
		h := bits.OnesCount64(w[0]^q0) + bits.OnesCount64(w[1]^q1) +
			bits.OnesCount64(w[2]^q2) + bits.OnesCount64(w[3]^q3) +
			bits.OnesCount64(w[4]^q4) + bits.OnesCount64(w[5]^q5) +
			bits.OnesCount64(w[6]^q6) + bits.OnesCount64(w[7]^q7)
		if h <= int(ct) {
			out = append(out, int32(k))
		}
	}
	return out
}

// pairFilter keeps the columns k whose sketches are within the cutoffs of
// the pair bound cos >= bq/r[k] (bq = (1-T)/r of the query group): the first
// sketch alone, then both together.
func pairFilter(cols *sentries, q, q2 *[sketchWords]uint64, bq float32, tab, tab2 []int16, ks []int32) []int32 {
	out := ks[:0]
	for _, k := range ks {
		c := bq / cols.r[k]
		if c > 1 {
			continue
		}
		t := int(c * cutTabSize)
		h := hamming(cols.sk[int(k)*sketchWords:], q[:])
		if h > int(tab[t]) {
			continue
		}
		if h+hamming(cols.sk2[int(k)*sketchWords:], q2[:]) <= int(tab2[t]) {
			out = append(out, k)
		}
	}
	return out
}
