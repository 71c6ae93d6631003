package web

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/fleet/ingest"
	"github.com/periocular/atm-agent/sync/fleet/secretfile"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/fleet/storage/boltstore"
	"github.com/periocular/atm-agent/sync/fleet/storage/pgstore"
	"github.com/periocular/atm-agent/sync/fleet/storage/storetest"
)

func writeMode(t *testing.T, path, body string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// A session key or users file others can read or write is refused.
func TestKeyAndUsersFilePermissions(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "session.key")
	for mode, ok := range map[os.FileMode]bool{0o600: true, 0o400: true, 0o640: false, 0o644: false, 0o604: false, 0o620: false} {
		writeMode(t, key, strings.Repeat("k", 48)+"\n", mode)
		_, err := LoadSessionKey(key)
		if ok != (err == nil) {
			t.Errorf("session key %04o: err %v, want ok=%v", mode, err, ok)
		}
		if err != nil && !strings.Contains(err.Error(), "chmod 0") {
			t.Errorf("session key %04o: message without the chmod: %v", mode, err)
		}
	}
	testUsers(t)
	users := filepath.Join(dir, "users.yaml")
	for mode, ok := range map[os.FileMode]bool{0o600: true, 0o640: true, 0o644: true, 0o660: false, 0o602: false, 0o666: false} {
		writeMode(t, users, usersYAML, mode)
		_, err := LoadUsers(users)
		if ok != (err == nil) {
			t.Errorf("users file %04o: err %v, want ok=%v", mode, err, ok)
		}
		if err != nil && !strings.Contains(err.Error(), "chmod 0") {
			t.Errorf("users file %04o: message without the chmod: %v", mode, err)
		}
	}
}

// A session key or users file owned by a user other than the service's
// own or root is refused whatever its mode (its owner could rewrite it, or
// make the key readable), with the chown to run.
func TestKeyAndUsersFileOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown the files to another user")
	}
	const other = 65534 // nobody
	dir := t.TempDir()
	testUsers(t)
	files := []struct {
		name string
		load func(string) error
		body string
	}{
		{"session.key", func(p string) error { _, err := LoadSessionKey(p); return err }, strings.Repeat("k", 48) + "\n"},
		{"users.yaml", func(p string) error { _, err := LoadUsers(p); return err }, usersYAML},
	}
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		writeMode(t, p, f.body, 0o600)
		if err := f.load(p); err != nil {
			t.Fatalf("%s owned by root: %v", f.name, err)
		}
		// The group does not matter (the mode decides what it may do).
		if err := os.Chown(p, 0, other); err != nil {
			t.Fatal(err)
		}
		if err := f.load(p); err != nil {
			t.Errorf("%s owned by root, group %d: %v", f.name, other, err)
		}
		if err := os.Chown(p, other, other); err != nil {
			t.Fatal(err)
		}
		err := f.load(p)
		if err == nil || !strings.Contains(err.Error(), "owned by uid 65534") || !strings.Contains(err.Error(), "chown root "+p) {
			t.Errorf("%s owned by uid %d: %v, want refused with the chown", f.name, other, err)
		} else {
			t.Logf("%s: %v", f.name, err)
		}
	}
	// A service running as uid 65534 (a dynamic user) accepts its own
	// files and root's, and refuses another user's.
	p := filepath.Join(dir, "session.key") // owned by 65534 now
	for owner, ok := range map[int]bool{other: true, 0: true, 1000: false} {
		if err := os.Chown(p, owner, 0); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := secretfile.CheckOwner(fi, other); ok != (err == nil) {
			t.Errorf("service uid %d, file owned by %d: %v, want ok=%v", other, owner, err, ok)
		}
	}
}

