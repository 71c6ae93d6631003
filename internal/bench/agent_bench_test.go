// Package bench holds the agent's end-to-end benchmarks (docs/benchmarks.md,
// section "Agent"). They are benchmarks only: `make test` never runs them.
//
//	go test -run '^$' -bench VisitLatency -benchtime 30x ./internal/bench/
//	go test -run '^$' -bench Visits10k -benchtime 1x ./internal/bench/
package bench

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent"
	"github.com/periocular/atm-agent/agent/daemon"
	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/agent/rules"
	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/hal/sim"
	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/models"
	"github.com/periocular/atm-agent/store"
)

func modelsDir(b testing.TB) (string, *models.Manifest) {
	dir := testenv.ModelsDir(b)
	man, err := models.LoadManifest(filepath.Join(dir, "manifest.yaml"))
	if err != nil {
		b.Fatalf("built models needed (run `make models`): %v", err)
	}
	return dir, man
}

// atmBurst is one simulated card insert as the demo renders it: the first
// demo face (face-api's sample photos) pasted at an ATM camera's distance
// (a 230-290 px face in a 640x480 frame) over a background, with per-frame
// position and brightness jitter; five different frames.
func atmBurst(b testing.TB) []visit.Frame {
	src := testenv.ModelSrc()
	dir, _ := modelsDir(b)
	faces, err := sim.LoadFaces(dir, filepath.Join(src, "face-api", "demo"))
	if err != nil || len(faces) == 0 {
		b.Fatalf("demo faces (run `make models`): %v", err)
	}
	return sim.Render(faces[0].BGR, sim.ShotFace, 5, 1)
}

// burstCamera returns prepared frames immediately.
type burstCamera struct{ frames []visit.Frame }

func (c burstCamera) Burst(ctx context.Context) ([]visit.Frame, error) {
	now := time.Now()
	out := make([]visit.Frame, len(c.frames))
	for i, f := range c.frames {
		f.Time = now
		out[i] = f
	}
	return out, nil
}

// done is an agent.Observer that reports every committed visit.
type done struct {
	ch chan agent.Stages
}

func (d done) Visit(_ visit.Visit, s agent.Stages, _ int) { d.ch <- s }
func (done) Coalesced()                                   {}
func (done) CommitFailed(string)                          {}
func (done) Consolidated(int, time.Duration)              {}
func (done) Purged(int)                                   {}

// rig is an agent on a real store in a temp dir, with the default rules.
type rig struct {
	ag    *agent.Agent
	st    *store.Store
	path  string
	obs   done
	stop  context.CancelFunc
	ended chan error
}

