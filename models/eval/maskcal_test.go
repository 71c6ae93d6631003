package eval

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/periocular/atm-agent/agent/vision"
)

func TestFitPlattRecoversScale(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	const a, c = 2.5, -0.7
	var z []float64
	var y []bool
	var w []float64
	for i := 0; i < 20000; i++ {
		zi := 3 * rng.NormFloat64()
		z = append(z, zi)
		y = append(y, rng.Float64() < sigmoid(a*zi+c))
		w = append(w, 1)
	}
	ga, gc, err := FitPlatt(z, y, w)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(ga-a) > 0.15 || math.Abs(gc-c) > 0.1 {
		t.Fatalf("a, c = %.3f, %.3f; want about %.1f, %.1f", ga, gc, a, c)
	}
}

// TestCalibrateMask: a head whose scores are shifted (every masked face of
// one set scores low) is recalibrated on the fitting half only: the band
// keeps each class's fitting-half error within the target, the measuring
// half is untouched by the fit, and the returned head scores exactly the
// calibrated probability.
func TestCalibrateMask(t *testing.T) {
	run := maskedRun(3, 80, 6)
	head := &vision.MaskClassifier{Embedder: "synthetic", W: make([]float32, len(run.Samples[0].Embedding)), B: -4, Masked: 0.65, Unmasked: 0.35}
	head.W[0] = 4 // the mask direction, but the bias puts masked faces near 0.5
	for i := range run.Samples {
		run.Samples[i].MaskScore = head.Score(run.Samples[i].Embedding)
	}
	for _, retrain := range []bool{false, true} {
		out, rep, err := CalibrateMask(head, []Set{{Name: "s", Run: run}}, nil, MaskCalOptions{TargetWrong: 0.02, Retrain: retrain})
		if err != nil {
			t.Fatal(err)
		}
		fit, meas := rep.Rows[0], rep.Rows[1]
		if fit.Half != "fit" || meas.Half != "measure" || fit.After.Masked.Faces+meas.After.Masked.Faces != 240 {
			t.Fatalf("rows %+v", rep.Rows)
		}
		if fit.After.Masked.Wrong > 0.02 || fit.After.Unmasked.Wrong > 0.02 {
			t.Errorf("retrain %v: fitting half wrong %.3f masked, %.3f unmasked; target 0.02", retrain, fit.After.Masked.Wrong, fit.After.Unmasked.Wrong)
		}
		if meas.After.Masked.Right <= meas.Before.Masked.Right {
			t.Errorf("retrain %v: masked right on the measuring half %.3f -> %.3f: want a gain", retrain, meas.Before.Masked.Right, meas.After.Masked.Right)
		}
		if !retrain {
			for _, s := range run.Samples[:20] {
				want := rep.Calibration.prob(s.MaskScore)
				if got := out.Score(s.Embedding); math.Abs(got-want) > 1e-5 {
					t.Fatalf("folded head scores %.6f, calibration %.6f", got, want)
				}
			}
		}
		if out.Masked < out.Unmasked {
			t.Fatalf("band %v..%v", out.Unmasked, out.Masked)
		}
	}
}
