package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/agent/rules"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/durfmt"
	"github.com/periocular/atm-agent/store/record"
	"github.com/periocular/atm-agent/sync/wire"
)

func sortMetas(ms []identity.IdentityMeta) {
	sort.Slice(ms, func(i, j int) bool {
		if !ms[i].Created.Equal(ms[j].Created) {
			return ms[i].Created.Before(ms[j].Created)
		}
		return ms[i].ID < ms[j].ID
	})
}

// consolidate re-clusters the engine (regroup), then offers it the face
// visits still without identity (attachRefused), and evaluates the identity
// rules again for every identity that received visits.
func (a *Agent) consolidate(ctx context.Context) error {
	targets, err := a.regroup(ctx)
	if err != nil {
		return err
	}
	attached, err := a.attachRefused(ctx)
	for _, id := range attached {
		targets[id] = true
	}
	a.alertAfterConsolidation(ctx, targets)
	return err
}

// regroup re-clusters the engine and commits the relabels, the updated
// identities and the deletion of identities left empty in one transaction.
// If the commit fails the engine is rebuilt from the store. It returns the
// identities that received visits.
func (a *Agent) regroup(ctx context.Context) (map[string]bool, error) {
	t := time.Now()
	changes, err := a.d.Identities.Consolidate(ctx)
	if err != nil {
		return nil, err
	}
	a.count(func(s *Stats) { s.Consolidated++ })
	if len(changes) == 0 {
		a.obs.Consolidated(0, time.Since(t))
		return map[string]bool{}, nil
	}
	c := consolidationCommit(changes, a.d.Identities, a.d.Model)
	res, err := a.d.Store.CommitVisit(ctx, c)
	if err != nil && len(c.DeleteIdentities) > 0 {
		// An identity the engine dropped may still own stored visits the
		// engine does not hold (older than retention, another model):
		// keep it; the retention purge removes it once it is empty.
		a.log.Warn("consolidation: keeping identities that still own stored visits", "err", err)
		c.DeleteIdentities = nil
		res, err = a.d.Store.CommitVisit(ctx, c)
	}
	if err != nil {
		a.commitResult("consolidate", err)
		a.resync(ctx)
		return nil, fmt.Errorf("commit consolidation: %w", err)
	}
	a.commitResult("consolidate", nil)
	moved := len(c.Relabels) - len(res.MissingRelabels)
	a.count(func(s *Stats) { s.Relabelled += uint64(moved) })
	a.obs.Consolidated(moved, time.Since(t))
	kinds := map[identity.ChangeKind]int{}
	for _, ch := range changes {
		kinds[ch.Kind]++
	}
	a.log.Info("identities consolidated", "moved_visits", moved, "merges", kinds[identity.Merge],
		"splits", kinds[identity.Split], "relabels", kinds[identity.Relabel], "ms", time.Since(t).Milliseconds())
	return changeTargets(changes), nil
}

// changeTargets are the identities that received visits in changes.
func changeTargets(changes []identity.Change) map[string]bool {
	targets := map[string]bool{}
	for _, ch := range changes {
		if ch.To != "" && len(ch.VisitIDs) > 0 {
			targets[ch.To] = true
		}
	}
	return targets
}

// attachRefused offers the engine again the stored face visits that have no
// identity (too poor to found one when they came, vision.new_identity_quality),
// oldest first: each joins the identity an online visit would join now, the
// nearest within the cut of its pair type (Engine.Join), or stays without
// one; it never founds an identity. The visits attached are relabelled, with
// their distance, and their identities updated, in one transaction; if it
// fails the engine is rebuilt from the store and the next consolidation
// tries again. It returns the identities that received visits.
func (a *Agent) attachRefused(ctx context.Context) ([]string, error) {
	ms, err := a.d.Store.Unassigned(ctx)
	if err != nil {
		return nil, fmt.Errorf("attach visits without identity: %w", err)
	}
	var c record.Commit
	to := map[string]bool{}
	for _, m := range ms {
		if !usableTemplate(m, a.d.Model, a.dim) {
			continue
		}
		as, ok, err := a.d.Identities.Join(identity.Observation{VisitID: m.VisitID, Time: m.Time, Embedding: m.Embedding, Mask: m.Mask})
		if err != nil {
			a.log.Warn("attach visit without identity", "visit", m.VisitID, "err", err)
			continue
		}
		if !ok {
			continue
		}
		d := as.Distance
		c.Relabels = append(c.Relabels, record.Relabel{VisitID: m.VisitID, IdentityID: as.IdentityID, Distance: &d})
		to[as.IdentityID] = true
	}
	if len(c.Relabels) == 0 {
		return nil, nil
	}
	ids := sortedKeys(to)
	for _, id := range ids {
		if v, ok := a.d.Identities.Identity(id); ok {
			c.Identities = append(c.Identities, storeIdentity(v, a.d.Model))
		}
	}
	res, err := a.d.Store.CommitVisit(ctx, c)
	a.commitResult("consolidate", err)
	if err != nil {
		a.resync(ctx)
		return nil, fmt.Errorf("commit visits attached to identities: %w", err)
	}
	n := len(c.Relabels) - len(res.MissingRelabels)
	a.count(func(s *Stats) { s.Attached += uint64(n) })
	a.log.Info("visits without identity attached", "visits", n, "identities", len(ids), "left", len(ms)-len(c.Relabels))
	return ids, nil
}

