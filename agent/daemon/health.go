package daemon

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/periocular/atm-agent/agent"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/hal/camera"
	"github.com/periocular/atm-agent/hal/trigger"
	"github.com/periocular/atm-agent/sync/wire"
)

// heartbeat records the work loop's last beat and pets systemd's watchdog.
type heartbeat struct {
	watchdog time.Duration // half of WATCHDOG_USEC; 0 without the watchdog
	mu       sync.Mutex
	at       time.Time
}

func (h *heartbeat) beat() {
	h.mu.Lock()
	h.at = time.Now()
	h.mu.Unlock()
	if h.watchdog > 0 {
		sdNotify("WATCHDOG=1")
	}
}

func (h *heartbeat) last() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.at
}

// observers passes what the agent does to the metrics and one more
// observer (the demo's printer).
type observers struct {
	m     *metrics
	other agent.Observer
}

func (o observers) Visit(v visit.Visit, s agent.Stages, newAlerts int) {
	o.m.Visit(v, s, newAlerts)
	o.other.Visit(v, s, newAlerts)
}
func (o observers) Coalesced()             { o.m.Coalesced(); o.other.Coalesced() }
func (o observers) CommitFailed(op string) { o.m.CommitFailed(op); o.other.CommitFailed(op) }
func (o observers) Purged(n int)           { o.m.Purged(n); o.other.Purged(n) }
func (o observers) RuleFailed()            { o.m.RuleFailed() }
func (o observers) Alerted(rule string)    { o.m.Alerted(rule) }
func (o observers) Corrected(kind string, n int) {
	o.m.Corrected(kind, n)
}
func (o observers) Consolidated(n int, d time.Duration) {
	o.m.Consolidated(n, d)
	o.other.Consolidated(n, d)
}

// status is the retained MQTT status payload's agent part.
func (d *Daemon) status() wire.Status {
	depth, _, dropped := d.st.OutboxStats()
	s := wire.Status{AgentVersion: d.opts.Version, Models: []string{d.em.Name}, StartedAt: d.started.UTC(),
		Outbox: &wire.OutboxStats{Depth: depth,
			DroppedSummaries: dropped[agent.KindSummary], DroppedAlerts: dropped[agent.KindAlert]}}
	h, reasons := d.healthReasons()
	if d.cam != nil {
		s.Cameras = []wire.CameraHealth{{Name: d.cam.Name(), OK: h.State == camera.StateOK, Error: h.LastError,
			LastFrame: h.LastFrame, Reopens: int(h.Reopens)}}
	}
	s.Health, s.Reasons = wire.HealthOK, reasons
	if len(reasons) > 0 {
		s.Health = wire.HealthDegraded
	}
	n := d.eng.IdentityCount()
	s.Identities = &n
	return s
}

// healthReasons returns the camera's health and why the agent is not
// healthy (none when it is): the work loop beats, the camera is not down,
// commits and rules work.
func (d *Daemon) healthReasons() (camera.Health, []string) {
	b := d.beat.last()
	if b.IsZero() {
		// No beat yet: the loop is judged from the start. Before, the
		// status published at connect, when it came before the worker's
		// first beat, said "work loop: no heartbeat since
		// 0001-01-01T00:00:00Z" (degraded) on a healthy start.
		b = d.started
	}
	acfg := d.cfg.Agent
	stale := time.Since(b) > 3*acfg.HeartbeatInterval+acfg.VisitTimeout
	reasons := d.ag.Health().Reasons
	if stale {
		reasons = append(reasons, fmt.Sprintf("work loop: no heartbeat since %s", b.UTC().Format(time.RFC3339)))
	}
	// A store whose file broke under it fails every write from then on:
	// say so at once, not after the failed commits add up.
	if d.st != nil {
		if err := d.st.Broken(); err != nil {
			reasons = append(reasons, "store: "+err.Error())
		}
	}
	// A card-insert line that is not armed: the HTTP trigger still works,
	// but card inserts on the line start no visit.
	if d.gpio != nil {
		if err := d.gpio.Err(); err != nil {
			reasons = append(reasons, "trigger: "+err.Error())
		}
	}
	// An injected camera (Options.Camera: the demo's simulator) is not
	// supervised here and the status lists no camera. Before, its zero
	// Health read as StateDown: such a daemon said "camera: down"
	// (degraded) in every status and /healthz for as long as it ran.
	var h camera.Health
	if d.cam != nil {
		h = d.cam.Health()
		if h.State == camera.StateDown {
			reasons = append(reasons, "camera: down")
		}
		if h.OpenBlocked {
			reasons = append(reasons, fmt.Sprintf("camera: an open has been stuck in OpenCV since %s (no answer from the source); no other open starts until it returns",
				h.OpenBlockedSince.UTC().Format(time.RFC3339)))
		}
		if h.FrameFault != "" {
			reasons = append(reasons, "camera: "+h.FrameFault+"; visits are stored as camera_error")
		}
	}
	return h, reasons
}

