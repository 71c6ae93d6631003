package web

import (
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/storage/boltstore"
)

// A removed user's sessions end for good: the file restored (vic again,
// with the same password hash) does not bring back vic's old cookie, at a
// reload or at a restart on the same store; a user kept all along keeps
// their session across the restarts.
func TestRemovedUserStaysSignedOut(t *testing.T) {
	full := reloadUsers(t, "correct horse", "ana analyst", "vic viewer")
	without := reloadUsers(t, "correct horse", "ana analyst")
	dir := t.TempDir()
	file := filepath.Join(dir, "users.yaml")
	// start is a start of the service on the store file: the users file
	// read, the store opened; stop closes both.
	start := func() (*Server, *httptest.Server, func()) {
		t.Helper()
		st, err := boltstore.Open(filepath.Join(dir, "fleet.db"), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		s, hs, stop := serveUsersFile(t, st, file)
		return s, hs, func() { stop(); st.Close() }
	}
	session := func(c *client, hs *httptest.Server) int {
		t.Helper()
		c.base = hs.URL
		code, _ := c.send("GET", "/api/v1/session", "", "")
		return code
	}

	writeMode(t, file, full, 0o600)
	s, hs, stop := start()
	vic, ana := newClient(t, hs.URL), newClient(t, hs.URL)
	vic.login("vic", "correct horse")
	ana.login("ana", "correct horse")
	// A reload removes vic, another restores the file.
	for _, body := range []string{without, full} {
		writeMode(t, file, body, 0o600)
		if err := s.ReloadUsers(); err != nil {
			t.Fatal(err)
		}
		if code := session(vic, hs); code != 401 {
			t.Errorf("vic's old session after the reload of %d users: %d, want 401", strings.Count(body, "name:"), code)
		}
	}
	if code := session(ana, hs); code != 200 {
		t.Errorf("ana's session after the reloads: %d", code)
	}
	vic.login("vic", "correct horse") // vic, back, signs in again
	stop()

	// The service stopped, vic removed, a start; stopped again, the file
	// restored, a start: vic's cookie of before stays refused.
	writeMode(t, file, without, 0o600)
	_, hs, stop = start()
	if code := session(vic, hs); code != 401 {
		t.Errorf("vic's session at a start without vic: %d, want 401", code)
	}
	stop()
	writeMode(t, file, full, 0o600)
	_, hs, stop = start()
	defer stop()
	if code := session(vic, hs); code != 401 {
		t.Errorf("vic's session of before the removal, after a restart with the file restored: %d, want 401", code)
	}
	if code := session(ana, hs); code != 200 {
		t.Errorf("ana's session after the restarts: %d, want 200 (kept users keep their sessions)", code)
	}
	fresh := newClient(t, hs.URL)
	fresh.login("vic", "correct horse")
	if code := session(fresh, hs); code != 200 {
		t.Errorf("vic's new session: %d", code)
	}
}
