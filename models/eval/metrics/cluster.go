package metrics

import (
	"errors"
	"math"
)

// PRF is a precision, recall and F1 triple.
type PRF struct {
	Precision float64 `json:"precision"`
	Recall    float64 `json:"recall"`
	F1        float64 `json:"f1"`
}

func prf(p, r float64) PRF {
	f := 0.0
	if p+r > 0 {
		f = 2 * p * r / (p + r)
	}
	return PRF{Precision: p, Recall: r, F1: f}
}

// ClusterScores compares a predicted clustering with the true identities.
type ClusterScores struct {
	Items int `json:"items"`
	// IdentitiesFound counts predicted clusters, singletons included;
	// IdentitiesTrue counts true identities.
	IdentitiesFound int `json:"identities_found"`
	IdentitiesTrue  int `json:"identities_true"`
	// Pairwise: over pairs of items, precision = same-cluster pairs that are
	// the same person / same-cluster pairs (1 when no pair is predicted),
	// recall = same-person pairs put together / same-person pairs (1 when no
	// person has two items).
	Pairwise PRF `json:"pairwise"`
	// BCubed: per item, precision = share of its cluster that is its person,
	// recall = share of its person that is in its cluster; averaged over items.
	BCubed PRF `json:"bcubed"`
	// NMI: mutual information over the arithmetic mean of the two entropies
	// (scikit-learn's default); 1 when both labelings are a single cluster.
	NMI float64 `json:"nmi"`
	// CountMAE: for each true identity, the count the system would report is
	// the size of the predicted cluster holding most of its items (ties: the
	// cluster seen first); the mean absolute difference from the true count.
	CountMAE float64 `json:"count_mae"`
}

// Noise is the label clustering algorithms give to unclustered items.
const Noise = -1

// NoiseToSingletons returns a copy of labels where each Noise label becomes a
// fresh label of its own.
func NoiseToSingletons(labels []int) []int {
	out := make([]int, len(labels))
	next := 0
	for _, l := range labels {
		next = max(next, l+1)
	}
	for i, l := range labels {
		if l == Noise {
			out[i] = next
			next++
		} else {
			out[i] = l
		}
	}
	return out
}

// Clustering scores pred against truth; both are per-item labels of any
// comparable type (convert Noise with NoiseToSingletons first).
func Clustering[T, P comparable](truth []T, pred []P) (ClusterScores, error) {
	if len(truth) != len(pred) {
		return ClusterScores{}, errors.New("clustering metrics: truth and prediction lengths differ")
	}
	n := len(truth)
	if n == 0 {
		return ClusterScores{}, errors.New("clustering metrics: no items")
	}
	ti, nt := index(truth)
	pi, np := index(pred)
	b := make([]int, nt) // true class sizes
	a := make([]int, np) // predicted cluster sizes
	type cell struct{ t, p int }
	cells := map[cell]int{}
	var order []cell
	for i := 0; i < n; i++ {
		b[ti[i]]++
		a[pi[i]]++
		c := cell{ti[i], pi[i]}
		if cells[c] == 0 {
			order = append(order, c)
		}
		cells[c]++
	}
	s := ClusterScores{Items: n, IdentitiesFound: np, IdentitiesTrue: nt}

	pairs := func(x int) float64 { return float64(x) * float64(x-1) / 2 }
	var tp, pp, tpairs float64
	var bp, br float64
	var mi float64
	N := float64(n)
	for _, c := range order {
		nij := cells[c]
		tp += pairs(nij)
		f := float64(nij)
		bp += f * f / float64(a[c.p])
		br += f * f / float64(b[c.t])
		mi += f / N * math.Log(N*f/(float64(a[c.p])*float64(b[c.t])))
	}
	for _, x := range a {
		pp += pairs(x)
	}
	for _, x := range b {
		tpairs += pairs(x)
	}
	p, r := 1.0, 1.0
	if pp > 0 {
		p = tp / pp
	}
	if tpairs > 0 {
		r = tp / tpairs
	}
	s.Pairwise = prf(p, r)
	s.BCubed = prf(bp/N, br/N)

	ent := func(sizes []int) float64 {
		var h float64
		for _, x := range sizes {
			q := float64(x) / N
			h -= q * math.Log(q)
		}
		return h
	}
	ht, hp := ent(b), ent(a)
	switch {
	case ht == 0 && hp == 0:
		s.NMI = 1
	case ht+hp == 0:
		s.NMI = 0
	default:
		s.NMI = max(0, min(1, mi/((ht+hp)/2)))
	}

	// Count error: majority predicted cluster per true identity.
	best := make([]int, nt)
	bestN := make([]int, nt)
	for _, c := range order { // order of first appearance breaks ties
		if nij := cells[c]; nij > bestN[c.t] {
			best[c.t], bestN[c.t] = c.p, nij
		}
	}
	var mae float64
	for t := 0; t < nt; t++ {
		mae += math.Abs(float64(a[best[t]] - b[t]))
	}
	s.CountMAE = mae / float64(nt)
	return s, nil
}

