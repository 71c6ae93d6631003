package identity

import (
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"

	"github.com/periocular/atm-agent/agent/visit"
)

// Pair types by mask state.
const (
	ptUU = 0
	ptMM = 1
	ptMU = 2
)

// maskClass folds MaskUnknown into unmasked: 1 for masked, 0 otherwise.
func maskClass(m visit.MaskState) uint8 {
	if m == visit.Masked {
		return 1
	}
	return 0
}

// PairClass is the pair type the engine cuts a pair of visits by, from
// their mask states: "uu", "mm" or "mu" (unknown counts as unmasked).
func PairClass(a, b visit.MaskState) string {
	return [...]string{ptUU: "uu", ptMM: "mm", ptMU: "mu"}[pairType(maskClass(a), maskClass(b))]
}

func pairType(a, b uint8) int {
	if a != b {
		return ptMU
	}
	return int(a) // 0 = UU, 1 = MM
}

// dot is the inner product of two equal-length vectors, unrolled by 8 with
// four accumulators (no SIMD in pure Go; this is ~3x a naive loop).
func dot(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+8 <= len(a); i += 8 {
		aa := a[i : i+8 : i+8]
		bb := b[i : i+8 : i+8]
		s0 += aa[0]*bb[0] + aa[4]*bb[4]
		s1 += aa[1]*bb[1] + aa[5]*bb[5]
		s2 += aa[2]*bb[2] + aa[6]*bb[6]
		s3 += aa[3]*bb[3] + aa[7]*bb[7]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// normalized returns an L2-normalised copy of v.
func normalized(v []float32) ([]float32, error) {
	return appendNormalized(nil, v)
}

// appendNormalized appends the L2-normalised v to dst.
func appendNormalized(dst, v []float32) ([]float32, error) {
	var s float64
	for _, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return nil, fmt.Errorf("embedding has a non-finite value")
		}
		s += float64(x) * float64(x)
	}
	if s == 0 {
		return nil, fmt.Errorf("embedding is all zeros")
	}
	inv64 := 1 / math.Sqrt(s)
	inv := float32(inv64)
	if math.IsInf(float64(inv), 0) {
		// A norm below ~3e-39 (subnormal components): 1/norm overflows
		// float32 and x*inv would be +Inf or NaN. Scale in float64.
		for _, x := range v {
			dst = append(dst, float32(float64(x)*inv64))
		}
		return dst, nil
	}
	for _, x := range v {
		dst = append(dst, x*inv)
	}
	return dst, nil
}

// sketchBits is the length of the sign sketches used to prefilter candidates.
const sketchBits = 512

const sketchWords = sketchBits / 64

// sketchZ is how many standard deviations above the threshold angle a pair's
// sketch distance may be and still be compared exactly.
const sketchZ = 4.5

// sketcher computes sign sketches of a structured random rotation: per block,
// three rounds of random sign flips followed by a Walsh-Hadamard transform.
// The fraction of differing bits between two sketches estimates angle/pi.
type sketcher struct {
	dim, pad int
	signs    [][]float32 // blocks*3 sign vectors of length pad
}

func newSketcher(dim int) *sketcher { return newSketcherSeed(dim, 0x61746d2d6964) }

// newSketcherSeed is newSketcher with another fixed seed: an independent
// sketch of the same vectors.
func newSketcherSeed(dim int, seed uint64) *sketcher {
	pad := 1
	for pad < dim {
		pad *= 2
	}
	blocks := (sketchBits + pad - 1) / pad
	// Fixed seed: sketches must be identical across restarts and devices.
	r := rand.New(rand.NewPCG(seed, uint64(dim)))
	s := &sketcher{dim: dim, pad: pad}
	for k := 0; k < blocks*3; k++ {
		v := make([]float32, pad)
		for i := range v {
			if r.Uint64()&1 == 1 {
				v[i] = 1
			} else {
				v[i] = -1
			}
		}
		s.signs = append(s.signs, v)
	}
	return s
}

// sketch writes the sketch of x into out (sketchWords long), using buf
// (pad long) as scratch.
func (s *sketcher) sketch(x []float32, out []uint64, buf []float32) {
	clear(out)
	bit := 0
	for b := 0; bit < sketchBits; b++ {
		clear(buf)
		copy(buf, x)
		for r := 0; r < 3; r++ {
			sg := s.signs[b*3+r]
			for i := range buf {
				buf[i] *= sg[i]
			}
			fwht(buf)
		}
		for i := 0; i < len(buf) && bit < sketchBits; i++ {
			if buf[i] >= 0 {
				out[bit/64] |= 1 << (bit % 64)
			}
			bit++
		}
	}
}

// fwht is an unnormalised in-place fast Walsh-Hadamard transform. The first
// two butterfly levels are fused (same operations, same order).
func fwht(a []float32) {
	h := 1
	if len(a) >= 4 {
		for i := 0; i+4 <= len(a); i += 4 {
			x := a[i : i+4 : i+4]
			s0, d0, s1, d1 := x[0]+x[1], x[0]-x[1], x[2]+x[3], x[2]-x[3]
			x[0], x[1], x[2], x[3] = s0+s1, d0+d1, s0-s1, d0-d1
		}
		h = 4
	}
	for ; h < len(a); h *= 2 {
		for i := 0; i < len(a); i += 2 * h {
			x := a[i : i+h : i+h]
			y := a[i+h : i+2*h : i+2*h]
			for j := range x {
				u, v := x[j], y[j]
				x[j], y[j] = u+v, u-v
			}
		}
	}
}

