package eval

import (
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"

	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/models/eval/learn"
)

// MaskCalOptions controls CalibrateMask.
type MaskCalOptions struct {
	// FitFold is the half of the identities (fold 0 or 1, the split the
	// heads use) that the calibration is fitted on; the other half only
	// measures it.
	FitFold int
	// TargetWrong bounds, on the fitting half of every fitting set, the
	// share of masked faces called unmasked and of unmasked faces called
	// masked; the unknown band is the narrowest that meets it. Negative:
	// per set and class, the share the head as it is gets wrong there
	// (at least 1%): the new head may not be wrong more often than the old
	// one on what it is fitted on.
	TargetWrong float64
	Trained     string // provenance stored in the recalibrated head
	// Retrain fits a new logistic head on the fitting half (the samples'
	// Embedding must be raw templates); L2 and Iters as in TrainHeads.
	Retrain bool
	L2      float64
	Iters   int
	// OldRecipe (with Retrain) refits the head as train-heads does (faces
	// pooled, class-balanced; no scaling; a +-0.15 band around the
	// balanced-accuracy cut of the cross-fitted scores): the head as it
	// is, but fitted on the fitting half only, for a fair comparison.
	OldRecipe bool
}

// MaskCalibration maps the head's logit z = w.x + b to A*z + C (Platt
// scaling) and says which calibrated scores are masked (>= Masked),
// unmasked (<= Unmasked) or unknown (between).
type MaskCalibration struct {
	A        float64 `json:"a"`
	C        float64 `json:"c"`
	Masked   float64 `json:"masked"`
	Unmasked float64 `json:"unmasked"`
}

// MaskStateFig is what a mask head says of one class of faces.
type MaskStateFig struct {
	Faces   int     `json:"faces"`
	Right   float64 `json:"right"`
	Unknown float64 `json:"unknown"`
	Wrong   float64 `json:"wrong"`
}

// MaskCalRow is one set's half measured with the head as it was and as
// recalibrated.
type MaskCalRow struct {
	Set    string `json:"set"`
	Half   string `json:"half"` // fit, measure, or all (test sets)
	Before struct {
		Masked, Unmasked MaskStateFig
	} `json:"before"`
	After struct {
		Masked, Unmasked MaskStateFig
	} `json:"after"`
	// Quantiles (0, 5, 25, 50, 75, 95, 100%) of the head's score as it was,
	// and of the new head's calibrated score.
	MaskedScores   []float64 `json:"masked_scores,omitempty"`
	UnmaskedScores []float64 `json:"unmasked_scores,omitempty"`
	MaskedAfter    []float64 `json:"masked_scores_after,omitempty"`
	UnmaskedAfter  []float64 `json:"unmasked_scores_after,omitempty"`
}

var scoreQuantiles = []float64{0, 0.05, 0.25, 0.5, 0.75, 0.95, 1}

func quantiles(samples []Sample, masked bool, score func(Sample) float64) []float64 {
	var s []float64
	for _, x := range samples {
		if x.Masked == masked {
			s = append(s, score(x))
		}
	}
	if len(s) == 0 {
		return nil
	}
	slices.Sort(s)
	q := make([]float64, len(scoreQuantiles))
	for i, f := range scoreQuantiles {
		q[i] = s[int(math.Round(f*float64(len(s)-1)))]
	}
	return q
}

// MaskCalReport is CalibrateMask's result.
type MaskCalReport struct {
	Head        MaskCalibration `json:"head"` // the head's own band (A=1, C=0)
	Calibration MaskCalibration `json:"calibration"`
	Rows        []MaskCalRow    `json:"rows"`
	Retrained   bool            `json:"retrained"`
	// BalancedMeasure is the balanced accuracy of the recalibrated head at
	// the middle of its band, on the measuring halves of the fitting sets.
	BalancedMeasure float64 `json:"balanced_accuracy_measure"`
}

func logit(p float64) float64 {
	p = min(max(p, 1e-12), 1-1e-12)
	return math.Log(p / (1 - p))
}

func sigmoid(z float64) float64 { return 1 / (1 + math.Exp(-z)) }

