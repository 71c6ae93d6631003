package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/durfmt"
	"github.com/periocular/atm-agent/store/record"
	"github.com/periocular/atm-agent/sync/wire"
)

// Outbox topics and kinds written by the agent.
const (
	TopicAlert   = wire.KindAlert
	TopicSummary = wire.KindSummary
	KindAlert    = "alert"
	KindSummary  = "summary"
	// CoalesceSummary lets the outbox drop superseded summaries first.
	CoalesceSummary = "summary"
)

func newVisitID() string {
	var b [16]byte
	rand.Read(b[:]) // never fails (Go >= 1.24)
	return hex.EncodeToString(b[:])
}

// finishTimeout bounds the alert rules and the commit of a visit, which run
// after visit_timeout's context (burst and perception) on one of their own.
const finishTimeout = 5 * time.Second

// processVisit runs one visit from burst to commit. Every trigger gives a
// stored visit unless the store refuses it: a camera or perception failure
// is recorded as Outcome CameraError, no face as NoFace/LowQuality.
func (a *Agent) processVisit(parent context.Context, ev visit.Trigger) {
	start := a.clk.Now()
	st := Stages{Queue: max(0, start.Sub(ev.Time))}
	ctx, cancel := context.WithTimeout(parent, a.cfg.VisitTimeout)
	defer cancel()

	v := visit.Visit{ID: ev.ID, Time: ev.Time, Trigger: ev.Source, Context: ev.Context}
	if v.ID == "" {
		v.ID = newVisitID()
	} else {
		// A trigger replayed after a restart: skip it before the burst, so
		// a replay catches up fast instead of re-perceiving stored visits
		// (and coalescing the triggers that queue up meanwhile).
		if _, err := a.d.Store.Visit(ctx, v.ID); err == nil {
			a.count(func(s *Stats) { s.Duplicates++ })
			a.log.Info("visit already stored; skipped", "visit", v.ID)
			return
		}
	}

	t := time.Now()
	frames, burstErr := a.d.Camera.Burst(ctx)
	err := burstErr
	st.Burst = time.Since(t)
	if err != nil && len(frames) == 0 {
		a.log.Warn("visit: camera gave no frames", "visit", v.ID, "err", err)
		v.Descriptor = visit.Descriptor{Outcome: visit.CameraError, Model: a.d.Model}
	} else {
		if err != nil {
			a.log.Info("visit: short burst", "visit", v.ID, "frames", len(frames), "err", err)
		}
		t = time.Now()
		desc, err := a.d.Perceiver.Perceive(ctx, frames)
		st.Perceive = time.Since(t)
		if err != nil {
			a.log.Error("visit: perception failed", "visit", v.ID, "err", err)
			desc = visit.Descriptor{Outcome: visit.CameraError, Model: a.d.Model, Frames: len(frames)}
		}
		if burstErr != nil && desc.Outcome != visit.FaceFound && desc.Outcome != visit.CameraError {
			// The camera failed part way (unplugged mid-burst): the frames
			// it gave show no usable face, but the frames it did not give
			// might have. Before, such a visit was stored as noface or
			// lowquality and counted for the faceless rules: a camera
			// dropping out under customers raised faceless alerts.
			a.log.Warn("visit: short burst without a usable face; stored as camera_error", "visit", v.ID,
				"frames", len(frames), "perceived", desc.Outcome.String())
			desc = visit.Descriptor{Outcome: visit.CameraError, Model: a.d.Model, Frames: len(frames)}
		}
		v.Descriptor = desc
	}

	var commit record.Commit
	t = time.Now()
	assigned := false
	if v.Outcome == visit.FaceFound && len(v.Embedding) > 0 {
		o := identity.Observation{VisitID: v.ID, Time: v.Time, Embedding: v.Embedding, Mask: v.Mask}
		var as identity.Assignment
		var err error
		ok := true
		if float64(v.Quality) < a.d.NewIdentityQuality {
			// Too poor to found an identity: it may join one, else it is
			// stored unassigned and offered again at each consolidation
			// (attachRefused).
			as, ok, err = a.d.Identities.Join(o)
		} else {
			as, err = a.d.Identities.Assign(o)
		}
		switch {
		case err != nil:
			a.log.Error("visit: identity assignment failed", "visit", v.ID, "err", err)
		case !ok:
			// Matched nobody: stored without identity.
		default:
			assigned = true
			v.IdentityID, v.Distance = as.IdentityID, as.Distance
			if id, ok := a.d.Identities.Identity(as.IdentityID); ok {
				commit.Identities = append(commit.Identities, storeIdentity(id, a.d.Model))
			}
			if as.NowConfirmed {
				a.log.Info("identity confirmed", "identity", as.IdentityID)
			}
		}
	}
	st.Assign = time.Since(t)

	if ctx.Err() != nil {
		a.log.Warn("visit: over visit_timeout; storing what it has", "visit", v.ID,
			"outcome", v.Outcome.String(), "timeout", a.cfg.VisitTimeout)
	}
	// Rules and the final save run on their own deadline: a visit that
	// used up visit_timeout in the camera or perception is still stored
	// (before, the expired context made the commit fail and the visit,
	// even as a camera_error, was lost). Shutdown does not cancel it
	// either; finishTimeout bounds it.
	fin, cancelFin := context.WithTimeout(context.WithoutCancel(parent), finishTimeout)
	defer cancelFin()

	t = time.Now()
	now := a.clk.Now()
	alerts, err := a.d.Rules.Evaluate(fin, v.Time, v, a.d.Store)
	st.Rules = time.Since(t)
	a.ruleResult(err)
	if err != nil {
		a.log.Error("visit: alert rules", "visit", v.ID, "err", err)
	}
	env := wire.NewEnvelope(a.d.Site, a.d.Device, now)
	for _, al := range alerts {
		msg, err := a.alertMessage(env, al)
		if err != nil {
			a.log.Error("visit: alert payload", "rule", al.Rule, "err", err)
			continue
		}
		commit.Alerts = append(commit.Alerts, record.NewAlert{Alert: al, Message: msg})
	}
	commit.Visit = &v

	t = time.Now()
	res, err := a.commit(fin, commit)
	st.Commit = time.Since(t)
	st.Total = a.clk.Now().Sub(start)
	switch {
	case errors.Is(err, record.ErrDuplicateVisit):
		a.count(func(s *Stats) { s.Duplicates++ })
		a.log.Info("visit already stored; skipped", "visit", v.ID)
		if assigned {
			a.resync(parent)
		}
		return
	case err != nil:
		a.commitResult("visit", err)
		a.count(func(s *Stats) { s.CommitErrors++ })
		a.log.Error("visit lost: could not store it", "visit", v.ID, "err", err)
		a.forget(v.ID)
		if assigned {
			a.resync(parent)
		}
		return
	}
	a.commitResult("visit", nil)
	a.count(func(s *Stats) {
		s.Visits[v.Outcome]++
		s.Committed++
		s.Alerts += uint64(len(res.NewAlerts))
		s.LastVisit = v.Time
	})
	a.obs.Visit(v, st, len(res.NewAlerts))
	ao, _ := a.obs.(AlertObserver)
	for _, al := range commit.Alerts {
		for _, id := range res.NewAlerts {
			if id == al.Alert.ID {
				if ao != nil {
					ao.Alerted(al.Alert.Rule)
				}
				a.log.Warn("alert raised", "rule", al.Alert.Rule, "identity", al.Alert.IdentityID,
					"count", al.Alert.Count, "window", durfmt.Window(al.Alert.Window), "alert", id)
			}
		}
	}
	a.log.Info("visit", "visit", v.ID, "seq", res.VisitSeq, "trigger", v.Trigger, "outcome", v.Outcome.String(),
		"identity", v.IdentityID, "mask", v.Mask.String(), "quality", v.Quality, "frames", v.Frames,
		"ms", st.Total.Milliseconds())
}