func newRig(b *testing.B, cam agent.Camera, p agent.Perceiver, eng *identity.Engine, model string, newIDQ float64) *rig {
	path := filepath.Join(b.TempDir(), "agent.db")
	st, err := store.Open(path, store.Options{Timeout: 5 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	re, err := rules.New(rules.DefaultRules())
	if err != nil {
		b.Fatal(err)
	}
	r := &rig{st: st, path: path, obs: done{make(chan agent.Stages, 1)}, ended: make(chan error, 1)}
	r.ag, err = agent.New(agent.DefaultConfig(), agent.Deps{
		Camera: cam, Perceiver: p, Store: st, Identities: eng, Rules: re,
		Observer: r.obs, Model: model, NewIdentityQuality: newIDQ,
		Site: "bench", Device: "bench-0001",
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.stop = cancel
	go func() { r.ended <- r.ag.Run(ctx) }()
	b.Cleanup(func() {
		r.stop()
		if err := <-r.ended; err != nil {
			b.Error(err)
		}
		st.Close()
	})
	return r
}

// visit triggers one visit and waits for its commit; it returns the wall
// time from Trigger to the commit being reported, and the agent's stages.
func (r *rig) visit(b *testing.B, ev visit.Trigger) (time.Duration, agent.Stages) {
	t := time.Now()
	if !r.ag.Trigger(ev) {
		b.Fatal("trigger coalesced")
	}
	select {
	case s := <-r.obs.ch:
		return time.Since(t), s
	case <-time.After(30 * time.Second):
		b.Fatalf("visit not committed in 30 s: %+v", r.ag.Stats())
	}
	return 0, agent.Stages{}
}

// engineFor is an identity engine with em's thresholds for templates of
// length dim (the pipeline's TemplateDim, or vision.TemplateShape's).
func engineFor(b *testing.B, em *models.Model, dim int) *identity.Engine {
	icfg := identity.DefaultConfig()
	icfg.Thresholds = identity.Thresholds{UU: em.Thresholds.UU, MM: em.Thresholds.MM, MU: em.Thresholds.MU}
	eng, err := identity.New(icfg, dim)
	if err != nil {
		b.Fatal(err)
	}
	return eng
}

func pct(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(math.Ceil(p*float64(len(s))))-1)]
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// BenchmarkVisitLatency is trigger -> committed visit for a 5-frame 640x480
// burst through the daemon's own wiring (agent/daemon: models, vision
// pipeline with 2 threads, identity engine, default rules, bbolt store);
// the injected camera returns prepared frames at once, no trigger source,
// MQTT or metrics port is configured. One visit per iteration; the first
// visit (a warm-up) is not counted.
func BenchmarkVisitLatency(b *testing.B) {
	dir := testenv.ModelsDir(b)
	cfg := daemon.DefaultConfig()
	cfg.Models.Dir = dir
	cfg.Store.Path = filepath.Join(b.TempDir(), "agent.db")
	cfg.Trigger = daemon.TriggerConfig{}
	cfg.Metrics.Listen = ""
	cfg.Device = daemon.DeviceConfig{ID: "bench-0001", Site: "bench"}
	if s := os.Getenv("ATM_BENCH_THREADS"); s != "" {
		cfg.Vision.Threads, _ = strconv.Atoi(s)
	}
	// ATM_BENCH_NOTRACK=1: every frame of the burst runs the whole
	// detection stage (no tracking from the previous frame).
	cfg.Vision.NoTrack = os.Getenv("ATM_BENCH_NOTRACK") == "1"
	obs := done{make(chan agent.Stages, 1)}
	d, err := daemon.New(cfg, daemon.Options{Version: "bench", Camera: burstCamera{atmBurst(b)}, Observer: obs,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ended := make(chan error, 1)
	go func() { ended <- d.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-ended; err != nil {
			b.Error(err)
		}
	})
	r := &rig{ag: d.Agent(), obs: obs}

	r.visit(b, visit.Trigger{Source: "bench"}) // warm-up
	var total, perceive, rest []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d, s := r.visit(b, visit.Trigger{Source: "bench"})
		total = append(total, d)
		perceive = append(perceive, s.Perceive)
		rest = append(rest, s.Assign+s.Rules+s.Commit)
	}
	b.StopTimer()
	if st := r.ag.Stats(); st.Visits[visit.FaceFound] != uint64(b.N+1) {
		b.Fatalf("want %d face visits, got %v", b.N+1, st.Visits)
	}
	b.ReportMetric(ms(pct(total, 0.5)), "ms-median")
	b.ReportMetric(ms(pct(total, 0.9)), "ms-p90")
	b.ReportMetric(ms(pct(perceive, 0.5)), "ms-perceive-median")
	b.ReportMetric(ms(pct(rest, 0.5)), "ms-identity+rules+commit-median")
	b.ReportMetric(ms(pct(rest, 0.9)), "ms-identity+rules+commit-p90")
	rss, hwm := memStatus(b) // models loaded and used: the daemon's baseline
	b.ReportMetric(rss, "MB-VmRSS")
	b.ReportMetric(hwm, "MB-VmHWM")
}

// people is a synthetic population for the fake perceiver: a unit centre
// per person (and a second one for the masked face), visit frequencies
// skewed so that a few people come far more often than the rest.
type people struct {
	dim            int
	bare, masked   [][]float32
	weights        []float64 // cumulative
	rng            *rand.Rand
	noise          float64 // norm of the per-visit noise
	maskedFraction float64
	mu             sync.Mutex
}

func unit(v []float32) []float32 {
	var s float64
	for _, x := range v {
		s += float64(x) * float64(x)
	}
	n := float32(1 / math.Sqrt(s))
	for i := range v {
		v[i] *= n
	}
	return v
}

func gauss(rng *rand.Rand, dim int, sigma float64) []float32 {
	v := make([]float32, dim)
	for i := range v {
		v[i] = float32(rng.NormFloat64() * sigma)
	}
	return v
}

func newPeople(n, dim int, seed uint64) *people {
	rng := rand.New(rand.NewPCG(seed, 1))
	p := &people{dim: dim, rng: rng, noise: 0.4, maskedFraction: 0.3}
	var cum float64
	for i := 0; i < n; i++ {
		c := unit(gauss(rng, dim, 1))
		m := gauss(rng, dim, 0.5/math.Sqrt(float64(dim)))
		for j := range m {
			m[j] += c[j]
		}
		p.bare = append(p.bare, c)
		p.masked = append(p.masked, unit(m))
		cum += 1 / math.Pow(float64(i+1), 0.8) // Zipf-like
		p.weights = append(p.weights, cum)
	}
	return p
}

// next draws a visit: a person, a mask state and a noisy embedding.
func (p *people) next() (visit.MaskState, []float32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i, _ := slices.BinarySearch(p.weights, p.rng.Float64()*p.weights[len(p.weights)-1])
	i = min(i, len(p.bare)-1)
	c, mask := p.bare[i], visit.Unmasked
	if p.rng.Float64() < p.maskedFraction {
		c, mask = p.masked[i], visit.Masked
	}
	v := gauss(p.rng, p.dim, p.noise/math.Sqrt(float64(p.dim)))
	for j := range v {
		v[j] += c[j]
	}
	return mask, unit(v)
}

// fakePerceiver returns synthetic descriptors; about 3% of visits have no
// usable face.
type fakePerceiver struct {
	pp    *people
	model string
	n     int
}

func (f *fakePerceiver) Perceive(ctx context.Context, frames []visit.Frame) (visit.Descriptor, error) {
	f.n++
	d := visit.Descriptor{Model: f.model, Frames: len(frames)}
	if f.n%33 == 0 {
		d.Outcome = visit.NoFace
		return d, nil
	}
	d.Mask, d.Embedding = f.pp.next()
	d.Outcome, d.Used, d.Quality = visit.FaceFound, 3, 0.8
	return d, nil
}

// memStatus reads VmRSS and VmHWM (MB) from /proc/self/status.
func memStatus(b *testing.B) (rss, hwm float64) {
	m := procStatus(b)
	return m["VmRSS"], m["VmHWM"]
}

// procStatus returns the kB fields of /proc/self/status in MB.
func procStatus(b *testing.B) map[string]float64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	m := map[string]float64{}
	for _, l := range strings.Split(string(raw), "\n") {
		f := strings.Fields(l)
		if len(f) == 3 && f[2] == "kB" {
			v, _ := strconv.ParseFloat(f[1], 64)
			m[strings.TrimSuffix(f[0], ":")] = v / 1024
		}
	}
	return m
}

// BenchmarkVisits10k drives 10,000 visits (28 days at one every 4 minutes,
// all inside the 30-day retention) through the real agent, identity
// engine, rules and store, with a fake perceiver of ~2,000 synthetic people
// (the shipped embedder's dimension, 1024; 30% masked, 3% faceless; visit
// frequencies Zipf-like) and a tiny fake frame, consolidating identities
// every 2,500 visits as the daemon's periodic job would
// (ATM_BENCH_CONSOLIDATE_EVERY changes that; 0 never consolidates). It
// reports the process's RSS, peak RSS and Go heap afterwards, and the store
// file size. Run with -benchtime 1x; GOMEMLIMIT applies as usual.
func BenchmarkVisits10k(b *testing.B) {
	const visits, population = 10000, 2000
	dir, man := modelsDir(b) // the shipped template dimension and thresholds
	em, ok := man.Find(man.Pipeline.Embedder)
	if !ok || em.Embedding == nil || em.Thresholds == nil {
		b.Fatalf("embedder %q without dimension or thresholds", man.Pipeline.Embedder)
	}
	dim, tmodel, err := vision.TemplateShape(dir, em)
	if err != nil {
		b.Fatal(err)
	}
	// ATM_BENCH_CONSOLIDATE_EVERY=0: never consolidate.
	every := 2500
	if s := os.Getenv("ATM_BENCH_CONSOLIDATE_EVERY"); s != "" {
		every, _ = strconv.Atoi(s)
	}
	for i := 0; i < b.N; i++ {
		eng := engineFor(b, em, dim)
		fp := &fakePerceiver{pp: newPeople(population, dim, uint64(i+1)), model: tmodel}
		cam := burstCamera{[]visit.Frame{{W: 1, H: 1, BGR: []byte{0, 0, 0}}}}
		r := newRig(b, cam, fp, eng, fp.model, 0.5)
		start := time.Now().Add(-28 * 24 * time.Hour)
		var commit []time.Duration
		t0 := time.Now()
		for n := 0; n < visits; n++ {
			ev := visit.Trigger{ID: fmt.Sprintf("v%06d", n), Source: "bench", Time: start.Add(time.Duration(n) * 4 * time.Minute)}
			if n%7 == 0 {
				ev.Context.CardHash = fmt.Sprintf("card-%d", n%97)
			}
			_, s := r.visit(b, ev)
			commit = append(commit, s.Assign+s.Rules+s.Commit)
			if every > 0 && (n+1)%every == 0 {
				if err := r.ag.Consolidate(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
		}
		elapsed := time.Since(t0)
		st := r.ag.Stats()
		if st.Committed != visits {
			b.Fatalf("committed %d of %d visits: %+v", st.Committed, visits, st)
		}
		runtime.GC()
		var ms0 runtime.MemStats
		runtime.ReadMemStats(&ms0)
		if f := os.Getenv("ATM_BENCH_HEAPPROFILE"); f != "" {
			writeHeapProfile(b, f) // what the live heap holds after 10,000 visits
		}
		ps := procStatus(b)
		fi, err := os.Stat(r.path)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(ps["VmRSS"], "MB-VmRSS")
		b.ReportMetric(ps["VmHWM"], "MB-VmHWM")
		b.ReportMetric(ps["RssAnon"], "MB-RssAnon")
		// RssFile: bbolt's mmap of the store, the binary and OpenCV's libraries.
		b.ReportMetric(ps["RssFile"], "MB-RssFile")
		b.ReportMetric(float64(ms0.HeapAlloc)/(1<<20), "MB-heap-live")
		b.ReportMetric(float64(ms0.Sys)/(1<<20), "MB-go-sys")
		b.ReportMetric(float64(fi.Size())/(1<<20), "MB-store")
		b.ReportMetric(float64(len(eng.Identities())), "identities")
		b.ReportMetric(float64(st.Alerts), "alerts")
		b.ReportMetric(ms(pct(commit, 0.5)), "ms-identity+rules+commit-median")
		b.ReportMetric(ms(pct(commit, 0.99)), "ms-identity+rules+commit-p99")
		b.ReportMetric(elapsed.Seconds(), "s-run")
		b.Logf("GOMEMLIMIT=%q (runtime limit %d MB)", os.Getenv("GOMEMLIMIT"), debug.SetMemoryLimit(-1)>>20)
	}
}

// writeHeapProfile writes the heap profile (in-use and allocated) to path.
func writeHeapProfile(b *testing.B, path string) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		b.Fatal(err)
	}
}
