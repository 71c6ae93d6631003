package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/periocular/atm-agent/agent"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/netguard"
	"github.com/periocular/atm-agent/internal/promtext"
	"github.com/periocular/atm-agent/internal/secretfile"
)

// metrics implements agent.Observer on a private registry served in the
// Prometheus text format (internal/promtext: the Prometheus client would
// bring protobuf into the daemon).
type metrics struct {
	reg       *promtext.Registry
	visits    *promtext.CounterVec
	faces     promtext.Counter
	alerts    *promtext.CounterVec
	stages    *promtext.HistogramVec
	total     promtext.Histogram
	coalesced promtext.Counter
	commitErr *promtext.CounterVec
	moved     promtext.Counter
	consDur   promtext.Histogram
	purged    promtext.Counter
	ruleErr   promtext.Counter
	corrected *promtext.CounterVec
}

// extraMetrics registers gauges read from other parts at scrape time.
var extraMetrics []func(reg *promtext.Registry)

// stageNames are the stages of agent.Stages observed per visit; the total
// is its own metric (a sum over stage_seconds would count it twice).
var stageNames = []string{"queue", "burst", "perceive", "assign", "rules", "commit"}

// commitOps are the operations the agent commits (agent.commitResult).
var commitOps = []string{"visit", "summary", "consolidate", "correction"}

// newMetrics registers the agent's metrics. Every series of a known label
// value (outcomes, stages, commit operations, the configured rules) is
// exposed from the start at 0, so rate() and alert rules see 0, not
// absence.
func newMetrics(rules []string) *metrics {
	r := promtext.NewRegistry()
	m := &metrics{reg: r}
	m.visits = r.NewCounterVec("atm_agent_visits_total", "Visits stored, by perception outcome.", "outcome")
	for o := visit.FaceFound; o <= visit.CameraError; o++ {
		m.visits.Init(o.String())
	}
	m.faces = r.NewCounter("atm_agent_faces_found_total", "Visits with a usable face.")
	m.alerts = r.NewCounterVec("atm_agent_alerts_total", "New alerts stored, by rule.", "rule")
	m.alerts.Init(rules...)
	buckets := []float64{.001, .0025, .005, .01, .025, .05, .1, .15, .25, .5, 1, 2.5, 5, 10}
	m.stages = r.NewHistogramVec("atm_agent_stage_seconds", "Per-stage latency of a visit (queue, burst, perceive, assign, rules, commit).", "stage", buckets)
	m.stages.Init(stageNames...)
	m.total = r.NewHistogram("atm_agent_visit_seconds", "Trigger to committed visit, all stages.", buckets)
	m.coalesced = r.NewCounter("atm_agent_triggers_coalesced_total", "Triggers folded into a queued visit.")
	m.commitErr = r.NewCounterVec("atm_agent_commit_failures_total", "Store commits that failed, by operation.", "op")
	m.commitErr.Init(commitOps...)
	m.moved = r.NewCounter("atm_agent_consolidation_moved_visits_total", "Visits relabelled by consolidation.")
	m.consDur = r.NewHistogram("atm_agent_consolidation_seconds", "Duration of identity consolidation.", nil)
	m.purged = r.NewCounter("atm_agent_purged_visits_total", "Visits removed by the retention purge.")
	m.corrected = r.NewCounterVec("atm_agent_identity_corrections_total", "Analysts' corrections applied (split_visits, merge_identities), by kind.", "kind")
	m.corrected.Init(agent.CorrectionSplit, agent.CorrectionMerge)
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
	for i, d := range []time.Duration{s.Queue, s.Burst, s.Perceive, s.Assign, s.Rules, s.Commit} {
		m.stages.Observe(stageNames[i], d.Seconds())
	}
	m.total.Observe(s.Total.Seconds())
}
func (m *metrics) Alerted(rule string)    { m.alerts.Inc(rule) }
func (m *metrics) Coalesced()             { m.coalesced.Inc() }
func (m *metrics) CommitFailed(op string) { m.commitErr.Inc(op) }
func (m *metrics) Purged(n int)           { m.purged.Add(float64(n)) }
func (m *metrics) RuleFailed()            { m.ruleErr.Inc() }
func (m *metrics) Corrected(kind string, _ int) {
	m.corrected.Inc(kind)
}
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

