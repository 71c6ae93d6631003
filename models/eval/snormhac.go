package eval

import (
	"context"
	"fmt"
	"io"
	"math"
	"slices"

	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/models/eval/learn"
	"github.com/periocular/atm-agent/models/eval/metrics"
)

// SNormOptions controls SNormClustering (an experiment: does symmetric
// score normalisation help average-linkage clustering on identities the
// projection and the cuts never saw?).
type SNormOptions struct {
	Method       Method
	K            int       // cohort neighbours for each template's mean and spread
	FARs         []float64 // candidate impostor FARs; each gives one cut per pair type
	Fixed        []identity.Thresholds
	MinPrecision map[string]float64
	Default      float64
	Z0           float64 // the score of a perfect match in normalised distances (z scores)
}

// SNormRow is one scoring and cut set on one clustered set and fold.
type SNormRow struct {
	Fold    int
	Scoring string // "cosine" or "s-norm"
	Rule    string // "FAR 1e-4" or "fixed"
	Cuts    [3]float64
	Set     string
	Chosen  bool
	Fit     ClusterFig
	HeldOut ClusterFig
}

type scored struct {
	n     int
	cls   []uint8
	truth []string
	s     []float64 // n*n scores
}

// SNormClustering clusters each set's two identity halves with a dense
// average-linkage HAC that follows the identity engine's rule (like pairs
// decide when two clusters have any, masked/unmasked pairs otherwise; each
// pair's distance is normalised by its type's cut), once on cosines and once
// on s-normalised scores against a cohort of the fitting fold's projected
// training templates. Per scoring, one cut per pair type is taken at each
// candidate FAR on the fitting half's impostor pairs, the FAR is chosen on
// the fitting half by HeldOutClustering's rule, and the held-out half is
// reported beside it.
func SNormClustering(ctx context.Context, train, sets []Set, o SNormOptions) ([]SNormRow, error) {
	if o.Z0 == 0 {
		o.Z0 = 10
	}
	cache := &pcaCache{m: map[string]*learn.PCA{}}
	if len(o.Method.P) > 0 {
		cache.maxP = slices.Max(o.Method.P)
	}
	var rows []SNormRow
	for f := 0; f < 2; f++ {
		var fit []tagged
		for si, s := range train {
			for _, x := range s.Run.Samples {
				if x.Found && fold(x.Identity) != f {
					fit = append(fit, tagged{x, si})
				}
			}
		}
		h, err := o.Method.fit(fit, len(train), cache, fmt.Sprintf("s-norm fold %d", f))
		if err != nil {
			return nil, fmt.Errorf("%s, fold %d: %w", o.Method, f, err)
		}
		cohort := make([][]float32, len(fit))
		cohortID := make([]string, len(fit))
		for i, x := range fit {
			cohort[i] = h.apply(x.Embedding)
			cohortID[i] = x.Identity
		}
		// halves[set][0] fitting half, [1] held-out half; per scoring.
		type half struct{ cos, z scored }
		halves := make([][2]half, len(sets))
		for si, s := range sets {
			var parts [2][]Sample
			for _, x := range s.Run.Samples {
				if !x.Found {
					continue
				}
				x.Embedding = h.apply(x.Embedding)
				held := 0
				if fold(x.Identity) == f {
					held = 1
				}
				parts[held] = append(parts[held], x)
			}
			for k := 0; k < 2; k++ {
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				halves[si][k].cos, halves[si][k].z = scoreHalf(parts[k], cohort, cohortID, o.K)
			}
		}
		for _, scoring := range []string{"cosine", "s-norm"} {
			pick := func(hf half) scored {
				if scoring == "cosine" {
					return hf.cos
				}
				return hf.z
			}
			z0 := 1.0
			if scoring == "s-norm" {
				z0 = o.Z0
			}
			type cand struct {
				rule string
				cuts [3]float64
			}
			var cands []cand
			for _, far := range o.FARs {
				var fits []scored
				for si := range sets {
					fits = append(fits, pick(halves[si][0]))
				}
				cands = append(cands, cand{fmt.Sprintf("FAR %g", far), typeCutsAt(fits, far)})
			}
			if scoring == "cosine" {
				for _, t := range o.Fixed {
					cands = append(cands, cand{"fixed", [3]float64{1 - t.UU, 1 - t.MM, 1 - t.MU}})
				}
			}
			best, bestScore := -1, math.Inf(-1)
			start := len(rows)
			for _, c := range cands {
				ok, sumF1, worst := true, 0.0, math.Inf(1)
				for si, s := range sets {
					fitFig := hacFig(pick(halves[si][0]), c.cuts, z0)
					heldFig := hacFig(pick(halves[si][1]), c.cuts, z0)
					rows = append(rows, SNormRow{Fold: f, Scoring: scoring, Rule: c.rule, Cuts: c.cuts, Set: s.Name, Fit: fitFig, HeldOut: heldFig})
					minP, named := o.MinPrecision[s.Name]
					if !named {
						minP = o.Default
					}
					ok = ok && fitFig.P >= minP
					sumF1 += fitFig.F1
					worst = min(worst, fitFig.P-minP)
				}
				score := worst - 10
				if ok {
					score = sumF1 / float64(len(sets))
				}
				if c.rule != "fixed" && score > bestScore {
					best, bestScore = len(rows)-len(sets), score
				}
			}
			for i := start; i < len(rows); i++ {
				rows[i].Chosen = best >= 0 && i >= best && i < best+len(sets)
			}
		}
	}
	return rows, nil
}

