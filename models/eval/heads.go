package eval

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/models/eval/learn"
	"github.com/periocular/atm-agent/models/eval/metrics"
)

// HeadsOptions controls TrainHeads.
type HeadsOptions struct {
	// Methods are the projections compared, identity-held-out (see
	// ParseMethod); NAPK adds "napK" methods (0: the raw template).
	Methods []Method
	NAPK    []int
	// Ship is the projection written out (nil: none). ShipK is the older
	// spelling of Ship = napK.
	Ship     *Method
	ShipK    int
	L2       float64
	Iters    int
	Trained  string // provenance text stored in the heads
	Embedder string
	// TypeCuts, when > 0, adds for every method a row scored the way the
	// identity engine decides: one cut per predicted pair type (UU, MM,
	// MU; unknown mask state counts as unmasked), each at this impostor
	// FAR on the training fold's pairs (every set's, pooled), and a pair's
	// score is its similarity minus its type's cut.
	TypeCuts float64
}

// HeadsReport is what TrainHeads measured with an identity split: every
// figure is on identities the head did not see while fitting.
type HeadsReport struct {
	MaskHeldOutAccuracy float64            `json:"mask_held_out_balanced_accuracy"`
	MaskThreshold       float64            `json:"mask_threshold"`
	Methods             []MethodEvaluation `json:"methods"`
	// Shipped names the projection written out, with the hyper-parameters
	// chosen on all the data.
	Shipped string `json:"shipped,omitempty"`
}

