package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/periocular/atm-agent/agent"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/netguard"
)

// metrics implements agent.Observer on a private Prometheus registry.
type metrics struct {
	reg       *prometheus.Registry
	visits    *prometheus.CounterVec
	faces     prometheus.Counter
	alerts    prometheus.Counter
	stages    *prometheus.HistogramVec
	coalesced prometheus.Counter
	commitErr *prometheus.CounterVec
	moved     prometheus.Counter
	consDur   prometheus.Histogram
	purged    prometheus.Counter
	ruleErr   prometheus.Counter
}

// extraMetrics registers gauges read from other parts at scrape time.
var extraMetrics []func(reg *prometheus.Registry)

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.visits = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "atm_agent_visits_total", Help: "Visits stored, by perception outcome."}, []string{"outcome"})
	m.faces = prometheus.NewCounter(prometheus.CounterOpts{Name: "atm_agent_faces_found_total", Help: "Visits with a usable face."})
	m.alerts = prometheus.NewCounter(prometheus.CounterOpts{Name: "atm_agent_alerts_total", Help: "New alerts stored."})
	m.stages = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "atm_agent_stage_seconds", Help: "Per-stage latency of a visit.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .15, .25, .5, 1, 2.5, 5, 10}}, []string{"stage"})
	m.coalesced = prometheus.NewCounter(prometheus.CounterOpts{Name: "atm_agent_triggers_coalesced_total", Help: "Triggers folded into a queued visit."})
	m.commitErr = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "atm_agent_commit_failures_total", Help: "Store commits that failed, by operation."}, []string{"op"})
	m.moved = prometheus.NewCounter(prometheus.CounterOpts{Name: "atm_agent_consolidation_moved_visits_total", Help: "Visits relabelled by consolidation."})
	m.consDur = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "atm_agent_consolidation_seconds", Help: "Duration of identity consolidation."})
	m.purged = prometheus.NewCounter(prometheus.CounterOpts{Name: "atm_agent_purged_visits_total", Help: "Visits removed by the retention purge."})
	m.ruleErr = prometheus.NewCounter(prometheus.CounterOpts{Name: "atm_agent_rule_errors_total", Help: "Visits whose alert rules could not be evaluated (stored without their alerts)."})
	m.reg.MustRegister(m.visits, m.faces, m.alerts, m.stages, m.coalesced, m.commitErr, m.moved, m.consDur, m.purged, m.ruleErr,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, f := range extraMetrics {
		f(m.reg)
	}
	return m
}

func (m *metrics) Visit(v visit.Visit, s agent.Stages, newAlerts int) {
	m.visits.WithLabelValues(v.Outcome.String()).Inc()
	if v.Outcome == visit.FaceFound {
		m.faces.Inc()
	}
	m.alerts.Add(float64(newAlerts))
	for _, x := range []struct {
		name string
		d    time.Duration
	}{{"queue", s.Queue}, {"burst", s.Burst}, {"perceive", s.Perceive}, {"assign", s.Assign}, {"rules", s.Rules}, {"commit", s.Commit}, {"total", s.Total}} {
		m.stages.WithLabelValues(x.name).Observe(x.d.Seconds())
	}
}
func (m *metrics) Coalesced()             { m.coalesced.Inc() }
func (m *metrics) CommitFailed(op string) { m.commitErr.WithLabelValues(op).Inc() }
func (m *metrics) Purged(n int)           { m.purged.Add(float64(n)) }
func (m *metrics) RuleFailed()            { m.ruleErr.Inc() }
func (m *metrics) Consolidated(n int, d time.Duration) {
	m.moved.Add(float64(n))
	m.consDur.Observe(d.Seconds())
}

func (m *metrics) gauge(name, help string, f func() float64) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
}

func (m *metrics) counter(name, help string, f func() float64) {
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
}

// metricsMaxConns caps the metrics port's open connections (a scraper or
// two and a health check are its clients; the margin lets a scrape through
// a flood), far below the unit's LimitNOFILE=4096.
const metricsMaxConns = 64

// serveMetrics serves /metrics and /healthz on addr (loopback) until ctx
// ends. health returns the /healthz body and whether the agent is healthy.
func serveMetrics(addr string, m *metrics, health func() (any, bool), log *slog.Logger) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		body, ok := health()
		w.Header().Set("Content-Type", "application/json")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		json.NewEncoder(w).Encode(body)
	})
	// Timeouts and a connection cap of its own (internal/netguard): a flood
	// of idle or slow connections to this port can neither exhaust the
	// unit's LimitNOFILE nor delay the trigger endpoint, and a scrape is
	// still served during one.
	srv := netguard.NewServer(mux, netguard.DefaultTimeouts, log.With("component", "metrics"))
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(netguard.Limit(ln, metricsMaxConns)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "err", err)
		}
	}()
	log.Info("metrics listening", "addr", ln.Addr().String())
	return func() {
		c, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(c)
		<-done
	}, nil
}
