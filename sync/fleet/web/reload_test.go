package web

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/periocular/atm-agent/sync/fleet/ingest"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/fleet/storage/storetest"
)

// reloadHashes: one hash per password, so that a user whose password
// stays keeps the same hash from file to file (a new hash ends sessions).
var reloadHashes = map[string][]byte{}

// reloadUsers is a users file: each line "name role [sites]", every
// password "correct horse" but root's, which is rootPW.
func reloadUsers(t *testing.T, rootPW string, lines ...string) string {
	t.Helper()
	hash := func(pw string) []byte {
		if reloadHashes[pw] == nil {
			reloadHashes[pw], _ = bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
		}
		return reloadHashes[pw]
	}
	h, hr := hash("correct horse"), hash(rootPW)
	var b strings.Builder
	b.WriteString("users:\n")
	fmt.Fprintf(&b, "  - {name: root, role: admin, password_hash: %q}\n", hr)
	for _, l := range lines {
		f := strings.Fields(l)
		fmt.Fprintf(&b, "  - {name: %s, role: %s, password_hash: %q", f[0], f[1], h)
		if len(f) > 2 {
			fmt.Fprintf(&b, ", sites: [%s]", f[2])
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// serveUsersFile serves st with the users of file (its reloads read it
// again); stop (also run when the test ends) stops the server.
func serveUsersFile(t *testing.T, st storage.Store, file string) (*Server, *httptest.Server, func()) {
	t.Helper()
	users, err := LoadUsers(file)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.UsersFile = file
	s, err := New(cfg, st, users, []byte(strings.Repeat("k", 32)), Deps{IngestStats: func() any { return ingest.Stats{} }})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	var once sync.Once
	stop := func() { once.Do(func() { s.once.Do(func() { close(s.sseStop) }); hs.Close() }) }
	t.Cleanup(stop)
	return s, hs, stop
}

// programSignIn signs c in as a program does (JSON): the status code.
func programSignIn(c *client, user, pw string) int {
	c.t.Helper()
	_, page := c.json("GET", "/login", "", "")
	tok, _ := page["csrf"].(string)
	r, _ := c.json("POST", "/login", "application/x-www-form-urlencoded", url.Values{"csrf": {tok}, "user": {user}, "password": {pw}}.Encode())
	return r.StatusCode
}

// liveStream opens /events as c: its data lines, closed when the stream
// ends.
func liveStream(c *client) <-chan string {
	c.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c.t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/events", nil)
	hc := *c.Client
	hc.Timeout = 0
	resp, err := hc.Do(req)
	if err != nil || resp.StatusCode != 200 {
		c.t.Fatalf("events: %v %v", resp, err)
	}
	lines := make(chan string, 100)
	go func() {
		defer resp.Body.Close()
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if l := sc.Text(); strings.HasPrefix(l, "data: ") {
				lines <- l
			}
		}
	}()
	return lines
}

// nextEvent is the stream's next data line ("" when it ended, "timeout"
// after d).
func nextEvent(lines <-chan string, d time.Duration) string {
	select {
	case l, ok := <-lines:
		if !ok {
			return ""
		}
		return l
	case <-time.After(d):
		return "timeout"
	}
}

// Reloading the users file (SIGHUP, systemctl reload: Server.ReloadUsers)
// applies it to the next request of every session, and to open live
// streams at once; a file a start would refuse leaves the users in force
// and /healthz says so.
func TestReloadUsers(t *testing.T) {
	st := openBolt(t)
	seedScoped(t, st) // a-1 in lyon-07, a-9 in paris-01
	file := filepath.Join(t.TempDir(), "users.yaml")
	writeMode(t, file, reloadUsers(t, "correct horse", "ana analyst", "lou analyst lyon-07,paris-01", "vic viewer"), 0o600)
	s, hs, _ := serveUsersFile(t, st, file)
	s.ssePing = time.Hour // a stream may learn of a reload only from the reload

	ana, lou, vic, root := newClient(t, hs.URL), newClient(t, hs.URL), newClient(t, hs.URL), newClient(t, hs.URL)
	anaCSRF, louCSRF := ana.login("ana", "correct horse"), lou.login("lou", "correct horse")
	if code := programSignIn(vic, "vic", "correct horse"); code != 200 {
		t.Fatalf("vic's sign-in as a program: %d", code)
	}
	root.login("root", "correct horse")
	if code, _ := lou.send("GET", "/api/v1/devices/lyon-07/atm-1", "", ""); code != 200 {
		t.Fatalf("lou on lyon-07 before the reload: %d", code)
	}
	louLive, vicLive := liveStream(lou), liveStream(vic)

	// lou narrowed to paris-01, ana demoted, vic removed, a new password
	// for root.
	writeMode(t, file, reloadUsers(t, "a new password", "ana viewer", "lou analyst paris-01"), 0o600)
	start := time.Now()
	if err := s.ReloadUsers(); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if l := nextEvent(vicLive, 5*time.Second); l != "" {
		t.Errorf("the removed user's live stream goes on: %q", l)
	}
	t.Logf("the removed user's stream ended %v after the reload", time.Since(start).Round(time.Millisecond))
	if l := nextEvent(louLive, 5*time.Second); !strings.Contains(l, `"kind":"resync"`) {
		t.Errorf("lou's stream after her sites changed: %q, want a resync (the page refreshes)", l)
	}
	if code, body := vic.send("GET", "/api/v1/session", "", ""); code != 401 {
		t.Errorf("the removed user's session: %d %s, want 401", code, body)
	}
	if code, _ := vic.send("GET", "/alerts", "", ""); code != http.StatusSeeOther {
		t.Errorf("the removed user's page: %d, want 303 to sign-in", code)
	}
	if code := programSignIn(newClient(t, hs.URL), "vic", "correct horse"); code != 401 {
		t.Errorf("the removed user signs in as a program: %d, want 401", code)
	}
	if code, _ := root.send("GET", "/api/v1/session", "", ""); code != 401 {
		t.Errorf("root's session after a new password: %d, want 401", code)
	}
	if code := programSignIn(root, "root", "a new password"); code != 200 {
		t.Errorf("root with the new password: %d", code)
	}
	act := `{"action":"acknowledge","site":"%s","device":"%s","alert":"%s"}`
	if code, body := ana.send("POST", "/api/v1/alerts/act", fmt.Sprintf(act, "lyon-07", "atm-1", "a-1"), anaCSRF); code != 403 {
		t.Errorf("demoted ana acknowledges: %d %s, want 403", code, body)
	}
	if code, _ := lou.send("GET", "/api/v1/devices/lyon-07/atm-1", "", ""); code != 404 {
		t.Errorf("lou on lyon-07 after her sites narrowed: %d, want 404", code)
	}
	if code, body := lou.send("POST", "/api/v1/alerts/act", fmt.Sprintf(act, "lyon-07", "atm-1", "a-1"), louCSRF); code != 404 {
		t.Errorf("lou acknowledges an alert of lyon-07: %d %s, want 404", code, body)
	}
	st.Apply(context.Background(), []storage.Message{storetest.Alert("lyon-07", "atm-1", 6, time.Now(), "a-2", "p-2", 9)})
	st.Apply(context.Background(), []storage.Message{storetest.Alert("paris-01", "atm-2", 6, time.Now(), "a-3", "p-9", 9)})
	if l := nextEvent(louLive, 5*time.Second); !strings.Contains(l, `"alert":"a-3"`) {
		t.Errorf("lou's stream after the reload: %q, want paris-01's a-3 (not lyon-07's a-2)", l)
	}

	// Refused: what a start refuses. The users in force stay.
	for name, c := range map[string]struct {
		body string
		mode os.FileMode
		want string
	}{
		"unknown key": {strings.Replace(reloadUsers(t, "x", "ana analyst", "vic viewer"), "role: analyst", "role: analyst, pw: x", 1), 0o600,
			"line 3: field pw not found"},
		"no user":         {"users: []\n", 0o600, "users file: no users"},
		"group-writable":  {reloadUsers(t, "x", "ana analyst", "vic viewer"), 0o660, "permissions 0660 are too open"},
		"admin with site": {reloadUsers(t, "x", "ana admin lyon-07"), 0o600, "an admin is not scoped to sites"},
	} {
		writeMode(t, file, c.body, 0o600)
		os.Chmod(file, c.mode)
		err := s.ReloadUsers()
		if err == nil || !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want refused naming %s and %q", name, err, file, c.want)
		}
		if code, _ := vic.send("GET", "/api/v1/session", "", ""); code != 401 {
			t.Errorf("%s: vic back in force: %d", name, code)
		}
		if code, body := ana.send("GET", "/api/v1/session", "", ""); code != 200 || !strings.Contains(body, `"role": "viewer"`) {
			t.Errorf("%s: ana's session: %d %s, want the viewer's still", name, code, body)
		}
	}
	health := func(c *client) (h struct{ Users UsersHealth }) {
		t.Helper()
		_, body := c.send("GET", "/healthz", "", "")
		if err := json.Unmarshal([]byte(body), &h); err != nil {
			t.Fatal(err)
		}
		return h
	}
	h := health(newClient(t, hs.URL))
	if u := h.Users; u.Reloads != 1 || u.ReloadFailures != 4 || u.LastReloadOK == nil || *u.LastReloadOK || u.LastReload != ingest.HiddenError || u.Users != 3 {
		t.Errorf("/healthz to anyone after refused reloads: %+v", u)
	}
	if u := health(root).Users; !strings.Contains(u.LastReload, file) {
		t.Errorf("/healthz to an admin: %+v, want the refusal's text", u)
	}
	writeMode(t, file, reloadUsers(t, "a new password", "ana analyst"), 0o600)
	if err := s.ReloadUsers(); err != nil {
		t.Fatal(err)
	}
	if u := health(root).Users; u.Reloads != 2 || !*u.LastReloadOK || u.LastReload != "" || u.Users != 2 {
		t.Errorf("/healthz after a reload that passed: %+v", u)
	}
	if code, body := ana.send("POST", "/api/v1/alerts/act", fmt.Sprintf(act, "lyon-07", "atm-1", "a-1"), anaCSRF); code != 200 {
		t.Errorf("ana an analyst again acknowledges: %d %s", code, body)
	}
}

// A users file handed over by systemd (LoadCredential=): the copy is made
// again for the reload, and its source in /etc/atm-fleet must pass the
// owner and mode checks the unit's root check applies at start.
func TestReloadUsersChecksTheCredentialSource(t *testing.T) {
	creds, conf := t.TempDir(), t.TempDir()
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	t.Setenv("CONFIGURATION_DIRECTORY", conf)
	body := reloadUsers(t, "correct horse", "ana analyst")
	copyPath, src := filepath.Join(creds, "users.yaml"), filepath.Join(conf, "users.yaml")
	writeMode(t, copyPath, body, 0o400)
	writeMode(t, src, body, 0o600)
	users, err := LoadUsers(copyPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.UsersFile = copyPath
	s, err := New(cfg, openBolt(t), users, []byte(strings.Repeat("k", 32)), Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ReloadUsers(); err != nil {
		t.Fatalf("source root 0600: %v", err)
	}
	os.Chmod(src, 0o666)
	if err := s.ReloadUsers(); err == nil || !strings.Contains(err.Error(), "users file "+src+": permissions 0666 are too open") ||
		!strings.Contains(err.Error(), "chmod 0644 "+src) {
		t.Errorf("source 0666: %v, want refused naming the source and the chmod", err)
	}
	os.Chmod(src, 0o600)
	if os.Geteuid() == 0 {
		os.Chown(src, 65534, 0)
		if err := s.ReloadUsers(); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") || !strings.Contains(err.Error(), "chown root "+src) {
			t.Errorf("source owned by uid 65534: %v, want refused with the chown", err)
		}
		os.Chown(src, 0, 0)
	}
	os.Remove(src)
	if err := s.ReloadUsers(); err == nil || !strings.Contains(err.Error(), src) {
		t.Errorf("no source: %v", err)
	}
}