// FitPlatt fits p = sigmoid(a*z + c) to labels y with per-sample weights
// by Newton's method (a tiny ridge keeps it defined on separable data).
func FitPlatt(z []float64, y []bool, w []float64) (a, c float64, err error) {
	if len(z) == 0 || len(z) != len(y) || len(z) != len(w) {
		return 0, 0, errors.New("platt: no data or length mismatch")
	}
	const ridge = 1e-6
	a, c = 1, 0
	for it := 0; it < 100; it++ {
		var ga, gc, haa, hac, hcc float64
		for i, zi := range z {
			p := sigmoid(a*zi + c)
			t := 0.0
			if y[i] {
				t = 1
			}
			d := w[i] * (p - t)
			ga += d * zi
			gc += d
			h := w[i] * p * (1 - p)
			haa += h * zi * zi
			hac += h * zi
			hcc += h
		}
		ga += ridge * a
		haa += ridge
		hcc += ridge
		det := haa*hcc - hac*hac
		if det <= 0 {
			return 0, 0, errors.New("platt: singular Hessian")
		}
		da := (hcc*ga - hac*gc) / det
		dc := (haa*gc - hac*ga) / det
		a, c = a-da, c-dc
		if math.Abs(da)+math.Abs(dc) < 1e-10 {
			break
		}
	}
	return a, c, nil
}

// maskCut returns, for scores of one class sorted ascending, the cut that
// leaves at most share of them on the wrong side: for masked faces a u with
// #(s <= u) <= share*n (called unmasked at or below u), for unmasked faces
// an m with #(s >= m) <= share*n. The cut lies midway (on the logit)
// between the last face allowed on the wrong side and the first that is
// not, so that rounding the head's weights does not move a face across it.
func maskCut(sorted []float64, share float64, masked bool) float64 {
	n := len(sorted)
	k := int(math.Floor(share * float64(n))) // faces allowed wrong
	if masked {
		if k >= n {
			return 1
		}
		u := math.Nextafter(sorted[k], math.Inf(-1))
		if k > 0 {
			u = min(u, sigmoid((logit(sorted[k-1])+logit(sorted[k]))/2))
		}
		return u
	}
	if k >= n {
		return 0
	}
	m := math.Nextafter(sorted[n-1-k], math.Inf(1))
	if k > 0 {
		m = max(m, sigmoid((logit(sorted[n-1-k])+logit(sorted[n-k]))/2))
	}
	return m
}

// state says what a head with this band calls a calibrated score:
// 1 masked, -1 unmasked, 0 unknown.
func (c MaskCalibration) state(p float64) int {
	switch {
	case p >= c.Masked:
		return 1
	case p <= c.Unmasked:
		return -1
	}
	return 0
}

func (c MaskCalibration) prob(score float64) float64 {
	return sigmoid(c.A*logit(score) + c.C)
}

func maskFigs(samples []Sample, c MaskCalibration, score func(Sample) float64) (masked, unmasked MaskStateFig) {
	for _, s := range samples {
		f := &unmasked
		want := -1
		if s.Masked {
			f, want = &masked, 1
		}
		f.Faces++
		switch st := c.state(c.prob(score(s))); {
		case st == 0:
			f.Unknown++
		case st == want:
			f.Right++
		default:
			f.Wrong++
		}
	}
	for _, f := range []*MaskStateFig{&masked, &unmasked} {
		if f.Faces > 0 {
			n := float64(f.Faces)
			f.Right, f.Unknown, f.Wrong = f.Right/n, f.Unknown/n, f.Wrong/n
		}
	}
	return masked, unmasked
}

