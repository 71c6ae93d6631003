package identity

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"sync"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
)

// Algorithm names a batch clustering method.
type Algorithm string

const (
	// Average: average-linkage agglomerative clustering at the pair-type
	// thresholds, the same linkage the engine consolidates with. Default.
	Average Algorithm = "average"
	// Complete: complete linkage (every pair within threshold); stricter.
	Complete Algorithm = "complete"
	// DBSCAN: the original project's baseline: euclidean distance on the raw
	// embeddings, Eps and MinSamples; noise gets label -1.
	DBSCAN Algorithm = "dbscan"
	// Online: samples fed one by one through the Engine in order, with a
	// consolidation every ConsolidateEvery samples and one at the end.
	Online Algorithm = "online"
)

// DefaultAlgorithm is what the agent uses.
const DefaultAlgorithm = Average

// Algorithms lists the batch methods, default first.
func Algorithms() []Algorithm { return []Algorithm{Average, Complete, Online, DBSCAN} }

// Sample is one item to cluster.
type Sample struct {
	Embedding []float32
	Mask      visit.MaskState
	Time      time.Time // order for Online; otherwise unused
}

// ClusterOptions selects and tunes an algorithm.
type ClusterOptions struct {
	Algorithm Algorithm
	// Config carries the thresholds for Average, Complete and Online.
	Config Config
	// Eps and MinSamples for DBSCAN (defaults 0.5 and 2, as the original;
	// MinSamples counts the point itself, as scikit-learn does).
	Eps        float64
	MinSamples int
	// ConsolidateEvery for Online (default 100).
	ConsolidateEvery int
}

// Cluster labels samples: labels are >= 0 and numbered by first appearance;
// DBSCAN noise is -1 (callers treat it as singletons). Same input, same
// output.
func Cluster(ctx context.Context, samples []Sample, opt ClusterOptions) ([]int, error) {
	if len(samples) == 0 {
		return nil, nil
	}
	dim := len(samples[0].Embedding)
	for i, s := range samples {
		if len(s.Embedding) != dim || dim == 0 {
			return nil, fmt.Errorf("cluster: sample %d has %d dimensions, want %d", i, len(s.Embedding), dim)
		}
	}
	switch opt.Algorithm {
	case DBSCAN:
		return dbscan(ctx, samples, opt)
	case Online:
		return clusterOnline(ctx, samples, opt)
	case Average, Complete, "":
		if err := opt.Config.Validate(); err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
		sp := newSpace(dim, opt.Config.Thresholds, opt.Config.Exact)
		sp.vec = make([]float32, 0, len(samples)*dim)
		for i, s := range samples {
			x, err := normalized(s.Embedding)
			if err != nil {
				return nil, fmt.Errorf("cluster: sample %d: %w", i, err)
			}
			sp.add(x, maskClass(s.Mask))
		}
		es, err := sp.edges(ctx, opt.Config.Workers)
		if err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
		link := linkAverage
		if opt.Algorithm == Complete {
			link = linkComplete
		}
		labels, err := sp.hac(ctx, nil, es, link)
		if err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
		return labels, nil
	}
	return nil, fmt.Errorf("cluster: unknown algorithm %q (want one of %v)", opt.Algorithm, Algorithms())
}

func clusterOnline(ctx context.Context, samples []Sample, opt ClusterOptions) ([]int, error) {
	every := opt.ConsolidateEvery
	if every <= 0 {
		every = 100
	}
	e, err := New(opt.Config, len(samples[0].Embedding), WithIDGenerator(SequentialIDs("b-")))
	if err != nil {
		return nil, fmt.Errorf("cluster online: %w", err)
	}
	for i, s := range samples {
		if _, err := e.Assign(Observation{VisitID: fmt.Sprint(i), Time: s.Time, Embedding: s.Embedding, Mask: s.Mask}); err != nil {
			return nil, fmt.Errorf("cluster online: %w", err)
		}
		if (i+1)%every == 0 || i == len(samples)-1 {
			if _, err := e.Consolidate(ctx); err != nil {
				return nil, fmt.Errorf("cluster online: %w", err)
			}
		}
	}
	labels := make([]int, len(samples))
	for i := range samples {
		labels[i] = int(e.who[i])
	}
	return renumber(labels), nil
}

// dbscan is scikit-learn's DBSCAN with the euclidean metric on the raw
// embeddings: a core point has at least MinSamples points (itself included)
// within Eps; clusters grow from core points in index order.
func dbscan(ctx context.Context, samples []Sample, opt ClusterOptions) ([]int, error) {
	eps := opt.Eps
	if eps == 0 {
		eps = 0.5
	}
	minS := opt.MinSamples
	if minS == 0 {
		minS = 2
	}
	if !(eps > 0) || minS < 1 {
		return nil, fmt.Errorf("cluster dbscan: eps %v, min_samples %d", eps, minS)
	}
	n := len(samples)
	eps2 := float32(eps * eps)
	nb := make([][]int32, n)
	workers := max(1, min(runtime.GOMAXPROCS(0), n/64+1))
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += workers {
				if i%256 == w && ctx.Err() != nil {
					return
				}
				a := samples[i].Embedding
				for j := 0; j < n; j++ {
					if sqdist(a, samples[j].Embedding) <= eps2 {
						nb[i] = append(nb[i], int32(j))
					}
				}
			}
		}(w)
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("cluster dbscan: %w", err)
	}
	labels := make([]int, n)
	for i := range labels {
		labels[i] = -1
	}
	next := 0
	for i := 0; i < n; i++ {
		if labels[i] >= 0 || len(nb[i]) < minS {
			continue
		}
		c := next
		next++
		labels[i] = c
		queue := []int32{int32(i)}
		for len(queue) > 0 {
			p := queue[0]
			queue = queue[1:]
			if len(nb[p]) < minS {
				continue // border point: joins, does not expand
			}
			for _, q := range nb[p] {
				if labels[q] < 0 {
					labels[q] = c
					queue = append(queue, q)
				}
			}
		}
	}
	return renumber(labels), nil
}

func sqdist(a, b []float32) float32 {
	b = b[:len(a)]
	var s float32
	for i := range a {
		d := a[i] - b[i]
		s += d * d
	}
	if math.IsNaN(float64(s)) {
		return float32(math.Inf(1))
	}
	return s
}