// scoreHalf returns the cosine and s-norm score matrices of samples, the
// s-norm statistics taken over each template's k nearest cohort members of
// other identities.
func scoreHalf(samples []Sample, cohort [][]float32, cohortID []string, k int) (scored, scored) {
	n := len(samples)
	cs := scored{n: n, cls: make([]uint8, n), truth: make([]string, n), s: make([]float64, n*n)}
	mu, sd := make([]float64, n), make([]float64, n)
	sims := make([]float64, 0, len(cohort))
	for i, x := range samples {
		cs.truth[i] = x.Identity
		if x.Mask == visit.Masked {
			cs.cls[i] = 1
		}
		sims = sims[:0]
		for j, c := range cohort {
			if cohortID[j] != x.Identity {
				sims = append(sims, dot(x.Embedding, c))
			}
		}
		slices.Sort(sims)
		top := sims[max(0, len(sims)-k):]
		var m, v float64
		for _, s := range top {
			m += s
		}
		m /= float64(len(top))
		for _, s := range top {
			v += (s - m) * (s - m)
		}
		mu[i], sd[i] = m, max(math.Sqrt(v/float64(len(top))), 1e-6)
	}
	zs := scored{n: n, cls: cs.cls, truth: cs.truth, s: make([]float64, n*n)}
	for i := 0; i < n; i++ {
		for j := i + 1; j < n; j++ {
			c := dot(samples[i].Embedding, samples[j].Embedding)
			z := ((c-mu[i])/sd[i] + (c-mu[j])/sd[j]) / 2
			cs.s[i*n+j], cs.s[j*n+i] = c, c
			zs.s[i*n+j], zs.s[j*n+i] = z, z
		}
	}
	return cs, zs
}

// typeCutsAt is, per pair type (UU, MM, MU by predicted mask class), the
// score above which a share far of the impostor pairs lies, over the
// pairs within each half, pooled.
func typeCutsAt(hs []scored, far float64) [3]float64 {
	var im [3][]float64
	for _, h := range hs {
		for i := 0; i < h.n; i++ {
			for j := i + 1; j < h.n; j++ {
				if h.truth[i] != h.truth[j] {
					pt := ptOf(h.cls[i], h.cls[j])
					im[pt] = append(im[pt], h.s[i*h.n+j])
				}
			}
		}
	}
	var cuts [3]float64
	for pt := range im {
		v := im[pt]
		if len(v) == 0 {
			cuts[pt] = math.Inf(1)
			continue
		}
		slices.Sort(v)
		k := int(math.Floor(far * float64(len(v))))
		cuts[pt] = v[len(v)-1-min(k, len(v)-1)]
	}
	return cuts
}

func ptOf(a, b uint8) int {
	if a != b {
		return 2
	}
	return int(a)
}

func hacFig(h scored, cuts [3]float64, z0 float64) ClusterFig {
	labels := denseHAC(h, cuts, z0)
	sc, err := metrics.Clustering(h.truth, labels)
	if err != nil {
		return ClusterFig{}
	}
	return ClusterFig{P: sc.BCubed.Precision, F1: sc.BCubed.F1, Found: sc.IdentitiesFound, True: sc.IdentitiesTrue}
}