// forget tells the sources that remember trigger ids that visit id was not
// stored (ForgetSource).
func (a *Agent) forget(id string) {
	for _, src := range a.d.Sources {
		if f, ok := src.(ForgetSource); ok {
			if n := f.Forget(id); n > 0 {
				a.log.Info("txn_ids of the lost visit forgotten: a retry starts a new visit", "visit", id, "txn_ids", n)
			}
		}
	}
}

// commit stores c, retrying transient failures with a short backoff.
func (a *Agent) commit(ctx context.Context, c record.Commit) (record.CommitResult, error) {
	var err error
	for i := 0; i < a.cfg.CommitRetries; i++ {
		var res record.CommitResult
		res, err = a.d.Store.CommitVisit(ctx, c)
		if err == nil || errors.Is(err, record.ErrDuplicateVisit) || ctx.Err() != nil {
			return res, err
		}
		a.log.Warn("store commit failed; retrying", "attempt", i+1, "err", err)
		select {
		case <-ctx.Done():
			return res, err
		case <-time.After(time.Duration(100*(i+1)) * time.Millisecond):
		}
	}
	return record.CommitResult{}, err
}

func (a *Agent) alertMessage(env wire.Envelope, al visit.Alert) (*visit.OutboxMessage, error) {
	b, err := json.Marshal(wire.NewAlert(env, al))
	if err != nil {
		return nil, err
	}
	return &visit.OutboxMessage{Kind: KindAlert, Topic: TopicAlert, Created: env.TS, Payload: b}, nil
}

