package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/periocular/atm-agent/agent"
	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/agent/rules"
	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/hal/camera"
	"github.com/periocular/atm-agent/hal/trigger"
	"github.com/periocular/atm-agent/models"
	"github.com/periocular/atm-agent/store"
	"github.com/periocular/atm-agent/sync/mqttsync"
	"github.com/periocular/atm-agent/sync/wire"
)

// shutdownBudget bounds everything after SIGTERM (systemd's default stop
// timeout is far longer; operators expect seconds).
const shutdownBudget = 4500 * time.Millisecond

func init() {
	commands["run"] = command{"run the agent daemon", func(ctx context.Context, env *cliEnv, args []string) error {
		fs := newFlags(env, "run", "run --config FILE")
		path := fs.String("config", "/etc/atm-agent/config.yaml", "agent config file")
		if err := parseFlags(fs, args); err != nil {
			return err
		}
		cfg, err := LoadConfig(*path)
		if err != nil {
			return err
		}
		return runDaemon(ctx, cfg, env)
	}}
}

func newLogger(cfg LogConfig, env *cliEnv) *slog.Logger {
	var lvl slog.Level
	lvl.UnmarshalText([]byte(strings.ToUpper(cfg.Level)))
	o := &slog.HandlerOptions{Level: lvl}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(env.stderr, o))
	}
	return slog.New(slog.NewTextHandler(env.stderr, o))
}

// cameraBurst adapts *camera.Camera to agent.Camera (configured burst).
type cameraBurst struct{ c *camera.Camera }

func (c cameraBurst) Burst(ctx context.Context) ([]visit.Frame, error) { return c.c.Burst(ctx, 0, -1) }

// triggerSource adapts a hal/trigger source (which sends on a channel) to
// agent.Source.
type triggerSource struct {
	run func(ctx context.Context, out chan<- trigger.Event) error
}

func (s triggerSource) Run(ctx context.Context, emit func(agent.Event)) error {
	ch := make(chan trigger.Event, 8)
	done := make(chan error, 1)
	go func() { done <- s.run(ctx, ch) }()
	for {
		select {
		case ev := <-ch:
			emit(agent.Event{ID: ev.ID, Time: ev.Time, Source: ev.Source, Context: ev.Context})
		case err := <-done:
			for {
				select {
				case ev := <-ch:
					emit(agent.Event{ID: ev.ID, Time: ev.Time, Source: ev.Source, Context: ev.Context})
				default:
					return err
				}
			}
		}
	}
}

// stableReplayIDs numbers a replay's events with ids derived from the
// schedule (its fingerprint and the event's index), so a replay restarted
// after a crash gives the same visit ids and the store keeps each visit
// once (trigger.Replay itself draws random ids). It also never outruns the
// agent: the next event waits until the agent has received the previous one
// (events pass through a buffered channel first) and has no trigger queued,
// so no replayed event is coalesced away.
func stableReplayIDs(r *trigger.Replay, cfg trigger.ReplayConfig, q *agentQueued) func(ctx context.Context, out chan<- trigger.Event) error {
	h := sha256.New()
	fmt.Fprintf(h, "%v|%d|%s|", cfg.Interval, cfg.Count, cfg.Start)
	for _, e := range r.Entries() {
		fmt.Fprintf(h, "%d|%s|%s|%s\n", e.Offset, e.At.UTC().Format(time.RFC3339Nano), e.Context.CardHash, e.Context.TxnID)
	}
	fp := hex.EncodeToString(h.Sum(nil))[:12]
	return func(ctx context.Context, out chan<- trigger.Event) error {
		in := make(chan trigger.Event)
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx, in) }()
		n := 0
		base := q.triggers()
		for {
			select {
			case ev := <-in:
				n++
				ev.ID = fmt.Sprintf("replay-%s-%06d", fp, n)
				for q.get() || !q.received(base, uint64(n-1)) {
					select {
					case <-time.After(10 * time.Millisecond):
					case <-ctx.Done():
						return <-done
					}
				}
				select {
				case out <- ev:
				case <-ctx.Done():
					return <-done
				}
			case err := <-done:
				return err
			}
		}
	}
}

// agentQueued reports whether the agent has a trigger queued; false until
// the agent exists.
type agentQueued struct {
	mu sync.Mutex
	a  *agent.Agent
}

