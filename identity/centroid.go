package identity

import (
	"math"
	"math/bits"
	"slices"
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

// centroids holds the entries of one mask class.
type centroids struct {
	who  []int32   // identity index
	sk   []uint64  // sketches of the sums, sketchWords per entry
	cut  []int16   // like-with-like cutoff (class threshold), -1: never
	cutX []int16   // cutoff against the other class (MU threshold), -1: never
	sum  []float32 // sums, dim per entry
}

func (c *centroids) reset() {
	c.who, c.sk, c.cut, c.cutX, c.sum = c.who[:0], c.sk[:0], c.cut[:0], c.cutX[:0], c.sum[:0]
}

// cutoffCos is the largest sketch distance worth a look for a pair whose
// cosine must be at least c; -1 when c > 1 (impossible).
func cutoffCos(c float64, exact bool) int16 {
	if c > 1 {
		return -1
	}
	if exact || c <= -1 {
		return sketchBits
	}
	p := math.Acos(c) / math.Pi
	cut := p*sketchBits + sketchZ*math.Sqrt(sketchBits*p*(1-p)) + 1
	return int16(min(sketchBits, math.Ceil(cut)))
}

// entryCut is the cutoff of an entry with n members whose sum has norm
// norm, for threshold t (0: disabled).
func (s *space) entryCut(t float64, n int, norm float64) int16 {
	if !(t > 0) {
		return -1
	}
	if norm <= 0 {
		return sketchBits
	}
	// cos(x, S) >= (1-t)*n/|S|; for t < 1 the factor n/|S| >= 1 tightens it.
	return cutoffCos((1-t-sumSlack)*float64(n)/norm, s.exact)
}

// setEntry writes sum (n members of class cls) into slot k of table t,
// computing its sketch and cutoffs.
func (s *space) setEntry(t *centroids, k int, cls uint8, n int, sum []float32) {
	copy(t.sum[k*s.dim:(k+1)*s.dim], sum)
	var nn float64
	for _, v := range sum {
		nn += float64(v) * float64(v)
	}
	norm := math.Sqrt(nn)
	s.skr.sketch(sum, t.sk[k*sketchWords:(k+1)*sketchWords], s.buf)
	t.cut[k] = s.entryCut(s.thr[pairType(cls, cls)], n, norm)
	t.cutX[k] = s.entryCut(s.thr[ptMU], n, norm)
}

// appendEntry adds a slot for identity w and returns its index.
func (t *centroids) appendEntry(w int32, dim int) int {
	t.who = append(t.who, w)
	t.sk = append(t.sk, make([]uint64, sketchWords)...)
	t.cut = append(t.cut, -1)
	t.cutX = append(t.cutX, -1)
	t.sum = append(t.sum, make([]float32, dim)...)
	return len(t.who) - 1
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

// rebuildCentroids recomputes every identity's sums and entries (after
// consolidation, retention or restore).
func (e *Engine) rebuildCentroids() {
	sp := e.sp
	for c := range e.cen {
		e.cen[c].reset()
	}
	sum := make([]float32, e.dim)
	for w, id := range e.ids {
		id.cnt = [2]int{}
		id.ent = [2]int32{-1, -1}
		for c := uint8(0); c < 2; c++ {
			clear(sum)
			n := 0
			for _, i := range id.members {
				if sp.cls[i] == c {
					addTo(sum, sp.row(int(i)))
					n++
				}
			}
			if n == 0 {
				continue
			}
			t := &e.cen[c]
			k := t.appendEntry(int32(w), e.dim)
			sp.setEntry(t, k, c, n, sum)
			id.cnt[c], id.ent[c] = n, int32(k)
		}
	}
}

// addMemberCentroid adds member i (already in id.members) to id's entry.
func (e *Engine) addMemberCentroid(w int32, i int32) {
	sp := e.sp
	id := e.ids[w]
	c := sp.cls[i]
	t := &e.cen[c]
	if id.ent[c] < 0 {
		id.ent[c] = int32(t.appendEntry(w, e.dim))
	}
	k := int(id.ent[c])
	id.cnt[c]++
	sum := t.sum[k*e.dim : (k+1)*e.dim]
	addTo(sum, sp.row(int(i)))
	sp.setEntry(t, k, c, id.cnt[c], sum)
}

// candidateIdents returns the identities worth an exact comparison with x
// (class cx, sketch q), sorted by index.
func (e *Engine) candidateIdents(x []float32, cx uint8, q *[sketchWords]uint64, buf []int32) []int32 {
	sp := e.sp
	var out []int32
	// Like with like.
	t := &e.cen[cx]
	tl := sp.thr[pairType(cx, cx)]
	buf = scanCut(t.sk, t.cut, q, buf[:0])
	for _, k := range buf {
		w := t.who[k]
		n := float64(e.ids[w].cnt[cx])
		if 1-float64(dot(x, t.sum[int(k)*e.dim:int(k+1)*e.dim]))/n <= tl+sumSlack {
			out = append(out, w)
		}
	}
	// Mixed, for identities without a member of x's class.
	if sp.muOn {
		t := &e.cen[1-cx]
		buf = scanCut(t.sk, t.cutX, q, buf[:0])
		for _, k := range buf {
			w := t.who[k]
			id := e.ids[w]
			if id.cnt[cx] > 0 {
				continue
			}
			if 1-float64(dot(x, t.sum[int(k)*e.dim:int(k+1)*e.dim]))/float64(id.cnt[1-cx]) <= sp.thr[ptMU]+sumSlack {
				out = append(out, w)
			}
		}
	}
	e.cbuf = buf
	slices.Sort(out)
	return out
}

func addTo(dst, src []float32) {
	src = src[:len(dst)]
	for i := range dst {
		dst[i] += src[i]
	}
}
