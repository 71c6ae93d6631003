package identity

import (
	"math"
	"math/bits"
	"runtime"
	"slices"
	"sync"
)

// Online assignment compares a visit with identities, not with every stored
// visit. For unit vectors the mean cosine distance from x to the members of
// one mask class of an identity is 1 - dot(x, S)/n, with S their sum, so the
// like-with-like linkage reduces to one dot product per identity and class.
// Each (identity, class) with members has an entry: the sum S, a sign sketch
// of S and its own sketch cutoff. The linkage is <= 1 only when
// cos(x, S) >= (1-T)/r with r = |S|/n <= 1, a tighter angle than the
// per-visit threshold, so the per-entry cutoff is at most the per-visit one.
// Entries that pass the sketch and whose sum-based linkage is within
// sumSlack of the threshold are then verified member by member, exactly as
// before; the sums only choose which identities are compared, so a rounding
// difference can only cost a split, never make a merge.

// sumSlack is the margin, in cosine distance, that covers float32 rounding
// of sums and dot products when the sums preselect candidates.
const sumSlack = 1e-3

// centroids holds the entries of one mask class: contiguous sketches and
// cutoffs for the scan; the sums live on the identities.
type centroids struct {
	who  []int32  // identity index
	sk   []uint64 // sketches of the sums, sketchWords per entry
	cut  []int16  // like-with-like cutoff (class threshold), -1: never
	cutX []int16  // cutoff against the other class (MU threshold), -1: never
	// Second sketches and the cutoffs of both together (1024 bits): checked
	// only for entries that passed the first.
	sk2         []uint64
	cut2, cutX2 []int16
}

func (c *centroids) reset() {
	c.who, c.sk, c.cut, c.cutX = c.who[:0], c.sk[:0], c.cut[:0], c.cutX[:0]
	c.sk2, c.cut2, c.cutX2 = c.sk2[:0], c.cut2[:0], c.cutX2[:0]
}

// centroid is an identity's cached entry for one mask class.
type centroid struct {
	sum         []float32 // nil for fewer than two members (see sumOf)
	sk, sk2     [sketchWords]uint64
	cut, cutX   int16
	cut2, cutX2 int16
}

// cutoffCos is the largest sketch distance worth a look for a pair whose
// cosine must be at least c; -1 when c > 1 (impossible).
func cutoffCos(c float64, exact bool) int16 { return cutoffBits(c, sketchBits, exact) }

// cutoffBits is cutoffCos for a sketch of nb bits.
func cutoffBits(c float64, nb int, exact bool) int16 {
	if c > 1 {
		return -1
	}
	if exact || c <= -1 {
		return int16(nb)
	}
	b := float64(nb)
	p := math.Acos(c) / math.Pi
	cut := p*b + sketchZ*math.Sqrt(b*p*(1-p)) + 1
	return int16(min(b, math.Ceil(cut)))
}

// entryCut is the cutoff of an entry with n members whose sum has norm
// norm, for threshold t (0: disabled).
func (s *space) entryCut(t float64, n int, norm float64) int16 {
	return s.entryCutBits(t, n, norm, sketchBits)
}

func (s *space) entryCutBits(t float64, n int, norm float64, nb int) int16 {
	if !(t > 0) {
		return -1
	}
	if norm <= 0 {
		return int16(nb)
	}
	// cos(x, S) >= (1-t)*n/|S|; for t < 1 the factor n/|S| >= 1 tightens it.
	return cutoffBits((1-t-sumSlack)*float64(n)/norm, nb, s.exact)
}

// refresh recomputes the sketch and cutoffs of an entry of class cls with n
// members from its sum.
func (s *space) refresh(ce *centroid, cls uint8, n int, sum []float32) {
	s.refreshBuf(ce, cls, n, sum, s.buf)
}

// refreshBuf is refresh with its own scratch buffer (pad long).
func (s *space) refreshBuf(ce *centroid, cls uint8, n int, sum, buf []float32) {
	s.skr.sketch(sum, ce.sk[:], buf)
	s.skr2.sketch(sum, ce.sk2[:], buf)
	s.setCuts(ce, cls, n, math.Sqrt(float64(dot(sum, sum))))
}

