// Package daemon is the agent's composition root: it turns a Config into
// running parts (models, store, camera, trigger sources, agent, MQTT
// publisher, metrics and health endpoint, systemd notifications) and runs
// them in order. `atm-agent run`, the demo and the end-to-end tests all go
// through New and Run; the demo injects its simulated camera and card reader
// through Options.
//
// Start order: models (verified), store, camera, agent (its worker before
// its trigger sources), publisher; sinks (publisher, camera) run before the
// agent's sources and stop after them.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/periocular/atm-agent/agent"
	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/agent/rules"
	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/hal/camera"
	"github.com/periocular/atm-agent/hal/camera/cvcam"
	"github.com/periocular/atm-agent/hal/trigger"
	"github.com/periocular/atm-agent/models"
	"github.com/periocular/atm-agent/store"
	"github.com/periocular/atm-agent/sync/mqttsync"
)

// ShutdownBudget bounds everything after the context ends (systemd's default
// stop timeout is far longer; operators expect seconds).
const ShutdownBudget = 4500 * time.Millisecond

// Options are what a caller injects instead of what Config would build.
type Options struct {
	// Version is reported in the log and the MQTT status.
	Version string
	// Logger; nil: one from Config.Log writing to stderr.
	Logger *slog.Logger
	// Camera replaces the configured camera (the simulator); the status
	// then lists no camera.
	Camera agent.Camera
	// CameraOpen opens the configured camera's device under the real
	// supervisor (reopen, backoff, stall watchdog) instead of cvcam.Open:
	// tests give it a fake device. Ignored when Camera is set.
	CameraOpen camera.OpenFunc
	// Sources run besides the configured triggers.
	Sources []agent.Source
	// Observer receives what the agent does, besides the metrics.
	Observer agent.Observer
}

// Daemon is the wired agent. Create with New, run with Run once.
type Daemon struct {
	cfg     Config
	opts    Options
	log     *slog.Logger
	pipe    *vision.Pipeline
	eng     *identity.Engine
	em      *models.Model
	st      *store.Store
	cam     *camera.Camera // nil when Options.Camera is set
	gpio    *trigger.GPIO  // nil without trigger.gpio
	ag      *agent.Agent
	pub     *mqttsync.Publisher // nil without MQTT
	m       *metrics
	beat    heartbeat
	started time.Time
	closeMu sync.Once
}

// NewLogger builds the logger Config.Log asks for, writing to w.
func NewLogger(cfg LogConfig, w io.Writer) *slog.Logger {
	var lvl slog.Level
	lvl.UnmarshalText([]byte(strings.ToUpper(cfg.Level)))
	o := &slog.HandlerOptions{Level: lvl}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, o))
	}
	return slog.New(slog.NewTextHandler(w, o))
}

// New loads and checks the models, opens the store and builds every part.
// Models come first: a missing or tampered model file stops the start
// before the store is opened (and written to). On error, what New opened is
// closed again.
func New(cfg Config, opts Options) (*Daemon, error) {
	return NewContext(context.Background(), cfg, opts)
}

// NewContext is New whose wait for the store's file lock (another agent or
// a db command holding the store, up to store.lock_timeout) ends when ctx
// does: `run` stopped by SIGTERM or SIGINT during start-up exits at once,
// saying it stopped waiting for the lock.
func NewContext(ctx context.Context, cfg Config, opts Options) (_ *Daemon, err error) {
	d := &Daemon{cfg: cfg, opts: opts, log: opts.Logger, started: time.Now()}
	if d.log == nil {
		d.log = NewLogger(cfg.Log, os.Stderr)
	}
	d.log.Info("atm-agent starting", "version", opts.Version, "device", cfg.Device.ID, "site", cfg.Device.Site)
	for _, w := range cfg.Warnings() {
		d.log.Warn("config: " + w)
	}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	if err := cfg.checkOtherReads(); err != nil {
		return nil, err
	}
	if d.pipe, d.eng, d.em, err = loadModels(cfg); err != nil {
		return nil, err
	}
	if err := d.openStore(ctx); err != nil {
		return nil, err
	}
	if err := d.newAgent(); err != nil {
		return nil, err
	}
	if cfg.MQTT.Enabled {
		var cmds mqttsync.CommandHandler
		if cfg.MQTT.Commands.Enabled {
			cmds = d.ag
		}
		var hold <-chan struct{}
		if d.cam != nil {
			// A camera still in its first open is starting, not down:
			// the first online status waits for that open to end
			// (StatusHoldMax at most: a long camera.open_timeout must
			// not keep the device out of the dashboards).
			hold = d.cam.FirstOpenDone()
		}
		d.pub, err = mqttsync.New(cfg.MQTT.Config, mqttsync.Deps{Outbox: d.st, Ready: d.st.OutboxReady(),
			Status: d.status, StatusHold: hold, StatusHoldMax: StatusHoldMax,
			Commands: cmds, Logger: d.log.With("component", "mqtt"), Version: opts.Version})
		if err != nil {
			return nil, err
		}
		d.restoreLastAlert(ctx)
	}
	d.registerMetrics()
	return d, nil
}

