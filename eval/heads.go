package eval

import (
	"fmt"
	"io"
	"slices"

	"github.com/periocular/atm-agent/eval/learn"
	"github.com/periocular/atm-agent/eval/metrics"
	"github.com/periocular/atm-agent/vision"
)

// HeadsOptions controls TrainHeads.
type HeadsOptions struct {
	NAPK     []int // projection sizes to compare
	ShipK    int   // the K written out (0: no projection)
	L2       float64
	Iters    int
	Trained  string // provenance text stored in the heads
	Embedder string
}

// HeadsReport is what TrainHeads measured with an identity split: every
// figure is on identities the head did not see while fitting.
type HeadsReport struct {
	MaskHeldOutAccuracy float64         `json:"mask_held_out_balanced_accuracy"`
	MaskThreshold       float64         `json:"mask_threshold"`
	NAP                 []NAPEvaluation `json:"nap"`
}

// NAPEvaluation is held-out verification with K mask directions removed.
type NAPEvaluation struct {
	K int `json:"k"`
	// Per dataset, per pair type, held out.
	Sets map[string]map[string]PairFig `json:"sets"`
}

// PairFig is a compact verification figure.
type PairFig struct {
	AUC    float64 `json:"auc"`
	TAR1e2 float64 `json:"tar_at_far_1e-2"`
	TAR1e3 float64 `json:"tar_at_far_1e-3"`
}

// Set is one named run (dataset plus mask mode) used for training.
type Set struct {
	Name string
	Run  *Run
}

// fold splits identities in two halves by a hash of their name.
func fold(identity string) int {
	h := uint32(2166136261)
	for i := 0; i < len(identity); i++ {
		h ^= uint32(identity[i])
		h *= 16777619
	}
	return int(h % 2)
}

// TrainHeads fits the mask classifier and the mask-removing projection on
// the sets' found faces. Figures come from two-fold identity-split cross
// validation (fit on one half of the identities, measure on the other, both
// ways); the shipped heads are then fitted on everything.
func TrainHeads(sets []Set, o HeadsOptions) (*vision.MaskClassifier, *vision.ProjectionHead, *HeadsReport, error) {
	if o.Iters == 0 {
		o.Iters = 300
	}
	if o.L2 == 0 {
		o.L2 = 1e-3
	}
	var all []Sample
	for _, s := range sets {
		for _, x := range s.Run.Samples {
			if x.Found {
				all = append(all, x)
			}
		}
	}
	if len(all) == 0 {
		return nil, nil, nil, fmt.Errorf("train heads: no faces")
	}
	rep := &HeadsReport{}

	// Mask classifier, held out by identity.
	var scores []float64
	var labels []bool
	for f := 0; f < 2; f++ {
		var tx [][]float32
		var ty []bool
		for _, s := range all {
			if fold(s.Identity) != f {
				tx, ty = append(tx, s.Embedding), append(ty, s.Masked)
			}
		}
		lg, err := learn.FitLogistic(tx, ty, o.L2, o.Iters)
		if err != nil {
			return nil, nil, nil, err
		}
		for _, s := range all {
			if fold(s.Identity) == f {
				scores, labels = append(scores, lg.Prob(s.Embedding)), append(labels, s.Masked)
			}
		}
	}
	rep.MaskThreshold, rep.MaskHeldOutAccuracy = learn.Threshold(scores, labels)

	// Projection, held out by identity, for each K.
	for _, k := range o.NAPK {
		ev := NAPEvaluation{K: k, Sets: map[string]map[string]PairFig{}}
		for _, set := range sets {
			var held [2][]Sample
			for f := 0; f < 2; f++ {
				var proj *learn.Projection
				if k > 0 {
					var err error
					proj, _, err = learn.FitNAP(maskDiffs(all, func(id string) bool { return fold(id) != f }), k)
					if err != nil {
						return nil, nil, nil, err
					}
				}
				for _, s := range set.Run.Samples {
					if s.Found && fold(s.Identity) == f {
						c := s
						c.Embedding = slices.Clone(s.Embedding)
						if proj != nil {
							proj.Apply(c.Embedding)
						}
						held[f] = append(held[f], c)
					}
				}
			}
			// Pairs are formed within each held-out half (the two halves
			// were projected by different heads).
			figs := map[string]PairFig{}
			g := map[string][]float64{}
			im := map[string][]float64{}
			for f := 0; f < 2; f++ {
				sc := PairScores(held[f])
				for pt, v := range sc.genuine {
					g[pt] = append(g[pt], v...)
				}
				for pt, v := range sc.impostor {
					im[pt] = append(im[pt], v...)
				}
			}
			for _, pt := range pairTypes {
				if len(g[pt]) == 0 || len(im[pt]) == 0 {
					continue
				}
				t2, _ := metrics.TARAtFAR(g[pt], im[pt], 1e-2)
				t3, _ := metrics.TARAtFAR(g[pt], im[pt], 1e-3)
				figs[pt] = PairFig{AUC: metrics.AUC(g[pt], im[pt]), TAR1e2: t2, TAR1e3: t3}
			}
			ev.Sets[set.Name] = figs
		}
		rep.NAP = append(rep.NAP, ev)
	}

	// Shipped heads, fitted on everything.
	var x [][]float32
	var y []bool
	for _, s := range all {
		x, y = append(x, s.Embedding), append(y, s.Masked)
	}
	lg, err := learn.FitLogistic(x, y, o.L2, o.Iters)
	if err != nil {
		return nil, nil, nil, err
	}
	mc := &vision.MaskClassifier{Embedder: o.Embedder, W: lg.W, B: lg.B, Accuracy: rep.MaskHeldOutAccuracy, Trained: o.Trained}
	// An unknown band around the balanced-accuracy cut.
	mc.Masked = min(0.99, rep.MaskThreshold+0.15)
	mc.Unmasked = max(0.01, rep.MaskThreshold-0.15)
	var ph *vision.ProjectionHead
	if o.ShipK > 0 {
		proj, _, err := learn.FitNAP(maskDiffs(all, func(string) bool { return true }), o.ShipK)
		if err != nil {
			return nil, nil, nil, err
		}
		ph = &vision.ProjectionHead{Embedder: o.Embedder, U: proj.U, Trained: o.Trained}
	}
	return mc, ph, rep, nil
}

