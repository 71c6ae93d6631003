package web

import (
	"time"

	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/wire"
)

// DefaultStaleAfter is web.stale_after's default: an agent publishes its
// status at least every mqtt.status_interval (1 min by default,
// docs/mqtt.md), so five minutes without any message is five statuses
// missed. An agent whose statuses stop without its Last Will reaching the
// broker (its publisher stuck while the connection lives on, a broker that
// lost the will) would otherwise show "online" for ever.
const DefaultStaleAfter = 5 * time.Minute

// StaleState is the state the pages show for a stale device.
const StaleState = "stale"

// lastHeard is when the fleet last received anything from d: a status, a
// summary or an alert.
func lastHeard(d storage.Device) time.Time {
	if d.LastReceived.After(d.StatusReceived) {
		return d.LastReceived
	}
	return d.StatusReceived
}

// stale: d's last status says online, but nothing has come from it for
// longer than web.stale_after.
func (s *Server) stale(d storage.Device) bool {
	return d.State() == string(wire.StateOnline) && s.now().Sub(lastHeard(d)) > s.cfg.StaleAfter
}

// shownState is d's state as the pages show it: its last status's, or
// "stale" in place of an online no longer heard from.
func (s *Server) shownState(d storage.Device) string {
	if s.stale(d) {
		return StaleState
	}
	return d.State()
}

// apiDeviceOf is d in the JSON API: toAPI, with stale and last_heard
// (state stays the last status's, as before stale existed).
func (s *Server) apiDeviceOf(d storage.Device) apiDevice {
	a := toAPI(d)
	a.Stale, a.LastHeard = s.stale(d), lastHeard(d)
	return a
}