func TestSafeNextOpenRedirect(t *testing.T) {
	for in, want := range map[string]string{
		"/alerts": "/alerts", "/devices/a/b?x=1": "/devices/a/b?x=1", "/": "/",
		"//evil.example": "/", "/\\evil.example": "/", "/\t/evil.example": "/", "/\n/evil.example": "/",
		"/\r\\evil.example": "/", "/\x00/evil.example": "/", "/a\\b": "/", "/a\tb": "/", "https://evil.example": "/",
		"": "/", "evil.example": "/", "/\x7f/evil.example": "/", "/\u0085/evil.example": "/", "/\xff/evil": "/",
	} {
		if got := safeNext(in); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", in, got, want)
		}
	}
	_, hs := newTestServer(t, openBolt(t))
	c := newClient(t, hs.URL)
	_, page := c.get("/login")
	m := hiddenRe.FindStringSubmatch(page)
	r, _ := c.post("/login", url.Values{"csrf": {m[1]}, "user": {"ana"}, "password": {"correct horse"}, "next": {"/\t/evil.example"}})
	if loc := r.Header.Get("Location"); r.StatusCode != 303 || loc != "/" {
		t.Errorf("sign-in with next=/<TAB>/evil.example: %d Location %q, want 303 /", r.StatusCode, loc)
	}
}

// Every CSV field is defused, not only the notes and the transaction id.
func TestAlertsCSVFormulaInjection(t *testing.T) {
	st := openBolt(t)
	m := storetest.Alert("=site", "+dev", 1, time.Now().UTC().Add(-time.Minute), "@alert", "p-1", 7)
	m.Alert.Rule, m.Alert.Kind, m.Alert.Window = "=cmd|x", "-kind", "@win"
	if _, err := st.Apply(context.Background(), []storage.Message{m}); err != nil {
		t.Fatal(err)
	}
	_, hs := newTestServer(t, st)
	c := newClient(t, hs.URL)
	c.login("ana", "correct horse")
	r, body := c.get("/alerts.csv")
	if r.StatusCode != 200 {
		t.Fatalf("csv: %d", r.StatusCode)
	}
	recs, err := csv.NewReader(strings.NewReader(body)).ReadAll()
	if err != nil || len(recs) != 2 {
		t.Fatalf("csv: %v, %d records:\n%s", err, len(recs), body)
	}
	for i, f := range recs[1] {
		if f != "" && strings.ContainsRune("=+-@\t\r", rune(f[0])) {
			t.Errorf("column %s = %q: formula not defused", recs[0][i], f)
		}
	}
	if !strings.Contains(body, "'=cmd|x") {
		t.Errorf("rule not in the export:\n%s", body)
	}
}

// A session cookie replayed after sign-out is refused.
func TestLogoutRevokesSession(t *testing.T) {
	_, hs := newTestServer(t, openBolt(t))
	c := newClient(t, hs.URL)
	csrf := c.login("ana", "correct horse")
	old := sessionCookieOf(t, c, hs.URL)
	u, _ := url.Parse(hs.URL)
	if r, _ := c.post("/logout", url.Values{"csrf": {csrf}}); r.StatusCode != 303 {
		t.Fatalf("logout: %d", r.StatusCode)
	}
	replay := newClient(t, hs.URL)
	replay.Jar.SetCookies(u, []*http.Cookie{{Name: sessionCookie, Value: old.Value, Path: "/"}})
	if r, _ := replay.get("/api/v1/session"); r.StatusCode != 401 {
		t.Errorf("replayed cookie after logout: API %d, want 401", r.StatusCode)
	}
	if r, _ := replay.get("/admin/backup"); r.StatusCode != 303 {
		t.Errorf("replayed cookie after logout: page %d, want 303 to sign-in", r.StatusCode)
	}
	// Another session of the same user is not affected.
	c2 := newClient(t, hs.URL)
	c2.login("ana", "correct horse")
	if r, _ := c2.get("/api/v1/session"); r.StatusCode != 200 {
		t.Errorf("new session after logout: %d", r.StatusCode)
	}
}

// A cookie signed out before a restart of the service stays refused after
// it, on both stores: the revocation is in the store, not only in the
// memory of the process that was stopped. A session that was not signed
// out still works after the restart (same session key).
func TestLogoutRevokesAcrossRestart(t *testing.T) {
	t.Run("bolt", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "fleet.db")
		logoutThenRestart(t, func() storage.Store {
			st, err := boltstore.Open(path, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			return st
		})
	})
	t.Run("postgres", func(t *testing.T) {
		pg := fleettest.StartPostgres(t)
		dsn := pg.NewDatabase(t)
		logoutThenRestart(t, func() storage.Store {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			st, err := pgstore.Open(ctx, dsn, nil)
			if err != nil {
				t.Fatal(err)
			}
			return st
		})
	})
}