// index maps labels to 0.. in order of first appearance.
func index[T comparable](labels []T) ([]int, int) {
	m := map[T]int{}
	out := make([]int, len(labels))
	for i, l := range labels {
		v, ok := m[l]
		if !ok {
			v = len(m)
			m[l] = v
		}
		out[i] = v
	}
	return out, len(m)
}

// MaskRecall splits BCubed recall by ground-truth mask state, to say which
// links a clustering misses. For a face of state A and a state B, its recall
// is the share of its person's other faces of state B that are in its
// cluster; each figure averages that over the faces that have such others
// (nil when none has).
type MaskRecall struct {
	UU *float64 `json:"uu,omitempty"` // an unmasked face: its person's other unmasked faces
	MM *float64 `json:"mm,omitempty"` // a masked face: its person's other masked faces
	MU *float64 `json:"mu,omitempty"` // a masked face: its person's unmasked faces
}

// maskStates returns per-item states (0 unmasked, 1 masked), the true
// identities' indices, and faces per identity and state.
func maskStates[T comparable](truth []T, masked []bool) (m, ti []int, person map[[2]int]int) {
	ti, _ = index(truth)
	m = make([]int, len(masked))
	person = map[[2]int]int{}
	for i, x := range masked {
		if x {
			m[i] = 1
		}
		person[[2]int{ti[i], m[i]}]++
	}
	return m, ti, person
}

// RecallByMask computes MaskRecall; masked is the ground truth per item.
func RecallByMask[T, P comparable](truth []T, pred []P, masked []bool) (MaskRecall, error) {
	if len(truth) != len(pred) || len(truth) != len(masked) {
		return MaskRecall{}, errors.New("mask recall: truth, prediction and mask lengths differ")
	}
	if len(truth) == 0 {
		return MaskRecall{}, errors.New("mask recall: no items")
	}
	m, ti, person := maskStates(truth, masked)
	pi, _ := index(pred)
	together := map[[3]int]int{} // faces per identity, cluster and state
	for i := range truth {
		together[[3]int{ti[i], pi[i], m[i]}]++
	}
	// figure[state of the face][state of the others]: uu 0, mm 1, mu 2;
	// an unmasked face's masked others (-1) are the MU figure seen from
	// the other side.
	figure := [2][2]int{{0, -1}, {2, 1}}
	var sum, n [3]float64
	for i := range truth {
		for b := 0; b < 2; b++ {
			k := figure[m[i]][b]
			if k < 0 {
				continue
			}
			self := 0
			if m[i] == b {
				self = 1
			}
			others := person[[2]int{ti[i], b}] - self
			if others == 0 {
				continue
			}
			sum[k] += float64(together[[3]int{ti[i], pi[i], b}]-self) / float64(others)
			n[k]++
		}
	}
	var out MaskRecall
	for k, dst := range []**float64{&out.UU, &out.MM, &out.MU} {
		if n[k] > 0 {
			v := sum[k] / n[k]
			*dst = &v
		}
	}
	return out, nil
}

// SameStateCeiling is the BCubed recall of a clustering that is perfect
// within each mask state and never puts a masked face with an unmasked one:
// what BCubed recall can reach without masked <-> unmasked links.
func SameStateCeiling[T comparable](truth []T, masked []bool) float64 {
	if len(truth) == 0 || len(truth) != len(masked) {
		return 0
	}
	m, ti, person := maskStates(truth, masked)
	var sum float64
	for i := range truth {
		own := person[[2]int{ti[i], m[i]}]
		sum += float64(own) / float64(own+person[[2]int{ti[i], 1 - m[i]}])
	}
	return sum / float64(len(truth))
}
