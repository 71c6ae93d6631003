package identity

import (
	"cmp"
	"container/heap"
	"context"
	"runtime"
	"slices"
	"sync"
)

// edge is a matching pair i < j with its normalised distance (<= 1).
type edge struct {
	i, j int32
	nd   float32
}

// edges finds every pair of members whose normalised distance is <= 1
// (subject to the sketch prefilter), using up to workers goroutines. The
// result is sorted by (j, i) and does not depend on the number of workers.
func (s *space) edges(ctx context.Context, workers int) ([]edge, error) {
	n := s.n()
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	workers = max(1, min(workers, n/256+1))
	parts := make([][]edge, workers)
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			var out []edge
			var buf []int32
			// Rows interleaved in chunks so that the triangular work is balanced.
			const chunk = 64
			for start := w * chunk; start < n; start += workers * chunk {
				if ctx.Err() != nil {
					errs[w] = ctx.Err()
					return
				}
				for j := start; j < min(n, start+chunk); j++ {
					out, buf = s.rowEdges(j, out, buf)
				}
			}
			parts[w] = out
		}(w)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return mergeEdges(parts), nil
}

// mergeEdges joins per-worker edge lists into one, ordered by (j, i), so
// the result does not depend on how the work was split.
func mergeEdges(parts [][]edge) []edge {
	var all []edge
	for _, p := range parts {
		all = append(all, p...)
	}
	slices.SortFunc(all, func(a, b edge) int {
		if c := cmp.Compare(a.j, b.j); c != 0 {
			return c
		}
		return cmp.Compare(a.i, b.i)
	})
	return all
}

// rowEdges appends the matching pairs (i, j) for all i < j.
func (s *space) rowEdges(j int, out []edge, buf []int32) ([]edge, []int32) {
	var q [sketchWords]uint64
	copy(q[:], s.sketchOf(j))
	cj := s.cls[j]
	rj := s.row(j)
	buf = s.candidates(&q, cj, j, buf[:0])
	for _, i := range buf {
		pt := pairType(s.cls[i], cj)
		d := (1 - float64(dot(s.row(int(i)), rj))) * s.inv[pt]
		if d <= 1 {
			out = append(out, edge{i, int32(j), float32(d)})
		}
	}
	return out, buf
}

// linkage selects how cluster distances are combined.
type linkage uint8

const (
	linkAverage linkage = iota
	linkComplete
)

// pst holds what is known about the pairs between two clusters: sums, counts
// and maxima of normalised distances over like (UU, MM) and mixed (MU) pairs.
// When kL equals the number of like pairs every like pair is known.
type pst struct {
	sL, sM     float64
	kL, kM     int
	maxL, maxM float64
}

func (p *pst) addPair(pt int, d float64) {
	if pt == ptMU {
		p.sM += d
		p.kM++
		p.maxM = max(p.maxM, d)
	} else {
		p.sL += d
		p.kL++
		p.maxL = max(p.maxL, d)
	}
}

func (p *pst) merge(q *pst) {
	p.sL += q.sL
	p.sM += q.sM
	p.kL += q.kL
	p.kM += q.kM
	p.maxL = max(p.maxL, q.maxL)
	p.maxM = max(p.maxM, q.maxM)
}

type hcl struct {
	members []int32
	u, m    int // unmasked (or unknown), masked members
	ver     uint32
	alive   bool
	nbr     map[int32]*pst
}

type hentry struct {
	key      float64
	a, b     int32 // a < b
	va, vb   uint32
	verified bool
}

type hheap []hentry