func logoutThenRestart(t *testing.T, open func() storage.Store) {
	st := open()
	_, hs, stop := startTestServer(t, st)
	out := newClient(t, hs.URL)
	csrf := out.login("ana", "correct horse")
	signedOut := sessionCookieOf(t, out, hs.URL).Value
	stays := newClient(t, hs.URL)
	stays.login("root", "correct horse")
	kept := sessionCookieOf(t, stays, hs.URL).Value
	if r, _ := out.post("/logout", url.Values{"csrf": {csrf}}); r.StatusCode != 303 {
		t.Fatalf("logout: %d", r.StatusCode)
	}

	// Restart: the server stopped, the store closed and opened again.
	stop()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = open()
	t.Cleanup(func() { st.Close() })
	_, hs, _ = startTestServer(t, st)
	with := func(cookie string) *client {
		c := newClient(t, hs.URL)
		u, _ := url.Parse(hs.URL)
		c.Jar.SetCookies(u, []*http.Cookie{{Name: sessionCookie, Value: cookie, Path: "/"}})
		return c
	}
	if r, _ := with(signedOut).get("/api/v1/session"); r.StatusCode != 401 {
		t.Errorf("cookie signed out before the restart: API %d after it, want 401", r.StatusCode)
	}
	if r, _ := with(signedOut).get("/alerts"); r.StatusCode != 303 {
		t.Errorf("cookie signed out before the restart: page %d after it, want 303 to sign-in", r.StatusCode)
	}
	if r, _ := with(kept).get("/api/v1/session"); r.StatusCode != 200 {
		t.Errorf("session not signed out: API %d after the restart, want 200", r.StatusCode)
	}
}

// Parallel wrong passwords lock the name from that address: the right one
// from there is refused (429, no bcrypt) until the delay has passed.
func TestSignInThrottle(t *testing.T) {
	s, hs := newTestServer(t, openBolt(t))
	var mu sync.Mutex
	now := time.Now()
	s.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

	c := newClient(t, hs.URL)
	_, page := c.get("/login")
	tok := hiddenRe.FindStringSubmatch(page)[1]
	try := func(pw string) *http.Response {
		r, _ := c.post("/login", url.Values{"csrf": {tok}, "user": {"ana"}, "password": {pw}, "next": {"/alerts"}})
		return r
	}
	var limited, checked atomic.Int32
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch r := try("wrong"); r.StatusCode {
			case http.StatusTooManyRequests:
				limited.Add(1)
			case http.StatusSeeOther:
				checked.Add(1)
			default:
				t.Errorf("wrong password: %d", r.StatusCode)
			}
		}()
	}
	wg.Wait()
	if checked.Load() > pairFailLimit {
		t.Errorf("%d of 20 parallel wrong passwords were checked, want <= %d", checked.Load(), pairFailLimit)
	}
	r := try("correct horse")
	if r.StatusCode != http.StatusTooManyRequests || r.Header.Get("Retry-After") == "" {
		t.Fatalf("right password while locked: %d (Retry-After %q), want 429", r.StatusCode, r.Header.Get("Retry-After"))
	}
	advance(maxLockout + time.Second)
	if r := try("correct horse"); r.StatusCode != 303 || r.Header.Get("Location") != "/alerts" {
		t.Errorf("right password after the delay: %d %q", r.StatusCode, r.Header.Get("Location"))
	}
}