// CalibrateMask recalibrates a mask head on the fitting half of the
// identities of the fit sets (each set weighing the same, each class half of
// its set): Platt scaling of the head's logit, then the narrowest unknown
// band that keeps every fit set's fitting-half error per class within
// TargetWrong. Without Retrain the head's weights stay and only the scores it
// gave (the samples' MaskScore) are used. With Retrain the samples' Embedding
// must be raw templates: a new logistic head is fitted on the fitting half
// with those weights, and the calibration is fitted on its cross-fitted
// scores (two inner identity halves, each scored by a head fitted on the
// other). The report holds the head as it was and the new one on both halves
// of the fit sets and on the test sets (measured whole; never fitted on). The
// head returned has the scaling folded into its weights (w' = a*w,
// b' = a*b + c) and the new band.
func CalibrateMask(head *vision.MaskClassifier, fit, test []Set, o MaskCalOptions) (*vision.MaskClassifier, *MaskCalReport, error) {
	if o.FitFold != 0 && o.FitFold != 1 {
		return nil, nil, fmt.Errorf("mask calibration: fit fold %d: want 0 or 1", o.FitFold)
	}
	type half struct{ fit, measure []Sample }
	halves := make([]half, len(fit))
	var train []Sample
	var sw []float64
	for i, s := range fit {
		var n [2]int
		for _, x := range s.Run.Samples {
			if !x.Found {
				continue
			}
			if fold(x.Identity) != o.FitFold {
				halves[i].measure = append(halves[i].measure, x)
				continue
			}
			halves[i].fit = append(halves[i].fit, x)
			if x.Masked {
				n[1]++
			} else {
				n[0]++
			}
		}
		if n[0] == 0 || n[1] == 0 {
			return nil, nil, fmt.Errorf("mask calibration: %s: its fitting half needs masked and unmasked faces (%d masked, %d unmasked)", s.Name, n[1], n[0])
		}
		for _, x := range halves[i].fit {
			train = append(train, x)
			if x.Masked {
				sw = append(sw, 0.5/float64(n[1]))
			} else {
				sw = append(sw, 0.5/float64(n[0]))
			}
		}
	}
	for i := range sw {
		sw[i] *= float64(len(sw)) / float64(len(fit)) // mean weight 1
	}
	if o.OldRecipe {
		// train-heads' recipe: all faces pooled, each class half.
		var npos float64
		for _, t := range train {
			if t.Masked {
				npos++
			}
		}
		for i, t := range train {
			sw[i] = float64(len(train)) / (2 * (float64(len(train)) - npos))
			if t.Masked {
				sw[i] = float64(len(train)) / (2 * npos)
			}
		}
	}
	oldScore := func(x Sample) float64 { return x.MaskScore }
	newScore := oldScore
	cross := make([]float64, len(train)) // the scores the calibration is fitted on
	for i, x := range train {
		cross[i] = x.MaskScore
	}
	w := head.W
	b := head.B
	if o.Retrain {
		if o.L2 == 0 {
			o.L2 = 1e-3
		}
		if o.Iters == 0 {
			o.Iters = 300
		}
		fitOn := func(keep func(Sample) bool) (*learn.Logistic, error) {
			var x [][]float32
			var y []bool
			var ws []float64
			for i, t := range train {
				if keep(t) {
					x, y, ws = append(x, t.Embedding), append(y, t.Masked), append(ws, sw[i])
				}
			}
			return learn.FitLogisticWeighted(x, y, ws, o.L2, o.Iters)
		}
		for g := 0; g < 2; g++ {
			lg, err := fitOn(func(t Sample) bool { return innerFold(t.Identity) != g })
			if err != nil {
				return nil, nil, fmt.Errorf("mask calibration: inner half %d: %w", g, err)
			}
			for i, t := range train {
				if innerFold(t.Identity) == g {
					cross[i] = lg.Prob(t.Embedding)
				}
			}
		}
		lg, err := fitOn(func(Sample) bool { return true })
		if err != nil {
			return nil, nil, err
		}
		w, b = lg.W, lg.B
		newScore = func(x Sample) float64 { return lg.Prob(x.Embedding) }
	}
	z := make([]float64, len(train))
	y := make([]bool, len(train))
	for i, t := range train {
		z[i], y[i] = logit(cross[i]), t.Masked
	}
	a, c, err := FitPlatt(z, y, sw)
	if o.OldRecipe {
		a, c, err = 1, 0, nil
	}
	if err != nil {
		return nil, nil, err
	}
	if a <= 0 {
		return nil, nil, fmt.Errorf("mask calibration: the fitted scale %.3f is not positive: the head ranks these faces the wrong way", a)
	}
	cal := MaskCalibration{A: a, C: c, Masked: 0, Unmasked: 1}
	old := MaskCalibration{A: 1, Masked: head.Masked, Unmasked: head.Unmasked}
	k := 0
	for _, h := range halves {
		tm, tu := o.TargetWrong, o.TargetWrong
		if tm < 0 {
			m, u := maskFigs(h.fit, old, oldScore)
			tm, tu = max(0.01, m.Wrong), max(0.01, u.Wrong)
		}
		var ms, us []float64
		for range h.fit {
			p := cal.prob(cross[k])
			if train[k].Masked {
				ms = append(ms, p)
			} else {
				us = append(us, p)
			}
			k++
		}
		slices.Sort(ms)
		slices.Sort(us)
		cal.Unmasked = min(cal.Unmasked, maskCut(ms, tm, true))
		cal.Masked = max(cal.Masked, maskCut(us, tu, false))
	}
	if o.OldRecipe {
		// train-heads' band: +-0.15 around the balanced-accuracy cut.
		cut, _ := learn.Threshold(cross, y)
		cal.Masked, cal.Unmasked = min(0.99, cut+0.15), max(0.01, cut-0.15)
	}
	if cal.Unmasked >= cal.Masked {
		// The classes separate within the target: one cut, no band, in
		// the middle (on the logit) of the gap the target allows.
		mid := sigmoid((logit(cal.Unmasked) + logit(cal.Masked)) / 2)
		cal.Masked, cal.Unmasked = mid, math.Nextafter(mid, 0)
	}
	rep := &MaskCalReport{Head: old, Calibration: cal, Retrained: o.Retrain}
	add := func(name, which string, s []Sample) {
		r := MaskCalRow{Set: name, Half: which}
		r.Before.Masked, r.Before.Unmasked = maskFigs(s, old, oldScore)
		r.After.Masked, r.After.Unmasked = maskFigs(s, cal, newScore)
		r.MaskedScores, r.UnmaskedScores = quantiles(s, true, oldScore), quantiles(s, false, oldScore)
		r.MaskedAfter, r.UnmaskedAfter = quantiles(s, true, func(x Sample) float64 { return cal.prob(newScore(x)) }),
			quantiles(s, false, func(x Sample) float64 { return cal.prob(newScore(x)) })
		rep.Rows = append(rep.Rows, r)
	}
	mid := MaskCalibration{A: a, C: c}
	mid.Masked = sigmoid((logit(cal.Unmasked) + logit(cal.Masked)) / 2)
	mid.Unmasked = math.Nextafter(mid.Masked, 0)
	var bal []float64
	for i, s := range fit {
		add(s.Name, "fit", halves[i].fit)
		add(s.Name, "measure", halves[i].measure)
		m, u := maskFigs(halves[i].measure, mid, newScore)
		bal = append(bal, (m.Right+u.Right)/2)
	}
	for _, s := range test {
		var found []Sample
		for _, x := range s.Run.Samples {
			if x.Found {
				found = append(found, x)
			}
		}
		add(s.Name, "all", found)
	}
	for _, v := range bal {
		rep.BalancedMeasure += v / float64(len(bal))
	}
	out := &vision.MaskClassifier{Embedder: head.Embedder, W: make([]float32, len(w)), B: a*b + c,
		Masked: cal.Masked, Unmasked: cal.Unmasked, Accuracy: rep.BalancedMeasure, Trained: o.Trained}
	for i, v := range w {
		out.W[i] = float32(a * float64(v))
	}
	return out, rep, nil
}