func hamming(a, b []uint64) int {
	b = b[:sketchWords]
	a = a[:sketchWords]
	return bits.OnesCount64(a[0]^b[0]) + bits.OnesCount64(a[1]^b[1]) +
		bits.OnesCount64(a[2]^b[2]) + bits.OnesCount64(a[3]^b[3]) +
		bits.OnesCount64(a[4]^b[4]) + bits.OnesCount64(a[5]^b[5]) +
		bits.OnesCount64(a[6]^b[6]) + bits.OnesCount64(a[7]^b[7])
}

// scanSketch appends to out every i in [lo,hi) whose sketch differs from q
// in at most cut bits. The query words live in registers; this loop is the
// cost of candidate search.
func scanSketch(sk []uint64, q *[sketchWords]uint64, lo, hi, cut int, out []int32) []int32 {
	q0, q1, q2, q3, q4, q5, q6, q7 := q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]
	sk = sk[lo*sketchWords : hi*sketchWords]
	for k := 0; k+sketchWords <= len(sk); k += sketchWords {
		w := sk[k : k+sketchWords : k+sketchWords]
		h := bits.OnesCount64(w[0]^q0) + bits.OnesCount64(w[1]^q1) +
			bits.OnesCount64(w[2]^q2) + bits.OnesCount64(w[3]^q3) +
			bits.OnesCount64(w[4]^q4) + bits.OnesCount64(w[5]^q5) +
			bits.OnesCount64(w[6]^q6) + bits.OnesCount64(w[7]^q7)
		if h <= cut {
			out = append(out, int32(lo+k/sketchWords))
		}
	}
	return out
}

// maxCut is the loosest sketch cutoff over the pair types a member of mask
// class c can form.
func (s *space) maxCut(c uint8) int {
	if c == 1 {
		return max(s.cut[ptMM], s.cut[ptMU])
	}
	return max(s.cut[ptUU], s.cut[ptMU])
}

// candidates returns the members in [0,hi) that pass the prefilter for a
// query with sketch q and mask class c.
func (s *space) candidates(q *[sketchWords]uint64, c uint8, hi int, out []int32) []int32 {
	mc := s.maxCut(c)
	if mc < 0 {
		return out
	}
	start := len(out)
	out = scanSketch(s.sk, q, 0, hi, mc, out)
	// Drop those that fail their own pair type's cutoff.
	k := start
	for _, i := range out[start:] {
		pt := pairType(s.cls[i], c)
		ct := s.cut[pt]
		if ct < 0 || ct < mc && hamming(s.sketchOf(int(i)), q[:]) > ct {
			continue
		}
		out[k] = i
		k++
	}
	return out[:k]
}

// sketchCutoff is the largest sketch distance worth an exact comparison for a
// cosine-distance threshold t; -1 when t disables matching.
func sketchCutoff(t float64, exact bool) int {
	if !(t > 0) {
		return -1
	}
	if exact {
		return sketchBits
	}
	c := 1 - t
	c = max(-1, min(1, c))
	p := math.Acos(c) / math.Pi
	cut := p*sketchBits + sketchZ*math.Sqrt(sketchBits*p*(1-p)) + 1
	return min(sketchBits, int(math.Ceil(cut)))
}

// space is a contiguous set of embeddings with their mask classes and sketches.
type space struct {
	dim   int
	vec   []float32 // n*dim
	cls   []uint8
	sk    []uint64 // n*sketchWords
	thr   [3]float64
	inv   [3]float64 // 1/thr, 0 when disabled
	cut   [3]int
	muOn  bool
	skr   *sketcher
	skr2  *sketcher // independent second sketch, for identity and group sums
	buf   []float32
	exact bool
}

func newSpace(dim int, th Thresholds, exact bool) *space {
	s := &space{dim: dim, thr: thresholdArray(th), muOn: th.MUEnabled(), skr: newSketcher(dim),
		skr2: newSketcherSeed(dim, 0x61746d2d6965), exact: exact}
	s.buf = make([]float32, s.skr.pad)
	for i, t := range s.thr {
		s.cut[i] = sketchCutoff(t, exact)
		if t > 0 {
			s.inv[i] = 1 / t
		}
	}
	return s
}

func (s *space) n() int              { return len(s.cls) }
func (s *space) row(i int) []float32 { return s.vec[i*s.dim : (i+1)*s.dim : (i+1)*s.dim] }
func (s *space) sketchOf(i int) []uint64 {
	return s.sk[i*sketchWords : (i+1)*sketchWords : (i+1)*sketchWords]
}

// add appends an already normalised embedding.
func (s *space) add(x []float32, cls uint8) {
	s.vec = append(s.vec, x...)
	s.addSketch(cls)
}

// addNormalized normalises v into the slab and appends it.
func (s *space) addNormalized(v []float32, cls uint8) error {
	vec, err := appendNormalized(s.vec, v)
	if err != nil {
		return err
	}
	s.vec = vec
	s.addSketch(cls)
	return nil
}

// addSketch completes the row just appended to vec.
func (s *space) addSketch(cls uint8) {
	s.cls = append(s.cls, cls)
	var sk [sketchWords]uint64
	s.skr.sketch(s.row(len(s.cls)-1), sk[:], s.buf)
	s.sk = append(s.sk, sk[:]...)
}

// nd is the normalised distance between members i and j and their pair type;
// ok is false when the pair type never matches.
func (s *space) nd(i, j int) (float64, int, bool) {
	pt := pairType(s.cls[i], s.cls[j])
	if s.inv[pt] == 0 {
		return 0, pt, false
	}
	d := 1 - float64(dot(s.row(i), s.row(j)))
	return d * s.inv[pt], pt, true
}