// alertAfterConsolidation evaluates the identity rules again for the
// identities that received visits: merged, their counts may cross a
// threshold that neither part reached, and the person may never come back
// to trigger the evaluation. Each of their visits inside the longest
// identity-rule window is evaluated at its own time, oldest first, as if it
// had just arrived; alerts are committed one visit at a time so that the
// cooldown (LastAlert) of one holds the later ones, and the stable alert ids
// make the store ignore an alert that was already raised. Such an alert is
// stamped raised at the consolidation (the clock's now), when it was
// actually raised; its visit_id and window name the visit and the window in
// which the threshold was crossed.
func (a *Agent) alertAfterConsolidation(ctx context.Context, targets map[string]bool) {
	var longest time.Duration
	for _, r := range a.d.Rules.Rules() {
		if r.Kind == rules.KindVisits || r.Kind == rules.KindDistinctCards {
			longest = max(longest, r.Window)
		}
	}
	if longest == 0 {
		return
	}
	now := a.clk.Now()
	env := wire.NewEnvelope(a.d.Site, a.d.Device, now)
	raised := 0
	for _, id := range sortedKeys(targets) {
		vs, err := a.d.Store.VisitsSince(ctx, id, now.Add(-longest))
		if err != nil {
			a.log.Error("consolidation: alert rules", "identity", id, "err", err)
			a.ruleResult(err)
			continue
		}
		for _, v := range vs {
			if v.Time.After(now) {
				continue
			}
			alerts, err := a.d.Rules.Evaluate(ctx, v.Time, v, a.d.Store)
			a.ruleResult(err)
			if err != nil {
				a.log.Error("consolidation: alert rules", "identity", id, "err", err)
				break
			}
			var c record.Commit
			for _, al := range alerts {
				al.Raised = now.UTC()
				msg, err := a.alertMessage(env, al)
				if err != nil {
					a.log.Error("consolidation: alert payload", "rule", al.Rule, "err", err)
					continue
				}
				c.Alerts = append(c.Alerts, record.NewAlert{Alert: al, Message: msg})
			}
			if len(c.Alerts) == 0 {
				continue
			}
			res, err := a.d.Store.CommitVisit(ctx, c)
			a.commitResult("consolidate", err)
			if err != nil {
				a.log.Error("consolidation: alerts lost: could not store them", "identity", id, "err", err)
				break
			}
			a.count(func(s *Stats) { s.Alerts += uint64(len(res.NewAlerts)) })
			ao, _ := a.obs.(AlertObserver)
			for _, al := range c.Alerts {
				if slices.Contains(res.NewAlerts, al.Alert.ID) {
					raised++
					if ao != nil {
						ao.Alerted(al.Alert.Rule)
					}
					a.log.Warn("alert raised after consolidation", "rule", al.Alert.Rule, "identity", al.Alert.IdentityID,
						"count", al.Alert.Count, "window", durfmt.Window(al.Alert.Window), "alert", al.Alert.ID)
				}
			}
		}
	}
	if raised > 0 {
		a.log.Info("consolidation raised alerts", "alerts", raised)
	}
}