// setCuts sets an entry's cutoffs from its size and the norm of its sum.
func (s *space) setCuts(ce *centroid, cls uint8, n int, norm float64) {
	ce.cut = s.entryCut(s.thr[pairType(cls, cls)], n, norm)
	ce.cutX = s.entryCut(s.thr[ptMU], n, norm)
	ce.cut2 = s.entryCutBits(s.thr[pairType(cls, cls)], n, norm, 2*sketchBits)
	ce.cutX2 = s.entryCutBits(s.thr[ptMU], n, norm, 2*sketchBits)
}

// put writes entry ce of identity w into slot k (k == len: append).
func (t *centroids) put(k int, w int32, ce *centroid) int {
	if k == len(t.who) {
		t.who = append(t.who, w)
		t.sk = append(t.sk, ce.sk[:]...)
		t.cut = append(t.cut, ce.cut)
		t.cutX = append(t.cutX, ce.cutX)
		t.sk2 = append(t.sk2, ce.sk2[:]...)
		t.cut2 = append(t.cut2, ce.cut2)
		t.cutX2 = append(t.cutX2, ce.cutX2)
		return k
	}
	t.who[k] = w
	copy(t.sk[k*sketchWords:(k+1)*sketchWords], ce.sk[:])
	copy(t.sk2[k*sketchWords:(k+1)*sketchWords], ce.sk2[:])
	t.cut[k], t.cutX[k] = ce.cut, ce.cutX
	t.cut2[k], t.cutX2[k] = ce.cut2, ce.cutX2
	return k
}

// scanCut appends every entry whose sketch differs from q in at most its own
// cutoff (cuts[k]).
func scanCut(sk []uint64, cuts []int16, q *[sketchWords]uint64, out []int32) []int32 {
	q0, q1, q2, q3, q4, q5, q6, q7 := q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]
	sk = sk[:len(cuts)*sketchWords]
	for k, ct := range cuts {
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

// rebuildCentroids reinstalls every identity's entries, recomputing the
// sums of identities marked dirty (after consolidation, retention or
// restore).
func (e *Engine) rebuildCentroids() {
	sp := e.sp
	for c := range e.cen {
		e.cen[c].reset()
	}
	var dirty []*ident
	for _, id := range e.ids {
		if id.dirty {
			dirty = append(dirty, id)
		}
	}
	// Sums and sketches of changed identities on all workers (this runs
	// under the engine lock).
	workers := e.cfg.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	workers = max(1, min(workers, len(dirty)/64+1))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]float32, sp.skr.pad)
			for k := w; k < len(dirty); k += workers {
				e.refreshIdent(dirty[k], buf)
			}
		}()
	}
	wg.Wait()
	for w, id := range e.ids {
		for c := range id.cen {
			id.ent[c] = -1
			if id.cnt[c] > 0 {
				id.ent[c] = int32(e.cen[c].put(len(e.cen[c].who), int32(w), &id.cen[c]))
			}
		}
	}
}

// refreshIdent recomputes an identity's counts, sums and sketches.
func (e *Engine) refreshIdent(id *ident, buf []float32) {
	sp := e.sp
	id.dirty = false
	id.cnt = [2]int{}
	for _, i := range id.members {
		id.cnt[sp.cls[i]]++
	}
	for c := uint8(0); c < 2; c++ {
		ce := &id.cen[c]
		if id.cnt[c] < 2 {
			ce.sum = nil // none, or the single member's row
		} else if ce.sum == nil {
			ce.sum = make([]float32, e.dim)
		} else {
			clear(ce.sum)
		}
	}
	for _, i := range id.members {
		if sum := id.cen[sp.cls[i]].sum; sum != nil {
			addTo(sum, sp.row(int(i)))
		}
	}
	for c := uint8(0); c < 2; c++ {
		if id.cnt[c] > 0 {
			sp.refreshBuf(&id.cen[c], c, id.cnt[c], e.sumOf(id, c), buf)
		}
	}
}