func (d *Daemon) openStore(ctx context.Context) error {
	sopts, err := d.cfg.Store.Options()
	if err != nil {
		return err
	}
	sopts.DeviceID, sopts.Logger = d.cfg.Device.ID, d.log.With("component", "store")
	d.st, err = store.OpenContext(ctx, d.cfg.Store.Path, sopts)
	if err != nil {
		return err
	}
	d.sealPlainTemplates(ctx, sopts.Key != nil)
	return nil
}

// sealPlainTemplates encrypts, with the store's key, the templates written
// before a key was set (a store from a version without encryption, or
// from before the operator set store.key_file): with a key configured, no
// template stays in plaintext waiting for someone to run `atm-agent db
// encrypt`. A failure is logged, not fatal: what was sealed stays sealed,
// and a compaction still owed is done at the next start.
func (d *Daemon) sealPlainTemplates(ctx context.Context, keyed bool) {
	n := d.st.PlainTemplates()
	if !keyed || n == 0 {
		return
	}
	log := d.log.With("component", "store")
	start := time.Now()
	sealed, err := d.st.Encrypt(ctx)
	if err != nil {
		log.Warn("plaintext templates not all sealed at start; the rest are sealed at the next start, or by atm-agent db encrypt",
			"found", n, "sealed", sealed, "err", err)
		return
	}
	log.Info("plaintext templates written before the key was set are now sealed with it, and the file compacted",
		"sealed", sealed, "took", time.Since(start).Round(time.Millisecond))
}

// seedTxnIDs gives the trigger endpoint the txn_ids of the visits stored
// within its idempotency window, so that a retry straddling a restart of
// the agent is answered as a duplicate and stores nothing new. A store that
// cannot be read here costs only that: the agent starts anyway.
func (d *Daemon) seedTxnIDs(h *trigger.HTTP) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	vs, err := d.st.VisitsSince(ctx, "", time.Now().Add(-h.IdempotencyWindow()))
	if err != nil {
		d.log.Warn("txn_ids of recent visits not read: a retry across this restart may store a second visit", "err", err)
		return
	}
	n := 0
	for _, v := range vs {
		for _, t := range append([]string{v.Context.TxnID}, v.Context.Coalesced...) {
			if t != "" {
				h.Remember(t, v.ID, v.Time)
				n++
			}
		}
	}
	if n > 0 {
		d.log.Info("txn_ids of recent visits remembered", "component", "trigger-http", "txn_ids", n)
	}
}

