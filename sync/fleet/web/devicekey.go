package web

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/periocular/atm-agent/sync/fleet/ingest"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/wire"
)

// deviceKeyPath is the device of a device-key request's path: a name the
// topics cannot carry (nor a store hold) is 400. (Only admins, never
// scoped to sites, pin keys.)
func (s *Server) deviceKeyPath(w http.ResponseWriter, r *http.Request) (site, device string, ok bool) {
	site, device = r.PathValue("site"), r.PathValue("device")
	for _, n := range [][2]string{{"site", site}, {"device", device}} {
		if err := wire.ValidateLevel(n[0], n[1]); err != nil {
			s.fail(w, r, coded(CodeBadRequest, "%w", err))
			return "", "", false
		}
	}
	return site, device, true
}

// putDeviceKey pins the Ed25519 public key that signs a device's command
// replies (admin): `atm-fleet devices key set` through the running
// service, whose embedded store the command cannot open meanwhile. The
// pin records the administrator's login and the time, as the command
// records its user's; it applies from the device's next reply.
func (s *Server) putDeviceKey(w http.ResponseWriter, r *http.Request) {
	site, device, ok := s.deviceKeyPath(w, r)
	if !ok {
		return
	}
	var in struct {
		PublicKey string `json:"public_key"`
	}
	if err := decodeBody(r, &in); err != nil {
		s.fail(w, r, err)
		return
	}
	pub, err := wire.ParsePublicKey([]byte(in.PublicKey))
	if err != nil {
		s.fail(w, r, coded(CodeBadRequest, "public_key: %w (want the key as atm-agent device-key show prints it, or its PEM)", err))
		return
	}
	p := who(r)
	k := storage.DeviceKey{Site: site, Device: device, PublicKey: pub, Pinned: s.now().UTC(), By: p.User.Name}
	if err := s.store.PutDeviceKey(r.Context(), k, storage.KeyChange{User: p.User.Name, Role: p.User.Role, Remote: r.RemoteAddr, At: k.Pinned}); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("fleet web: device key pinned", "site", site, "device", device, "fingerprint", wire.Fingerprint(pub), "user", k.By, "remote", r.RemoteAddr)
	out := struct {
		onDevice
		apiReplyKey
		Warning string `json:"warning,omitempty"`
		// Recovered: the device's held rejects applied now that they
		// verify (ingest.Recover); absent when the server recovers none.
		Recovered *ingest.Recovered `json:"recovered,omitempty"`
	}{onDevice{site, device}, apiReplyKey{Fingerprint: wire.Fingerprint(pub), PublicKey: wire.EncodePublicKey(pub), Pinned: k.Pinned, By: k.By}, "", nil}
	if s.d.Recover != nil {
		rec, err := s.d.Recover(r.Context(), site, device, pub)
		if err != nil {
			s.fail(w, r, fmt.Errorf("the key is pinned, but its refused messages were not recovered (pin it again to retry): %w", err))
			return
		}
		out.Recovered = &rec
		s.log.Info("fleet web: refused messages recovered", "site", site, "device", device, "applied", rec.Applied, "new", rec.New, "unverified", rec.Unverified)
	}
	if _, err := s.device(r, site, device); errors.Is(err, storage.ErrNotFound) {
		out.Warning = storage.UnheardPinWarning(site, device)
	} else if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, out)
}

// deleteDeviceKey unpins a device's key (admin): `atm-fleet devices key
// remove` through the running service. Its replies are taken
// unauthenticated again (refused with commands.require_signed_replies).
func (s *Server) deleteDeviceKey(w http.ResponseWriter, r *http.Request) {
	site, device, ok := s.deviceKeyPath(w, r)
	if !ok {
		return
	}
	p := who(r)
	if err := s.store.RemoveDeviceKey(r.Context(), site, device, storage.KeyChange{User: p.User.Name, Role: p.User.Role, Remote: r.RemoteAddr, At: s.now().UTC()}); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("fleet web: device key unpinned", "site", site, "device", device, "user", p.User.Name, "remote", r.RemoteAddr)
	writeJSON(w, map[string]string{"unpinned": site + "/" + device})
}

// refusal is why d's messages are refused for their signature (nil when
// none are since the last one taken): read from the held rejects only when
// d has any.
func (s *Server) refusal(r *http.Request, d storage.Device) (*ingest.Refusal, error) {
	if d.Rejected == 0 {
		return nil, nil
	}
	held, err := s.store.Rejects(r.Context(), storage.MaxHeldRejects)
	if err != nil {
		return nil, err
	}
	return ingest.Refusals(d, held), nil
}