func storeIdentity(id identity.Identity, model string) record.Identity {
	return record.Identity{ID: id.ID, Status: string(id.Status), Confidence: float32(id.Confidence), Model: model}
}

// resync rebuilds the identity engine from the store after a visit the
// engine had assigned could not be stored, so both agree again.
func (a *Agent) resync(ctx context.Context) {
	if err := a.restore(context.WithoutCancel(ctx)); err != nil {
		a.log.Error("identity engine resync failed", "err", err)
	}
}

// restore loads the engine from the store's members (the face visits inside
// the retention window that have an identity).
func (a *Agent) restore(ctx context.Context) error {
	ids, err := a.d.Store.Identities(ctx)
	if err != nil {
		return fmt.Errorf("restore identities: %w", err)
	}
	ms, err := a.d.Store.Members(ctx)
	if err != nil {
		return fmt.Errorf("restore identities: %w", err)
	}
	snap, skipped := buildSnapshot(ids, ms, a.d.Model, a.dim)
	if err := a.d.Identities.Restore(snap); err != nil {
		return err
	}
	if err := a.loadConstraints(ctx); err != nil {
		return err
	}
	if skipped > 0 {
		a.log.Warn("stored templates not restored (other model or dimension, or no identity record)", "visits", skipped)
	}
	a.log.Info("identities restored", "identities", len(snap.Identities), "visits", len(snap.Members))
	return nil
}

// buildSnapshot turns stored identities and members into an engine
// snapshot; identities are ordered by creation (older wins ties).
func buildSnapshot(ids []record.Identity, ms []visit.Member, model string, dim int) (identity.Snapshot, int) {
	known := map[string]record.Identity{}
	for _, id := range ids {
		known[id.ID] = id
	}
	var snap identity.Snapshot
	used := map[string]bool{}
	skipped := 0
	for _, m := range ms {
		if m.IdentityID == "" {
			continue // low-quality face visit that matched nobody
		}
		if _, ok := known[m.IdentityID]; !ok || !usableTemplate(m, model, dim) {
			skipped++
			continue
		}
		used[m.IdentityID] = true
		snap.Members = append(snap.Members, m)
	}
	var metas []identity.IdentityMeta
	for id := range used {
		s := known[id]
		st := identity.Status(s.Status)
		if st != identity.Confirmed {
			st = identity.Pending
		}
		metas = append(metas, identity.IdentityMeta{ID: id, Status: st, Created: s.Created})
	}
	sortMetas(metas)
	for i := range metas {
		metas[i].Seq = uint64(i + 1)
	}
	snap.Identities = metas
	snap.Dim = dim
	snap.Seq = uint64(len(metas))
	return snap, skipped
}

// usableTemplate says whether a stored template fits the engine: the current
// model's (or untagged), of its dimension.
func usableTemplate(m visit.Member, model string, dim int) bool {
	return (model == "" || m.Model == "" || m.Model == model) && len(m.Embedding) == dim
}