// addMemberCentroid adds member i (already in id.members) to identity w's
// entry.
func (e *Engine) addMemberCentroid(w int32, i int32, x []float32, sk *[sketchWords]uint64) {
	sp := e.sp
	id := e.ids[w]
	c := sp.cls[i]
	ce := &id.cen[c]
	id.cnt[c]++
	switch id.cnt[c] {
	case 1:
		// The entry is x itself: reuse its sketches.
		ce.sum = nil
		ce.sk = *sk
		if e.q2ok {
			ce.sk2 = e.q2
		} else {
			sp.skr2.sketch(x, ce.sk2[:], sp.buf)
		}
		sp.setCuts(ce, c, 1, math.Sqrt(float64(dot(x, x))))
	case 2:
		ce.sum = make([]float32, e.dim)
		for _, j := range id.members {
			if sp.cls[j] == c {
				addTo(ce.sum, sp.row(int(j))) // the first member and i
			}
		}
		sp.refresh(ce, c, 2, ce.sum)
	default:
		addTo(ce.sum, sp.row(int(i)))
		sp.refresh(ce, c, id.cnt[c], ce.sum)
	}
	t := &e.cen[c]
	k := len(t.who)
	if id.ent[c] >= 0 {
		k = int(id.ent[c])
	}
	id.ent[c] = int32(t.put(k, w, ce))
}

// sumOf is the sum of id's members of class c: stored when there are two or
// more, the member's own row when there is one (no copy of the slab).
func (e *Engine) sumOf(id *ident, c uint8) []float32 {
	if id.cen[c].sum != nil {
		return id.cen[c].sum
	}
	for _, i := range id.members {
		if e.sp.cls[i] == c {
			return e.sp.row(int(i))
		}
	}
	return nil
}

// candidateIdents returns the identities worth an exact comparison with x
// (class cx, sketch q), sorted by index.
func (e *Engine) candidateIdents(x []float32, cx uint8, q *[sketchWords]uint64, buf []int32) []int32 {
	sp := e.sp
	var out []int32
	// The second sketch of x only when some entry passes the first.
	q2 := &e.q2
	e.q2ok = false
	get2 := func() *[sketchWords]uint64 {
		if !e.q2ok {
			sp.skr2.sketch(x, q2[:], sp.buf)
			e.q2ok = true
		}
		return q2
	}
	// Like with like.
	t := &e.cen[cx]
	tl := sp.thr[pairType(cx, cx)]
	buf = scanCut(t.sk, t.cut, q, buf[:0])
	for _, k := range buf {
		if !t.pass2(k, q, get2(), t.cut2) {
			continue
		}
		w := t.who[k]
		id := e.ids[w]
		if 1-float64(dot(x, e.sumOf(id, cx)))/float64(id.cnt[cx]) <= tl+sumSlack {
			out = append(out, w)
		}
	}
	// Mixed, for identities without a member of x's class.
	if sp.muOn {
		t := &e.cen[1-cx]
		buf = scanCut(t.sk, t.cutX, q, buf[:0])
		for _, k := range buf {
			if !t.pass2(k, q, get2(), t.cutX2) {
				continue
			}
			w := t.who[k]
			id := e.ids[w]
			if id.cnt[cx] > 0 {
				continue
			}
			if 1-float64(dot(x, e.sumOf(id, 1-cx)))/float64(id.cnt[1-cx]) <= sp.thr[ptMU]+sumSlack {
				out = append(out, w)
			}
		}
	}
	e.cbuf = buf
	slices.Sort(out)
	return out
}

// pass2 checks entry k against both sketches together.
func (t *centroids) pass2(k int32, q, q2 *[sketchWords]uint64, cut2 []int16) bool {
	o := int(k) * sketchWords
	return hamming(t.sk[o:], q[:])+hamming(t.sk2[o:], q2[:]) <= int(cut2[k])
}

func addTo(dst, src []float32) {
	src = src[:len(dst)]
	for i := range dst {
		dst[i] += src[i]
	}
}
