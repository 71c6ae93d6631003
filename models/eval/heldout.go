package eval

import (
	"context"
	"fmt"
	"io"
	"math"
	"slices"

	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/models/eval/learn"
)

// HeldOutOptions controls HeldOutClustering.
type HeldOutOptions struct {
	// Method is the projection fitted on the fitting half (as train-heads
	// ships it, e.g. nap4+wccn:p=256:a=0.7).
	Method Method
	// Cuts are the candidate cut sets (UU, MM, MU).
	Cuts []identity.Thresholds
	// MinPrecision is the BCubed precision each clustered set must keep on
	// the fitting half for a cut set to be chosen (by set name; Default
	// for a set not named).
	MinPrecision map[string]float64
	Default      float64
	Algorithm    identity.Algorithm
}

// HeldOutRow is one cut set on one clustered set and fold.
type HeldOutRow struct {
	Fold    int                 `json:"fold"` // the identities measured: fold(identity) == Fold
	Cuts    identity.Thresholds `json:"cuts"`
	Set     string              `json:"set"`
	Chosen  bool                `json:"chosen"`
	Fit     ClusterFig          `json:"fit"`
	HeldOut ClusterFig          `json:"held_out"`
}

// ClusterFig is BCubed precision and F1 with identity counts.
type ClusterFig struct {
	P, F1       float64
	Found, True int
}

// HeldOutReport is what HeldOutClustering measured.
type HeldOutReport struct {
	Method string
	Rows   []HeldOutRow
}

// HeldOutClustering measures clustering precision on identities that
// neither the projection nor the cuts saw. For each of the two identity
// folds: the projection is fitted on the train sets' faces of the other
// fold; every candidate cut set clusters the other fold of each clustered
// set; the chosen cut set is the one with the highest mean BCubed F1 among
// those that keep each set's minimum precision there (the one that misses
// it by least when none does); then every cut set clusters the fold
// itself, with the projection applied, and is reported beside its fitting
// figures. train and sets hold raw templates (no projection).
func HeldOutClustering(ctx context.Context, train, sets []Set, o HeldOutOptions) (*HeldOutReport, error) {
	if len(o.Cuts) == 0 {
		return nil, fmt.Errorf("held-out clustering: no cut sets")
	}
	if o.Algorithm == "" {
		o.Algorithm = identity.DefaultAlgorithm
	}
	rep := &HeldOutReport{Method: o.Method.String()}
	cache := &pcaCache{m: map[string]*learn.PCA{}}
	if len(o.Method.P) > 0 {
		cache.maxP = slices.Max(o.Method.P)
	}
	for f := 0; f < 2; f++ {
		var fit []tagged
		for si, s := range train {
			for _, x := range s.Run.Samples {
				if x.Found && fold(x.Identity) != f {
					fit = append(fit, tagged{x, si})
				}
			}
		}
		if len(fit) == 0 {
			return nil, fmt.Errorf("held-out clustering: fold %d: no faces to fit on", f)
		}
		h, err := o.Method.fit(fit, len(train), cache, fmt.Sprintf("held-out fold %d", f))
		if err != nil {
			return nil, fmt.Errorf("%s, fold %d: %w", o.Method, f, err)
		}
		// Each set's two halves, projected once for every cut set.
		halves := make([][2]*Run, len(sets))
		for si, s := range sets {
			halves[si] = [2]*Run{{Embedder: s.Run.Embedder}, {Embedder: s.Run.Embedder}}
			for _, x := range s.Run.Samples {
				if !x.Found {
					continue
				}
				x.Embedding = h.apply(x.Embedding)
				held := 0
				if fold(x.Identity) == f {
					held = 1
				}
				halves[si][held].Samples = append(halves[si][held].Samples, x)
			}
		}
		rows := make([][]HeldOutRow, len(o.Cuts))
		best, bestScore := 0, math.Inf(-1)
		for ci, cut := range o.Cuts {
			ok, sumF1, worst := true, 0.0, math.Inf(1)
			for si, s := range sets {
				fitFig, err := clusterFig(ctx, halves[si][0], s.Name, cut, o.Algorithm)
				if err != nil {
					return nil, err
				}
				heldFig, err := clusterFig(ctx, halves[si][1], s.Name, cut, o.Algorithm)
				if err != nil {
					return nil, err
				}
				rows[ci] = append(rows[ci], HeldOutRow{Fold: f, Cuts: cut, Set: s.Name, Fit: fitFig, HeldOut: heldFig})
				minP, named := o.MinPrecision[s.Name]
				if !named {
					minP = o.Default
				}
				ok = ok && fitFig.P >= minP
				sumF1 += fitFig.F1
				worst = min(worst, fitFig.P-minP)
			}
			score := worst - 10 // below every cut set that keeps the precisions
			if ok {
				score = sumF1 / float64(len(sets))
			}
			if score > bestScore {
				best, bestScore = ci, score
			}
		}
		for ci := range rows {
			for i := range rows[ci] {
				rows[ci][i].Chosen = ci == best
			}
			rep.Rows = append(rep.Rows, rows[ci]...)
		}
	}
	return rep, nil
}

func clusterFig(ctx context.Context, r *Run, name string, cut identity.Thresholds, a identity.Algorithm) (ClusterFig, error) {
	cr, err := ClusterEval(ctx, r, name, ClusterOptions{Thresholds: cut, Algorithms: []identity.Algorithm{a}})
	if err != nil {
		return ClusterFig{}, err
	}
	sc := cr.Algorithms[0]
	return ClusterFig{P: sc.BCubed.Precision, F1: sc.BCubed.F1, Found: sc.IdentitiesFound, True: sc.IdentitiesTrue}, nil
}

// Markdown writes the report: per fold, every cut set on every set, the
// chosen one in bold.
func (r *HeldOutReport) Markdown(w io.Writer) {
	fmt.Fprintf(w, "Projection %s fitted on the other fold; cuts chosen there (bold).\n\n", r.Method)
	fmt.Fprintln(w, "| measured fold | cuts UU, MM, MU | set | fitting half BCubed P / F1 | held-out half BCubed P / F1 | held-out identities found / true |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, x := range r.Rows {
		b := ""
		if x.Chosen {
			b = "**"
		}
		fmt.Fprintf(w, "| %d | %s%.2f, %.2f, %.2f%s | %s | %.3f / %.3f | %s%.3f / %.3f%s | %d / %d |\n", x.Fold, b, x.Cuts.UU, x.Cuts.MM, x.Cuts.MU, b, x.Set,
			x.Fit.P, x.Fit.F1, b, x.HeldOut.P, x.HeldOut.F1, b, x.HeldOut.Found, x.HeldOut.True)
	}
}