// MethodEvaluation is held-out verification after one projection method.
type MethodEvaluation struct {
	Method string `json:"method"`
	// Chosen holds the hyper-parameters picked on each fold's training
	// identities (by an inner identity split), fold 0 then fold 1.
	Chosen []string `json:"chosen"`
	Dim    int      `json:"dim"`
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

// fold splits identities in two halves by a hash of their name. (FNV-1a's
// low bit is the parity of the name's bytes' low bits: a weak but fixed
// split, kept so figures stay comparable.)
func fold(identity string) int { return int(fnv1a(identity) % 2) }

// innerFold is a second split, independent of fold, used inside a training
// fold: a higher bit of the hash after a final avalanche.
func innerFold(identity string) int {
	h := fnv1a(identity)
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	return int(h>>20) & 1
}

func fnv1a(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

// tagged is a found face with the index of the set it came from.
type tagged struct {
	Sample
	set int
}

// TrainHeads fits the mask classifier and the mask-removing projection on
// the sets' found faces. Figures come from two-fold identity-split cross
// validation (fit on one half of the identities, measure on the other, both
// ways); hyper-parameter grids are searched inside each training half only.
// The shipped heads are then fitted on everything. The projection returned
// is nil or a *vision.ProjectionHead: NAP directions, or a linear map.
func TrainHeads(sets []Set, o HeadsOptions) (*vision.MaskClassifier, *vision.ProjectionHead, *HeadsReport, error) {
	if o.Iters == 0 {
		o.Iters = 300
	}
	if o.L2 == 0 {
		o.L2 = 1e-3
	}
	var all []tagged
	for si, s := range sets {
		for _, x := range s.Run.Samples {
			if x.Found {
				all = append(all, tagged{x, si})
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

	methods := slices.Clone(o.Methods)
	for _, k := range o.NAPK {
		methods = append(methods, Method{Kind: "nap", NAPK: k})
	}
	if o.Ship == nil && o.ShipK > 0 {
		o.Ship = &Method{Kind: "nap", NAPK: o.ShipK}
	}

	cache := &pcaCache{m: map[string]*learn.PCA{}}
	for _, m := range append(slices.Clone(methods), ptrs(o.Ship)...) {
		if len(m.P) > 0 {
			cache.maxP = max(cache.maxP, slices.Max(m.P))
		}
	}

	// Projections, held out by identity.
	for _, m := range methods {
		ev := MethodEvaluation{Method: m.String(), Sets: map[string]map[string]PairFig{}}
		held := make([][2][]Sample, len(sets))
		var cuts [2]map[string]float64
		for f := 0; f < 2; f++ {
			var train []tagged
			for _, s := range all {
				if fold(s.Identity) != f {
					train = append(train, s)
				}
			}
			h, err := m.fit(train, len(sets), cache, fmt.Sprintf("fold %d", f))
			if err != nil {
				return nil, nil, nil, fmt.Errorf("%s, fold %d: %w", m, f, err)
			}
			ev.Chosen = append(ev.Chosen, h.desc)
			for _, s := range all {
				if fold(s.Identity) == f {
					c := s.Sample
					c.Embedding = h.apply(s.Embedding)
					ev.Dim = len(c.Embedding)
					held[s.set][f] = append(held[s.set][f], c)
				}
			}
			if o.TypeCuts > 0 {
				cuts[f] = typeCuts(train, len(sets), h, o.TypeCuts)
			}
		}
		for si, set := range sets {
			ev.Sets[set.Name] = heldOutFigs(held[si])
		}
		rep.Methods = append(rep.Methods, ev)
		if o.TypeCuts > 0 {
			tc := MethodEvaluation{Method: fmt.Sprintf("%s, cut per pair type at FAR %g (fold 0 %s, fold 1 %s)", m, o.TypeCuts, fmtCuts(cuts[0]), fmtCuts(cuts[1])), Chosen: ev.Chosen, Dim: ev.Dim, Sets: map[string]map[string]PairFig{}}
			var adjust [2]func(a, b Sample) float64
			for f, c := range cuts {
				adjust[f] = func(a, b Sample) float64 { return -c[identity.PairClass(a.Mask, b.Mask)] }
			}
			for si, set := range sets {
				tc.Sets[set.Name] = heldOutFigsAdjusted(held[si], adjust)
			}
			rep.Methods = append(rep.Methods, tc)
		}
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
	if o.Ship != nil && !(o.Ship.Kind == "nap" && o.Ship.NAPK == 0) {
		h, err := o.Ship.fit(all, len(sets), cache, "all")
		if err != nil {
			return nil, nil, nil, fmt.Errorf("shipped %s: %w", o.Ship, err)
		}
		rep.Shipped = o.Ship.Kind + " " + h.desc
		switch {
		case h.lin != nil:
			ph = &vision.ProjectionHead{Embedder: o.Embedder, Mean: h.lin.Mean, W: h.lin.W, Trained: o.Trained}
		case h.nap != nil:
			ph = &vision.ProjectionHead{Embedder: o.Embedder, U: h.nap.U, Trained: o.Trained}
		}
	}
	return mc, ph, rep, nil
}

func ptrs(m *Method) []Method {
	if m == nil {
		return nil
	}
	return []Method{*m}
}

// heldOutFigs pools the pairs formed within each held-out half (the two
// halves were projected by different heads) and measures them.
func heldOutFigs(held [2][]Sample) map[string]PairFig {
	return heldOutFigsAdjusted(held, [2]func(a, b Sample) float64{})
}

// heldOutFigsAdjusted is heldOutFigs with adjust[f], when not nil, added to
// each pair's similarity in half f.
func heldOutFigsAdjusted(held [2][]Sample, adjust [2]func(a, b Sample) float64) map[string]PairFig {
	figs := map[string]PairFig{}
	g := map[string][]float64{}
	im := map[string][]float64{}
	for f := 0; f < 2; f++ {
		sc := pairScoresAdjusted(held[f], adjust[f])
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
	return figs
}

// typeCuts projects the training samples with h and returns, per predicted
// pair type, the similarity cut at impostor FAR far over their pairs
// (pairs within each set, pooled over sets).
func typeCuts(train []tagged, nsets int, h *headFit, far float64) map[string]float64 {
	bySet := make([][]Sample, nsets)
	for _, s := range train {
		c := s.Sample
		c.Embedding = h.apply(s.Embedding)
		bySet[s.set] = append(bySet[s.set], c)
	}
	im := map[string][]float64{}
	for _, ss := range bySet {
		for i := range ss {
			for j := i + 1; j < len(ss); j++ {
				if ss[i].Identity != ss[j].Identity {
					pt := identity.PairClass(ss[i].Mask, ss[j].Mask)
					im[pt] = append(im[pt], dot(ss[i].Embedding, ss[j].Embedding))
				}
			}
		}
	}
	cuts := map[string]float64{}
	for pt, v := range im {
		cuts[pt] = metrics.ThresholdAtFAR(v, far)
	}
	return cuts
}

func fmtCuts(c map[string]float64) string {
	return fmt.Sprintf("UU %.3f MM %.3f MU %.3f", c["uu"], c["mm"], c["mu"])
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
	fmt.Fprintln(w, "| method | chosen on training folds | dim | set | pairs | AUC | TAR@FAR1e-2 | TAR@FAR1e-3 |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, ev := range r.Methods {
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
				fmt.Fprintf(w, "| %s | %s | %d | %s | %s | %.3f | %.3f | %.3f |\n", ev.Method, strings.Join(ev.Chosen, " / "), ev.Dim, n, pt, f.AUC, f.TAR1e2, f.TAR1e3)
			}
		}
	}
	if r.Shipped != "" {
		fmt.Fprintf(w, "\nshipped projection (hyper-parameters chosen on all the data): %s\n", r.Shipped)
	}
}

// Method is one way to fit a projection on frozen templates:
//
//	napK           remove the K principal mask directions (nap0 or raw: nothing)
//	wccn[:p=..][:a=..]        PCA to p dims, then whiten the within-identity
//	                          covariance shrunk towards the identity by a
//	lda[:p=..][:a=..][:k=..]  WCCN, then the k most discriminant directions
//	napK+wccn..., napK+lda... NAP first, then the above
//
// Lists (p=128,256) are grids: the value is chosen on the training
// identities only, by an inner two-fold identity split.
type Method struct {
	Kind   string // nap, wccn, lda
	NAPK   int
	P      []int
	Shrink []float64
	K      []int
}

// ParseMethod reads a method spec (see Method).
func ParseMethod(spec string) (Method, error) {
	parts := strings.Split(spec, ":")
	m := Method{}
	head := parts[0]
	if head == "raw" {
		return Method{Kind: "nap"}, nil
	}
	if strings.HasPrefix(head, "nap") {
		rest, kind, _ := strings.Cut(strings.TrimPrefix(head, "nap"), "+")
		k, err := strconv.Atoi(rest)
		if err != nil || k < 0 {
			return m, fmt.Errorf("method %q: nap size", spec)
		}
		m.NAPK, head = k, kind
		if head == "" {
			if len(parts) > 1 {
				return m, fmt.Errorf("method %q: nap takes no options", spec)
			}
			m.Kind = "nap"
			return m, nil
		}
	}
	switch head {
	case "wccn":
		m.Kind, m.P, m.Shrink = head, []int{128, 256}, []float64{0.01, 0.1, 0.3}
	case "lda":
		m.Kind, m.P, m.Shrink, m.K = head, []int{256}, []float64{0.1}, []int{64, 128}
	default:
		return m, fmt.Errorf("method %q: want napK, wccn or lda", spec)
	}
	for _, opt := range parts[1:] {
		key, vals, ok := strings.Cut(opt, "=")
		if !ok {
			return m, fmt.Errorf("method %q: option %q is not key=values", spec, opt)
		}
		var ints []int
		var floats []float64
		for _, v := range strings.Split(vals, ",") {
			if key == "a" {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil || f < 0 || f > 1 {
					return m, fmt.Errorf("method %q: shrinkage %q not in [0,1]", spec, v)
				}
				floats = append(floats, f)
				continue
			}
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return m, fmt.Errorf("method %q: %s=%q", spec, key, v)
			}
			ints = append(ints, n)
		}
		switch {
		case key == "p":
			m.P = ints
		case key == "a":
			m.Shrink = floats
		case key == "k" && m.Kind == "lda":
			m.K = ints
		default:
			return m, fmt.Errorf("method %q: unknown option %q", spec, key)
		}
	}
	return m, nil
}

func (m Method) String() string {
	if m.Kind == "nap" {
		if m.NAPK == 0 {
			return "raw"
		}
		return fmt.Sprintf("nap%d", m.NAPK)
	}
	s := m.Kind
	if m.NAPK > 0 {
		s = fmt.Sprintf("nap%d+%s", m.NAPK, s)
	}
	join := func(key string, v []string) {
		s += ":" + key + "=" + strings.Join(v, ",")
	}
	var ps, as, ks []string
	for _, p := range m.P {
		ps = append(ps, strconv.Itoa(p))
	}
	for _, a := range m.Shrink {
		as = append(as, strconv.FormatFloat(a, 'g', -1, 64))
	}
	for _, k := range m.K {
		ks = append(ks, strconv.Itoa(k))
	}
	join("p", ps)
	join("a", as)
	if m.Kind == "lda" {
		join("k", ks)
	}
	return s
}

// combo is one point of a method's grid.
type combo struct {
	p, k   int
	shrink float64
}

func (m Method) grid() []combo {
	if m.Kind == "nap" {
		return []combo{{}}
	}
	ks := m.K
	if m.Kind != "lda" {
		ks = []int{0}
	}
	var out []combo
	for _, p := range m.P {
		for _, a := range m.Shrink {
			for _, k := range ks {
				if k <= p {
					out = append(out, combo{p: p, k: k, shrink: a})
				}
			}
		}
	}
	return out
}

func (c combo) String(kind string) string {
	switch kind {
	case "wccn":
		return fmt.Sprintf("p=%d a=%g", c.p, c.shrink)
	case "lda":
		return fmt.Sprintf("p=%d a=%g k=%d", c.p, c.shrink, c.k)
	}
	return "-"
}

// headFit is a fitted projection.
type headFit struct {
	apply func([]float32) []float32
	nap   *learn.Projection // NAP alone
	lin   *learn.Linear     // WCCN / LDA, NAP folded in
	desc  string
}

// pcaCache shares PCAs between methods fitted on the same training
// identities with the same NAP (fitted up to the largest size any method
// asks for).
type pcaCache struct {
	maxP int
	m    map[string]*learn.PCA
}

func (c *pcaCache) get(key string, x [][]float32) (*learn.PCA, error) {
	if p, ok := c.m[key]; ok {
		return p, nil
	}
	p, err := learn.FitPCA(x, c.maxP)
	if err == nil {
		c.m[key] = p
	}
	return p, err
}

// prepared holds what every grid point shares for one training set.
type prepared struct {
	m   Method
	nap *learn.Projection
	pca *learn.PCA
	x   [][]float32
	ids []string
	byP map[int]*learn.WithinClass
}

func (m Method) prepare(train []tagged, cache *pcaCache, key string) (*prepared, error) {
	pr := &prepared{m: m, byP: map[int]*learn.WithinClass{}}
	if m.NAPK > 0 {
		s := make([]Sample, len(train))
		for i, t := range train {
			s[i] = t.Sample
		}
		var err error
		if pr.nap, _, err = learn.FitNAP(maskDiffs(s, func(string) bool { return true }), m.NAPK); err != nil {
			return nil, err
		}
	}
	if m.Kind == "nap" {
		return pr, nil
	}
	for _, t := range train {
		x := t.Embedding
		if pr.nap != nil {
			x = pr.nap.Remove(x)
		}
		pr.x, pr.ids = append(pr.x, x), append(pr.ids, t.Identity)
	}
	var err error
	if cache != nil {
		pr.pca, err = cache.get(fmt.Sprintf("%s nap%d", key, m.NAPK), pr.x)
	} else {
		pr.pca, err = learn.FitPCA(pr.x, slices.Max(m.P))
	}
	return pr, err
}

func (pr *prepared) head(c combo) (*headFit, error) {
	if pr.m.Kind == "nap" {
		h := &headFit{nap: pr.nap, desc: "-"}
		h.apply = func(x []float32) []float32 {
			y := slices.Clone(x)
			if pr.nap != nil {
				pr.nap.Apply(y)
			}
			return y
		}
		return h, nil
	}
	wc := pr.byP[c.p]
	if wc == nil {
		var err error
		if wc, err = learn.NewWithinClass(pr.pca, pr.x, pr.ids, c.p); err != nil {
			return nil, err
		}
		pr.byP[c.p] = wc
	}
	var lin *learn.Linear
	var err error
	if pr.m.Kind == "wccn" {
		lin, err = wc.WCCN(c.p, c.shrink)
	} else {
		lin, err = wc.LDA(c.p, c.shrink, c.k)
	}
	if err != nil {
		return nil, err
	}
	if pr.nap != nil {
		lin.AfterNAP(pr.nap)
	}
	return &headFit{lin: lin, apply: lin.Apply, desc: c.String(pr.m.Kind)}, nil
}

// fit fits the method on train; a grid is searched by an inner two-fold
// identity split of train (salted hash, independent of the outer split),
// scored by selectionScore.
func (m Method) fit(train []tagged, nsets int, cache *pcaCache, key string) (*headFit, error) {
	grid := m.grid()
	if len(grid) == 0 {
		return nil, fmt.Errorf("empty grid")
	}
	best := grid[0]
	if len(grid) > 1 {
		held := make([][][2][]Sample, len(grid)) // grid point, set, inner fold
		for i := range held {
			held[i] = make([][2][]Sample, nsets)
		}
		for g := 0; g < 2; g++ {
			var in []tagged
			for _, t := range train {
				if innerFold(t.Identity) != g {
					in = append(in, t)
				}
			}
			pr, err := m.prepare(in, cache, fmt.Sprintf("%s inner %d", key, g))
			if err != nil {
				return nil, err
			}
			for i, c := range grid {
				h, err := pr.head(c)
				if err != nil {
					return nil, err
				}
				for _, t := range train {
					if innerFold(t.Identity) == g {
						s := t.Sample
						s.Embedding = h.apply(t.Embedding)
						held[i][t.set][g] = append(held[i][t.set][g], s)
					}
				}
			}
		}
		bestScore := -1.0
		for i, c := range grid {
			var figs []map[string]PairFig
			for si := range held[i] {
				figs = append(figs, heldOutFigs(held[i][si]))
			}
			if sc := selectionScore(figs); sc > bestScore {
				best, bestScore = c, sc
			}
		}
	}
	pr, err := m.prepare(train, cache, key)
	if err != nil {
		return nil, err
	}
	return pr.head(best)
}

// selectionScore ranks grid points: per set, the mean of masked<->unmasked
// TAR at FAR 1e-2 (all pairs when a set has no MU pairs) and all-pairs TAR
// at FAR 1e-3; averaged over sets.
func selectionScore(sets []map[string]PairFig) float64 {
	var sum float64
	n := 0
	for _, f := range sets {
		all, ok := f["all"]
		if !ok {
			continue
		}
		mu, ok := f["mu"]
		if !ok {
			mu = all
		}
		sum += (mu.TAR1e2 + all.TAR1e3) / 2
		n++
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}
