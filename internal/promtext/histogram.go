package promtext

import (
	"bufio"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// DefBuckets are Prometheus' default histogram buckets (seconds).
var DefBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

type hist struct {
	counts []uint64 // per bucket, not cumulative; len(buckets)+1 (+Inf)
	sum    float64
	n      uint64
}

// HistogramVec is a histogram per value of one label.
type HistogramVec struct {
	help, label string
	buckets     []float64
	mu          sync.Mutex
	h           map[string]*hist
}

// Histogram is a histogram without labels.
type Histogram struct{ v *HistogramVec }

// NewHistogram registers a histogram (nil buckets: DefBuckets).
func (r *Registry) NewHistogram(name, help string, buckets []float64) Histogram {
	return Histogram{r.NewHistogramVec(name, help, "", buckets)}
}

// Observe records one value.
func (h Histogram) Observe(v float64) { h.v.Observe("", v) }

// NewHistogramVec registers a histogram with one label (nil buckets:
// DefBuckets).
func (r *Registry) NewHistogramVec(name, help, label string, buckets []float64) *HistogramVec {
	if buckets == nil {
		buckets = DefBuckets
	}
	b := append([]float64(nil), buckets...)
	sort.Float64s(b)
	h := &HistogramVec{help: help, label: label, buckets: b, h: map[string]*hist{}}
	if label == "" {
		h.h[""] = &hist{counts: make([]uint64, len(b)+1)}
	}
	r.add(name, h)
	return h
}

// Observe records v for the label value lv.
func (h *HistogramVec) Observe(lv string, v float64) {
	i := sort.SearchFloat64s(h.buckets, v) // first bucket with le >= v
	h.mu.Lock()
	defer h.mu.Unlock()
	x := h.h[lv]
	if x == nil {
		x = &hist{counts: make([]uint64, len(h.buckets)+1)}
		h.h[lv] = x
	}
	x.counts[i]++
	x.sum += v
	x.n++
}

func (h *HistogramVec) write(w *bufio.Writer, name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	header(w, name, h.help, "histogram")
	for _, lv := range sortedKeys(h.h) {
		x := h.h[lv]
		var lp []string
		if h.label != "" {
			lp = append(lp, labelPair(h.label, lv))
		}
		labels := func(extra ...string) string {
			all := append(append([]string(nil), lp...), extra...)
			if len(all) == 0 {
				return ""
			}
			return "{" + strings.Join(all, ",") + "}"
		}
		var cum uint64
		for i, le := range h.buckets {
			cum += x.counts[i]
			fmt.Fprintf(w, "%s_bucket%s %d\n", name, labels(labelPair("le", value(le))), cum)
		}
		fmt.Fprintf(w, "%s_bucket%s %d\n", name, labels(labelPair("le", "+Inf")), x.n)
		fmt.Fprintf(w, "%s_sum%s %s\n", name, labels(), value(x.sum))
		fmt.Fprintf(w, "%s_count%s %d\n", name, labels(), x.n)
	}
}

// Init exposes empty histograms of the label values lvs from the start.
func (h *HistogramVec) Init(lvs ...string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, lv := range lvs {
		if h.h[lv] == nil {
			h.h[lv] = &hist{counts: make([]uint64, len(h.buckets)+1)}
		}
	}
}
