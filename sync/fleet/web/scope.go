package web

import (
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/periocular/atm-agent/sync/fleet/storage"
)

// A user scoped to sites (User.Sites) sees and acts on only those: every
// handler reads devices, alerts and series, and acts on alerts, through
// these helpers (TestStoreReadsGoThroughTheScope). What lies
// outside the scope is answered exactly as what does not exist (404, the
// store's own message), so a scoped user cannot tell another site's
// devices or alerts from absent ones.

// storable reports whether every name is text a store can hold: valid
// UTF-8 without a NUL byte (all ingest accepts is). Any other names
// nothing, and is answered so (404, an empty listing) without asking the
// store: PostgreSQL refuses such text in a query, which was a 500.
func storable(names ...string) bool {
	for _, n := range names {
		if !utf8.ValidString(n) || strings.ContainsRune(n, 0) {
			return false
		}
	}
	return true
}

// scopeOf is the signed-in user's sites (nil: every site).
func scopeOf(r *http.Request) *storage.Sites { return who(r).User.Sites }

// device is a device of the user's sites.
func (s *Server) device(r *http.Request, site, device string) (storage.Device, error) {
	if !scopeOf(r).Allows(site) || !storable(site, device) {
		return storage.Device{}, storage.DeviceNotFound(site, device)
	}
	return s.store.Device(r.Context(), site, device)
}

// devices lists the devices of the user's sites.
func (s *Server) devices(r *http.Request) ([]storage.Device, error) {
	devs, err := s.store.Devices(r.Context())
	if err != nil {
		return nil, err
	}
	scope := scopeOf(r)
	if scope == nil {
		return devs, nil
	}
	out := devs[:0]
	for _, d := range devs {
		if scope.Allows(d.Site) {
			out = append(out, d)
		}
	}
	return out, nil
}

// alerts lists alerts of the user's sites: the store filters them in its
// query, so pages stay full and offsets and cursors count only those.
func (s *Server) alerts(r *http.Request, f storage.AlertFilter) ([]storage.Alert, error) {
	if !storable(f.Site, f.Device, f.Rule, f.IdentityID, string(f.State)) {
		return nil, nil
	}
	f.Sites = scopeOf(r)
	return s.store.Alerts(r.Context(), f)
}

// alertInScope refuses an alert of a site outside the user's scope as the
// store refuses an unknown one.
func alertInScope(r *http.Request, k storage.AlertKey) error {
	if !scopeOf(r).Allows(k.Site) || !storable(k.Site, k.Device, k.AlertID) {
		return storage.AlertNotFound(k)
	}
	return nil
}

// alert is an alert of the user's sites.
func (s *Server) alert(r *http.Request, k storage.AlertKey) (storage.Alert, error) {
	if err := alertInScope(r, k); err != nil {
		return storage.Alert{}, err
	}
	return s.store.Alert(r.Context(), k)
}

// actOn acknowledges or resolves an alert of the user's sites.
func (s *Server) actOn(r *http.Request, a storage.Action) (storage.Alert, error) {
	if err := alertInScope(r, a.Key); err != nil {
		return storage.Alert{}, err
	}
	return s.store.Act(r.Context(), a)
}

// summaries is the summary series of a device of the user's sites.
func (s *Server) summaries(r *http.Request, site, device string, since time.Time) ([]storage.SummaryPoint, error) {
	if !scopeOf(r).Allows(site) || !storable(site, device) {
		return nil, storage.DeviceNotFound(site, device)
	}
	return s.store.Summaries(r.Context(), site, device, since)
}

// identityPoints is an identity's series on a device of the user's sites.
func (s *Server) identityPoints(r *http.Request, site, device, id string, since time.Time) ([]storage.IdentityPoint, error) {
	if !scopeOf(r).Allows(site) || !storable(site, device, id) {
		return nil, storage.DeviceNotFound(site, device)
	}
	return s.store.IdentityPoints(r.Context(), site, device, id, since)
}