func (h hheap) Len() int { return len(h) }
func (h hheap) Less(i, j int) bool {
	if h[i].key != h[j].key {
		return h[i].key < h[j].key
	}
	if h[i].a != h[j].a {
		return h[i].a < h[j].a
	}
	if h[i].b != h[j].b {
		return h[i].b < h[j].b
	}
	return h[i].verified && !h[j].verified
}
func (h hheap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *hheap) Push(x any)   { *h = append(*h, x.(hentry)) }
func (h *hheap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// hac runs agglomerative clustering over the sparse match graph. Two clusters
// merge, closest first, while their linkage is <= 1. For average linkage, the
// known pairs give a lower bound (unknown pairs are > 1); a pair is verified
// with all its distances before it merges, so merges are exact. It returns a
// label per member, numbered by first appearance.
//
// With ids nil it clusters every member of s; otherwise only ids, and the
// edges and the returned labels index ids.
func (s *space) hac(ctx context.Context, ids []int32, es []edge, link linkage) ([]int, error) {
	n := s.n()
	if ids != nil {
		n = len(ids)
	}
	at := func(i int32) int {
		if ids == nil {
			return int(i)
		}
		return int(ids[i])
	}
	cls := make([]hcl, n)
	for i := range cls {
		cls[i] = hcl{members: []int32{int32(i)}, alive: true}
		if s.cls[at(int32(i))] == 1 {
			cls[i].m = 1
		} else {
			cls[i].u = 1
		}
	}
	for _, e := range es {
		p := &pst{}
		p.addPair(pairType(s.cls[at(e.i)], s.cls[at(e.j)]), float64(e.nd))
		a, b := &cls[e.i], &cls[e.j]
		if a.nbr == nil {
			a.nbr = map[int32]*pst{}
		}
		if b.nbr == nil {
			b.nbr = map[int32]*pst{}
		}
		a.nbr[e.j] = p
		b.nbr[e.i] = p
	}
	h := &hheap{}
	push := func(a, b int32) {
		if a > b {
			a, b = b, a
		}
		ca, cb := &cls[a], &cls[b]
		key, verified, ok := s.linkKey(ca, cb, ca.nbr[b], link)
		if ok {
			*h = append(*h, hentry{key: key, a: a, b: b, va: ca.ver, vb: cb.ver, verified: verified})
		}
	}
	for _, e := range es {
		push(e.i, e.j)
	}
	heap.Init(h)
	steps := 0
	for h.Len() > 0 {
		if steps++; steps%4096 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		top := heap.Pop(h).(hentry)
		ca, cb := &cls[top.a], &cls[top.b]
		if !ca.alive || !cb.alive || ca.ver != top.va || cb.ver != top.vb {
			continue
		}
		if !top.verified {
			// Compute every pair between the two clusters, then requeue.
			p := &pst{}
			for _, i := range ca.members {
				for _, j := range cb.members {
					if d, pt, ok := s.nd(at(i), at(j)); ok {
						p.addPair(pt, d)
					} else {
						p.addPair(pt, 2) // counted, never matching
					}
				}
			}
			*ca.nbr[top.b] = *p
			if key, verified, ok := s.linkKey(ca, cb, p, link); ok && verified {
				heap.Push(h, hentry{key: key, a: top.a, b: top.b, va: ca.ver, vb: cb.ver, verified: true})
			}
			continue
		}
		// Merge the smaller cluster into the larger (ties: into the lower id).
		keep, gone := top.a, top.b
		if len(cls[gone].members) > len(cls[keep].members) {
			keep, gone = gone, keep
		}
		ck, cg := &cls[keep], &cls[gone]
		delete(ck.nbr, gone)
		for x, p := range cg.nbr {
			cx := &cls[x]
			delete(cx.nbr, gone)
			if x == keep {
				continue
			}
			if q, ok := ck.nbr[x]; ok {
				q.merge(p)
			} else {
				ck.nbr[x] = p
				cx.nbr[keep] = p
			}
		}
		ck.members = append(ck.members, cg.members...)
		ck.u += cg.u
		ck.m += cg.m
		ck.ver++
		*cg = hcl{}
		for x := range ck.nbr {
			a, b := keep, x
			if a > b {
				a, b = b, a
			}
			key, verified, ok := s.linkKey(&cls[a], &cls[b], ck.nbr[x], link)
			if ok {
				heap.Push(h, hentry{key: key, a: a, b: b, va: cls[a].ver, vb: cls[b].ver, verified: verified})
			}
		}
	}
	labels := make([]int, n)
	for i := range labels {
		labels[i] = -1
	}
	for c := range cls {
		for _, i := range cls[c].members {
			labels[i] = c
		}
	}
	return renumber(labels), nil
}

// linkKey returns the linkage (or, if not every pair is known, a lower bound
// on it), whether it is exact, and whether the pair can still merge.
func (s *space) linkKey(a, b *hcl, p *pst, link linkage) (float64, bool, bool) {
	if p == nil {
		return 0, false, false
	}
	nL := a.u*b.u + a.m*b.m
	nM := a.u*b.m + a.m*b.u
	var n, k int
	var sum, mx float64
	switch {
	case nL > 0:
		n, k, sum, mx = nL, p.kL, p.sL, p.maxL
	case s.muOn && nM > 0:
		n, k, sum, mx = nM, p.kM, p.sM, p.maxM
	default:
		return 0, false, false
	}
	if k == 0 {
		return 0, false, false
	}
	if link == linkComplete {
		// Unknown pairs are > 1, so every pair must be a known match.
		return mx, true, k == n && mx <= 1
	}
	lb := (sum + float64(n-k)) / float64(n)
	if k == n {
		return lb, true, lb <= 1
	}
	return lb, false, lb < 1
}

// renumber maps labels to 0.. in order of first appearance; negative labels
// are kept as -1.
func renumber(labels []int) []int {
	m := map[int]int{}
	out := make([]int, len(labels))
	for i, l := range labels {
		if l < 0 {
			out[i] = -1
			continue
		}
		v, ok := m[l]
		if !ok {
			v = len(m)
			m[l] = v
		}
		out[i] = v
	}
	return out
}
