package eval

import (
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"io"
	"math"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/models/eval/metrics"
)

// PairStats are verification figures over one kind of pair.
type PairStats struct {
	Genuine  int     `json:"genuine"`
	Impostor int     `json:"impostor"`
	AUC      float64 `json:"auc"`
	TAR1e2   float64 `json:"tar_at_far_1e-2"`
	TAR1e3   float64 `json:"tar_at_far_1e-3"`
	// Threshold1e3 is the cosine distance at FAR 1e-3 over these pairs.
	Threshold1e2 float64 `json:"threshold_at_far_1e-2"`
	Threshold1e3 float64 `json:"threshold_at_far_1e-3"`
	// IdentityBalancedTAR1e3 weighs every identity equally (large
	// identities otherwise dominate the genuine pairs).
	IdentityBalancedTAR1e3 float64 `json:"identity_balanced_tar_at_far_1e-3"`

	roc []metrics.ROCPoint // sampled at log-spaced FARs, for plotting
}

// sampledROC returns operating points at log-spaced FARs from 1e-6 to 1,
// from one sort of each score list (the full ROC of millions of pairs is
// too big to keep).
func sampledROC(g, im []float64) []metrics.ROCPoint {
	gs, is := slices.Clone(g), slices.Clone(im)
	slices.Sort(gs)
	slices.Sort(is)
	slices.Reverse(is)
	var out []metrics.ROCPoint
	for e := -6.0; e <= 0.001; e += 0.1 {
		far := math.Pow(10, e)
		k := int(math.Floor(far * float64(len(is))))
		if k >= len(is) {
			k = len(is) - 1
		}
		t := math.Nextafter(is[k], math.Inf(1))
		if float64(k)/float64(len(is)) < far && k+1 >= len(is) {
			t = math.Inf(-1)
		}
		// genuine scores >= t
		n := len(gs) - sort.SearchFloat64s(gs, t)
		out = append(out, metrics.ROCPoint{Threshold: t, FAR: float64(k) / float64(len(is)), TAR: float64(n) / float64(len(gs))})
	}
	return out
}

// VerifyReport is the JSON contract of `atm-agent eval verify`.
type VerifyReport struct {
	Dataset    string `json:"dataset"`
	Embedder   string `json:"embedder"`
	Detector   string `json:"detector"`
	Synthetic  bool   `json:"synthetic_masks"`
	Identities int    `json:"identities"`
	Images     int    `json:"images"`
	Unreadable int    `json:"unreadable"`
	Detection  struct {
		Masked   Num `json:"masked"`
		Unmasked Num `json:"unmasked"`
		// Counts behind the rates.
		MaskedFound, MaskedTotal     int `json:"-"`
		UnmaskedFound, UnmaskedTotal int `json:"-"`
	} `json:"detection"`
	// MaskAccuracy is the share of found faces whose predicted mask state
	// matches the label (unknown counts as wrong); MaskUnknown the share
	// predicted unknown.
	MaskAccuracy Num `json:"mask_accuracy"`
	MaskUnknown  Num `json:"mask_unknown"`
	// Pairs by type: all, uu, mm, mu (a type with no pairs is omitted).
	Pairs map[string]*PairStats `json:"pairs"`
	// MURank1 is the share of masked faces (of identities that also have
	// unmasked ones) whose nearest unmasked face is the same person.
	MURank1 Num `json:"mu_rank1"`
	// ThresholdAtFAR1e3 is the cosine distance at FAR 1e-3 over all pairs.
	ThresholdAtFAR1e3 float64 `json:"threshold_at_far_1e-3"`
	// TimingsMS are per-image medians in milliseconds.
	TimingsMS map[string]float64 `json:"timings_ms"`
}

// Pair types. "ms" (reported with synthetic masks only) pairs a real masked
// face with a synthetically masked one: comparing like with like.
var pairTypes = []string{"all", "uu", "mm", "mu", "ms"}

