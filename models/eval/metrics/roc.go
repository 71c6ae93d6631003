// Package metrics scores face verification (ROC over genuine and impostor
// pair scores) and clustering (pairwise, BCubed, NMI, identity counts) for
// the evaluation commands. Scores are similarities: higher means more alike,
// and a pair is accepted when its score is >= the threshold. Pass negated
// distances when you have distances.
package metrics

import (
	"math"
	"slices"
)

// AUC is the area under the ROC curve: the probability that a random genuine
// score exceeds a random impostor score, ties counting one half. It is exact
// (Mann-Whitney U over sorted scores) and NaN when either set is empty.
func AUC(genuine, impostor []float64) float64 {
	if len(genuine) == 0 || len(impostor) == 0 {
		return math.NaN()
	}
	g := slices.Clone(genuine)
	im := slices.Clone(impostor)
	slices.Sort(g)
	slices.Sort(im)
	// For each genuine score count impostors below and equal.
	var u float64
	lo, hi := 0, 0 // im[:lo] < x, im[:hi] <= x
	for _, x := range g {
		for lo < len(im) && im[lo] < x {
			lo++
		}
		hi = max(hi, lo)
		for hi < len(im) && im[hi] <= x {
			hi++
		}
		u += float64(lo) + 0.5*float64(hi-lo)
	}
	return u / (float64(len(g)) * float64(len(im)))
}

// ThresholdAtFAR returns the smallest threshold whose false accept rate over
// the impostor scores is <= far: at most floor(far*N) impostors score >= it.
// It is -Inf when far allows accepting every impostor.
func ThresholdAtFAR(impostor []float64, far float64) float64 {
	n := len(impostor)
	k := int(math.Floor(far*float64(n) + 1e-9))
	if n == 0 || k >= n {
		return math.Inf(-1)
	}
	im := slices.Clone(impostor)
	slices.SortFunc(im, func(a, b float64) int { return -cmpFloat(a, b) })
	// im[k] is the (k+1)-th largest: anything above it accepts at most k.
	return math.Nextafter(im[k], math.Inf(1))
}

// TARAtFAR returns the true accept rate at ThresholdAtFAR(impostor, far) and
// that threshold.
func TARAtFAR(genuine, impostor []float64, far float64) (tar, threshold float64) {
	threshold = ThresholdAtFAR(impostor, far)
	if len(genuine) == 0 {
		return math.NaN(), threshold
	}
	n := 0
	for _, x := range genuine {
		if x >= threshold {
			n++
		}
	}
	return float64(n) / float64(len(genuine)), threshold
}

// ROCPoint is one operating point.
type ROCPoint struct {
	Threshold float64 `json:"threshold"`
	FAR       float64 `json:"far"`
	TAR       float64 `json:"tar"`
}

// ROC returns the operating points at every distinct score, from the highest
// threshold (fewest accepts) down to the lowest.
func ROC(genuine, impostor []float64) []ROCPoint {
	if len(genuine) == 0 || len(impostor) == 0 {
		return nil
	}
	type sc struct {
		v   float64
		gen bool
	}
	all := make([]sc, 0, len(genuine)+len(impostor))
	for _, x := range genuine {
		all = append(all, sc{x, true})
	}
	for _, x := range impostor {
		all = append(all, sc{x, false})
	}
	slices.SortFunc(all, func(a, b sc) int { return -cmpFloat(a.v, b.v) })
	var out []ROCPoint
	tp, fp := 0, 0
	for i := 0; i < len(all); {
		v := all[i].v
		for ; i < len(all) && all[i].v == v; i++ {
			if all[i].gen {
				tp++
			} else {
				fp++
			}
		}
		out = append(out, ROCPoint{Threshold: v, FAR: float64(fp) / float64(len(impostor)), TAR: float64(tp) / float64(len(genuine))})
	}
	return out
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