// Devices named "." or ".." get links that reach their page.
func TestDotDeviceLinks(t *testing.T) {
	st := openBolt(t)
	if _, err := st.Apply(context.Background(), []storage.Message{storetest.Summary(".", "..", 1, time.Now().UTC(), 2, "p-1")}); err != nil {
		t.Fatal(err)
	}
	_, hs := newTestServer(t, st)
	c := newClient(t, hs.URL)
	c.login("ana", "correct horse")
	if _, body := c.get("/"); !strings.Contains(body, `href="/devices/%2E/%2E%2E"`) {
		t.Errorf("fleet page: no %%2E link for device ./..")
	}
	if r, _ := c.get("/devices/%2E/%2E%2E"); r.StatusCode != 200 {
		t.Errorf("device page: %d %s", r.StatusCode, r.Header.Get("Location"))
	}
	if got := pathSeg("a.b"); got != "a.b" {
		t.Errorf("pathSeg(a.b) = %q", got)
	}
}

func TestAPIAlertsBadState(t *testing.T) {
	_, hs := newTestServer(t, openBolt(t))
	c := newClient(t, hs.URL)
	c.login("ana", "correct horse")
	for q, want := range map[string]int{"bogus": 400, "open": 200, "all": 200, "": 200, "active": 200, "resolved": 200} {
		if r, _ := c.get("/api/v1/alerts?state=" + q); r.StatusCode != want {
			t.Errorf("state=%q: %d, want %d", q, r.StatusCode, want)
		}
	}
}

// An open live stream does not outlive its session: signed out elsewhere
// (another tab, another instance sharing the store), the stream ends at the
// next keep-alive, and reconnecting with that cookie is refused (401), so
// the page can tell the analyst to sign in again.
func TestEventsEndWithSession(t *testing.T) {
	cfg := DefaultConfig()
	cfg.UsersFile = "unused"
	s, err := New(cfg, openBolt(t), testUsers(t), []byte(strings.Repeat("k", 32)), Deps{})
	if err != nil {
		t.Fatal(err)
	}
	s.ssePing = 100 * time.Millisecond
	hs := httptest.NewServer(s.Handler())
	defer hs.Close()
	defer s.once.Do(func() { close(s.sseStop) })

	c := newClient(t, hs.URL)
	csrf := c.login("ana", "correct horse")
	cookie := sessionCookieOf(t, c, hs.URL)
	u, _ := url.Parse(hs.URL)
	stream := func() *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, hs.URL+"/events", nil)
		req.AddCookie(&http.Cookie{Name: sessionCookie, Value: cookie.Value})
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := stream()
	defer r.Body.Close()
	if r.StatusCode != 200 {
		t.Fatalf("events: %s", r.Status)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(r.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	// Pings keep coming while the session is valid.
	pings := 0
	for deadline := time.After(5 * time.Second); pings < 3; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("stream ended after %d pings with the session still valid", pings)
			}
			if l == ": ping" {
				pings++
			}
		case <-deadline:
			t.Fatalf("%d pings in 5 s", pings)
		}
	}

	// Sign out with another copy of the cookie (another tab).
	other := newClient(t, hs.URL)
	other.Jar.SetCookies(u, []*http.Cookie{{Name: sessionCookie, Value: cookie.Value, Path: "/"}})
	if r, _ := other.post("/logout", url.Values{"csrf": {csrf}}); r.StatusCode != 303 {
		t.Fatalf("logout: %d", r.StatusCode)
	}
	start := time.Now()
	for deadline := time.After(5 * time.Second); ; {
		select {
		case _, ok := <-lines:
			if ok {
				continue
			}
		case <-deadline:
			t.Fatal("the stream stays open 5 s after its session was signed out")
		}
		break
	}
	t.Logf("stream ended %v after the sign-out", time.Since(start).Round(time.Millisecond))
	r2 := stream()
	r2.Body.Close()
	if r2.StatusCode != 401 {
		t.Errorf("reconnecting with the signed-out cookie: %s, want 401", r2.Status)
	}
}

// sessionCookieOf is the session cookie c holds for the server at base.
func sessionCookieOf(t *testing.T, c *client, base string) *http.Cookie {
	t.Helper()
	u, _ := url.Parse(base)
	for _, k := range c.Jar.Cookies(u) {
		if k.Name == sessionCookie {
			return k
		}
	}
	t.Fatal("no session cookie")
	return nil
}

