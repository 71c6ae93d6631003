package mqttsync

import "github.com/periocular/atm-agent/sync/wire"

// RestoreLastAlert sets what the retained state says of the last alert
// (last_alert) until the publisher sends one: the daemon passes, before
// Run, the last alert its store holds, with its message's seq, so a
// restart does not blank the state's last_alert (Home Assistant's Last
// alert sensor) as it did. An alert sent since the restore replaces it.
func (p *Publisher) RestoreLastAlert(a wire.Alert) {
	p.statusMu.Lock()
	defer p.statusMu.Unlock()
	if p.lastAlert == nil {
		p.lastAlert = &wire.StateAlert{AlertID: a.AlertID, Rule: a.Rule, Kind: a.Kind, IdentityID: a.IdentityID, VisitID: a.VisitID,
			TxnID: a.TxnID, Window: a.Window, Count: a.Count, Threshold: a.Threshold, Raised: a.Raised, Seq: a.Seq}
	}
}
