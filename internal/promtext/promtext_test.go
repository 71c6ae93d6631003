package promtext

import (
	"bytes"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// The output parses with Prometheus' own text parser (test-only import:
// the daemon does not link it) and says what was recorded.
func TestExpositionParses(t *testing.T) {
	r := NewRegistry()
	c := r.NewCounter("t_plain_total", "A plain counter.")
	cv := r.NewCounterVec("t_visits_total", "Visits by outcome.", "outcome")
	h := r.NewHistogramVec("t_stage_seconds", "Stage latency.", "stage", []float64{.01, .1, 1})
	h1 := r.NewHistogram("t_cons_seconds", "One histogram.", nil)
	r.GaugeFunc("t_up", "Up.", func() float64 { return 1 })
	r.CounterFunc("t_read_total", "Read at scrape time.", func() float64 { return 42 })
	r.RegisterRuntime()
	c.Add(2)
	cv.Inc("face")
	cv.Inc("face")
	cv.Inc(`no"face`)
	h.Observe("burst", 0.05)
	h.Observe("burst", 0.005)
	h.Observe("burst", 5)
	h1.Observe(0.2)

	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("content type %q", ct)
	}
	body := rec.Body.String()
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(rec.Body.Bytes()))
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, body)
	}
	get := func(name string) float64 {
		t.Helper()
		f := fams[name]
		if f == nil || len(f.Metric) == 0 {
			t.Fatalf("no %s in\n%s", name, body)
		}
		m := f.Metric[0]
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		}
		return -1
	}
	if get("t_plain_total") != 2 || get("t_up") != 1 || get("t_read_total") != 42 {
		t.Errorf("values wrong:\n%s", body)
	}
	if n := len(fams["t_visits_total"].Metric); n != 2 || !strings.Contains(body, `t_visits_total{outcome="face"} 2`) || !strings.Contains(body, `outcome="no\"face"`) {
		t.Errorf("labelled counter (%d series):\n%s", n, body)
	}
	hs := fams["t_stage_seconds"].Metric[0].Histogram
	if hs.GetSampleCount() != 3 || hs.GetSampleSum() != 5.055 {
		t.Errorf("histogram count %d sum %v", hs.GetSampleCount(), hs.GetSampleSum())
	}
	want := []uint64{1, 2, 2} // le .01, .1, 1 (cumulative); 5 only in +Inf
	for i, b := range hs.Bucket {
		if i < len(want) && b.GetCumulativeCount() != want[i] {
			t.Errorf("bucket le=%v: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), want[i])
		}
	}
	if fams["t_cons_seconds"].Metric[0].Histogram.GetSampleCount() != 1 {
		t.Error("plain histogram")
	}
	for _, n := range []string{"go_goroutines", "go_memstats_heap_alloc_bytes", "go_memstats_sys_bytes", "process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds_total"} {
		if get(n) <= 0 && n != "process_cpu_seconds_total" {
			t.Errorf("%s = %v", n, get(n))
		}
	}
	if s := get("process_start_time_seconds"); s < 1.6e9 {
		t.Errorf("process_start_time_seconds %v", s)
	}
}

func TestDuplicateNamePanics(t *testing.T) {
	r := NewRegistry()
	r.GaugeFunc("x", "x", func() float64 { return 0 })
	defer func() {
		if recover() == nil {
			t.Fatal("registering x twice did not panic")
		}
	}()
	r.GaugeFunc("x", "x", func() float64 { return 0 })
}
