package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/periocular/atm-agent/agent"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/netguard"
	"github.com/periocular/atm-agent/internal/promtext"
)

// metrics implements agent.Observer on a private registry served in the
// Prometheus text format (internal/promtext: the Prometheus client would
// bring protobuf into the daemon).
type metrics struct {
	reg       *promtext.Registry
	visits    *promtext.CounterVec
	faces     promtext.Counter
	alerts    promtext.Counter
	stages    *promtext.HistogramVec
	coalesced promtext.Counter
	commitErr *promtext.CounterVec
	moved     promtext.Counter
	consDur   promtext.Histogram
	purged    promtext.Counter
	ruleErr   promtext.Counter
}

// extraMetrics registers gauges read from other parts at scrape time.
var extraMetrics []func(reg *promtext.Registry)

func newMetrics() *metrics {
	r := promtext.NewRegistry()
	m := &metrics{reg: r}
	m.visits = r.NewCounterVec("atm_agent_visits_total", "Visits stored, by perception outcome.", "outcome")
	m.faces = r.NewCounter("atm_agent_faces_found_total", "Visits with a usable face.")
	m.alerts = r.NewCounter("atm_agent_alerts_total", "New alerts stored.")
	m.stages = r.NewHistogramVec("atm_agent_stage_seconds", "Per-stage latency of a visit.", "stage",
		[]float64{.001, .0025, .005, .01, .025, .05, .1, .15, .25, .5, 1, 2.5, 5, 10})
	m.coalesced = r.NewCounter("atm_agent_triggers_coalesced_total", "Triggers folded into a queued visit.")
	m.commitErr = r.NewCounterVec("atm_agent_commit_failures_total", "Store commits that failed, by operation.", "op")
	m.moved = r.NewCounter("atm_agent_consolidation_moved_visits_total", "Visits relabelled by consolidation.")
	m.consDur = r.NewHistogram("atm_agent_consolidation_seconds", "Duration of identity consolidation.", nil)
	m.purged = r.NewCounter("atm_agent_purged_visits_total", "Visits removed by the retention purge.")
	m.ruleErr = r.NewCounter("atm_agent_rule_errors_total", "Visits whose alert rules could not be evaluated (stored without their alerts).")
	r.RegisterRuntime()
	for _, f := range extraMetrics {
		f(r)
	}
	return m
}

func (m *metrics) Visit(v visit.Visit, s agent.Stages, newAlerts int) {
	m.visits.Inc(v.Outcome.String())
	if v.Outcome == visit.FaceFound {
		m.faces.Inc()
	}
	m.alerts.Add(float64(newAlerts))
	for _, x := range []struct {
		name string
		d    time.Duration
	}{{"queue", s.Queue}, {"burst", s.Burst}, {"perceive", s.Perceive}, {"assign", s.Assign}, {"rules", s.Rules}, {"commit", s.Commit}, {"total", s.Total}} {
		m.stages.Observe(x.name, x.d.Seconds())
	}
}
func (m *metrics) Coalesced()             { m.coalesced.Inc() }
func (m *metrics) CommitFailed(op string) { m.commitErr.Inc(op) }
func (m *metrics) Purged(n int)           { m.purged.Add(float64(n)) }
func (m *metrics) RuleFailed()            { m.ruleErr.Inc() }
func (m *metrics) Consolidated(n int, d time.Duration) {
	m.moved.Add(float64(n))
	m.consDur.Observe(d.Seconds())
}

func (m *metrics) gauge(name, help string, f func() float64)   { m.reg.GaugeFunc(name, help, f) }
func (m *metrics) counter(name, help string, f func() float64) { m.reg.CounterFunc(name, help, f) }

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
	mux.Handle("/metrics", m.reg.Handler())
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
