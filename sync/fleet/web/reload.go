package web

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/ingest"
	"github.com/periocular/atm-agent/sync/fleet/secretfile"
)

// allUsers is the users in force: those read at start, or by the last
// reload that succeeded.
func (s *Server) allUsers() Users { return *s.users.Load() }

// ReloadUsers reads the users file (Config.UsersFile) again, with the
// checks of a start (LoadUsers: owner, mode, strict YAML, roles, sites,
// at least one user; for systemd's copy of the file, also its source's
// owner and mode, which the unit's root check applies at start), and, if
// it passes, puts its users in force for every later request at once: a
// removed user's sessions end (401, or the sign-in page), a changed role
// or sites apply to the user's next request, and open live streams check
// their session and scope again (usersChanged). Requests already running
// finish as they began. The store records the users (withGenerations): a
// user removed, then added again, gets a new generation, which ends their
// sessions for good. If it fails, the users in force stay and the
// error says why (the file, and the line where there is one); /healthz
// counts it (reloadStats).
func (s *Server) ReloadUsers() error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	path := s.cfg.UsersFile
	err := secretfile.CheckSource(path, "users file", 0o022)
	var users Users
	if err == nil {
		users, err = LoadUsers(path)
	}
	if err == nil {
		users, err = s.withGenerations(users)
	}
	s.reload.record(s.now(), err)
	if err != nil {
		s.log.Error("fleet web: users file not reloaded: the users read before stay in force", "file", secretfile.Named(path), "err", err)
		return err
	}
	old := s.allUsers()
	s.users.Store(&users)
	changed := make(chan struct{})
	close(*s.usersChanged.Swap(&changed))
	added, removed, modified := usersDiff(old, users)
	s.log.Info("fleet web: users file reloaded", "file", secretfile.Named(path), "users", len(users),
		"added", added, "removed", removed, "changed", modified)
	return nil
}

// storeTimeout bounds the store's recording of the users at a start or
// a reload (SyncUsers).
const storeTimeout = 30 * time.Second

// withGenerations records users in the store (SyncUsers: a user it did
// not have, or had removed, gets a new generation; a user gone from users
// is forgotten) and returns them with their generations.
func (s *Server) withGenerations(users Users) (Users, error) {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	gens, err := s.store.SyncUsers(ctx, slices.Collect(maps.Keys(users)))
	if err != nil {
		return nil, fmt.Errorf("users file: record the users in the store: %w", err)
	}
	out := make(Users, len(users))
	for name, u := range users {
		if u.gen = gens[name]; u.gen == "" {
			return nil, fmt.Errorf("users file: record the users in the store: no generation for %q", name)
		}
		out[name] = u
	}
	return out, nil
}

// usersDiff names the users added, removed and changed (role, sites or
// password) from old to users, for the log.
func usersDiff(old, users Users) (added, removed, changed []string) {
	for _, name := range slices.Sorted(maps.Keys(users)) {
		o, ok := old[name]
		u := users[name]
		switch {
		case !ok:
			added = append(added, name)
		case o.Role != u.Role || o.PasswordHash != u.PasswordHash || o.Sites.String() != u.Sites.String():
			changed = append(changed, name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(old)) {
		if _, ok := users[name]; !ok {
			removed = append(removed, name)
		}
	}
	return added, removed, changed
}

// reloadStats counts the reloads of the users file for /healthz.
type reloadStats struct {
	mu       sync.Mutex
	ok, fail uint64
	last     time.Time
	lastErr  string
}

func (r *reloadStats) record(at time.Time, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last, r.lastErr = at, ""
	if err != nil {
		r.fail++
		r.lastErr = err.Error()
		return
	}
	r.ok++
}

// UsersHealth is /healthz's "users": the reloads of the users file since
// start (SIGHUP, systemctl reload). LastReloadOK is false while the last
// reload was refused (the users read before are in force);
// LastReloadError's text is for a signed-in admin only, as ingest's
// last_error.
type UsersHealth struct {
	Users          int        `json:"users"`
	Reloads        uint64     `json:"reloads"`
	ReloadFailures uint64     `json:"reload_failures"`
	LastReloadAt   *time.Time `json:"last_reload_at,omitempty"`
	LastReloadOK   *bool      `json:"last_reload_ok,omitempty"`
	LastReload     string     `json:"last_reload_error,omitempty"`
}

// usersHealth is the users' part of /healthz; the error's text only when
// visible.
func (s *Server) usersHealth(visible bool) UsersHealth {
	r := &s.reload
	r.mu.Lock()
	defer r.mu.Unlock()
	h := UsersHealth{Users: len(s.allUsers()), Reloads: r.ok, ReloadFailures: r.fail}
	if !r.last.IsZero() {
		at, ok := r.last.UTC(), r.lastErr == ""
		h.LastReloadAt, h.LastReloadOK = &at, &ok
		h.LastReload = r.lastErr
		if !ok && !visible {
			h.LastReload = ingest.HiddenError
		}
	}
	return h
}