func consolidationCommit(changes []identity.Change, eng *identity.Engine, model string) record.Commit {
	var c record.Commit
	upsert := map[string]bool{}
	gone := map[string]bool{}
	for _, ch := range changes {
		for _, vid := range ch.VisitIDs {
			c.Relabels = append(c.Relabels, record.Relabel{VisitID: vid, IdentityID: ch.To})
		}
		for _, id := range []string{ch.From, ch.To} {
			if id == "" {
				continue
			}
			if _, ok := eng.Identity(id); ok {
				upsert[id] = true
			} else {
				gone[id] = true
			}
		}
	}
	for _, id := range sortedKeys(upsert) {
		v, _ := eng.Identity(id)
		c.Identities = append(c.Identities, storeIdentity(v, model))
	}
	c.DeleteIdentities = sortedKeys(gone)
	return c
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// purge applies the retention window to the store and the engine.
func (a *Agent) purge(ctx context.Context) {
	n, err := a.d.Store.PurgeExpired(ctx)
	if err != nil {
		if ctx.Err() == nil {
			a.log.Error("retention purge", "visits", n, "err", err)
		}
		if n == 0 {
			return
		}
		// The visits are deleted (the file's compaction failed): the
		// engine forgets them too.
	}
	gone := a.d.Identities.Forget(a.clk.Now().Add(-a.d.Store.Retention()))
	if n > 0 {
		// The store dropped the deleted visits from the constraints.
		if err := a.loadConstraints(ctx); err != nil {
			a.log.Error("retention purge", "err", err)
		}
	}
	a.count(func(s *Stats) { s.Purged += uint64(n) })
	a.obs.Purged(n)
	// Alerts older than the window go even when no visit does.
	a.afterDelete(ctx, "retention purge", n)
	if n > 0 || len(gone) > 0 {
		a.log.Info("retention purge", "visits", n, "identities_forgotten", len(gone))
	}
}

// afterDelete follows a deletion from the store (an erasure, retention):
// Deps.Deleted is told, and when visits went a summary without them is
// queued at once, so the summary the broker retains stops listing an
// erased identity (its id and counts) now, not at the next periodic one.
func (a *Agent) afterDelete(ctx context.Context, op string, visits int) {
	if a.d.Deleted != nil {
		a.d.Deleted()
	}
	if visits == 0 {
		return
	}
	if err := a.publishSummary(ctx); err != nil {
		a.log.Error(op+": summary", "err", err)
	}
}

// Summary windows.
var summaryWindows = [3]time.Duration{time.Hour, 24 * time.Hour, 7 * 24 * time.Hour}

func add(w *wire.WindowCounts, age time.Duration) {
	if age < summaryWindows[0] {
		w.H1++
	}
	if age < summaryWindows[1] {
		w.H24++
	}
	if age < summaryWindows[2] {
		w.D7++
	}
}

// BuildSummary computes the summary payload at now from the visits of the
// last 7 days: counts per identity per window, faceless visits and totals.
// Visits with outcome camera_error count for nothing (not in totals.visits).
// It carries counts only: no embeddings, images or card data.
func BuildSummary(env wire.Envelope, now time.Time, vs []visit.Visit, maxIdentities int) wire.Summary {
	env.SchemaVersion = wire.SummarySchemaVersion
	s := wire.Summary{Envelope: env, Identities: []wire.IdentityCounts{}}
	type acc struct {
		c     wire.IdentityCounts
		cards [3]map[string]bool
	}
	per := map[string]*acc{}
	seen := [3]map[string]bool{{}, {}, {}}
	for _, v := range vs {
		age := now.Sub(v.Time)
		if age < 0 || age >= summaryWindows[2] {
			continue
		}
		if v.Outcome == visit.CameraError {
			// The camera gave no frames: nobody was seen, so it is no
			// customer visit (docs/agent.md, "What counts for what").
			continue
		}
		if v.Outcome == visit.NoFace || v.Outcome == visit.LowQuality {
			add(&s.Faceless, age)
		}
		add(&s.Totals.Visits, age)
		if v.Mask == visit.Masked {
			add(&s.Totals.Masked, age)
		}
		if v.IdentityID == "" {
			continue
		}
		x := per[v.IdentityID]
		if x == nil {
			x = &acc{c: wire.IdentityCounts{ID: v.IdentityID, FirstSeen: v.Time.UTC()}}
			per[v.IdentityID] = x
		}
		add(&x.c.Visits, age)
		if v.Mask == visit.Masked {
			add(&x.c.Masked, age)
		}
		if v.Time.Before(x.c.FirstSeen) {
			x.c.FirstSeen = v.Time.UTC()
		}
		if v.Time.After(x.c.LastSeen) {
			x.c.LastSeen = v.Time.UTC()
		}
		for i, w := range summaryWindows {
			if age >= w {
				continue
			}
			if !seen[i][v.IdentityID] {
				seen[i][v.IdentityID] = true
				switch i {
				case 0:
					s.Totals.Identities.H1++
				case 1:
					s.Totals.Identities.H24++
				case 2:
					s.Totals.Identities.D7++
				}
			}
			for _, h := range v.Context.Cards() {
				if x.cards[i] == nil {
					x.cards[i] = map[string]bool{}
				}
				x.cards[i][h] = true
			}
		}
	}
	for _, x := range per {
		x.c.DistinctCards = wire.WindowCounts{H1: len(x.cards[0]), H24: len(x.cards[1]), D7: len(x.cards[2])}
		s.Identities = append(s.Identities, x.c)
	}
	// Most active first: 24 h, then 7 d, then the most recent.
	sort.Slice(s.Identities, func(i, j int) bool {
		a, b := s.Identities[i], s.Identities[j]
		switch {
		case a.Visits.H24 != b.Visits.H24:
			return a.Visits.H24 > b.Visits.H24
		case a.Visits.D7 != b.Visits.D7:
			return a.Visits.D7 > b.Visits.D7
		case !a.LastSeen.Equal(b.LastSeen):
			return a.LastSeen.After(b.LastSeen)
		}
		return strings.Compare(a.ID, b.ID) < 0
	})
	if len(s.Identities) > maxIdentities {
		s.IdentitiesOmitted = len(s.Identities) - maxIdentities
		s.Identities = s.Identities[:maxIdentities]
	}
	return s
}

// publishSummary enqueues a summary message. Summaries share a Coalesce key,
// so an unsent one is dropped first when the outbox is full.
func (a *Agent) publishSummary(ctx context.Context) error {
	now := a.clk.Now()
	vs, err := a.d.Store.VisitsSince(ctx, "", now.Add(-summaryWindows[2]))
	if err != nil {
		return fmt.Errorf("summary: %w", err)
	}
	s := BuildSummary(wire.NewEnvelope(a.d.Site, a.d.Device, now), now, vs, a.cfg.SummaryMaxIdentities)
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("summary: encode: %w", err)
	}
	msg := visit.OutboxMessage{Kind: KindSummary, Topic: TopicSummary, Created: now, Payload: b, Coalesce: CoalesceSummary}
	if _, err := a.d.Store.CommitVisit(ctx, record.Commit{Outbox: []visit.OutboxMessage{msg}}); err != nil {
		a.commitResult("summary", err)
		return fmt.Errorf("summary: %w", err)
	}
	a.commitResult("summary", nil)
	a.count(func(s *Stats) { s.Summaries++ })
	return nil
}

