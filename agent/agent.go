// Package agent is the visit pipeline of the ATM agent:
//
//	trigger -> camera burst -> perception -> one visit -> identity assignment
//	-> alert rules -> ONE store commit (visit, identity upserts, alerts and
//	their outbox messages) -> publisher notified
//
// plus the periodic work that must not interleave with visits: identity
// consolidation (relabels committed in one transaction), summary messages
// into the outbox, and the retention purge (also run at start).
//
// All of that runs on one worker goroutine, so the identity engine and the
// store always agree: a consolidation can never move visits while a visit
// assigned before it is still being committed.
//
// # Triggers
//
// Trigger never blocks. The rule for triggers that arrive while a visit runs
// is a queue of depth one with coalescing:
//
//   - no visit running and nothing queued: the trigger starts a visit;
//   - a visit running and nothing queued: the trigger is queued and its visit
//     starts as soon as the running one is committed (its time is the
//     trigger's time, its frames are grabbed when it starts);
//   - a visit running and one already queued: the trigger is coalesced into
//     the queued one (one card insert reported twice, e.g. by GPIO and by the
//     ATM application; or bounces). The queued trigger keeps its time and
//     source; empty fields of its transaction context are filled from the
//     extra trigger, and its other txn_ids and card hashes are kept with the
//     visit (Context.Coalesced, Context.CoalescedCards: every card counts for
//     the distinct-cards rules). Coalesced triggers are counted
//     (Stats.Coalesced).
//
// A trigger still queued when the agent stops is dropped and counted
// (Stats.DroppedAtStop): its customer has left before frames could be taken.
//
// The package has no cgo, paho or bbolt import: it consumes small
// interfaces (Camera, Perceiver, Store, Clock, Observer) and the
// pure-Go identity engine, alert rules and wire payloads.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/agent/rules"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/store/record"
	"github.com/periocular/atm-agent/sync/wire"
)

// Camera grabs one burst of frames for a visit. It returns the frames it got
// and, if fewer than wanted, the error that stopped it; it is bounded by ctx.
type Camera interface {
	Burst(ctx context.Context) ([]visit.Frame, error)
}

// Perceiver turns a burst into one visit descriptor. "No face" is an
// Outcome, not an error.
type Perceiver interface {
	Perceive(ctx context.Context, frames []visit.Frame) (visit.Descriptor, error)
}

// Store is the part of *store.Store the agent uses.
type Store interface {
	CommitVisit(ctx context.Context, c record.Commit) (record.CommitResult, error)
	// Visit finds a stored visit by id: a trigger whose id is stored (a
	// replay after a restart) is skipped before its burst.
	Visit(ctx context.Context, id string) (visit.Visit, error)
	VisitsSince(ctx context.Context, identityID string, since time.Time) ([]visit.Visit, error)
	LastAlert(ctx context.Context, rule, identityID string) (time.Time, bool, error)
	Members(ctx context.Context) ([]visit.Member, error)
	// Unassigned are the members without identity.
	Unassigned(ctx context.Context) ([]visit.Member, error)
	Identities(ctx context.Context) ([]record.Identity, error)
	PurgeExpired(ctx context.Context) (int, error)
	PurgeIdentity(ctx context.Context, id string) (int, error)
	Retention() time.Duration
	// Constraints are the analysts' corrections consolidation respects.
	Constraints(ctx context.Context) ([]record.Constraint, error)
}

// Clock is the agent's time source.
type Clock interface{ Now() time.Time }

type sysClock struct{}

func (sysClock) Now() time.Time { return time.Now() }

// Source is a trigger source: Run calls emit for every card insert until
// ctx ends, and returns after its goroutines have ended.
type Source interface {
	Run(ctx context.Context, emit Emit) error
}

// Emit hands one trigger to the agent; it never blocks. The channel it
// returns is closed once no trigger is queued any more: the worker has
// taken this one (or the one it was coalesced into), or the agent stopped.
// A source whose events must never be coalesced (a replay) waits on it
// before its next event; others ignore it.
type Emit func(visit.Trigger) <-chan struct{}

// Admit hands one trigger to the agent like Emit and says what became of
// it: the id its visit will be stored under (its own, drawn here when the
// trigger has none, or the queued visit's it was coalesced into). It never
// blocks.
type Admit = func(visit.Trigger) visit.Admission