func (q *agentQueued) set(a *agent.Agent) { q.mu.Lock(); q.a = a; q.mu.Unlock() }

func (q *agentQueued) get() bool {
	q.mu.Lock()
	a := q.a
	q.mu.Unlock()
	return a != nil && a.Stats().Queued
}

// triggers is how many triggers the agent has received (0 before it exists).
func (q *agentQueued) triggers() uint64 {
	q.mu.Lock()
	a := q.a
	q.mu.Unlock()
	if a == nil {
		return 0
	}
	return a.Stats().Triggers
}

// received says whether the agent has received n triggers since base; true
// while the agent does not exist yet (nothing to wait for).
func (q *agentQueued) received(base, n uint64) bool {
	q.mu.Lock()
	a := q.a
	q.mu.Unlock()
	return a == nil || a.Stats().Triggers-base >= n
}

// lazyNotifier lets the agent notify a publisher created after it.
type lazyNotifier struct {
	mu sync.Mutex
	p  *mqttsync.Publisher
}

func (l *lazyNotifier) Notify() {
	l.mu.Lock()
	p := l.p
	l.mu.Unlock()
	if p != nil {
		p.Notify()
	}
}

// loadModels loads the manifest, the vision pipeline and the identity
// engine configured from the embedder's thresholds.
func loadModels(cfg Config) (*vision.Pipeline, *identity.Engine, *models.Model, error) {
	man, err := models.LoadManifest(filepath.Join(cfg.Models.Dir, "manifest.yaml"))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("models: %w (run `make models` or set models.dir)", err)
	}
	name := cfg.Models.Embedder
	if name == "" {
		name = man.Pipeline.Embedder
	}
	em, ok := man.Find(name)
	if !ok || em.Embedding == nil {
		return nil, nil, nil, fmt.Errorf("models: embedder %q is not in the manifest", name)
	}
	icfg := identity.DefaultConfig()
	icfg.ConfirmVisits, icfg.Workers = cfg.Identity.ConfirmVisits, cfg.Identity.Workers
	switch {
	case cfg.Identity.Thresholds != nil:
		icfg.Thresholds = *cfg.Identity.Thresholds
	case em.Thresholds != nil:
		icfg.Thresholds = identity.Thresholds{UU: em.Thresholds.UU, MM: em.Thresholds.MM, MU: em.Thresholds.MU}
	default:
		return nil, nil, nil, fmt.Errorf("models: embedder %q has no calibrated thresholds in the manifest; set identity.thresholds", name)
	}
	p, err := vision.New(cfg.Models.Dir, man, cfg.Models.Detector, name, cfg.Vision)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("load vision pipeline: %w", err)
	}
	// Templates are the projection head's output, which may be shorter
	// than the embedder's.
	eng, err := identity.New(icfg, p.TemplateDim)
	if err != nil {
		p.Close()
		return nil, nil, nil, err
	}
	return p, eng, em, nil
}