// Verify computes verification figures over all pairs of found faces.
func Verify(run *Run, datasetName string, synthetic bool) *VerifyReport {
	rep := &VerifyReport{Dataset: datasetName, Embedder: run.Embedder, Detector: run.Detector, Synthetic: synthetic,
		Pairs: map[string]*PairStats{}, TimingsMS: map[string]float64{}}
	ids := map[string]bool{}
	var found []Sample
	maskRight, maskUnknown := 0, 0
	for _, s := range run.Samples {
		ids[s.Identity] = true
		rep.Images++
		if s.Err != "" {
			rep.Unreadable++
			continue
		}
		if s.Masked {
			rep.Detection.MaskedTotal++
		} else {
			rep.Detection.UnmaskedTotal++
		}
		if !s.Found {
			continue
		}
		if s.Masked {
			rep.Detection.MaskedFound++
		} else {
			rep.Detection.UnmaskedFound++
		}
		found = append(found, s)
		switch {
		case s.Mask.String() == "unknown":
			maskUnknown++
		case (s.Mask.String() == "masked") == s.Masked:
			maskRight++
		}
	}
	rep.Identities = len(ids)
	rep.Detection.Masked = rate(rep.Detection.MaskedFound, rep.Detection.MaskedTotal)
	rep.Detection.Unmasked = rate(rep.Detection.UnmaskedFound, rep.Detection.UnmaskedTotal)
	rep.MaskAccuracy = rate(maskRight, len(found))
	rep.MaskUnknown = rate(maskUnknown, len(found))

	rep.MURank1 = muRank1(found)
	scores := PairScores(found)
	for _, pt := range pairTypes {
		g, im := scores.genuine[pt], scores.impostor[pt]
		if len(g) == 0 || len(im) == 0 {
			continue
		}
		ps := &PairStats{Genuine: len(g), Impostor: len(im), AUC: metrics.AUC(g, im)}
		var t2, t3 float64
		ps.TAR1e2, t2 = metrics.TARAtFAR(g, im, 1e-2)
		ps.TAR1e3, t3 = metrics.TARAtFAR(g, im, 1e-3)
		ps.Threshold1e2, ps.Threshold1e3 = simToDist(t2), simToDist(t3)
		ps.IdentityBalancedTAR1e3 = balancedTAR(scores.genuineID[pt], g, t3)
		ps.roc = sampledROC(g, im)
		rep.Pairs[pt] = ps
	}
	if a := rep.Pairs["all"]; a != nil {
		rep.ThresholdAtFAR1e3 = a.Threshold1e3
	}
	rep.TimingsMS["detect"] = medianMS(run.Detect)
	rep.TimingsMS["embed"] = medianMS(run.Embed)
	rep.TimingsMS["decode_io"] = medianMS(run.Decode)
	return rep
}

func muRank1(found []Sample) Num {
	hasU := map[string]bool{}
	for _, s := range found {
		if !s.Masked {
			hasU[s.Identity] = true
		}
	}
	right, total := 0, 0
	for _, m := range found {
		if !m.Masked || !hasU[m.Identity] {
			continue
		}
		best, bestID := -2.0, ""
		for _, u := range found {
			if u.Masked {
				continue
			}
			if d := dot(m.Embedding, u.Embedding); d > best {
				best, bestID = d, u.Identity
			}
		}
		total++
		if bestID == m.Identity {
			right++
		}
	}
	return rate(right, total)
}

func simToDist(t float64) float64 {
	if math.IsInf(t, 0) {
		return 2
	}
	return 1 - t
}

// Num is a float that is written as null in JSON when it is NaN (a rate
// over nothing).
type Num float64

// MarshalJSON writes NaN and infinities as null.
func (n Num) MarshalJSON() ([]byte, error) {
	f := float64(n)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return []byte("null"), nil
	}
	return json.Marshal(f)
}

func rate(a, b int) Num {
	if b == 0 {
		return Num(math.NaN())
	}
	return Num(float64(a) / float64(b))
}

func medianMS(d []time.Duration) float64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return float64(s[len(s)/2].Microseconds()) / 1000
}