// AdmitSource is a Source whose clients are answered with the agent's
// decision (the HTTP endpoint replies with the visit id and whether the
// trigger was coalesced). Run calls RunAdmit instead of Run for it.
type AdmitSource interface {
	Source
	RunAdmit(ctx context.Context, admit Admit) error
}

// ForgetSource is an optional Source capability: a source that remembers
// its clients' trigger ids for idempotency (the HTTP endpoint) forgets those
// of a visit that could not be stored, so that a client's retry starts a
// new visit instead of being answered with the id of a visit that does not
// exist.
type ForgetSource interface {
	Forget(visitID string) int
}

// Stages are the per-stage latencies of one visit.
type Stages struct {
	Queue, Burst, Perceive, Assign, Rules, Commit, Total time.Duration
}

// Observer receives what the agent does, for metrics. Methods are called
// from the worker goroutine (Coalesced from Trigger's caller) and must not
// block.
type Observer interface {
	Visit(v visit.Visit, s Stages, newAlerts int)
	Coalesced()
	CommitFailed(op string)
	Consolidated(moved int, d time.Duration)
	Purged(visits int)
}

// RuleErrorObserver is an optional Observer capability: RuleFailed is
// called when the alert rules could not be evaluated for a visit (the visit
// is still stored, but no alert it should raise is).
type RuleErrorObserver interface {
	RuleFailed()
}

// AlertObserver is an optional Observer capability: Alerted is called once
// per new alert a committed visit raised, with the alert's rule name.
type AlertObserver interface {
	Alerted(rule string)
}

type nopObserver struct{}

func (nopObserver) Visit(visit.Visit, Stages, int)  {}
func (nopObserver) Coalesced()                      {}
func (nopObserver) CommitFailed(string)             {}
func (nopObserver) Consolidated(int, time.Duration) {}
func (nopObserver) Purged(int)                      {}

// Deps are the agent's collaborators. Camera, Perceiver, Store, Identities
// and Rules are required.
type Deps struct {
	Camera    Camera
	Perceiver Perceiver
	Store     Store
	// Identities is an engine for the current embedder; Run restores it
	// from Store.Members before the first visit.
	Identities *identity.Engine
	Rules      *rules.Engine
	Sources    []Source // started by Run after the worker
	Clock      Clock    // optional; the system clock
	Logger     *slog.Logger
	Observer   Observer // optional
	// Heartbeat is called by the work loop after every visit and at least
	// every Config.HeartbeatInterval while idle (sd_notify WATCHDOG=1): a
	// hung camera or store stops it.
	Heartbeat func()
	// Model is the current embedder's name: stored templates of another
	// model are not restored into the engine.
	Model string
	// NewIdentityQuality: a face visit below this quality may join an
	// existing identity but never starts one (vision.Config).
	NewIdentityQuality float64
	// Site and Device fill the payload envelopes.
	Site, Device string
	// Deleted, when not nil, is called on the worker after an erasure
	// (PurgeIdentity) or a retention purge has deleted from the store: the
	// daemon has the MQTT publisher take out of its retained state an
	// alert the store no longer holds. It must not block for long.
	Deleted func()
}

// Agent runs the visit pipeline. Create with New, drive with Run.
type Agent struct {
	cfg Config
	d   Deps
	log *slog.Logger
	obs Observer
	clk Clock
	dim int // embedding dimension of the identity engine

	mu      sync.Mutex
	pending *visit.Trigger
	stats   Stats
	wake    chan struct{} // cap 1: a trigger is pending
	free    chan struct{} // closed while pending is nil; new when it is set
	tasks   chan task

	ran bool
	// cons is the store's constraints (analysts' corrections); read and
	// written on the worker only.
	cons []record.Constraint
}

