package eval

import (
	"context"
	"fmt"
	"io"

	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/models/eval/metrics"
)

// AlgorithmScores is one algorithm's clustering figures.
type AlgorithmScores struct {
	Name string `json:"name"`
	metrics.ClusterScores
	// ByMask: recall by ground-truth mask state (sets with masked faces).
	ByMask *metrics.MaskRecall `json:"by_mask,omitempty"`
}

// ClusterReport is the JSON contract of `atm-agent eval cluster`.
type ClusterReport struct {
	Dataset    string              `json:"dataset"`
	Embedder   string              `json:"embedder"`
	Default    string              `json:"default"`
	Thresholds identity.Thresholds `json:"thresholds"`
	// Faceless images are not clustered; they are counted here.
	Images    int `json:"images"`
	Clustered int `json:"clustered"`
	// SameStateCeiling (sets with masked faces): the BCubed recall a
	// clustering can reach without masked <-> unmasked links.
	SameStateCeiling *float64          `json:"same_state_ceiling,omitempty"`
	Algorithms       []AlgorithmScores `json:"algorithms"`
}

// ClusterOptions for ClusterEval.
type ClusterOptions struct {
	Thresholds identity.Thresholds
	Algorithms []identity.Algorithm
	Eps        float64 // DBSCAN
	MinSamples int
}

// ClusterEval clusters the found faces with each algorithm and scores them
// against the identity labels.
func ClusterEval(ctx context.Context, run *Run, name string, o ClusterOptions) (*ClusterReport, error) {
	rep := &ClusterReport{Dataset: name, Embedder: run.Embedder, Default: string(identity.DefaultAlgorithm), Thresholds: o.Thresholds, Images: len(run.Samples)}
	var samples []identity.Sample
	var truth []string
	var masked []bool
	anyMasked := false
	for _, s := range run.Samples {
		if !s.Found {
			continue
		}
		samples = append(samples, identity.Sample{Embedding: s.Embedding, Mask: s.Mask})
		truth = append(truth, s.Identity)
		masked = append(masked, s.Masked)
		anyMasked = anyMasked || s.Masked
	}
	rep.Clustered = len(samples)
	if len(samples) == 0 {
		return nil, fmt.Errorf("no faces found in %s", name)
	}
	if anyMasked {
		c := metrics.SameStateCeiling(truth, masked)
		rep.SameStateCeiling = &c
	}
	algos := o.Algorithms
	if len(algos) == 0 {
		algos = identity.Algorithms()
	}
	cfg := identity.DefaultConfig()
	cfg.Thresholds = o.Thresholds
	for _, a := range algos {
		labels, err := identity.Cluster(ctx, samples, identity.ClusterOptions{Algorithm: a, Config: cfg, Eps: o.Eps, MinSamples: o.MinSamples})
		if err != nil {
			return nil, fmt.Errorf("cluster %s: %w", a, err)
		}
		pred := metrics.NoiseToSingletons(labels)
		sc, err := metrics.Clustering(truth, pred)
		if err != nil {
			return nil, err
		}
		as := AlgorithmScores{Name: string(a), ClusterScores: sc}
		if anyMasked {
			mr, err := metrics.RecallByMask(truth, pred, masked)
			if err != nil {
				return nil, err
			}
			as.ByMask = &mr
		}
		rep.Algorithms = append(rep.Algorithms, as)
	}
	return rep, nil
}

// Markdown writes the report as a table.
func (r *ClusterReport) Markdown(w io.Writer) {
	fmt.Fprintf(w, "## %s — clustering with %s (thresholds uu %.4f, mm %.4f, mu %.4f)\n\n", r.Dataset, r.Embedder, r.Thresholds.UU, r.Thresholds.MM, r.Thresholds.MU)
	fmt.Fprintf(w, "%d of %d images had a usable face.\n\n", r.Clustered, r.Images)
	fmt.Fprintln(w, "| algorithm | identities found / true | pairwise P | pairwise R | pairwise F1 | BCubed P | BCubed R | BCubed F1 | NMI | count MAE |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	for _, a := range r.Algorithms {
		name := a.Name
		if name == r.Default {
			name += " (default)"
		}
		fmt.Fprintf(w, "| %s | %d / %d | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %.2f |\n", name, a.IdentitiesFound, a.IdentitiesTrue,
			a.Pairwise.Precision, a.Pairwise.Recall, a.Pairwise.F1, a.BCubed.Precision, a.BCubed.Recall, a.BCubed.F1, a.NMI, a.CountMAE)
	}
	r.maskRecallMarkdown(w)
}

// maskRecallMarkdown writes the recall by mask state, when the set has
// masked faces.
func (r *ClusterReport) maskRecallMarkdown(w io.Writer) {
	if r.SameStateCeiling == nil {
		return
	}
	opt := func(p *float64) string {
		if p == nil {
			return "-"
		}
		return fmt.Sprintf("%.3f", *p)
	}
	fmt.Fprintln(w, "\nRecall by ground-truth mask state: for each face, the share of its person's other faces of that state in its cluster.")
	fmt.Fprintln(w, "\n| algorithm | unmasked -> unmasked | masked -> masked | masked -> unmasked |")
	fmt.Fprintln(w, "|---|---|---|---|")
	for _, a := range r.Algorithms {
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", a.Name, opt(a.ByMask.UU), opt(a.ByMask.MM), opt(a.ByMask.MU))
	}
	c := *r.SameStateCeiling
	fmt.Fprintf(w, "\nWithout a single masked <-> unmasked link, BCubed recall is at most %.3f (BCubed F1 %.3f at precision 1).\n", c, 2*c/(1+c))
}

// Calibrate returns, per pair type, the cosine distance at which the given
// share of impostor pairs would be accepted (FAR), from all pairs of the
// run's found faces. A pair type without impostor pairs gets 0 (disabled).
func Calibrate(run *Run, far float64) (identity.Thresholds, map[string]float64) {
	var found []Sample
	for _, s := range run.Samples {
		if s.Found {
			found = append(found, s)
		}
	}
	sc := PairScores(found)
	th := map[string]float64{}
	tar := map[string]float64{}
	for _, pt := range []string{"uu", "mm", "mu"} {
		im := sc.impostor[pt]
		if len(im) == 0 {
			continue
		}
		t, thr := metrics.TARAtFAR(sc.genuine[pt], im, far)
		th[pt] = simToDist(thr)
		tar[pt] = t
	}
	return identity.Thresholds{UU: th["uu"], MM: th["mm"], MU: th["mu"]}, tar
}