// balancedTAR is the mean over identities of each identity's share of
// genuine pairs accepted at threshold t.
func balancedTAR(idOf []string, g []float64, t float64) float64 {
	acc := map[string][2]int{}
	for i, s := range g {
		a := acc[idOf[i]]
		a[1]++
		if s >= t {
			a[0]++
		}
		acc[idOf[i]] = a
	}
	var sum float64
	for _, a := range acc {
		sum += float64(a[0]) / float64(a[1])
	}
	return sum / float64(len(acc))
}

// pairScores holds cosine similarities per pair type.
type pairScores struct {
	genuine, impostor map[string][]float64
	genuineID         map[string][]string
}

func pairType(a, b Sample) string {
	switch {
	case !a.Masked && !b.Masked:
		return "uu"
	case a.Masked && b.Masked:
		return "mm"
	}
	return "mu"
}

// PairScores computes the similarity of every pair of samples, in parallel.
func PairScores(s []Sample) pairScores { return pairScoresAdjusted(s, nil) }

// pairScoresAdjusted is PairScores with adjust(a, b), when not nil, added
// to each pair's similarity.
func pairScoresAdjusted(s []Sample, adjust func(a, b Sample) float64) pairScores {
	n := len(s)
	workers := runtime.GOMAXPROCS(0)
	type part struct {
		genuine, impostor map[string][]float64
		genuineID         map[string][]string
	}
	parts := make([]part, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			p := part{map[string][]float64{}, map[string][]float64{}, map[string][]string{}}
			for i := w; i < n; i += workers {
				for j := i + 1; j < n; j++ {
					sim := dot(s[i].Embedding, s[j].Embedding)
					if adjust != nil {
						sim += adjust(s[i], s[j])
					}
					pt := pairType(s[i], s[j])
					if pt == "mm" && s[i].Synthetic != s[j].Synthetic {
						pt = "ms"
					}
					if s[i].Identity == s[j].Identity {
						p.genuine[pt] = append(p.genuine[pt], sim)
						p.genuine["all"] = append(p.genuine["all"], sim)
						p.genuineID[pt] = append(p.genuineID[pt], s[i].Identity)
						p.genuineID["all"] = append(p.genuineID["all"], s[i].Identity)
					} else {
						p.impostor[pt] = append(p.impostor[pt], sim)
						p.impostor["all"] = append(p.impostor["all"], sim)
					}
				}
			}
			parts[w] = p
		}(w)
	}
	wg.Wait()
	out := pairScores{map[string][]float64{}, map[string][]float64{}, map[string][]string{}}
	for _, p := range parts {
		for k, v := range p.genuine {
			out.genuine[k] = append(out.genuine[k], v...)
			out.genuineID[k] = append(out.genuineID[k], p.genuineID[k]...)
		}
		for k, v := range p.impostor {
			out.impostor[k] = append(out.impostor[k], v...)
		}
	}
	return out
}

func dot(a, b []float32) float64 {
	var s float32
	for i := range a {
		s += a[i] * b[i]
	}
	return float64(s)
}

// Markdown writes the report as a table.
func (r *VerifyReport) Markdown(w io.Writer) {
	fmt.Fprintf(w, "## %s — %s (detector %s)%s\n\n", r.Dataset, r.Embedder, r.Detector, map[bool]string{true: ", synthetic masks on half of each identity's unmasked images"}[r.Synthetic])
	fmt.Fprintf(w, "%d identities, %d images (%d unreadable). Detection: masked %s (%d/%d), unmasked %s (%d/%d). Mask state accuracy %s (unknown %s). Masked faces whose nearest unmasked face is the same person: %s.\n\n",
		r.Identities, r.Images, r.Unreadable, pct(r.Detection.Masked), r.Detection.MaskedFound, r.Detection.MaskedTotal,
		pct(r.Detection.Unmasked), r.Detection.UnmaskedFound, r.Detection.UnmaskedTotal, pct(r.MaskAccuracy), pct(r.MaskUnknown), pct(r.MURank1))
	fmt.Fprintln(w, "| pairs | genuine | impostor | AUC | TAR@FAR1e-2 | TAR@FAR1e-3 | identity-balanced TAR@1e-3 | distance at FAR1e-3 |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, pt := range pairTypes {
		p := r.Pairs[pt]
		if p == nil {
			continue
		}
		fmt.Fprintf(w, "| %s | %d | %d | %.3f | %.3f | %.3f | %.3f | %.4f |\n", strings.ToUpper(pt), p.Genuine, p.Impostor, p.AUC, p.TAR1e2, p.TAR1e3, p.IdentityBalancedTAR1e3, p.Threshold1e3)
	}
	keys := make([]string, 0, len(r.TimingsMS))
	for k := range r.TimingsMS {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %.1f ms", k, r.TimingsMS[k]))
	}
	fmt.Fprintf(w, "\nMedian per image: %s.\n", strings.Join(parts, ", "))
}