// Stats are the agent's counters since New.
type Stats struct {
	Triggers      uint64 // triggers received
	Coalesced     uint64 // triggers folded into a queued one
	DroppedAtStop uint64 // queued triggers dropped at shutdown
	Visits        map[visit.Outcome]uint64
	Committed     uint64 // visits stored
	Duplicates    uint64 // visits whose id was already stored (replays)
	CommitErrors  uint64 // visits that could not be stored
	Alerts        uint64 // new alerts stored
	Summaries     uint64
	Consolidated  uint64 // consolidation runs
	Relabelled    uint64 // visits moved by consolidation
	// Attached counts face visits stored without identity that a later
	// consolidation gave one (attachRefused).
	Attached    uint64
	Corrections uint64 // analysts' splits and merges applied
	Purged      uint64 // visits removed by retention
	LastVisit   time.Time
	LastBeat    time.Time
	Busy        bool // a visit is being processed
	Queued      bool // a trigger waits for the running visit
	// RuleErrors counts visits whose alert rules could not be evaluated.
	RuleErrors uint64
	// FailingCommits counts store commits (visits, summaries,
	// consolidations) that failed in a row since the last one that
	// succeeded; FailingRules the visits in a row whose rule evaluation
	// failed. LastCommitError and LastRuleError are the latest errors.
	FailingCommits, FailingRules   uint64
	LastCommitError, LastRuleError string
}

type task struct {
	name string
	fn   func(ctx context.Context) error
	done chan error
}

// New checks deps and cfg (zero fields take defaults).
func New(cfg Config, d Deps) (*Agent, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	switch {
	case d.Camera == nil:
		return nil, errors.New("agent: Deps.Camera is required")
	case d.Perceiver == nil:
		return nil, errors.New("agent: Deps.Perceiver is required")
	case d.Store == nil:
		return nil, errors.New("agent: Deps.Store is required")
	case d.Identities == nil:
		return nil, errors.New("agent: Deps.Identities is required")
	case d.Rules == nil:
		return nil, errors.New("agent: Deps.Rules is required")
	}
	a := &Agent{cfg: cfg, d: d, log: d.Logger, obs: d.Observer, clk: d.Clock,
		wake: make(chan struct{}, 1), free: make(chan struct{}), tasks: make(chan task)}
	close(a.free)
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.obs == nil {
		a.obs = nopObserver{}
	}
	if a.clk == nil {
		a.clk = sysClock{}
	}
	a.stats.Visits = map[visit.Outcome]uint64{}
	a.dim = d.Identities.Snapshot().Dim
	return a, nil
}

// Trigger reports a card insert. It never blocks. It returns true when the
// event will get a visit of its own, false when it was coalesced into the
// queued one (see the package documentation).
func (a *Agent) Trigger(ev visit.Trigger) bool {
	adm, _ := a.trigger(ev, false)
	return !adm.Coalesced
}

// admit is Admit: a trigger without an id gets one here, so the caller
// learns the id its visit is stored under.
func (a *Agent) admit(ev visit.Trigger) visit.Admission {
	if ev.ID == "" {
		ev.ID = newVisitID()
	}
	adm, _ := a.trigger(ev, true)
	return adm
}

// trigger is Trigger that also returns the id of the queued trigger (ev's
// own, or the one ev was coalesced into) and the channel closed once no
// trigger is queued (Emit). With refuseFull (the HTTP endpoint, whose reply
// must be true), a trigger that would join the queued visit with a txn_id
// or card hash that visit has no room left for (visit.MaxCoalesced) is
// refused and changes nothing; without it (GPIO, replays: no reply), it
// joins and that context is not stored.
func (a *Agent) trigger(ev visit.Trigger, refuseFull bool) (visit.Admission, <-chan struct{}) {
	if ev.Time.IsZero() {
		ev.Time = a.clk.Now()
	}
	a.mu.Lock()
	a.stats.Triggers++
	if a.pending != nil {
		p := a.pending
		h, t := ev.Context.CardHash, ev.Context.TxnID
		// Another card (kept for the distinct-cards rules), another txn_id.
		newCard := h != "" && p.Context.CardHash != "" && h != p.Context.CardHash && !slices.Contains(p.Context.CoalescedCards, h)
		newTxn := t != "" && p.Context.TxnID != "" && t != p.Context.TxnID && !slices.Contains(p.Context.Coalesced, t)
		cardRoom, txnRoom := len(p.Context.CoalescedCards) < visit.MaxCoalesced, len(p.Context.Coalesced) < visit.MaxCoalesced
		if refuseFull && (newCard && !cardRoom || newTxn && !txnRoom) {
			a.mu.Unlock()
			return visit.Admission{Refused: true, Full: true}, nil
		}
		switch {
		case p.Context.CardHash == "":
			p.Context.CardHash = h
		case newCard && cardRoom:
			p.Context.CoalescedCards = append(p.Context.CoalescedCards, h)
		}
		switch {
		case p.Context.TxnID == "":
			p.Context.TxnID = t
		case newTxn && txnRoom:
			p.Context.Coalesced = append(p.Context.Coalesced, t)
		}
		a.stats.Coalesced++
		id, free := p.ID, a.free
		a.mu.Unlock()
		a.obs.Coalesced()
		return visit.Admission{ID: id, Coalesced: true}, free
	}
	a.pending = &ev
	a.free = make(chan struct{})
	free := a.free
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
	return visit.Admission{ID: ev.ID}, free
}