// DNS rebinding: a page on evil.example whose name is rebound to the
// service's address sends Host: evil.example. Plain HTTP answers only to IP
// addresses, localhost and the configured names.
func TestUnknownHostRefused(t *testing.T) {
	st := openBolt(t)
	seed(t, st)
	cfg := DefaultConfig()
	cfg.UsersFile = "unused"
	cfg.Hosts = []string{"fleet.bank.example"}
	s, err := New(cfg, st, testUsers(t), []byte(strings.Repeat("k", 32)), Deps{IngestStats: func() any { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() { s.once.Do(func() { close(s.sseStop) }); hs.Close() })
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(hs.URL, "http://"))
	for host, want := range map[string]int{
		"evil.example:" + port: http.StatusMisdirectedRequest, "evil.example": http.StatusMisdirectedRequest,
		"fleet.bank.example.evil.example": http.StatusMisdirectedRequest,
		"127.0.0.1:" + port:               http.StatusOK, "[::1]:" + port: http.StatusOK, "localhost:" + port: http.StatusOK,
		"FLEET.bank.example.:" + port: http.StatusOK,
	} {
		for _, path := range []string{"/healthz", "/login"} {
			req, _ := http.NewRequest(http.MethodGet, hs.URL+path, nil)
			req.Host = host
			r, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			r.Body.Close()
			if r.StatusCode != want {
				t.Errorf("GET %s with Host %q: %d, want %d", path, host, r.StatusCode, want)
			}
		}
	}
	cfg.Hosts = []string{"fleet.bank.example:8080"}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "hosts") {
		t.Errorf("a host with a port accepted: %v", err)
	}
}

// A body over the 64 KiB limit is answered 413, not 400, on every API
// POST that reads JSON.
func TestAPIBodyTooLarge(t *testing.T) {
	_, hs := newTestServer(t, openBolt(t))
	c := newClient(t, hs.URL)
	csrf := c.login("ana", "correct horse")
	pad := strings.Repeat("x", 100<<10)
	for path, body := range map[string]string{
		"/api/v1/alerts/act":       `{"action":"acknowledge","site":"lyon-07","device":"atm-1","alert":"a-1","note":"` + pad + `"}`,
		"/api/v1/identities/split": `{"site":"lyon-07","device":"atm-1","identity":"p-1","visits":["` + pad + `"]}`,
		"/api/v1/identities/merge": `{"site":"lyon-07","device":"atm-1","identity":"p-1","into":"` + pad + `"}`,
	} {
		if r, out := c.json("POST", path, "application/json", body, "X-CSRF-Token", csrf); r.StatusCode != http.StatusRequestEntityTooLarge ||
			!strings.Contains(fmt.Sprint(out["error"]), "larger than 65536 bytes") {
			t.Errorf("%s with 100 KiB: %d %v, want 413", path, r.StatusCode, out)
		}
	}
}

// A failed sign-in logs a known user's name, but never what was typed
// as an unknown name (users type their password there): only a digest.
func TestSignInFailureLogsNoTypedName(t *testing.T) {
	s, hs := newTestServer(t, openBolt(t))
	var logb bytes.Buffer
	s.log = slog.New(slog.NewTextHandler(&logb, nil))
	c := newClient(t, hs.URL)
	_, page := c.get("/login")
	tok := hiddenRe.FindStringSubmatch(page)[1]
	for _, name := range []string{"hunter2hunter2", "ana"} {
		if r, _ := c.post("/login", url.Values{"csrf": {tok}, "user": {name}, "password": {"wrong"}}); r.StatusCode != 303 {
			t.Fatalf("%s: %d", name, r.StatusCode)
		}
	}
	out := logb.String()
	if strings.Contains(out, "hunter2") || !strings.Contains(out, "name_digest=") {
		t.Errorf("the typed unknown name is in the log: %s", out)
	}
	if !strings.Contains(out, "user=ana") {
		t.Errorf("a known user's failed sign-in does not name them: %s", out)
	}
}