// newAgent builds the camera, the trigger sources, the rules and the agent.
func (d *Daemon) newAgent() error {
	cam := d.opts.Camera
	if cam == nil {
		open := d.opts.CameraOpen
		if open == nil {
			open = cvcam.Open
		}
		c, err := camera.New(d.cfg.Camera, open, d.log.With("component", "camera"))
		if err != nil {
			return err
		}
		d.cam, cam = c, cameraBurst{c}
	}
	re, err := rules.New(d.cfg.Alerts.Rules)
	if err != nil {
		return err
	}
	sources, gp, err := newSources(d.cfg.Trigger, d.log, d.seedTxnIDs,
		trigger.WithVersion(d.opts.Version), trigger.WithReadiness(d.triggerReadiness), trigger.WithVisitLookup(d.storedVisit))
	if err != nil {
		return err
	}
	d.gpio = gp
	var ruleNames []string
	for _, r := range d.cfg.Alerts.Rules {
		ruleNames = append(ruleNames, r.Name)
	}
	d.m = newMetrics(ruleNames)
	acfg := d.cfg.Agent
	d.beat.watchdog = watchdogInterval()
	if wd := d.beat.watchdog; wd > 0 && wd < acfg.HeartbeatInterval {
		acfg.HeartbeatInterval = wd
	}
	d.cfg.Agent = acfg
	var obs agent.Observer = d.m
	if d.opts.Observer != nil {
		obs = observers{d.m, d.opts.Observer}
	}
	d.ag, err = agent.New(acfg, agent.Deps{
		Camera: cam, Perceiver: d.pipe, Store: d.st, Identities: d.eng, Rules: re,
		Sources: append(sources, d.opts.Sources...), Logger: d.log.With("component", "agent"), Observer: obs,
		Model: d.pipe.TemplateModel, NewIdentityQuality: d.pipe.Config().NewIdentityQuality,
		Site: d.cfg.Device.Site, Device: d.cfg.Device.ID, Heartbeat: d.beat.beat, Deleted: d.alertsDeleted,
	})
	return err
}

// Agent, Store and Publisher (nil without MQTT) give callers such as the
// demo the running parts.
func (d *Daemon) Agent() *agent.Agent            { return d.ag }
func (d *Daemon) Store() *store.Store            { return d.st }
func (d *Daemon) Publisher() *mqttsync.Publisher { return d.pub }
func (d *Daemon) Model() *models.Model           { return d.em }
func (d *Daemon) Config() Config                 { return d.cfg }
func (d *Daemon) Logger() *slog.Logger           { return d.log }

// Close releases the models and the store. Run calls it on return; call
// it only for a Daemon that is never run.
func (d *Daemon) Close() {
	d.closeMu.Do(func() {
		if d.st != nil {
			d.st.Close()
		}
		if d.pipe != nil {
			d.pipe.Close()
		}
	})
}

// StatusHoldMax bounds how long the first online MQTT status waits for
// the camera's first open to end.
const StatusHoldMax = 30 * time.Second

// Run serves until ctx ends or the agent stops on an error, then stops
// everything within ShutdownBudget and closes the store and models.
// Cancellation is not an error.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.Close()
	log := d.log
	sinkCtx, cancelSinks := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSinks()
	var sinks sync.WaitGroup
	if d.pub != nil {
		sinks.Go(func() { d.pub.Run(sinkCtx) })
	}
	if d.cam != nil {
		sinks.Go(func() { d.cam.Run(sinkCtx) })
	}
	if d.cfg.Metrics.Listen != "" {
		stop, err := serveMetrics(d.cfg.Metrics, d.m, d.health, log)
		if err != nil {
			cancelSinks()
			sinks.Wait()
			return fmt.Errorf("metrics: listen %s: %w", d.cfg.Metrics.Listen, err)
		}
		defer stop()
	}
	// Agent: restores identities, purges, starts worker then sources.
	agentDone := make(chan error, 1)
	go func() { agentDone <- d.ag.Run(ctx) }()
	sdNotify("READY=1")
	log.Info("atm-agent ready")

	var runErr error
	select {
	case runErr = <-agentDone:
		sdNotify("STOPPING=1")
		cancelSinks()
		waitTimeout(&sinks, ShutdownBudget)
		if runErr == nil {
			runErr = errors.New("agent stopped unexpectedly")
		}
		return runErr
	case <-ctx.Done():
	}
	stopAt := time.Now()
	sdNotify("STOPPING=1")
	log.Info("atm-agent stopping")
	select {
	case runErr = <-agentDone:
	case <-time.After(ShutdownBudget):
		log.Error("agent did not stop in time")
	}
	cancelSinks()
	waitTimeout(&sinks, max(500*time.Millisecond, ShutdownBudget-time.Since(stopAt)))
	s := d.ag.Stats()
	log.Info("atm-agent stopped", "visits", s.Committed, "coalesced", s.Coalesced, "ms", time.Since(stopAt).Milliseconds())
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
