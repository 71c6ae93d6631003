package mqttsync

import (
	"context"

	"github.com/periocular/atm-agent/sync/wire"
)

// AlertChecker is an optional Outbox capability: whether the store still
// holds an alert (store.Store.AlertExists). With it, the state's
// last_alert names only an alert the store holds, as after a restart
// (RestoreLastAlert): one erased (purge_identity) or expired (retention)
// is taken out of the retained state while the agent runs (AlertsDeleted),
// and one whose message is delivered after its erasure is not put in.
type AlertChecker interface {
	AlertExists(ctx context.Context, id string) (bool, error)
}

// RestoreLastAlert sets what the retained state says of the last alert
// (last_alert) until the publisher sends one: the daemon passes, before
// Run, the last alert its store holds, with its message's seq, so a
// restart does not blank the state's last_alert (Home Assistant's Last
// alert sensor) as it did. An alert sent since the restore replaces it.
func (p *Publisher) RestoreLastAlert(a wire.Alert) {
	p.statusMu.Lock()
	defer p.statusMu.Unlock()
	if p.lastAlert == nil {
		p.lastAlert = stateAlert(a)
	}
}

// AlertsDeleted is called after the store deleted alerts (an erasure,
// retention): when the state's last_alert is one of them, it is dropped
// and the retained state republished at once, so the broker's copy (and
// Home Assistant's Last alert sensor) no longer names the identity, its
// visit or the bank's txn_id. The state then has no last_alert until the
// next alert is sent, as a restart on that store gives. It never blocks
// on the broker.
func (p *Publisher) AlertsDeleted() {
	p.statusMu.Lock()
	drop := p.lastAlert != nil && !p.alertStored(p.lastAlert.AlertID)
	if drop {
		p.lastAlert, p.stateDirty = nil, true
	}
	p.statusMu.Unlock()
	if drop {
		p.Notify()
	}
}

// setLastAlert makes a, whose message the broker acknowledged, the
// state's last_alert, unless the store deleted it meanwhile.
func (p *Publisher) setLastAlert(a wire.Alert) {
	p.statusMu.Lock()
	defer p.statusMu.Unlock()
	if p.alertStored(a.AlertID) {
		p.lastAlert, p.stateDirty = stateAlert(a), true
	}
}

// alertStored says whether the store holds alert id: true without
// AlertChecker; false when the store cannot say (logged), since the
// state must not go on naming an alert that may be erased. Called under
// statusMu, so an erasure's AlertsDeleted and an acknowledgement cannot
// interleave between the check and the change.
func (p *Publisher) alertStored(id string) bool {
	k, ok := p.d.Outbox.(AlertChecker)
	if !ok {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.PublishTimeout)
	defer cancel()
	stored, err := k.AlertExists(ctx, id)
	if err != nil {
		p.log.Warn("mqtt: whether the last alert is still stored could not be read; the state names none", "err", err)
		return false
	}
	return stored
}

// stateAlert is what the state keeps of an alert.
func stateAlert(a wire.Alert) *wire.StateAlert {
	return &wire.StateAlert{AlertID: a.AlertID, Rule: a.Rule, Kind: a.Kind, IdentityID: a.IdentityID, VisitID: a.VisitID,
		TxnID: a.TxnID, Window: a.Window, Count: a.Count, Threshold: a.Threshold, Raised: a.Raised, Seq: a.Seq}
}
