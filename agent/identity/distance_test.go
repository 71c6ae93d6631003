package identity

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/periocular/atm-agent/agent/visit"
)

// TestDistanceNeverNegative: the same face again is at distance 0, not at
// a rounding error below it (`db export` showed "distance": -1.19e-7: a
// float32 dot product of a unit vector with itself can exceed 1).
func TestDistanceNeverNegative(t *testing.T) {
	const dim = 512
	r := rand.New(rand.NewPCG(1, 2))
	e := newTestEngine(t, testConfig(), dim)
	neg := 0
	for i := range 200 {
		x := make([]float32, dim)
		var n float64
		for k := range x {
			x[k] = float32(r.NormFloat64())
			n += float64(x[k]) * float64(x[k])
		}
		for k := range x {
			x[k] /= float32(math.Sqrt(n))
		}
		mustAssign(t, e, fmt.Sprintf("v%d-a", i), t0, x, visit.Unmasked)
		a := mustAssign(t, e, fmt.Sprintf("v%d-b", i), t0, x, visit.Unmasked)
		if a.Distance < 0 {
			neg++
			if neg == 1 {
				t.Errorf("distance of a face to itself %g, want 0 (not below)", a.Distance)
			}
		}
	}
	if neg > 0 {
		t.Errorf("%d of 200 repeats got a negative distance", neg)
	}
}