// triggerReadiness is what the trigger endpoint's GET /v1/health says of
// the agent: ready when /healthz would say ok, leaving out the card-insert
// line (a line that is not armed does not stop the endpoint's visits).
// The endpoint serves only once the agent runs (RunAdmit).
func (d *Daemon) triggerReadiness() trigger.Readiness {
	h, reasons := d.healthReasons()
	reasons = slices.DeleteFunc(reasons, func(r string) bool { return strings.HasPrefix(r, "trigger: ") })
	r := trigger.Readiness{Ready: len(reasons) == 0, Reasons: reasons}
	if d.cam != nil { // an injected camera (Options.Camera) has no health here
		r.Camera = h.State.String()
	}
	return r
}

// health is the /healthz body and whether the agent is healthy.
func (d *Daemon) health() (any, bool) {
	b := d.beat.last()
	h, reasons := d.healthReasons()
	ok := len(reasons) == 0
	status := "ok"
	if !ok {
		status = "degraded"
	}
	depth, _, _ := d.st.OutboxStats()
	s := d.ag.Stats()
	body := map[string]any{"ok": ok, "status": status, "reasons": reasons, "last_heartbeat": b.UTC(),
		"outbox_depth": depth, "visits": s.Committed, "visits_lost": s.CommitErrors, "rule_errors": s.RuleErrors}
	if d.cam != nil { // an injected camera (Options.Camera) has no health here
		body["camera"], body["camera_error"] = h.State.String(), h.LastError
		body["camera_abandoned"], body["camera_open_blocked"] = h.Abandoned, h.OpenBlocked
		body["camera_skipped"] = h.Skipped // image-folder files that do not decode
	}
	if reasons == nil {
		body["reasons"] = []string{}
	}
	if d.pub != nil {
		body["mqtt_connected"] = d.pub.Stats().Connected
	}
	return body, ok
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// registerMetrics adds the gauges and counters read from the parts at
// scrape time.
func (d *Daemon) registerMetrics() {
	m, st, ag := d.m, d.st, d.ag
	if cam := d.cam; cam != nil {
		m.counter("atm_agent_camera_reopens_total", "Camera reopen attempts.", func() float64 { return float64(cam.Health().Reopens) })
		m.counter("atm_agent_camera_stalls_total", "Camera reads that stalled.", func() float64 { return float64(cam.Health().Stalls) })
		m.gauge("atm_agent_camera_up", "1 when the camera's last read succeeded.", func() float64 { return b2f(cam.Health().State == camera.StateOK) })
		m.gauge("atm_agent_camera_abandoned", "Camera device goroutines (OS threads) still blocked in OpenCV after their open or read timed out.", func() float64 { return float64(cam.Health().Abandoned) })
		m.gauge("atm_agent_camera_open_blocked", "1 while a timed-out camera open has not returned (no other open starts meanwhile).", func() float64 { return b2f(cam.Health().OpenBlocked) })
	}
	m.gauge("atm_agent_outbox_depth", "Messages waiting in the outbox.", func() float64 { n, _, _ := st.OutboxStats(); return float64(n) })
	m.counter("atm_agent_outbox_dropped_alerts_total", "Alerts dropped at the outbox hard cap.", func() float64 {
		_, _, dr := st.OutboxStats()
		return float64(dr[agent.KindAlert])
	})
	m.counter("atm_agent_outbox_dropped_summaries_total", "Summaries dropped (superseded or outbox full).", func() float64 {
		_, _, dr := st.OutboxStats()
		return float64(dr[agent.KindSummary])
	})
	m.counter("atm_agent_triggers_total", "Triggers received.", func() float64 { return float64(ag.Stats().Triggers) })
	m.counter("atm_agent_triggers_dropped_total", "Queued triggers dropped at shutdown.", func() float64 { return float64(ag.Stats().DroppedAtStop) })
	if pub := d.pub; pub != nil {
		m.gauge("atm_agent_mqtt_connected", "1 while connected to the broker.", func() float64 { return b2f(pub.Stats().Connected) })
		m.counter("atm_agent_mqtt_published_total", "Outbox messages acknowledged by the broker.", func() float64 { return float64(pub.Stats().Published) })
		if d.cfg.MQTT.Commands.Enabled {
			m.counter("atm_agent_mqtt_commands_accepted_total", "Signed, fresh, new commands that ran.", func() float64 { return float64(pub.Stats().CommandsAccepted) })
			m.counter("atm_agent_mqtt_commands_rejected_total", "Commands refused (unsigned, bad signature, stale, replayed, oversize, ...; the log names the reason).", func() float64 {
				var n uint64
				for _, v := range pub.Stats().CommandsRejected {
					n += v
				}
				return float64(n)
			})
			m.counter("atm_agent_mqtt_commands_throttled_total", "Of the refused commands, those dropped without a signature check while forged ones came faster than the budget of failed checks (docs/mqtt.md).", func() float64 {
				return float64(pub.Stats().CommandsThrottled)
			})
		}
	}
	eng := d.eng
	m.gauge("atm_agent_identities", "Identities the agent holds (pending and confirmed).", func() float64 { return float64(eng.IdentityCount()) })
	m.reg.Info("atm_agent_build_info", "The agent's version, Go version and embedding model (value 1).",
		"version", d.opts.Version, "goversion", runtime.Version(), "embedder", d.em.Name)
	m.gauge("atm_agent_degraded", "1 while the agent reports degraded health (failing commits or alert rules).", func() float64 { return b2f(ag.Health().Degraded) })
}
