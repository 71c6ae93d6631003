package identity

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
)

// refAssign is the member-by-member rule, brute force over every identity:
// the smallest like-with-like (else MU) mean normalised distance <= 1,
// ties to the older identity; "" for a new identity.
func refAssign(e *Engine, x []float32, m visit.MaskState) string {
	sp := e.sp
	cx := maskClass(m)
	best, bestKey, bestSeq := "", math.Inf(1), uint64(0)
	for _, id := range e.ids {
		var sL, sM float64
		var kL, kM int
		for _, j := range id.members {
			pt := pairType(sp.cls[j], cx)
			d := (1 - float64(dot(sp.row(int(j)), x))) * sp.inv[pt]
			if pt == ptMU {
				sM, kM = sM+d, kM+1
			} else {
				sL, kL = sL+d, kL+1
			}
		}
		var key float64
		switch {
		case kL > 0:
			key = sL / float64(kL)
		case sp.muOn && kM > 0:
			key = sM / float64(kM)
		default:
			continue
		}
		if key <= 1 && (key < bestKey || key == bestKey && id.seq < bestSeq) {
			best, bestKey, bestSeq = id.id, key, id.seq
		}
	}
	return best
}

// The identity-sum prefilter must give the decisions of the exact
// member-by-member rule (mask classes, MU on and off, people close to the
// threshold, across a consolidation and a retention sweep).
func TestCentroidAssignMatchesMemberRule(t *testing.T) {
	for _, mu := range []float64{0, 0.35} {
		t.Run(fmt.Sprint("mu=", mu), func(t *testing.T) {
			s := newSynth(64, math.Sqrt(0.3/64), 31)
			cfg := DefaultConfig()
			cfg.Thresholds = Thresholds{UU: 0.4, MM: 0.3, MU: mu}
			e := newTestEngine(t, cfg, 64)
			var people []int
			for p := 0; p < 40; p++ {
				people = append(people, s.person())
			}
			disagree := 0
			for k := 0; k < 600; k++ {
				x := s.visitOf(people[s.r.IntN(len(people))])
				m := visit.Unmasked
				if s.r.IntN(4) == 0 {
					m = visit.Masked
				}
				want := refAssign(e, x, m)
				a := mustAssign(t, e, fmt.Sprint(k), t0.Add(time.Duration(k)*time.Minute), x, m)
				if a.New && want != "" || !a.New && a.IdentityID != want {
					disagree++
				}
				switch k {
				case 300:
					if _, err := e.Consolidate(t.Context()); err != nil {
						t.Fatal(err)
					}
				case 450:
					e.Forget(t0.Add(100 * time.Minute))
				}
			}
			if disagree > 0 {
				t.Fatalf("%d/600 assignments differ from the member-by-member rule", disagree)
			}
			if n := len(e.Identities()); n < 30 {
				t.Fatalf("only %d identities: the test data has no near misses", n)
			}
		})
	}
}

// fwht (with its fused first levels) against the Hadamard matrix definition.
func TestFWHTDefinition(t *testing.T) {
	g := newSynth(64, 0, 3)
	for _, n := range []int{1, 2, 4, 8, 64} {
		x := g.unit()[:n]
		want := make([]float64, n)
		for i := range want {
			for j, v := range x {
				sign := 1.0
				if bitsOnes(i&j)%2 == 1 {
					sign = -1
				}
				want[i] += sign * float64(v)
			}
		}
		fwht(x)
		for i := range x {
			if math.Abs(float64(x[i])-want[i]) > 1e-5 {
				t.Fatalf("n=%d: [%d] = %v, want %v", n, i, x[i], want[i])
			}
		}
	}
}

func bitsOnes(v int) int {
	n := 0
	for ; v != 0; v &= v - 1 {
		n++
	}
	return n
}
