package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/periocular/atm-agent/agent"
	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/hal/camera"
	"github.com/periocular/atm-agent/hal/trigger"
	"github.com/periocular/atm-agent/models"
	"github.com/periocular/atm-agent/store"
	"github.com/periocular/atm-agent/sync/wire"
)

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
		icfg.Thresholds = em.Thresholds.Thresholds
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

// cameraBurst adapts *camera.Camera to agent.Camera (configured burst).
type cameraBurst struct{ c *camera.Camera }

func (c cameraBurst) Burst(ctx context.Context) ([]visit.Frame, error) { return c.c.Burst(ctx, 0, -1) }

// newSources builds the enabled trigger sources (the HTTP one listening,
// after seed has given it what it must remember from before a restart;
// httpOpts are its options), and returns the GPIO source too (nil when
// off) for the health check.
func newSources(cfg TriggerConfig, log *slog.Logger, seed func(*trigger.HTTP), httpOpts ...trigger.HTTPOption) ([]agent.Source, *trigger.GPIO, error) {
	var (
		sources []agent.Source
		gp      *trigger.GPIO
	)
	if g := cfg.GPIO; g.Enabled {
		s, err := trigger.NewGPIO(g.GPIOConfig, log.With("component", "gpio"))
		if err != nil {
			return nil, nil, err
		}
		gp = s
		sources = append(sources, triggerSource{s.Run})
	}
	if h := cfg.HTTP; h.Enabled {
		s, err := trigger.NewHTTP(h.HTTPConfig, log.With("component", "trigger-http"), httpOpts...)
		if err != nil {
			return nil, nil, err
		}
		if seed != nil {
			seed(s)
		}
		if err := s.Listen(); err != nil {
			return nil, nil, err
		}
		sources = append(sources, httpSource{s})
	}
	if r := cfg.Replay; r.Enabled {
		s, err := trigger.NewReplay(r.ReplayConfig, log.With("component", "replay"))
		if err != nil {
			return nil, nil, err
		}
		sources = append(sources, newReplaySource(s, r.ReplayConfig))
	}
	return sources, gp, nil
}

// triggerSource adapts a hal/trigger source (which sends on a channel) to
// agent.Source.
type triggerSource struct {
	run func(ctx context.Context, out chan<- visit.Trigger) error
}

func (s triggerSource) Run(ctx context.Context, emit agent.Emit) error {
	ch := make(chan visit.Trigger, 8)
	done := make(chan error, 1)
	go func() { done <- s.run(ctx, ch) }()
	for {
		select {
		case ev := <-ch:
			emit(ev)
		case err := <-done:
			for {
				select {
				case ev := <-ch:
					emit(ev)
				default:
					return err
				}
			}
		}
	}
}

// httpSource is the HTTP endpoint as an agent.AdmitSource: each request
// is admitted by the agent synchronously, so the client is told the id its
// visit is stored under and whether it was coalesced into a queued one.
type httpSource struct{ h *trigger.HTTP }

func (s httpSource) Run(ctx context.Context, emit agent.Emit) error {
	return triggerSource{s.h.Run}.Run(ctx, emit)
}

func (s httpSource) RunAdmit(ctx context.Context, admit agent.Admit) error {
	return s.h.RunAdmit(ctx, admit)
}

func (s httpSource) Forget(visitID string) int { return s.h.Forget(visitID) }

// replaySource numbers a replay's events with ids derived from the
// schedule (its fingerprint and the event's index), so a replay restarted
// after a crash gives the same visit ids and the store keeps each visit
// once (trigger.Replay itself draws random ids). It also never outruns the
// agent: after each event it waits until the agent has taken it (the
// channel Emit returns), so no replayed event is coalesced away.
type replaySource struct {
	r  *trigger.Replay
	fp string
}

func newReplaySource(r *trigger.Replay, cfg trigger.ReplayConfig) replaySource {
	h := sha256.New()
	fmt.Fprintf(h, "%v|%d|%s|", cfg.Interval, cfg.Count, cfg.Start)
	for _, e := range r.Entries() {
		fmt.Fprintf(h, "%d|%s|%s|%s\n", e.Offset, e.At.UTC().Format(time.RFC3339Nano), e.Context.CardHash, e.Context.TxnID)
	}
	return replaySource{r: r, fp: hex.EncodeToString(h.Sum(nil))[:12]}
}

func (s replaySource) Run(ctx context.Context, emit agent.Emit) error {
	in := make(chan visit.Trigger)
	done := make(chan error, 1)
	go func() { done <- s.r.Run(ctx, in) }()
	for n := 1; ; n++ {
		select {
		case ev := <-in:
			ev.ID = fmt.Sprintf("replay-%s-%06d", s.fp, n)
			select {
			case <-emit(ev):
			case <-ctx.Done():
				return <-done
			}
		case err := <-done:
			return err
		}
	}
}

// restoreLastAlert gives the publisher the last alert the store holds, so
// the first retained state after a start names it (last_alert), as it
// names the last summary. A store that cannot say is logged: the state
// then has no last_alert until the next alert is sent.
func (d *Daemon) restoreLastAlert(ctx context.Context) {
	a, seq, ok, err := d.st.LastStoredAlert(ctx)
	switch {
	case err != nil:
		d.log.Warn("the last alert stored could not be read; the state names none until the next", "err", err)
	case ok:
		w := wire.NewAlert(wire.Envelope{Seq: seq}, a)
		d.pub.RestoreLastAlert(w)
	}
}

// alertsDeleted follows an erasure or a retention purge: the publisher
// (New makes it after the agent, which calls this only once Run has
// started) drops from the retained state an alert the store no longer
// holds.
func (d *Daemon) alertsDeleted() {
	if d.pub != nil {
		d.pub.AlertsDeleted()
	}
}

// storedVisit answers the trigger endpoint's GET /v1/visits/{txn_id}
// from the store: the visit's time, outcome, mask state and whether an
// identity was assigned; never the identity's id, the template or a card.
func (d *Daemon) storedVisit(ctx context.Context, visitID, txnID string) (trigger.StoredVisit, error) {
	v, err := d.st.Visit(ctx, visitID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return trigger.StoredVisit{}, trigger.ErrVisitNotStored
	case err != nil:
		return trigger.StoredVisit{}, err
	}
	return trigger.StoredVisit{Time: v.Time, Outcome: v.Outcome.String(), Mask: v.Mask.String(),
		Identified: v.IdentityID != "", Coalesced: v.Context.TxnID != txnID}, nil
}
