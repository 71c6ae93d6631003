package web

import (
	"time"

	"github.com/periocular/atm-agent/sync/fleet/storage"
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

// stale: d's last status says online, but nothing has come from it for
// longer than web.stale_after. A stale device is shown stale, is sent no
// command (errStale) and may be removed.
func (s *Server) stale(d storage.Device) bool {
	return d.Stale(s.now(), s.cfg.StaleAfter)
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
	a.Stale, a.LastHeard = s.stale(d), d.LastHeard()
	return a
}