// HandleCommand serves the MQTT commands other than ping (it satisfies
// mqttsync.CommandHandler).
func (a *Agent) HandleCommand(ctx context.Context, cmd wire.Command) (any, error) {
	switch cmd.Command {
	case wire.CmdPublishSummary:
		return map[string]any{"queued": true}, a.PublishSummary(ctx)
	case wire.CmdPurgeIdentity:
		n, err := a.PurgeIdentity(ctx, cmd.Args.ID)
		if err != nil {
			return nil, err
		}
		return map[string]any{"identity": cmd.Args.ID, "visits_removed": n}, nil
	case wire.CmdIdentityVisits:
		return result(a.IdentityVisits(ctx, cmd.Args.ID))
	case wire.CmdSplitVisits:
		return result(a.SplitVisits(ctx, cmd.Args.ID, cmd.Args.Visits))
	case wire.CmdMergeIdentities:
		return result(a.MergeIdentities(ctx, cmd.Args.ID, cmd.Args.Into))
	}
	return nil, wire.WithCode(wire.CodeUnsupported, fmt.Errorf("unsupported command %q", cmd.Command))
}

// result is a command's result, or none with its error.
func result[T any](v T, err error) (any, error) {
	if err != nil {
		return nil, err
	}
	return v, nil
}