// maskDiffs returns, per identity with both kinds, the difference between
// the mean masked and the mean unmasked template: what a mask does to this
// person's template.
func maskDiffs(s []Sample, use func(identity string) bool) [][]float32 {
	type acc struct {
		m, u   []float64
		nm, nu int
	}
	by := map[string]*acc{}
	var order []string
	for _, x := range s {
		if !use(x.Identity) {
			continue
		}
		a := by[x.Identity]
		if a == nil {
			a = &acc{m: make([]float64, len(x.Embedding)), u: make([]float64, len(x.Embedding))}
			by[x.Identity] = a
			order = append(order, x.Identity)
		}
		dst := a.u
		if x.Masked {
			dst = a.m
			a.nm++
		} else {
			a.nu++
		}
		for i, v := range x.Embedding {
			dst[i] += float64(v)
		}
	}
	var out [][]float32
	for _, id := range order {
		a := by[id]
		if a.nm == 0 || a.nu == 0 {
			continue
		}
		d := make([]float32, len(a.m))
		for i := range d {
			d[i] = float32(a.m[i]/float64(a.nm) - a.u[i]/float64(a.nu))
		}
		out = append(out, d)
	}
	return out
}

// Markdown writes the heads report.
func (r *HeadsReport) Markdown(w io.Writer) {
	fmt.Fprintf(w, "Mask classifier, identity-held-out balanced accuracy: %.1f%% (cut %.3f)\n\n", 100*r.MaskHeldOutAccuracy, r.MaskThreshold)
	fmt.Fprintln(w, "| K removed | set | pairs | AUC | TAR@FAR1e-2 | TAR@FAR1e-3 |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, ev := range r.NAP {
		var names []string
		for n := range ev.Sets {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			for _, pt := range pairTypes {
				f, ok := ev.Sets[n][pt]
				if !ok {
					continue
				}
				fmt.Fprintf(w, "| %d | %s | %s | %.3f | %.3f | %.3f |\n", ev.K, n, pt, f.AUC, f.TAR1e2, f.TAR1e3)
			}
		}
	}
}