// take removes the queued trigger, if any; a.mu must be held.
func (a *Agent) take() *visit.Trigger {
	ev := a.pending
	if ev != nil {
		a.pending = nil
		close(a.free)
	}
	return ev
}

// Stats returns a copy of the counters.
func (a *Agent) Stats() Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.stats
	s.Queued = a.pending != nil
	s.Visits = make(map[visit.Outcome]uint64, len(a.stats.Visits))
	for k, v := range a.stats.Visits {
		s.Visits[k] = v
	}
	return s
}

func (a *Agent) count(f func(s *Stats)) {
	a.mu.Lock()
	f(&a.stats)
	a.mu.Unlock()
}

// Run restores the identity engine from the store, purges expired data,
// starts the worker, then the trigger sources (sinks before sources), and
// serves until ctx ends. It stops the sources first, lets a visit in
// progress finish (bounded by Config.StopGrace), and returns after every
// goroutine it started has ended. Cancellation is not an error.
func (a *Agent) Run(ctx context.Context) error {
	a.mu.Lock()
	if a.ran {
		a.mu.Unlock()
		return errors.New("agent: Run called twice")
	}
	a.ran = true
	a.mu.Unlock()

	if err := a.restore(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	a.purge(ctx)

	// The worker's context outlives ctx by StopGrace so that a visit in
	// progress at shutdown is still committed.
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stopWork := make(chan struct{})
	workerDone := make(chan struct{})
	go func() {
		defer close(workerDone)
		a.work(workCtx, stopWork)
	}()

	srcCtx, cancelSrc := context.WithCancel(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, len(a.d.Sources))
	for _, s := range a.d.Sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if as, ok := s.(AdmitSource); ok {
				err = as.RunAdmit(srcCtx, a.admit)
			} else {
				err = s.Run(srcCtx, func(ev visit.Trigger) <-chan struct{} { _, free := a.trigger(ev, false); return free })
			}
			if err != nil && srcCtx.Err() == nil {
				errs <- err
			}
		}()
	}
	a.log.Info("agent started", "sources", len(a.d.Sources), "identities", len(a.d.Identities.Identities()))

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errs:
		runErr = fmt.Errorf("trigger source: %w", runErr)
	}
	cancelSrc()
	wg.Wait()
	close(stopWork)
	grace := time.AfterFunc(a.cfg.StopGrace, cancelWork)
	<-workerDone
	grace.Stop()
	a.mu.Lock()
	if a.take() != nil {
		a.stats.DroppedAtStop++
		a.log.Warn("agent stopping: queued trigger dropped")
	}
	a.mu.Unlock()
	a.log.Info("agent stopped")
	return runErr
}