func pct(n Num) string {
	v := float64(n)
	if math.IsNaN(v) {
		return "n/a"
	}
	return fmt.Sprintf("%.1f%%", 100*v)
}

// WriteROC draws the ROC curves (TAR against log FAR) per pair type as PNG.
func (r *VerifyReport) WriteROC(file string) error {
	const W, H, L, B, T, R = 640, 480, 60, 50, 30, 20
	img := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(255, 255, 255, 0), H, W, gocv.MatTypeCV8UC3)
	defer img.Close()
	black := color.RGBA{0, 0, 0, 255}
	grey := color.RGBA{210, 210, 210, 255}
	x := func(far float64) int {
		lf := math.Log10(math.Max(far, 1e-6))
		return L + int((lf+6)/6*float64(W-L-R))
	}
	y := func(tar float64) int { return H - B - int(tar*float64(H-B-T)) }
	for e := -6; e <= 0; e++ {
		gocv.Line(&img, image.Pt(x(math.Pow(10, float64(e))), y(0)), image.Pt(x(math.Pow(10, float64(e))), y(1)), grey, 1)
		gocv.PutText(&img, fmt.Sprintf("1e%d", e), image.Pt(x(math.Pow(10, float64(e)))-14, H-B+18), gocv.FontHersheySimplex, 0.4, black, 1)
	}
	for t := 0; t <= 10; t += 2 {
		gocv.Line(&img, image.Pt(x(1e-6), y(float64(t)/10)), image.Pt(x(1), y(float64(t)/10)), grey, 1)
		gocv.PutText(&img, fmt.Sprintf("%.1f", float64(t)/10), image.Pt(20, y(float64(t)/10)+4), gocv.FontHersheySimplex, 0.4, black, 1)
	}
	gocv.PutText(&img, "false accept rate", image.Pt(W/2-60, H-12), gocv.FontHersheySimplex, 0.5, black, 1)
	gocv.PutText(&img, "TAR", image.Pt(8, T-8), gocv.FontHersheySimplex, 0.5, black, 1)
	gocv.PutText(&img, fmt.Sprintf("%s / %s", r.Dataset, r.Embedder), image.Pt(L, 20), gocv.FontHersheySimplex, 0.5, black, 1)
	cols := map[string]color.RGBA{"all": {0, 0, 0, 255}, "uu": {30, 120, 220, 255}, "mm": {220, 120, 30, 255}, "mu": {200, 30, 30, 255}}
	ly := H - B - 80 // legend at the lower right, where ROC curves never go
	for _, pt := range pairTypes {
		p := r.Pairs[pt]
		if p == nil || len(p.roc) == 0 {
			continue
		}
		var prev image.Point
		for i, q := range p.roc {
			pt2 := image.Pt(x(q.FAR), y(q.TAR))
			if i > 0 && pt2 != prev {
				gocv.Line(&img, prev, pt2, cols[pt], 2)
			}
			prev = pt2
		}
		gocv.Line(&img, image.Pt(W-170, ly), image.Pt(W-140, ly), cols[pt], 2)
		gocv.PutText(&img, fmt.Sprintf("%s AUC %.3f", strings.ToUpper(pt), p.AUC), image.Pt(W-135, ly+4), gocv.FontHersheySimplex, 0.45, black, 1)
		ly += 18
	}
	if !gocv.IMWrite(file, img) {
		return fmt.Errorf("write %s failed", file)
	}
	return nil
}
