// Package promtext serves metrics in the Prometheus text exposition format
// (version 0.0.4) without the Prometheus client library, whose closure
// brings protobuf into the daemon. It has what the agent uses: counters and
// histograms (optionally with one label), gauges and counters read at
// scrape time, and the Go runtime and process metrics scripts and
// dashboards read (go_*, process_*).
package promtext

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// Registry holds metric families by name; it is safe for concurrent use.
type Registry struct {
	mu  sync.Mutex
	fam map[string]family
}

type family interface {
	write(w *bufio.Writer, name string)
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{fam: map[string]family{}} }

func (r *Registry) add(name string, f family) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.fam[name]; ok {
		panic("promtext: metric " + name + " registered twice")
	}
	r.fam[name] = f
}

// WriteTo writes every family, sorted by name.
func (r *Registry) WriteTo(w io.Writer) (int64, error) {
	r.mu.Lock()
	names := make([]string, 0, len(r.fam))
	for n := range r.fam {
		names = append(names, n)
	}
	fams := make([]family, len(names))
	sort.Strings(names)
	for i, n := range names {
		fams[i] = r.fam[n]
	}
	r.mu.Unlock()
	cw := &countWriter{w: w}
	bw := bufio.NewWriter(cw)
	for i, f := range fams {
		f.write(bw, names[i])
	}
	err := bw.Flush()
	return cw.n, err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Handler serves the registry as text/plain; version=0.0.4.
func (r *Registry) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		r.WriteTo(w)
	})
}

func header(w *bufio.Writer, name, help, typ string) {
	help = strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(help)
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
}

func value(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

func labelPair(name, v string) string {
	return name + `="` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(v) + `"`
}

// funcMetric is a gauge or counter read at scrape time.
type funcMetric struct {
	help, typ string
	f         func() float64
}

func (m funcMetric) write(w *bufio.Writer, name string) {
	header(w, name, m.help, m.typ)
	fmt.Fprintf(w, "%s %s\n", name, value(m.f()))
}

// GaugeFunc registers a gauge whose value f returns at scrape time.
func (r *Registry) GaugeFunc(name, help string, f func() float64) {
	r.add(name, funcMetric{help, "gauge", f})
}

// CounterFunc registers a counter whose value f returns at scrape time.
func (r *Registry) CounterFunc(name, help string, f func() float64) {
	r.add(name, funcMetric{help, "counter", f})
}

// CounterVec is a counter per value of one label.
type CounterVec struct {
	help, label string
	mu          sync.Mutex
	v           map[string]float64
}

// Counter is a counter without labels.
type Counter struct{ v *CounterVec }

// NewCounter registers a counter.
func (r *Registry) NewCounter(name, help string) Counter {
	return Counter{r.NewCounterVec(name, help, "")}
}

// Add adds d (>= 0).
func (c Counter) Add(d float64) { c.v.Add("", d) }

// Inc adds 1.
func (c Counter) Inc() { c.v.Add("", 1) }

// NewCounterVec registers a counter with one label.
func (r *Registry) NewCounterVec(name, help, label string) *CounterVec {
	c := &CounterVec{help: help, label: label, v: map[string]float64{}}
	if label == "" {
		c.v[""] = 0 // a plain counter is exposed from the start
	}
	r.add(name, c)
	return c
}

// Add adds d to the counter of the label value lv.
func (c *CounterVec) Add(lv string, d float64) {
	c.mu.Lock()
	c.v[lv] += d
	c.mu.Unlock()
}

// Inc adds 1 to the counter of the label value lv.
func (c *CounterVec) Inc(lv string) { c.Add(lv, 1) }

func (c *CounterVec) write(w *bufio.Writer, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	header(w, name, c.help, "counter")
	for _, lv := range sortedKeys(c.v) {
		if c.label == "" {
			fmt.Fprintf(w, "%s %s\n", name, value(c.v[lv]))
		} else {
			fmt.Fprintf(w, "%s{%s} %s\n", name, labelPair(c.label, lv), value(c.v[lv]))
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	k := make([]string, 0, len(m))
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}

// Init exposes the counters of the label values lvs at 0 from the start,
// so a rate() over a series that has not happened yet is 0, not absent.
func (c *CounterVec) Init(lvs ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, lv := range lvs {
		if _, ok := c.v[lv]; !ok {
			c.v[lv] = 0
		}
	}
}

// info is a gauge of value 1 whose labels carry the information
// (the build_info pattern).
type info struct {
	help   string
	labels string
}

func (m info) write(w *bufio.Writer, name string) {
	header(w, name, m.help, "gauge")
	fmt.Fprintf(w, "%s{%s} 1\n", name, m.labels)
}

// Info registers a gauge of constant value 1 with the given label pairs
// (name, value, name, value, ...) in that order.
func (r *Registry) Info(name, help string, kv ...string) {
	var parts []string
	for i := 0; i+1 < len(kv); i += 2 {
		parts = append(parts, labelPair(kv[i], kv[i+1]))
	}
	r.add(name, info{help, strings.Join(parts, ",")})
}
