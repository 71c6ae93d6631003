package identity

import (
	"math"
	"math/rand/v2"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
)

// synth makes people × visits clustered embeddings on the unit sphere:
// centre + gaussian noise of standard deviation sigma per coordinate.
// With dim*sigma^2 = v the expected cosine distance between two visits of one
// person is about v/(1+v); between people about 1.
type synth struct {
	dim     int
	sigma   float64
	r       *rand.Rand
	centres [][]float32
}

func newSynth(dim int, sigma float64, seed uint64) *synth {
	return &synth{dim: dim, sigma: sigma, r: rand.New(rand.NewPCG(seed, 7))}
}

func (s *synth) unit() []float32 {
	v := make([]float32, s.dim)
	var n float64
	for i := range v {
		x := s.r.NormFloat64()
		v[i] = float32(x)
		n += x * x
	}
	for i := range v {
		v[i] /= float32(math.Sqrt(n))
	}
	return v
}

func (s *synth) person() int {
	s.centres = append(s.centres, s.unit())
	return len(s.centres) - 1
}

func (s *synth) visitOf(p int) []float32 {
	c := s.centres[p]
	v := make([]float32, s.dim)
	for i := range v {
		v[i] = c[i] + float32(s.sigma*s.r.NormFloat64())
	}
	x, _ := normalized(v)
	return x
}

// dataset returns samples in shuffled order and their true labels.
func (s *synth) dataset(people, visits int) ([]Sample, []int) {
	var out []Sample
	var truth []int
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for p := 0; p < people; p++ {
		id := s.person()
		for k := 0; k < visits; k++ {
			out = append(out, Sample{Embedding: s.visitOf(id), Mask: visit.Unmasked})
			truth = append(truth, p)
		}
	}
	perm := s.r.Perm(len(out))
	so, st := make([]Sample, len(out)), make([]int, len(out))
	for i, j := range perm {
		so[i], st[i] = out[j], truth[j]
		so[i].Time = t0.Add(time.Duration(i) * time.Minute)
	}
	return so, st
}

// onCircle returns a unit vector at angle deg in the plane of the first two
// axes (plus an offset axis to keep people apart).
func onCircle(dim, axis int, deg float64) []float32 {
	v := make([]float32, dim)
	a := deg * math.Pi / 180
	v[axis] = float32(math.Cos(a))
	v[axis+1] = float32(math.Sin(a))
	return v
}