// loadToken reads a bearer token from a file or "credential:NAME" (the
// systemd credential $CREDENTIALS_DIRECTORY/NAME) and returns its SHA-256.
func loadToken(path string) ([sha256.Size]byte, error) {
	if name, ok := strings.CutPrefix(path, "credential:"); ok {
		dir := os.Getenv("CREDENTIALS_DIRECTORY")
		if dir == "" {
			return [sha256.Size]byte{}, fmt.Errorf("%q: CREDENTIALS_DIRECTORY is not set (is the unit using LoadCredential=?)", path)
		}
		if name == "" || strings.ContainsAny(name, "/\\") || name == "." || name == ".." {
			return [sha256.Size]byte{}, fmt.Errorf("%q: invalid credential name", path)
		}
		path = filepath.Join(dir, name)
	}
	b, err := secretfile.ReadFile(path)
	if err != nil {
		return [sha256.Size]byte{}, fmt.Errorf("read token: %w", err)
	}
	defer clear(b)
	tok := bytes.TrimSpace(b)
	if len(tok) < 16 {
		return [sha256.Size]byte{}, fmt.Errorf("token in %s is shorter than 16 characters", path)
	}
	return sha256.Sum256(tok), nil
}

// requireToken wraps h: requests without "Authorization: Bearer <token>"
// get 401.
func requireToken(h http.Handler, sum [sha256.Size]byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !netguard.BearerMatches(r.Header.Get("Authorization"), sum) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="atm-agent"`)
			http.Error(w, "missing or wrong bearer token", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// knownHost answers 421 to a request whose Host is a name the port does
// not answer to (netguard.Hosts): a page whose name was rebound to this
// address.
func knownHost(h http.Handler, hosts *netguard.Hosts, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hosts.Allowed(r) {
			log.Warn("metrics: request for an unknown host refused", "host", r.Host, "remote", r.RemoteAddr, "path", r.URL.Path)
			http.Error(w, fmt.Sprintf("this port does not answer to %q: add the name to metrics.hosts", r.Host), http.StatusMisdirectedRequest)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// serveMetrics serves /metrics and /healthz on cfg.Listen (loopback, or
// remote behind a bearer token and/or TLS) until the returned stop is
// called. health returns the /healthz body and whether the agent is
// healthy.
func serveMetrics(cfg MetricsConfig, m *metrics, health func() (any, bool), log *slog.Logger) (func(), error) {
	var h http.Handler
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
	h = mux
	if cfg.TLS.CertFile == "" {
		h = knownHost(h, netguard.NewHosts(cfg.Hosts), log)
	}
	if cfg.TokenFile != "" {
		sum, err := loadToken(cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("metrics.token_file: %w", err)
		}
		h = requireToken(mux, sum)
	}
	var tlsCfg *tls.Config
	if cfg.TLS.CertFile != "" {
		if err := secretfile.Check(cfg.TLS.KeyFile); err != nil {
			return nil, fmt.Errorf("metrics.tls.key_file: %w", err)
		}
		cert, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("metrics.tls: %w", err)
		}
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, err
	}
	var lim net.Listener = netguard.Limit(ln, metricsMaxConns)
	if tlsCfg != nil {
		lim = tls.NewListener(lim, tlsCfg)
	}
	// Timeouts and a connection cap of its own (internal/netguard): a flood
	// of idle or slow connections to this port can neither exhaust the
	// unit's LimitNOFILE nor delay the trigger endpoint, and a scrape is
	// still served during one.
	srv := netguard.NewServer(h, netguard.DefaultTimeouts, log.With("component", "metrics"))
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(lim); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "err", err)
		}
	}()
	log.Info("metrics listening", "addr", ln.Addr().String(), "tls", tlsCfg != nil, "token", cfg.TokenFile != "")
	return func() {
		c, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(c)
		<-done
	}, nil
}