// runDaemon wires and runs everything until ctx ends. Start order: models
// (verified), store, publisher, camera, agent (which starts its worker before the
// trigger sources); stop order is the reverse.
func runDaemon(ctx context.Context, cfg Config, env *cliEnv) error {
	log := newLogger(cfg.Log, env)
	log.Info("atm-agent starting", "version", version, "device", cfg.Device.ID, "site", cfg.Device.Site)
	for _, w := range cfg.Warnings() {
		log.Warn("config: " + w)
	}

	// Models first: a missing or tampered model file stops the start
	// before the store is opened (and written to).
	pipe, eng, em, err := loadModels(cfg)
	if err != nil {
		return err
	}
	defer pipe.Close()

	sopts, err := cfg.Store.Options()
	if err != nil {
		return err
	}
	sopts.DeviceID, sopts.Logger = cfg.Device.ID, log.With("component", "store")
	st, err := store.Open(cfg.Store.Path, sopts)
	if err != nil {
		return err
	}
	defer st.Close()

	cam, err := camera.New(cfg.Camera, log.With("component", "camera"))
	if err != nil {
		return err
	}

	queued := &agentQueued{}
	var sources []agent.Source
	if g := cfg.Trigger.GPIO; g.Enabled {
		s, err := trigger.NewGPIO(g.GPIOConfig, log.With("component", "gpio"))
		if err != nil {
			return err
		}
		sources = append(sources, triggerSource{s.Run})
	}
	if h := cfg.Trigger.HTTP; h.Enabled {
		s, err := trigger.NewHTTP(h.HTTPConfig, log.With("component", "trigger-http"))
		if err != nil {
			return err
		}
		if err := s.Listen(); err != nil {
			return err
		}
		sources = append(sources, triggerSource{s.Run})
	}
	if r := cfg.Trigger.Replay; r.Enabled {
		s, err := trigger.NewReplay(r.ReplayConfig, log.With("component", "replay"))
		if err != nil {
			return err
		}
		sources = append(sources, triggerSource{stableReplayIDs(s, r.ReplayConfig, queued)})
	}

	re, err := rules.New(cfg.Alerts.Rules)
	if err != nil {
		return err
	}
	m := newMetrics()
	notifier := &lazyNotifier{}
	acfg := cfg.Agent
	wd := watchdogInterval()
	if wd > 0 && wd < acfg.HeartbeatInterval {
		acfg.HeartbeatInterval = wd
	}
	var lastBeat sync.Mutex
	var beatAt time.Time
	ag, err := agent.New(acfg, agent.Deps{
		Camera: cameraBurst{cam}, Perceiver: pipe, Store: st, Identities: eng, Rules: re,
		Publisher: notifier, Sources: sources, Logger: log.With("component", "agent"), Observer: m,
		Model: pipe.TemplateModel, NewIdentityQuality: pipe.Config().NewIdentityQuality,
		Site: cfg.Device.Site, Device: cfg.Device.ID,
		Heartbeat: func() {
			lastBeat.Lock()
			beatAt = time.Now()
			lastBeat.Unlock()
			if wd > 0 {
				sdNotify("WATCHDOG=1")
			}
		},
	})
	if err != nil {
		return err
	}
	queued.set(ag)

	started := time.Now()
	status := func() wire.Status {
		h := cam.Health()
		ch := wire.CameraHealth{Name: cam.Name(), OK: h.State == camera.StateOK, Error: h.LastError,
			LastFrame: h.LastFrame, Reopens: int(h.Reopens)}
		depth, _, dropped := st.OutboxStats()
		return wire.Status{AgentVersion: version, Models: []string{em.Name}, StartedAt: started.UTC(),
			Cameras: []wire.CameraHealth{ch}, Outbox: &wire.OutboxStats{Depth: depth,
				DroppedSummaries: dropped[agent.KindSummary], DroppedAlerts: dropped[agent.KindAlert]}}
	}

	sinkCtx, cancelSinks := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSinks()
	var sinks sync.WaitGroup
	var pub *mqttsync.Publisher
	if cfg.MQTT.Enabled {
		var cmds mqttsync.CommandHandler
		if cfg.MQTT.Commands.Enabled {
			cmds = ag
		}
		pub, err = mqttsync.New(cfg.MQTT.Config, mqttsync.Deps{Outbox: st, Status: status, Commands: cmds,
			Logger: log.With("component", "mqtt")})
		if err != nil {
			return err
		}
		notifier.mu.Lock()
		notifier.p = pub
		notifier.mu.Unlock()
		sinks.Add(1)
		go func() { defer sinks.Done(); pub.Run(sinkCtx) }()
	}
	sinks.Add(1)
	go func() { defer sinks.Done(); cam.Run(sinkCtx) }()

	m.counter("atm_agent_camera_reopens_total", "Camera reopen attempts.", func() float64 { return float64(cam.Health().Reopens) })
	m.counter("atm_agent_camera_stalls_total", "Camera reads that stalled.", func() float64 { return float64(cam.Health().Stalls) })
	m.gauge("atm_agent_camera_up", "1 when the camera's last read succeeded.", func() float64 {
		if cam.Health().State == camera.StateOK {
			return 1
		}
		return 0
	})
	m.gauge("atm_agent_outbox_depth", "Messages waiting in the outbox.", func() float64 { d, _, _ := st.OutboxStats(); return float64(d) })
	m.counter("atm_agent_outbox_dropped_alerts_total", "Alerts dropped at the outbox hard cap.", func() float64 {
		_, _, d := st.OutboxStats()
		return float64(d[agent.KindAlert])
	})
	m.counter("atm_agent_outbox_dropped_summaries_total", "Summaries dropped (superseded or outbox full).", func() float64 {
		_, _, d := st.OutboxStats()
		return float64(d[agent.KindSummary])
	})
	m.counter("atm_agent_triggers_total", "Triggers received.", func() float64 { return float64(ag.Stats().Triggers) })
	m.counter("atm_agent_triggers_dropped_total", "Queued triggers dropped at shutdown.", func() float64 { return float64(ag.Stats().DroppedAtStop) })
	if pub != nil {
		m.gauge("atm_agent_mqtt_connected", "1 while connected to the broker.", func() float64 {
			if pub.Stats().Connected {
				return 1
			}
			return 0
		})
		m.counter("atm_agent_mqtt_published_total", "Outbox messages acknowledged by the broker.", func() float64 { return float64(pub.Stats().Published) })
		if cfg.MQTT.Commands.Enabled {
			m.counter("atm_agent_mqtt_commands_accepted_total", "Signed, fresh, new commands that ran.", func() float64 { return float64(pub.Stats().CommandsAccepted) })
			m.counter("atm_agent_mqtt_commands_rejected_total", "Commands refused (unsigned, bad signature, stale, replayed, oversize, ...; the log names the reason).", func() float64 {
				var n uint64
				for _, v := range pub.Stats().CommandsRejected {
					n += v
				}
				return float64(n)
			})
		}
	}
	m.gauge("atm_agent_degraded", "1 while the agent reports degraded health (failing commits or alert rules).", func() float64 {
		if ag.Health().Degraded {
			return 1
		}
		return 0
	})
	if cfg.Metrics.Listen != "" {
		health := func() (any, bool) {
			lastBeat.Lock()
			b := beatAt
			lastBeat.Unlock()
			h := cam.Health()
			stale := time.Since(b) > 3*acfg.HeartbeatInterval+acfg.VisitTimeout
			reasons := ag.Health().Reasons
			if stale {
				reasons = append(reasons, fmt.Sprintf("work loop: no heartbeat since %s", b.UTC().Format(time.RFC3339)))
			}
			if h.State == camera.StateDown {
				reasons = append(reasons, "camera: down")
			}
			ok := len(reasons) == 0
			status := "ok"
			if !ok {
				status = "degraded"
			}
			depth, _, _ := st.OutboxStats()
			s := ag.Stats()
			body := map[string]any{"ok": ok, "status": status, "reasons": reasons, "last_heartbeat": b.UTC(), "camera": h.State.String(),
				"camera_error": h.LastError, "outbox_depth": depth, "visits": s.Committed,
				"visits_lost": s.CommitErrors, "rule_errors": s.RuleErrors}
			if reasons == nil {
				body["reasons"] = []string{}
			}
			if pub != nil {
				body["mqtt_connected"] = pub.Stats().Connected
			}
			return body, ok
		}
		stopMetrics, err := serveMetrics(cfg.Metrics.Listen, m, health, log)
		if err != nil {
			return fmt.Errorf("metrics: listen %s: %w", cfg.Metrics.Listen, err)
		}
		defer stopMetrics()
	}

	// Agent: restores identities, purges, starts worker then sources.
	agentDone := make(chan error, 1)
	go func() { agentDone <- ag.Run(ctx) }()
	sdNotify("READY=1")
	log.Info("atm-agent ready")

	var runErr error
	select {
	case runErr = <-agentDone:
	case <-ctx.Done():
		stopAt := time.Now()
		sdNotify("STOPPING=1")
		log.Info("atm-agent stopping")
		select {
		case runErr = <-agentDone:
		case <-time.After(shutdownBudget):
			log.Error("agent did not stop in time")
		}
		cancelSinks()
		waitTimeout(&sinks, max(500*time.Millisecond, shutdownBudget-time.Since(stopAt)))
		s := ag.Stats()
		log.Info("atm-agent stopped", "visits", s.Committed, "coalesced", s.Coalesced, "ms", time.Since(stopAt).Milliseconds())
		return runErr
	}
	sdNotify("STOPPING=1")
	cancelSinks()
	waitTimeout(&sinks, shutdownBudget)
	if runErr == nil {
		runErr = errors.New("agent stopped unexpectedly")
	}
	return runErr
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}