// denseHAC is average linkage over all pairs with the identity engine's
// rule: a pair's distance is (z0 - score) / (z0 - cut of its type); two
// clusters with any like pair (UU or MM) are linked by the mean over
// their like pairs, others by the mean over their masked/unmasked pairs;
// clusters merge, closest first, while that mean is <= 1.
func denseHAC(h scored, cuts [3]float64, z0 float64) []int {
	n := h.n
	sL, sM := make([]float64, n*n), make([]float64, n*n)
	for i := 0; i < n; i++ {
		for j := 0; j < n; j++ {
			if i == j {
				continue
			}
			pt := ptOf(h.cls[i], h.cls[j])
			d := (z0 - h.s[i*n+j]) / (z0 - cuts[pt])
			if math.IsInf(cuts[pt], 1) || z0-cuts[pt] <= 0 {
				d = math.Inf(1)
			}
			if pt == 2 {
				sM[i*n+j] = d
			} else {
				sL[i*n+j] = d
			}
		}
	}
	u, m := make([]int, n), make([]int, n)
	for i := range n {
		if h.cls[i] == 1 {
			m[i] = 1
		} else {
			u[i] = 1
		}
	}
	alive := make([]bool, n)
	members := make([][]int, n)
	for i := range alive {
		alive[i] = true
		members[i] = []int{i}
	}
	key := func(a, b int) float64 {
		if nL := u[a]*u[b] + m[a]*m[b]; nL > 0 {
			return sL[a*n+b] / float64(nL)
		}
		if nM := u[a]*m[b] + m[a]*u[b]; nM > 0 {
			return sM[a*n+b] / float64(nM)
		}
		return math.Inf(1)
	}
	best, bestK := make([]int, n), make([]float64, n)
	rowBest := func(a int) {
		best[a], bestK[a] = -1, math.Inf(1)
		for b := 0; b < n; b++ {
			if b != a && alive[b] {
				if k := key(a, b); k < bestK[a] {
					best[a], bestK[a] = b, k
				}
			}
		}
	}
	for a := range n {
		rowBest(a)
	}
	for {
		a := -1
		for i := 0; i < n; i++ {
			if alive[i] && (a < 0 || bestK[i] < bestK[a]) {
				a = i
			}
		}
		if a < 0 || bestK[a] > 1 {
			break
		}
		b := best[a]
		for c := 0; c < n; c++ {
			sL[a*n+c] += sL[b*n+c]
			sL[c*n+a] = sL[a*n+c]
			sM[a*n+c] += sM[b*n+c]
			sM[c*n+a] = sM[a*n+c]
		}
		u[a] += u[b]
		m[a] += m[b]
		members[a] = append(members[a], members[b]...)
		alive[b] = false
		rowBest(a)
		for c := 0; c < n; c++ {
			if !alive[c] || c == a {
				continue
			}
			if best[c] == a || best[c] == b {
				rowBest(c)
			} else if k := key(c, a); k < bestK[c] {
				best[c], bestK[c] = a, k
			}
		}
	}
	labels := make([]int, n)
	for a := range n {
		if alive[a] {
			for _, i := range members[a] {
				labels[i] = a
			}
		}
	}
	return labels
}

// SNormMarkdown writes the rows, the chosen FAR of each scoring in bold.
func SNormMarkdown(w io.Writer, rows []SNormRow) {
	fmt.Fprintln(w, "| fold | scoring | rule | cuts UU, MM, MU | set | fitting half P / F1 | held-out P / F1 | identities found / true |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		b := ""
		if r.Chosen {
			b = "**"
		}
		fmt.Fprintf(w, "| %d | %s | %s%s%s | %.3f, %.3f, %.3f | %s | %.3f / %.3f | %s%.3f / %.3f%s | %d / %d |\n", r.Fold, r.Scoring, b, r.Rule, b, r.Cuts[0], r.Cuts[1], r.Cuts[2], r.Set,
			r.Fit.P, r.Fit.F1, b, r.HeldOut.P, r.HeldOut.F1, b, r.HeldOut.Found, r.HeldOut.True)
	}
}
