package identity

import (
	"context"
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
)

// Synthetic state for benchmarks: 512-d clustered embeddings on the sphere,
// people with 1-9 visits (mean 5), 20% of visits masked. Within a person the
// cosine distance is ~0.25 (threshold 0.4). "far": people ~1.0 apart;
// "near": people share a common direction and are ~0.7 apart, so more pairs
// pass the sketch prefilter (closer to real face embeddings). "frequent":
// "far" people with 700 visits each (identities far larger than
// consolidation's level-1 chunks).
const benchDim = 512

type benchState struct {
	snap    Snapshot
	centres [][]float32
	s       *synth
}

func makeBenchState(n int, spread string, seed uint64) *benchState {
	s := newSynth(benchDim, math.Sqrt(0.33/benchDim), seed)
	var common []float32
	rho := 0.0
	if spread == "near" {
		common, rho = s.unit(), 0.45
	}
	st := &benchState{s: s}
	backing := make([]float32, 0, n*benchDim)
	at := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for len(st.snap.Members) < n {
		c := s.unit()
		if common != nil {
			for i := range c {
				c[i] = float32(math.Sqrt(rho))*common[i] + float32(math.Sqrt(1-rho))*c[i]
			}
			c, _ = normalized(c)
		}
		s.centres = append(s.centres, c)
		p := len(s.centres) - 1
		id := fmt.Sprintf("p-%07d", p)
		st.snap.Identities = append(st.snap.Identities, IdentityMeta{ID: id, Seq: uint64(p + 1), Status: Confirmed, Created: at})
		k := 1 + s.r.IntN(9)
		if spread == "frequent" {
			k = 700 // a few people who came back hundreds of times each
		}
		for j := 0; j < k && len(st.snap.Members) < n; j++ {
			off := len(backing)
			backing = append(backing, s.visitOf(p)...)
			m := visit.Unmasked
			if s.r.IntN(5) == 0 {
				m = visit.Masked
			}
			st.snap.Members = append(st.snap.Members, visit.Member{VisitID: strconv.Itoa(len(st.snap.Members)), Time: at,
				Embedding: backing[off : off+benchDim : off+benchDim], Mask: m, IdentityID: id})
			at = at.Add(time.Minute)
		}
	}
	st.snap.Seq = uint64(len(s.centres))
	st.snap.Dim = benchDim
	return st
}

func benchConfig() Config {
	c := DefaultConfig()
	c.Thresholds = Thresholds{UU: 0.4, MM: 0.4, MU: 0}
	return c
}

func benchSizes() []int {
	if v := os.Getenv("IDENTITY_BENCH_SIZES"); v != "" {
		var out []int
		for _, f := range strings.Split(v, ",") {
			n, _ := strconv.Atoi(f)
			out = append(out, n)
		}
		return out
	}
	return []int{1000, 10000, 100000}
}

// skipSlow skips the near spread above 10k visits, where most pairs pass the
// prefilter and the run takes many minutes; set IDENTITY_BENCH_NEAR_LARGE=1 to
// run it anyway.
func skipSlow(b *testing.B, spread string, n int) {
	if spread != "far" && n > 10000 && os.Getenv("IDENTITY_BENCH_NEAR_LARGE") == "" {
		b.Skip("near spread above 10k: set IDENTITY_BENCH_NEAR_LARGE=1")
	}
}

// peakRSSMB reads the process's high-water resident set size.
func peakRSSMB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return math.NaN()
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			f := strings.Fields(l)
			kb, _ := strconv.Atoi(f[1])
			return float64(kb) / 1024
		}
	}
	return math.NaN()
}

// samplePeakHeap reports the largest heap (live and not yet collected
// objects) seen every 5 ms until stop is closed.
func samplePeakHeap(stop <-chan struct{}, out chan<- float64) {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	var mx uint64
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		metrics.Read(s)
		mx = max(mx, s[0].Value.Uint64())
		select {
		case <-stop:
			out <- float64(mx) / (1 << 20)
			return
		case <-t.C:
		}
	}
}

func BenchmarkAssign(b *testing.B) {
	for _, spread := range []string{"far", "near"} {
		for _, n := range benchSizes() {
			b.Run(fmt.Sprintf("%s/n=%d", spread, n), func(b *testing.B) {
				skipSlow(b, spread, n)
				st := makeBenchState(n, spread, 21)
				e, err := New(benchConfig(), benchDim, WithIDGenerator(SequentialIDs("q-")))
				if err != nil {
					b.Fatal(err)
				}
				if err := e.Restore(st.snap); err != nil {
					b.Fatal(err)
				}
				st.snap = Snapshot{}
				// Queries: half returning people, half new ones.
				q := make([][]float32, 512)
				for i := range q {
					if i%2 == 0 {
						q[i] = st.s.visitOf(st.s.r.IntN(len(st.s.centres)))
					} else {
						q[i] = st.s.visitOf(st.s.person())
					}
				}
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if _, err := e.Assign(Observation{Time: t0, Embedding: q[i%len(q)], Mask: visit.Unmasked}); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/visit")
			})
		}
	}
}

func BenchmarkConsolidate(b *testing.B) {
	for _, spread := range []string{"far", "near", "frequent"} {
		for _, n := range benchSizes() {
			b.Run(fmt.Sprintf("%s/n=%d", spread, n), func(b *testing.B) {
				skipSlow(b, spread, n)
				st := makeBenchState(n, spread, 22)
				e, err := New(benchConfig(), benchDim, WithIDGenerator(SequentialIDs("q-")))
				if err != nil {
					b.Fatal(err)
				}
				t := time.Now()
				if err := e.Restore(st.snap); err != nil {
					b.Fatal(err)
				}
				restore := time.Since(t)
				st = nil // the benchmark's own data does not count
				runtime.GC()
				var m0, m1 runtime.MemStats
				runtime.ReadMemStats(&m0)
				stop := make(chan struct{})
				peak := make(chan float64)
				go samplePeakHeap(stop, peak)
				b.ResetTimer()
				var locked time.Duration
				for i := 0; i < b.N; i++ {
					p, err := e.ConsolidatePlan(context.Background())
					if err != nil {
						b.Fatal(err)
					}
					t := time.Now()
					if _, err := e.ApplyPlan(p); err != nil {
						b.Fatal(err)
					}
					locked += time.Since(t)
				}
				b.StopTimer()
				close(stop)
				runtime.ReadMemStats(&m1)
				b.ReportMetric(<-peak, "MB-peakheap")
				b.ReportMetric(float64(locked.Milliseconds())/float64(b.N), "ms-locked")
				// Steady state: the next periodic run, on its own result.
				t = time.Now()
				p, err := e.ConsolidatePlan(context.Background())
				if err != nil {
					b.Fatal(err)
				}
				t2 := time.Now()
				if _, err := e.ApplyPlan(p); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(time.Since(t).Seconds(), "s-again")
				b.ReportMetric(float64(time.Since(t2).Milliseconds()), "ms-locked-again")
				b.ReportMetric(restore.Seconds(), "s-restore")
				b.ReportMetric(float64(m1.TotalAlloc-m0.TotalAlloc)/float64(b.N)/(1<<20), "MB-alloc/op")
				b.ReportMetric(float64(m0.HeapAlloc)/(1<<20), "MB-state")
				b.ReportMetric(peakRSSMB(), "MB-peakRSS")
			})
		}
	}
}