// Under the unit, a short key or a users file without a user is reported
// with the file to edit: the source of systemd's copy.
func TestSetupMessagesNameTheSource(t *testing.T) {
	creds, conf := t.TempDir(), t.TempDir()
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	t.Setenv("CONFIGURATION_DIRECTORY", conf)
	key, users := filepath.Join(creds, "session.key"), filepath.Join(creds, "users.yaml")
	os.WriteFile(key, []byte("x\n"), 0o400)
	os.WriteFile(users, []byte("users:\n"), 0o400)
	if _, err := LoadSessionKey(key); err == nil || !strings.Contains(err.Error(), "> "+filepath.Join(conf, "session.key")+")") {
		t.Errorf("short key: %v", err)
	}
	if _, err := LoadUsers(users); err == nil || !strings.Contains(err.Error(), "systemd's copy of "+filepath.Join(conf, "users.yaml")) ||
		!strings.Contains(err.Error(), "no users") {
		t.Errorf("no users: %v", err)
	}
}

// A user's sessions end when their password changes in the users file (a
// leaked password is changed and the service restarted: the cookies
// signed in with it stop working), and when the user is removed and
// added again under the same name; a changed role or sites keeps the
// session, with the new role and sites at once.
func TestUsersFileChangeAndSessions(t *testing.T) {
	st := openBolt(t)
	seedScoped(t, st)
	_, hs, stop := startTestServer(t, st)
	cookies := map[string]*http.Cookie{}
	for _, u := range []string{"ana", "pat", "vic", "val"} {
		c := newClient(t, hs.URL)
		c.login(u, "correct horse")
		cookies[u] = sessionCookieOf(t, c, hs.URL)
	}
	stop()

	users := testUsers(t)
	h, err := bcrypt.GenerateFromPassword([]byte("a new password"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	pat := users["pat"]
	pat.PasswordHash = string(h) // a new password
	users["pat"] = pat
	vic := users["vic"]
	vic.PasswordHash = string(h) // removed, then added again with another password
	users["vic"] = vic
	ana := users["ana"]
	ana.Role = RoleViewer // demoted
	users["ana"] = ana
	val := users["val"]
	val.Sites = nil // widened
	users["val"] = val
	cfg := DefaultConfig()
	cfg.UsersFile = "unused"
	s2, err := New(cfg, st, users, []byte(strings.Repeat("k", 32)), Deps{})
	if err != nil {
		t.Fatal(err)
	}
	hs2 := httptest.NewServer(s2.Handler())
	defer hs2.Close()
	get := func(user, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, hs2.URL+path, nil)
		req.AddCookie(&http.Cookie{Name: sessionCookie, Value: cookies[user].Value})
		return send(t, req)
	}
	for _, u := range []string{"pat", "vic"} {
		if code, body := get(u, "/api/v1/session"); code != http.StatusUnauthorized {
			t.Errorf("%s's session after a password change: %d %s, want 401", u, code, body)
		}
	}
	if code, body := get("ana", "/api/v1/session"); code != 200 || !strings.Contains(body, `"role": "viewer"`) {
		t.Errorf("ana's session after a demotion: %d %s, want the viewer's", code, body)
	}
	if code, _ := get("ana", "/devices/paris-01/atm-2/identities/p-9/review"); code != http.StatusForbidden {
		t.Errorf("demoted ana on the review: %d, want 403", code)
	}
	if code, body := get("val", "/api/v1/devices"); code != 200 || !strings.Contains(body, "lyon-07") {
		t.Errorf("val's session after her sites widened: %d %.200s", code, body)
	}
}

// Names no store can hold (a NUL byte, invalid UTF-8) in a path, a
// listing's filter, a cursor or an action's body name nothing: a device or
// alert answers 404 as an absent one, a listing is empty, a note is a bad
// request. On PostgreSQL, which refuses such text in a query, they were
// answered 500 with an error in the log, to any signed-in user.
func TestUnstorableNamesAnswerAbsent(t *testing.T) {
	t.Run("bolt", func(t *testing.T) { unstorableNames(t, openBolt(t)) })
	t.Run("postgres", func(t *testing.T) {
		pg := fleettest.StartPostgres(t)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		st, err := pgstore.Open(ctx, pg.NewDatabase(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		unstorableNames(t, st)
	})
}

func unstorableNames(t *testing.T, st storage.Store) {
	seedScoped(t, st)
	_, hs := newTestServer(t, st)
	cursor := base64.RawURLEncoding.EncodeToString([]byte("r\x002026-12-07T16:00:00Z\x00paris-01\xff\x00atm-2\x00a-9"))
	for _, user := range []string{"ana", "pat", "vic"} {
		c := newClient(t, hs.URL)
		csrf := c.login(user, "correct horse")
		for _, tc := range []struct {
			method, path, body string
			want               int
		}{
			{"GET", "/devices/paris-01%00/atm-2", "", 404},
			{"GET", "/devices/paris-%FF/atm-2", "", 404},
			{"GET", "/api/v1/devices/paris-01/atm%002", "", 404},
			{"GET", "/devices/paris-01/atm-2%FF/identities/p-9", "", 404},
			{"GET", "/alerts?site=paris%00", "", 200},
			{"GET", "/alerts?state=all&device=atm%FF", "", 200},
			{"GET", "/alerts?state=open%00", "", 200},
			{"GET", "/alerts.csv?rule=r%00", "", 200},
			{"GET", "/api/v1/alerts?state=all&identity=p%FF", "", 200},
			{"GET", "/api/v1/alerts?state=all&after=" + cursor, "", 400},
			{"POST", "/api/v1/alerts/act", `{"action":"acknowledge","site":"paris-01\u0000","device":"atm-2","alert":"a-9"}`, 404},
			{"POST", "/api/v1/alerts/act", `{"action":"acknowledge","site":"paris-01","device":"atm-2","alert":"a-9\u0000"}`, 404},
			{"POST", "/api/v1/alerts/act", `{"action":"acknowledge","site":"paris-01","device":"atm-2","alert":"a-9","note":"x\u0000y"}`, 400},
		} {
			want := tc.want
			if tc.method == "POST" && user == "vic" {
				want = 403
			}
			code, body := c.send(tc.method, tc.path, tc.body, csrf)
			if code != want {
				t.Errorf("%s: %s %s: %d, want %d: %.200q", user, tc.method, tc.path, code, want, body)
			}
			if code == 200 && (strings.Contains(body, `data-alert="`) || strings.Contains(body, "a-9")) {
				t.Errorf("%s: %s %s lists an alert: %.300q", user, tc.method, tc.path, body)
			}
		}
	}
}

// TestHealthzHidesErrorTextsButFromAdmins: a store's error names a site and
// a device; /healthz (no sign-in) says there was one and when, and gives
// its text to a signed-in admin only.
func TestHealthzHidesErrorTextsButFromAdmins(t *testing.T) {
	s, hs := newTestServer(t, openBolt(t))
	at := time.Now().UTC().Truncate(time.Second)
	s.d.IngestStats = func() any {
		return ingest.Stats{Connected: true, StoreErrs: 1, LastError: "summary lyon-07/atm-1 seq 4: disk full", LastErrorAt: at}
	}
	health := func(c *client) ingest.Stats {
		t.Helper()
		r, body := c.get("/healthz")
		if r.StatusCode != 200 {
			t.Fatalf("/healthz: %d %s", r.StatusCode, body)
		}
		var out struct{ Ingest ingest.Stats }
		if err := json.Unmarshal([]byte(body), &out); err != nil {
			t.Fatal(err)
		}
		return out.Ingest
	}
	for _, user := range []string{"", "ana", "vic"} {
		c := newClient(t, hs.URL)
		if user != "" {
			c.login(user, "correct horse")
		}
		got := health(c)
		if got.LastError != ingest.HiddenError || !got.LastErrorAt.Equal(at) || got.StoreErrs != 1 {
			t.Errorf("%q: %+v, want the error hidden, its time and count kept", user, got)
		}
	}
	admin := newClient(t, hs.URL)
	admin.login("root", "correct horse")
	if got := health(admin); got.LastError != "summary lyon-07/atm-1 seq 4: disk full" {
		t.Errorf("admin: last_error %q, want the text", got.LastError)
	}
	// Without an error there is nothing to hide.
	s.d.IngestStats = func() any { return ingest.Stats{Connected: true} }
	if got := health(newClient(t, hs.URL)); got.LastError != "" {
		t.Errorf("no error: last_error %q", got.LastError)
	}
}