// Markdown writes the report's table: % right / unknown / wrong per class.
func (r *MaskCalReport) Markdown(w io.Writer) {
	fmt.Fprintf(w, "Head as shipped: unmasked <= %.3f, masked >= %.3f.\n", r.Head.Unmasked, r.Head.Masked)
	which := "the head's"
	if r.Retrained {
		which = "a head retrained on the fitting half,"
	}
	fmt.Fprintf(w, "Recalibrated: p = sigmoid(%.4f*z %+.4f) on %s logit z; unmasked <= %.3f, masked >= %.3f (in the uncalibrated score: %.3f, %.3f).\n",
		r.Calibration.A, r.Calibration.C, which, r.Calibration.Unmasked, r.Calibration.Masked,
		sigmoid((logit(r.Calibration.Unmasked)-r.Calibration.C)/r.Calibration.A), sigmoid((logit(r.Calibration.Masked)-r.Calibration.C)/r.Calibration.A))
	fmt.Fprintf(w, "Balanced accuracy at the band's middle, measuring halves: %.1f%%.\n\n", 100*r.BalancedMeasure)
	fmt.Fprintln(w, "| set | half | masked faces | masked right / unknown / wrong, before | after | unmasked faces | unmasked right / unknown / wrong, before | after |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	f := func(x MaskStateFig) string {
		return fmt.Sprintf("%.1f / %.1f / %.1f", 100*x.Right, 100*x.Unknown, 100*x.Wrong)
	}
	for _, row := range r.Rows {
		fmt.Fprintf(w, "| %s | %s | %d | %s | %s | %d | %s | %s |\n", row.Set, row.Half,
			row.Before.Masked.Faces, f(row.Before.Masked), f(row.After.Masked),
			row.Before.Unmasked.Faces, f(row.Before.Unmasked), f(row.After.Unmasked))
	}
	fmt.Fprint(w, "\nScores, quantiles 0 / 5 / 25 / 50 / 75 / 95 / 100%: the head as it was, then the new calibrated one:\n\n")
	fmt.Fprintln(w, "| set | half | masked, before | unmasked, before | masked, after | unmasked, after |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	q := func(v []float64) string {
		var b strings.Builder
		for i, x := range v {
			if i > 0 {
				b.WriteString(" / ")
			}
			fmt.Fprintf(&b, "%.3f", x)
		}
		return b.String()
	}
	for _, row := range r.Rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", row.Set, row.Half, q(row.MaskedScores), q(row.UnmaskedScores), q(row.MaskedAfter), q(row.UnmaskedAfter))
	}
}