// work is the single worker: visits, periodic jobs and requested tasks.
func (a *Agent) work(ctx context.Context, stop <-chan struct{}) {
	beat := time.NewTicker(a.cfg.HeartbeatInterval)
	defer beat.Stop()
	summary := time.NewTicker(a.cfg.SummaryInterval)
	defer summary.Stop()
	consolidate := time.NewTicker(a.cfg.ConsolidateInterval)
	defer consolidate.Stop()
	purge := time.NewTicker(a.cfg.PurgeInterval)
	defer purge.Stop()
	a.heartbeat()
	runSummary := func(ctx context.Context) {
		if err := a.publishSummary(ctx); err != nil {
			a.log.Error("summary", "err", err)
		}
	}
	runConsolidate := func(ctx context.Context) {
		if err := a.consolidate(ctx); err != nil {
			a.log.Error("consolidate identities", "err", err)
		}
	}
	// dueJobs runs the periodic jobs whose ticker has fired, without waiting.
	dueJobs := func(ctx context.Context) {
		select {
		case <-summary.C:
			runSummary(ctx)
		case <-consolidate.C:
			runConsolidate(ctx)
		case <-purge.C:
			a.purge(ctx)
		default:
		}
	}
	// idle blocks until there is something to do: a trigger, a stop, a
	// heartbeat, a periodic job or a requested task. It must block: a
	// default case here made an idle agent spin on a core.
	idle := func(ctx context.Context) bool {
		select {
		case <-stop:
			return false
		case <-a.wake:
		case <-beat.C:
			a.heartbeat()
		case <-summary.C:
			runSummary(ctx)
		case <-consolidate.C:
			runConsolidate(ctx)
		case <-purge.C:
			a.purge(ctx)
		case t := <-a.tasks:
			t.done <- t.fn(ctx)
		}
		return true
	}
	for {
		// Visits first: a pending trigger waits for no periodic job that is
		// not yet due. A job that is due (its ticker fired) runs before the
		// next visit even when triggers keep coming back to back, so a stuck
		// card-insert line or a flood of requests cannot starve retention,
		// consolidation or summaries; each delays at most one visit per
		// interval.
		a.mu.Lock()
		ev := a.take()
		if ev != nil {
			a.stats.Busy = true
		}
		a.mu.Unlock()
		if ev != nil {
			a.processVisit(ctx, *ev)
			a.count(func(s *Stats) { s.Busy = false })
			a.heartbeat()
			dueJobs(ctx)
			continue
		}
		if !idle(ctx) {
			return
		}
	}
}

func (a *Agent) heartbeat() {
	a.count(func(s *Stats) { s.LastBeat = a.clk.Now() })
	if a.d.Heartbeat != nil {
		a.d.Heartbeat()
	}
}

// do runs fn on the worker and waits for it. It needs Run.
//
// ctx bounds only the wait for the worker to take the task: when it ends
// first, fn has not run and never will (the error wraps ctx.Err()). Once
// the worker has taken it (tasks is unbuffered, so the send is the
// handover), fn runs to its end on the worker's context, which ctx does
// not cancel, and do returns its own result however long that takes: a
// caller's deadline must not turn a change that was made into an error
// that says it was not (an analyst's correction, a deletion request).
func (a *Agent) do(ctx context.Context, name string, fn func(ctx context.Context) error) error {
	t := task{name: name, fn: fn, done: make(chan error, 1)}
	select {
	case a.tasks <- t:
	case <-ctx.Done():
		// Nothing ran: a command is answered busy (try again later).
		return wire.WithCode(wire.CodeBusy, fmt.Errorf("%s: not started: %w", name, ctx.Err()))
	}
	return <-t.done
}

// Consolidate re-clusters the identities now and commits the relabels.
func (a *Agent) Consolidate(ctx context.Context) error {
	return a.do(ctx, "consolidate", a.consolidate)
}

// PublishSummary puts a summary message into the outbox now.
func (a *Agent) PublishSummary(ctx context.Context) error {
	return a.do(ctx, "publish summary", a.publishSummary)
}

// Purge applies the retention window now.
func (a *Agent) Purge(ctx context.Context) error {
	return a.do(ctx, "purge", func(ctx context.Context) error { a.purge(ctx); return nil })
}

// PurgeIdentity deletes an identity, its visits and alerts (a deletion
// request) from the store and the engine. It returns the visits removed.
func (a *Agent) PurgeIdentity(ctx context.Context, id string) (int, error) {
	var n int
	err := a.do(ctx, "purge identity", func(ctx context.Context) error {
		var err error
		n, err = a.d.Store.PurgeIdentity(ctx, id)
		if errors.Is(err, record.ErrNotFound) {
			return wire.WithCode(wire.CodeNotFound, err)
		}
		if err != nil && n == 0 {
			return err
		}
		// Deleted (even when the file's compaction then failed): the
		// engine forgets them too, and the store dropped them from the
		// constraints.
		a.d.Identities.Remove(id)
		if lerr := a.loadConstraints(ctx); lerr != nil {
			a.log.Error("purge identity", "err", lerr)
		}
		a.afterDelete(ctx, "purge identity", n)
		return err
	})
	return n, err
}
