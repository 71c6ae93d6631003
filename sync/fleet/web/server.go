// Package web serves the fleet view: server-rendered pages (html/template),
// a little vanilla JavaScript for live updates over server-sent events, and
// a JSON API with the same data. Assets are embedded. Every page needs a
// login (users file, bcrypt); every POST needs the session's CSRF token.
package web

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"embed"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/periocular/atm-agent/internal/durfmt"
	"github.com/periocular/atm-agent/sync/fleet/ingest"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/wire"
)

//go:embed templates/*.html static/*
var assets embed.FS

// Config configures the HTTP side.
type Config struct {
	// Listen is host:port; loopback by default. Put a TLS reverse proxy
	// in front, or set TLSCertFile/TLSKeyFile, before opening it wider.
	Listen      string `yaml:"listen"`
	TLSCertFile string `yaml:"tls_cert_file"`
	TLSKeyFile  string `yaml:"tls_key_file"`
	// UsersFile lists the accounts (see LoadUsers). Required.
	UsersFile string `yaml:"users_file"`
	// SessionKeyFile signs session cookies; instances behind one load
	// balancer share it. Empty: a random key per start.
	SessionKeyFile string        `yaml:"session_key_file"`
	SessionTTL     time.Duration `yaml:"session_ttl"`
	// SecureCookies marks cookies Secure even without TLSCertFile (TLS
	// terminated by a reverse proxy).
	SecureCookies bool `yaml:"secure_cookies"`
	// StaleAfter: a device whose last status says online but from which
	// nothing came for longer is shown stale (stale.go).
	StaleAfter time.Duration `yaml:"stale_after"`
	// ProxyAuth lets an authenticating reverse proxy sign users in.
	ProxyAuth ProxyAuthConfig `yaml:"proxy_auth"`
	// Hosts are the names (no port) a plain-HTTP request may carry in its
	// Host header besides IP addresses and localhost: the public name when
	// a reverse proxy forwards it. Any other name is refused (421), so a web
	// page cannot reach the service through DNS rebinding. Served with TLS
	// (TLSCertFile) the certificate does that and every name is accepted.
	Hosts []string `yaml:"hosts"`
}

// ProxyAuthConfig: a request from one of TrustedProxies carrying Header
// names a user of the users file (who gets that file's role); anything else
// still signs in with a password. Empty Header: off. The sign-in throttle
// takes the client address of a request from TrustedProxies from
// X-Forwarded-For (signInAddr), Header or not.
type ProxyAuthConfig struct {
	Header         string   `yaml:"header"`
	TrustedProxies []string `yaml:"trusted_proxies"` // CIDRs, e.g. 127.0.0.1/32
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Listen: "127.0.0.1:8080", SessionTTL: 12 * time.Hour, StaleAfter: DefaultStaleAfter}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if _, port, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("web: listen %q: %w", c.Listen, err)
	} else if _, err := net.LookupPort("tcp", port); err != nil {
		return fmt.Errorf("web: listen %q: port: %w", c.Listen, err)
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return errors.New("web: tls_cert_file and tls_key_file go together")
	}
	if c.UsersFile == "" {
		return errors.New("web: users_file is required")
	}
	if c.ProxyAuth.Header != "" && len(c.ProxyAuth.TrustedProxies) == 0 {
		return errors.New("web: proxy_auth.header needs proxy_auth.trusted_proxies")
	}
	for _, p := range c.ProxyAuth.TrustedProxies {
		if _, err := netip.ParsePrefix(p); err != nil {
			return fmt.Errorf("web: proxy_auth.trusted_proxies: %w", err)
		}
	}
	if c.SessionTTL < time.Minute || c.SessionTTL > 30*24*time.Hour {
		return fmt.Errorf("web: session_ttl %v: want 1m..720h", c.SessionTTL)
	}
	if c.StaleAfter < time.Second || c.StaleAfter > 30*24*time.Hour {
		return fmt.Errorf("web: stale_after %v: want 1s..720h (a few times the agents' mqtt.status_interval)", c.StaleAfter)
	}
	for _, h := range c.Hosts {
		if h == "" || strings.ContainsAny(h, ":/ \t") {
			return fmt.Errorf("web: hosts: %q: want a host name without port or scheme", h)
		}
	}
	return nil
}

// Deps are the server's collaborators besides the store.
type Deps struct {
	Logger *slog.Logger
	Now    func() time.Time
	// IngestStats, when set, is shown on the admin page and /healthz.
	IngestStats func() any
	// Retention is applied by the admin page's "prune now".
	Retention storage.Retention
	// Commands sends the agents the identity review's commands; nil:
	// commands are not configured (the review pages say so).
	Commands Commander
	// CommandStats, when set, is shown on the admin page.
	CommandStats func() any
	// Recover applies a device's held rejects that verify with the key
	// just pinned (ingest.Recover); nil: pinning recovers nothing.
	Recover func(ctx context.Context, site, device string, pub ed25519.PublicKey) (ingest.Recovered, error)
}

// Server is the HTTP front end.
type Server struct {
	cfg   Config
	store storage.Store
	// users are the users in force: replaced whole by ReloadUsers, read
	// once per request (Server.allUsers).
	users atomic.Pointer[Users]
	// usersChanged is closed (and replaced) when ReloadUsers replaces the
	// users: open live streams check their session and scope again.
	usersChanged atomic.Pointer[chan struct{}]
	reload       reloadStats
	key          []byte
	d            Deps
	log          *slog.Logger
	now          func() time.Time
	pages        map[string]*template.Template

	sseStop chan struct{}
	once    sync.Once
	// ssePing is the live stream's keep-alive interval; the session is
	// checked again at each ping.
	ssePing time.Duration

	revoked  revoked  // signed-out sessions
	throttle throttle // failed sign-ins
	// userCommands: each user's commands waiting for an answer.
	userCommands userCommands

	// reloadMu: one reload at a time, so the users in force are those the
	// store recorded last.
	reloadMu sync.Mutex
}

// New builds a server. users and key come from LoadUsers and LoadSessionKey.
func New(cfg Config, st storage.Store, users Users, key []byte, d Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(users) == 0 {
		return nil, errors.New("web: no users")
	}
	if len(key) < 32 {
		return nil, errors.New("web: session key shorter than 32 bytes")
	}
	s := &Server{cfg: cfg, store: st, key: key, d: d, log: d.Logger, now: d.Now, sseStop: make(chan struct{}), ssePing: 15 * time.Second}
	users, err := s.withGenerations(users)
	if err != nil {
		return nil, err
	}
	s.users.Store(&users)
	changed := make(chan struct{})
	s.usersChanged.Store(&changed)
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	s.pages = pages
	return s, nil
}

func (s *Server) secureCookies() bool { return s.cfg.SecureCookies || s.cfg.TLSCertFile != "" }

// ago says how long before now t was, "never" for a zero t.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "in the future"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd ago", int(d/(24*time.Hour)))
}

var funcs = template.FuncMap{
	"ago": ago,
	"ts": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"path":  pathSeg,
	"query": queryURL,
	// window shows an alert's window as the agent's config writes it
	// ("24h", "7d"), not as it travels ("24h0m0s").
	"window": durfmt.Window,
	// rule says an alert's rule in words; lowerBound whether its count
	// is one identity's (a lower bound); nextStep what to do with it.
	"rule":       ruleWords,
	"lowerBound": func(kind string) bool { return kind == "visits" || kind == "distinct_cards" },
	"nextStep":   nextStep,
	// dur shows a configured duration as the config writes it ("30d",
	// not "720h0m0s").
	"dur": durfmt.Format,
	// auditKey shows an audit entry's alert, or its device alone when the
	// entry names no alert (a correction, a removal).
	"auditKey": func(k storage.AlertKey) string {
		if k.AlertID == "" {
			return k.Site + "/" + k.Device
		}
		return k.String()
	},
	// sim shows a similarity (-1..1) with two decimals, "-" when absent.
	"sim": func(v *float64) string {
		if v == nil {
			return "-"
		}
		return fmt.Sprintf("%.2f", *v)
	},
}

// ruleWords says what an alert's rule counts, from what the alert
// carries (its kind, threshold and window): "5 visits in 1h by one
// identity". The agents' rule kinds are those of agent/rules; another
// kind is named as it is.
func ruleWords(kind string, threshold int, window string) string {
	w := durfmt.Window(window)
	switch kind {
	case "visits":
		return fmt.Sprintf("%d visits in %s by one identity", threshold, w)
	case "distinct_cards":
		return fmt.Sprintf("%d different cards in %s by one identity", threshold, w)
	case "faceless":
		return fmt.Sprintf("%d visits without a usable face in %s at this ATM", threshold, w)
	}
	return fmt.Sprintf("%s reaching %d in %s", kind, threshold, w)
}

// nextStep is what an analyst does with an alert of kind (empty for a
// kind the fleet does not know).
func nextStep(kind string) string {
	switch kind {
	case "visits", "distinct_cards":
		return "review the identity's visits, then their transactions in the bank's records and CCTV"
	case "faceless":
		return "look at the ATM's CCTV for the window (a covered camera, helmets, hoods)"
	}
	return ""
}

// queryURL is "?k=v&..." of the pairs with a value.
// pathSeg escapes one path segment; a segment of only dots ("." or "..")
// is escaped as %2E, which url.PathEscape leaves as is and browsers and
// the router would resolve as a relative path.
func pathSeg(seg string) string {
	if seg != "" && strings.Trim(seg, ".") == "" {
		return strings.Repeat("%2E", len(seg))
	}
	return url.PathEscape(seg)
}

func queryURL(kv ...string) template.URL {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			v.Set(kv[i], kv[i+1])
		}
	}
	return template.URL("?" + v.Encode())
}

func parsePages() (map[string]*template.Template, error) {
	base, err := template.New("layout.html").Funcs(funcs).ParseFS(assets, "templates/layout.html", "templates/alertrows.html", "templates/partials.html")
	if err != nil {
		return nil, fmt.Errorf("web: templates: %w", err)
	}
	names, err := fs.Glob(assets, "templates/*.html")
	if err != nil {
		return nil, err
	}
	out := map[string]*template.Template{}
	for _, n := range names {
		name := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if name == "layout" || name == "alertrows" || name == "partials" {
			continue
		}
		t, err := template.Must(base.Clone()).ParseFS(assets, n)
		if err != nil {
			return nil, fmt.Errorf("web: template %s: %w", n, err)
		}
		out[name] = t
	}
	return out, nil
}

// route is one pattern of the mux and what its user needs (PermPublic:
// no sign-in). Every route is registered from Server.routes, so a test can
// hold each one against each role and scope.
type route struct {
	Pattern string
	Need    Permission
	h       http.HandlerFunc
}

// routes lists every route the server answers.
func (s *Server) routes() []route {
	static, _ := fs.Sub(assets, "static")
	return []route{
		{"GET /static/", PermPublic, http.StripPrefix("/static/", http.FileServerFS(static)).ServeHTTP},
		{"GET /healthz", PermPublic, s.healthz},
		{"GET /login", PermPublic, s.loginPage},
		{"POST /login", PermPublic, s.login},
		{"POST /logout", PermRead, s.logout},
		{"GET /{$}", PermRead, s.fleetPage},
		{"GET /alerts", PermRead, s.alertsPage},
		{"GET /alerts.csv", PermRead, s.alertsCSV},
		{"POST /alerts/act", PermAct, s.act},
		{"GET /devices/{site}/{device}", PermRead, s.devicePage},
		{"GET /devices/{site}/{device}/identities/{id}", PermRead, s.identityPage},
		{"GET /devices/{site}/{device}/identities/{id}/review", PermReview, s.reviewPage},
		{"POST /devices/{site}/{device}/identities/{id}/split", PermReview, s.split},
		{"POST /devices/{site}/{device}/identities/{id}/merge", PermReview, s.merge},
		{"GET /api/v1/devices/{site}/{device}/identities/{id}/visits", PermReview, s.apiVisits},
		{"POST /api/v1/identities/split", PermReview, s.split},
		{"POST /api/v1/identities/merge", PermReview, s.merge},
		{"GET /events", PermRead, s.events},
		{"GET /admin", PermAdmin, s.adminPage},
		{"POST /admin/prune", PermAdmin, s.prune},
		{"GET /admin/backup", PermAdmin, s.backup},
		{"POST /admin/devices/remove", PermAdmin, s.removeDevice},
		{"POST /api/v1/devices/remove", PermAdmin, s.removeDevice},
		{"POST /admin/identities/purge", PermAdmin, s.purgeIdentity},
		{"POST /api/v1/identities/purge", PermAdmin, s.purgeIdentity},
		{"GET /api/v1/session", PermRead, s.apiSession},
		{"GET /api/v1/devices", PermRead, s.apiDevices},
		{"GET /api/v1/devices/{site}/{device}", PermRead, s.apiDevice},
		{"PUT /api/v1/devices/{site}/{device}/key", PermAdmin, s.putDeviceKey},
		{"DELETE /api/v1/devices/{site}/{device}/key", PermAdmin, s.deleteDeviceKey},
		{"GET /api/v1/alerts", PermRead, s.apiAlerts},
		{"POST /api/v1/alerts/act", PermAct, s.act},
	}
}

// Handler returns the routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range s.routes() {
		h := rt.h
		if rt.Need != PermPublic {
			h = s.auth(rt.Need, h)
		}
		mux.HandleFunc(rt.Pattern, h)
	}
	return securityHeaders(s.knownHost(apiMisses(mux)))
}

// apiMisses answers the mux's own 404 and 405 (no route for the path, or
// none for the method: Allow names those there are) under /api/ as JSON
// errors with their codes, as every other error there; the pages keep
// the mux's plain text.
func apiMisses(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern == "" && strings.HasPrefix(r.URL.Path, "/api/") {
			w = &missWriter{ResponseWriter: w, r: r}
		}
		mux.ServeHTTP(w, r)
	})
}

// missWriter turns the mux's 404 or 405 into a JSON error and drops the
// mux's text.
type missWriter struct {
	http.ResponseWriter
	r     *http.Request
	wrote bool
}

func (m *missWriter) WriteHeader(status int) {
	e := apiError{Code: CodeNotFound, Error: fmt.Sprintf("%s: no such endpoint (docs/openapi/fleet.yaml lists them)", m.r.URL.Path)}
	switch status {
	case http.StatusNotFound:
	case http.StatusMethodNotAllowed:
		e = apiError{Code: CodeMethodNotAllowed, Error: fmt.Sprintf("%s %s: method not allowed (Allow: %s)", m.r.Method, m.r.URL.Path, m.Header().Get("Allow"))}
	default:
		m.ResponseWriter.WriteHeader(status)
		return
	}
	m.Header().Del("Content-Length")
	writeAPIError(m.ResponseWriter, e)
	m.wrote = true
}

func (m *missWriter) Write(b []byte) (int, error) {
	if m.wrote {
		return len(b), nil
	}
	return m.ResponseWriter.Write(b)
}

// knownHost refuses a plain-HTTP request whose Host is a name the service
// was not told it answers to (Config.Hosts): a page on another site whose
// name was rebound to this address sends its own name.
func (s *Server) knownHost(h http.Handler) http.Handler {
	if s.cfg.TLSCertFile != "" {
		return h
	}
	ok := map[string]bool{"localhost": true}
	for _, n := range s.cfg.Hosts {
		ok[strings.ToLower(strings.TrimSuffix(n, "."))] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.ToLower(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
		if _, err := netip.ParseAddr(host); err != nil && !ok[host] {
			s.log.Warn("fleet web: request for an unknown host refused", "host", r.Host, "remote", r.RemoteAddr, "path", r.URL.Path)
			httpError(w, r, CodeWrongHost, fmt.Sprintf("this service does not answer to %q: add the name to web.hosts", r.Host))
			return
		}
		h.ServeHTTP(w, r)
	})
}

func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "same-origin")
		hd.Set("X-Frame-Options", "DENY")
		h.ServeHTTP(w, r)
	})
}

type ctxKey struct{}

type principal struct {
	User User
	Sess session
}

// auth requires a session whose user's role has the permission (User.Can)
// and, for a POST, PUT or DELETE, the session's CSRF token and a
// same-origin Origin header. A signed-in user without it gets 403. What the user may see
// within that (their sites) each handler applies through the helpers of
// scope.go.
func (s *Server) auth(need Permission, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sess, u, ok := s.signedIn(w, r)
		if !ok {
			if r.Method == http.MethodGet && !strings.HasPrefix(r.URL.Path, "/api/") && r.URL.Path != "/events" {
				http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			httpError(w, r, CodeUnauthorized, "authentication required")
			return
		}
		if !u.Can(need) {
			s.log.Warn("fleet web: refused to the role", "user", u.Name, "role", u.Role, "needs", need, "method", r.Method, "path", r.URL.Path)
			httpError(w, r, CodeForbidden, "forbidden: "+cmp.Or(refusal[need], "not allowed to the "+u.Role+" role"))
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
			if !sameOrigin(r) || !s.checkCSRF(r, sess) {
				s.log.Warn("fleet web: "+r.Method+" refused: missing or wrong CSRF token", "user", u.Name, "path", r.URL.Path, "remote", r.RemoteAddr)
				httpError(w, r, CodeCSRF, "forbidden: missing or invalid CSRF token")
				return
			}
		}
		h(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, principal{User: u, Sess: sess})))
	}
}

func who(r *http.Request) principal {
	p, _ := r.Context().Value(ctxKey{}).(principal)
	return p
}

// base is what the layout needs.
type base struct {
	Title string
	Nav   string
	User  User
	CSRF  string
	Now   time.Time
	// Static: the page is not refreshed live (it asked a device).
	Static bool
}

func (s *Server) base(r *http.Request, title, nav string) base {
	p := who(r)
	return base{Title: title, Nav: nav, User: p.User, CSRF: s.csrfToken(p.Sess), Now: s.now().UTC()}
}

func (s *Server) render(w http.ResponseWriter, r *http.Request, page string, data any) {
	s.renderCode(w, r, http.StatusOK, page, data)
}

// renderCode is render with a status code.
func (s *Server) renderCode(w http.ResponseWriter, r *http.Request, code int, page string, data any) {
	t := s.pages[page]
	var b strings.Builder
	if err := t.ExecuteTemplate(&b, "layout.html", data); err != nil {
		s.fail(w, r, fmt.Errorf("render %s: %w", page, err))
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(b.String()))
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	code, msg, ok := codeOf(err)
	if !ok {
		s.log.Error("fleet web", "path", r.URL.Path, "err", err)
	}
	httpError(w, r, code, msg)
}

// decodeBody decodes a request's JSON body into v, refusing members v does
// not have: the error is answered bad_json, unknown_field or too_large.
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		// encoding/json tells an unknown member only by its text.
		if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return coded(CodeUnknownField, "unknown field %s", f)
		}
		return coded(CodeBadJSON, "bad JSON: %w", err)
	}
	return nil
}

// StuckAfter is how long ingest may fail to write a batch before /healthz
// says the service is not ok (503).
const StuckAfter = time.Minute

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	out := map[string]any{"ok": true}
	code := http.StatusOK
	visible := s.errorsVisible(r)
	out["users"] = s.usersHealth(visible)
	if s.d.IngestStats != nil {
		st := s.d.IngestStats()
		if x, ok := st.(interface{ Redacted() any }); ok && !visible {
			st = x.Redacted()
		}
		out["ingest"] = st
		if x, ok := st.(interface{ Stuck() time.Time }); ok && !x.Stuck().IsZero() && s.now().Sub(x.Stuck()) > StuckAfter {
			// Ingest is retrying a batch the store refuses: nothing is
			// applied meanwhile (the store down, a full disk).
			out["ok"], code = false, http.StatusServiceUnavailable
		}
	}
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(out)
}

// errorsVisible: /healthz answers the text of ingest's last error to a
// signed-in admin only (a store's error can name a site and a device);
// anyone else, a monitor included, sees that there was one and when.
func (s *Server) errorsVisible(r *http.Request) bool {
	if pu, named, known := s.proxyUser(r); named {
		return known && pu.Can(PermAdmin)
	}
	_, u, ok := s.sessionOf(r)
	return ok && u.Can(PermAdmin)
}

// safeNext accepts only a local path: it starts with a single '/', has no
// control characters or backslashes, and its second character (also after
// removing control characters, which browsers strip) is not '/' or '\\'.
// Anything else gives "/".
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.ContainsRune(next, '\\') {
		return "/"
	}
	stripped := strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return -1
		}
		return r
	}, next)
	if stripped != next || strings.HasPrefix(stripped, "//") || strings.HasPrefix(stripped, "/\\") {
		return "/"
	}
	return next
}

func (s *Server) loginPage(w http.ResponseWriter, r *http.Request) {
	tok := make([]byte, 16)
	_, _ = randRead(tok)
	t := fmt.Sprintf("%x", tok)
	http.SetCookie(w, s.cookie(loginCookie, t, 600))
	if wantsJSON(r) {
		// A program signing in: the token to post back, with the cookie
		// just set (docs/fleet.md "Signing in from a program").
		writeJSON(w, map[string]string{"csrf": t})
		return
	}
	s.render(w, r, "login", struct {
		base
		Next, Token, Error string
	}{base: base{Title: "Sign in", Now: s.now()}, Next: safeNext(r.URL.Query().Get("next")), Token: t, Error: r.URL.Query().Get("error")})
}

// typedName is how a sign-in's typed user name is logged: a user of the
// users file by name; anything else (a typo, or a password typed into the
// name field) only as unknown with a short keyed digest, which tells
// repeated attempts with the same name apart without putting it in the
// journal.
func (s *Server) typedName(name string) []any {
	if _, ok := s.allUsers()[name]; ok {
		return []any{"user", name}
	}
	return []any{"user", "(unknown)", "name_digest", hex.EncodeToString(s.mac("log-name", name)[:4])}
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	c, err := r.Cookie(loginCookie)
	if err != nil || !sameOrigin(r) || c.Value == "" || r.PostFormValue("csrf") != c.Value {
		httpError(w, r, CodeCSRF, "forbidden: missing or invalid CSRF token (reload the sign-in page)")
		return
	}
	next := safeNext(r.PostFormValue("next"))
	name := r.PostFormValue("user")
	u, ok, done := s.checkPassword(w, r, name, r.PostFormValue("password"))
	if done {
		return
	}
	if !ok {
		s.log.Warn("fleet web: sign-in failed", append(s.typedName(name), "remote", r.RemoteAddr)...)
		if wantsJSON(r) {
			writeAPIError(w, apiError{Error: "wrong user name or password", Code: CodeUnauthorized})
			return
		}
		http.Redirect(w, r, "/login?error=1&next="+url.QueryEscape(next), http.StatusSeeOther)
		return
	}
	s.log.Info("fleet web: signed in", "user", u.Name, "role", u.Role, "sites", u.Sites.String(), "remote", r.RemoteAddr)
	http.SetCookie(w, s.cookie(loginCookie, "", -1))
	sess := s.newSession(w, u)
	if wantsJSON(r) {
		writeJSON(w, s.sessionInfo(u, sess))
		return
	}
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// wantsJSON: a client that asks for JSON answers (Accept), a program.
func wantsJSON(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "application/json")
}

// logout revokes the session server-side (the cookie may have been copied)
// and clears it in the browser. The revocation is stored, so it holds
// after a restart and on every instance sharing the store; this instance
// also keeps it in memory, which still refuses the cookie here if the
// store write fails (that failure is answered 500: the sign-out is not
// durable).
func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, s.cookie(sessionCookie, "", -1))
	if sess := who(r).Sess; sess.Nonce != "" {
		s.revoked.add(sess.Nonce, sess.Expires, s.now().Unix())
		if err := s.store.RevokeSession(r.Context(), sess.Nonce, time.Unix(sess.Expires, 0)); err != nil {
			s.fail(w, r, fmt.Errorf("sign-out of %s not stored (refused by this instance until it restarts): %w", sess.User, err))
			return
		}
	}
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// deviceRow is one line of the fleet table.
// Its values are computed once (the template would call the methods by
// reflection several times per row: 2,000 rows are rendered in one page).
type deviceRow struct {
	Site, Name     string
	State          string
	HasStatus      bool
	StatusReceived time.Time
	CameraOK       bool
	Cameras        int // in the last status
	Backlog        int
	HasSummary     bool
	Visits24h      int
	LastSum        time.Time
	OpenAlerts     int
	MaxSeq, Gaps   uint64
	Behind         uint64
	SitePath, Path string
}

func (s *Server) rows(devs []storage.Device) []deviceRow {
	out := make([]deviceRow, len(devs))
	for i, d := range devs {
		out[i] = deviceRow{Site: d.Site, Name: d.Device, State: s.shownState(d), HasStatus: d.Status != nil,
			StatusReceived: d.StatusReceived, CameraOK: d.CameraOK(), Backlog: d.Backlog(), HasSummary: d.Summary != nil,
			OpenAlerts: d.OpenAlerts, MaxSeq: d.MaxSeq, Gaps: d.Gaps(), Behind: d.Behind(),
			Path: "/devices/" + pathSeg(d.Site) + "/" + pathSeg(d.Device)}
		if d.Status != nil {
			out[i].Cameras = len(d.Status.Cameras)
		}
		if d.Summary != nil {
			out[i].Visits24h, out[i].LastSum = d.Summary.Totals.Visits.H24, d.Summary.TS
		}
	}
	return out
}

var sorts = map[string]func(a, b deviceRow) int{
	"site": func(a, b deviceRow) int {
		if c := strings.Compare(a.Site, b.Site); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	},
	"state": func(a, b deviceRow) int { return strings.Compare(a.State, b.State) },
	// Compared, never subtracted: counts come from the agents and gaps
	// may exceed any int.
	"alerts":  func(a, b deviceRow) int { return cmp.Compare(b.OpenAlerts, a.OpenAlerts) },
	"backlog": func(a, b deviceRow) int { return cmp.Compare(b.Backlog, a.Backlog) },
	"visits":  func(a, b deviceRow) int { return cmp.Compare(b.Visits24h, a.Visits24h) },
	"gaps":    func(a, b deviceRow) int { return cmp.Compare(b.Gaps, a.Gaps) },
}

// FleetPageSize is the fleet page's default number of rows per page (?per=
// sets 10..MaxFleetPageSize). Rendering 2,000 rows took about a third of
// the page's time (docs/benchmarks.md).
const (
	FleetPageSize    = 100
	MaxFleetPageSize = 1000
)

// fleetQuery is the fleet page's filter, sort and page.
type fleetQuery struct {
	Site, State, Q, Sort string
	Page, Per            int
}

func fleetQueryOf(q url.Values) fleetQuery {
	f := fleetQuery{Site: q.Get("site"), State: q.Get("state"), Q: strings.TrimSpace(q.Get("q")), Sort: q.Get("sort"), Page: 1, Per: FleetPageSize}
	if sorts[f.Sort] == nil {
		f.Sort = "site"
	}
	if f.State != "online" && f.State != "notonline" {
		f.State = ""
	}
	if n, err := strconv.Atoi(q.Get("page")); err == nil && n > 1 {
		f.Page = n
	}
	if n, err := strconv.Atoi(q.Get("per")); err == nil {
		f.Per = min(max(n, 10), MaxFleetPageSize)
	}
	return f
}

// match applies the site, state and text filters to a row.
func (f fleetQuery) match(d deviceRow) bool {
	switch {
	case f.Site != "" && d.Site != f.Site:
		return false
	case f.State == "online" && d.State != string(wire.StateOnline):
		return false
	case f.State == "notonline" && d.State == string(wire.StateOnline):
		return false
	case f.Q != "" && !strings.Contains(strings.ToLower(d.Site+" / "+d.Name), strings.ToLower(f.Q)):
		return false
	}
	return true
}

// link is the page's URL with page n (per kept only when not the default).
func (f fleetQuery) link(page int) template.URL {
	per := ""
	if f.Per != FleetPageSize {
		per = strconv.Itoa(f.Per)
	}
	p := ""
	if page > 1 {
		p = strconv.Itoa(page)
	}
	return queryURL("site", f.Site, "state", f.State, "q", f.Q, "sort", f.Sort, "per", per, "page", p)
}

// fleetPage lists the devices matching the filters, sorted, one page of
// them rendered; the counts cover every matching device.
func (s *Server) fleetPage(w http.ResponseWriter, r *http.Request) {
	devs, err := s.devices(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	f := fleetQueryOf(r.URL.Query())
	var sites []string
	all := s.rows(devs)
	var shown []deviceRow
	online, offline, stale, open := 0, 0, 0, 0
	for _, d := range all {
		if !slices.Contains(sites, d.Site) {
			sites = append(sites, d.Site)
		}
		if f.Site != "" && d.Site != f.Site {
			continue
		}
		// The counts are those of the site (or fleet), whatever the
		// state and text filters show.
		switch d.State {
		case string(wire.StateOnline):
			online++
		case StaleState:
			stale++
			offline++
		default:
			offline++
		}
		open += d.OpenAlerts
		if f.match(d) {
			shown = append(shown, d)
		}
	}
	sort.Strings(sites)
	if f.Sort != "site" {
		cmp := sorts[f.Sort]
		slices.SortStableFunc(shown, func(a, b deviceRow) int {
			if c := cmp(a, b); c != 0 {
				return c
			}
			return sorts["site"](a, b)
		})
	}
	pages := max((len(shown)+f.Per-1)/f.Per, 1)
	f.Page = min(f.Page, pages)
	from := (f.Page - 1) * f.Per
	to := min(from+f.Per, len(shown))
	var prev, next template.URL
	if f.Page > 1 {
		prev = f.link(f.Page - 1)
	}
	if f.Page < pages {
		next = f.link(f.Page + 1)
	}
	s.render(w, r, "fleet", struct {
		base
		Devices                 []deviceRow
		Sites                   []string
		Site, Sort, State, Q    string
		Online, Offline, Alerts int
		Stale                   int // of Offline
		Matched, From, To       int
		Page, Pages, Per        int
		Prev, Next              template.URL
	}{s.base(r, "Fleet", "fleet"), shown[from:to], sites, f.Site, f.Sort, f.State, f.Q, online, offline, open, stale,
		len(shown), from + 1, to, f.Page, pages, f.Per, prev, next})
}

// MaxAlertHours bounds the "last hours" filter (ten years).
const MaxAlertHours = 10 * 366 * 24

func filterOf(q url.Values, now time.Time) (storage.AlertFilter, string) {
	f := storage.AlertFilter{Site: q.Get("site"), Device: q.Get("device"), Rule: q.Get("rule"), IdentityID: q.Get("identity")}
	state := q.Get("state")
	switch state {
	case "", "active":
		state, f.Active = "active", true
	case "all":
	default:
		f.State = storage.AlertState(state)
	}
	if h, err := hoursOf(q.Get("hours")); err == nil && h > 0 {
		f.Since = now.Add(-time.Duration(h) * time.Hour)
	}
	return f, state
}

// pageOf reads a listing's limit (def when absent or empty, else 1..max)
// and offset (0 when absent, else 0 or more). Anything else is an error
// naming the parameter, answered 400: a value ignored or clamped would
// list another page than the one asked for.
func pageOf(q url.Values, def, max int) (limit, offset int, err error) {
	limit = def
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > max {
			return 0, 0, fmt.Errorf("limit %q: want 1..%d", v, max)
		}
		limit = n
	}
	if v := q.Get("offset"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return 0, 0, fmt.Errorf("offset %q: want 0 or more", v)
		}
		offset = n
	}
	return limit, offset, nil
}

// alertsPage reads the limit and offset of an alerts listing (the JSON
// API's, the CSV export's): pageOf, the offset at most MaxAlertOffset.
func alertsPage(q url.Values, def, max int) (limit, offset int, err error) {
	limit, offset, err = pageOf(q, def, max)
	if err == nil && offset > MaxAlertOffset {
		err = fmt.Errorf("offset %d: at most %d; page with after= (the Link header)", offset, MaxAlertOffset)
	}
	return limit, offset, err
}

// hoursOf parses the "last hours" filter: empty (no bound, 0) or a whole
// number of hours 1..MaxAlertHours. Anything else is an error: ignoring
// it would list every alert while the form still shows the value.
func hoursOf(v string) (int, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, nil
	}
	h, err := strconv.Atoi(v)
	if err != nil || h < 1 || h > MaxAlertHours {
		return 0, fmt.Errorf("last hours %q: want a whole number of hours from 1 to %d (or empty for any time)", v, MaxAlertHours)
	}
	return h, nil
}

// MaxAlertOffset bounds offset paging: a listing holds offset + limit
// alerts in memory (three requests at offset 10^6 took the service from
// 128 MB to 797 MB). Beyond it, page by cursor.
const MaxAlertOffset = 100_000

// MaxAlertLimit bounds the JSON API's page of alerts (its default is
// storage.DefaultAlertLimit).
const MaxAlertLimit = 10_000

// AlertPageSize is the alerts page's default number of rows per page
// (?per= sets 10..MaxAlertPageSize).
const (
	AlertPageSize    = 100
	MaxAlertPageSize = 1000
	// MaxExportAlerts bounds one CSV export (the export holds every
	// matching alert up to this; ?limit= sets fewer).
	MaxExportAlerts = 1_000_000
)

// knownState reports whether state is a value filterOf understands.
func knownState(state string) bool {
	switch storage.AlertState(state) {
	case "", "active", "all", storage.AlertOpen, storage.AlertAcknowledged, storage.AlertResolved:
		return true
	}
	return false
}

func (s *Server) alertsPage(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f, state := filterOf(q, s.now())
	page, per := 1, AlertPageSize
	if n, err := strconv.Atoi(q.Get("page")); err == nil && n > 1 {
		page = n
	}
	if n, err := strconv.Atoi(q.Get("per")); err == nil {
		per = min(max(n, 10), MaxAlertPageSize)
	}
	// One more than a page tells whether a next page exists.
	f.Limit, f.Offset = per+1, min(min(page-1, MaxAlertOffset)*per, MaxAlertOffset)
	var alerts []storage.Alert
	_, herr := hoursOf(q.Get("hours"))
	errMsg := ""
	if herr != nil {
		errMsg = herr.Error()
	} else {
		var err error
		if alerts, err = s.alerts(r, f); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	more := len(alerts) > per
	if more {
		alerts = alerts[:per]
	}
	perS := ""
	if per != AlertPageSize {
		perS = strconv.Itoa(per)
	}
	link := func(n int) template.URL {
		p := ""
		if n > 1 {
			p = strconv.Itoa(n)
		}
		return queryURL("state", state, "site", f.Site, "device", f.Device, "rule", f.Rule, "identity", f.IdentityID,
			"hours", q.Get("hours"), "per", perS, "page", p)
	}
	var prev, next, first template.URL
	if page > 1 {
		prev, first = link(page-1), link(1)
	}
	if more {
		next = link(page + 1)
	}
	s.render(w, r, "alerts", struct {
		base
		Alerts     []storage.Alert
		F          storage.AlertFilter
		State      string
		States     []string
		Hours      string
		Next       string
		Error      string
		From, To   int
		Page       int
		Prev, More template.URL
		First      template.URL
	}{s.base(r, "Alerts", "alerts"), alerts, f, state, []string{"active", "open", "acknowledged", "resolved", "all"},
		q.Get("hours"), r.URL.RequestURI(), errMsg, f.Offset + 1, f.Offset + len(alerts), page, prev, next, first})
}

func (s *Server) alertsCSV(w http.ResponseWriter, r *http.Request) {
	if _, err := hoursOf(r.URL.Query().Get("hours")); err != nil {
		httpError(w, r, CodeBadRequest, err.Error())
		return
	}
	f, _ := filterOf(r.URL.Query(), s.now())
	if r.URL.Query().Get("state") == "" {
		f.Active = false // the export defaults to every state
	}
	// Every matching alert by default, not one listing's worth.
	limit, offset, err := alertsPage(r.URL.Query(), MaxExportAlerts, MaxExportAlerts)
	if err != nil {
		httpError(w, r, CodeBadRequest, err.Error())
		return
	}
	f.Limit, f.Offset = limit, offset
	alerts, err := s.alerts(r, f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=atm-alerts-%s.csv", s.now().UTC().Format("20060102-150405")))
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"raised", "site", "device", "alert_id", "rule", "kind", "identity_id", "window", "count", "threshold",
		"first_seen", "last_seen", "message_id", "seq", "historical", "state", "ack_by", "ack_at", "ack_note",
		"resolved_by", "resolved_at", "resolved_note", "visit_id", "txn_id"})
	tf := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	}
	for _, a := range alerts {
		rec := []string{tf(a.Raised), a.Site, a.Device, a.AlertID, a.Rule, a.Kind, a.IdentityID, a.Window,
			strconv.Itoa(a.Count), strconv.Itoa(a.Threshold), tf(a.FirstSeen), tf(a.LastSeen), a.MessageID,
			strconv.FormatUint(a.Seq, 10), strconv.FormatBool(a.Historical), string(a.State), a.AckBy, tf(a.AckAt),
			a.AckNote, a.ResolvedBy, tf(a.ResolvedAt), a.ResolvedNote, a.VisitID, a.TxnID}
		// Most fields come from the agents (or analysts): every one is
		// defused, not only the free-text ones.
		for i := range rec {
			rec[i] = csvSafe(rec[i])
		}
		_ = cw.Write(rec)
	}
	cw.Flush()
}

// csvSafe defuses spreadsheet formulas in free text.
func csvSafe(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

// act acknowledges or resolves an alert (form or JSON API).
func (s *Server) act(w http.ResponseWriter, r *http.Request) {
	p := who(r)
	var in struct {
		Action string `json:"action"`
		Site   string `json:"site"`
		Device string `json:"device"`
		Alert  string `json:"alert"`
		// AlertID: the name the alert answers carry it under.
		AlertID string `json:"alert_id"`
		Note    string `json:"note"`
		Next    string `json:"-"`
	}
	api := strings.HasPrefix(r.URL.Path, "/api/")
	if api {
		if err := decodeBody(r, &in); err != nil {
			s.fail(w, r, err)
			return
		}
		if in.Alert != "" && in.AlertID != "" && in.Alert != in.AlertID {
			s.fail(w, r, coded(CodeBadRequest, "alert %q and alert_id %q differ: give one", in.Alert, in.AlertID))
			return
		}
		in.Alert = cmp.Or(in.Alert, in.AlertID)
	} else {
		in.Action, in.Site, in.Device, in.Alert = r.PostFormValue("action"), r.PostFormValue("site"), r.PostFormValue("device"), r.PostFormValue("alert")
		in.Note, in.Next = strings.TrimSpace(r.PostFormValue("note")), r.PostFormValue("next")
	}
	act := storage.Action{Key: storage.AlertKey{Site: in.Site, Device: in.Device, AlertID: in.Alert}, Action: in.Action,
		User: p.User.Name, Role: p.User.Role, Note: in.Note, Remote: r.RemoteAddr, At: s.now().UTC()}
	if err := act.Validate(); err != nil {
		s.fail(w, r, coded(CodeBadRequest, "%w", err))
		return
	}
	a, err := s.actOn(r, act)
	if errors.Is(err, storage.ErrState) && api {
		// Who got there first, and how the alert stands: the client need
		// not parse the message to tell its own retry (answered 200) from
		// another analyst's action.
		if cur, gerr := s.alert(r, act.Key); gerr == nil {
			code, msg, _ := codeOf(err)
			ca := alertAPI(cur)
			writeAPIError(w, apiError{Error: msg, Code: code, Alert: &ca})
			return
		}
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("fleet web: alert "+act.Action, "alert", act.Key.String(), "user", act.User, "role", act.Role, "remote", act.Remote)
	if api {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(alertAPI(a))
		return
	}
	http.Redirect(w, r, safeNext(in.Next), http.StatusSeeOther)
}

func (s *Server) devicePage(w http.ResponseWriter, r *http.Request) {
	site, dev := r.PathValue("site"), r.PathValue("device")
	d, err := s.device(r, site, dev)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	now := s.now().UTC()
	pts, err := s.summaries(r, site, dev, now.Add(-48*time.Hour))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	alerts, err := s.alerts(r, storage.AlertFilter{Site: site, Device: dev, Limit: 200})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var ids []wire.IdentityCounts
	maskShare := ""
	if d.Summary != nil {
		ids = slices.Clone(d.Summary.Identities)
		sort.SliceStable(ids, func(i, j int) bool { return ids[i].Visits.H24 > ids[j].Visits.H24 })
		if v := d.Summary.Totals.Visits.H24; v > 0 {
			maskShare = fmt.Sprintf("%.0f%%", 100*float64(d.Summary.Totals.Masked.H24)/float64(v))
		}
	}
	key, err := s.replyKey(r, site, dev)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	refused, err := s.refusal(r, d)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.render(w, r, "device", struct {
		base
		Refused   *ingest.Refusal
		ReplyKey  *apiReplyKey
		Commands  bool // configured: the review asks the device
		D         storage.Device
		State     string // shownState
		LastHeard time.Time
		Chart     template.HTML
		Hourly    []HourBar
		IDs       []wire.IdentityCounts
		MaskShare string
		Alerts    []storage.Alert
		Next      string
	}{s.base(r, dev+" · "+site, "fleet"), refused, key, s.d.Commands != nil, d, s.shownState(d), d.LastHeard(), VisitsPerHourSVG(HourlyVisits(pts, now, 48)), HourlyVisits(pts, now, 48), ids, maskShare,
		alerts, r.URL.RequestURI()})
}

func (s *Server) identityPage(w http.ResponseWriter, r *http.Request) {
	site, dev, id := r.PathValue("site"), r.PathValue("device"), r.PathValue("id")
	if err := wire.ValidateID(id, 128); err != nil {
		httpError(w, r, CodeBadRequest, "identity id: "+err.Error())
		return
	}
	if _, err := s.device(r, site, dev); err != nil {
		s.fail(w, r, err)
		return
	}
	now := s.now().UTC()
	pts, err := s.identityPoints(r, site, dev, id, now.Add(-8*24*time.Hour))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	alerts, err := s.alerts(r, storage.AlertFilter{Site: site, Device: dev, IdentityID: id, Limit: 200})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var last *storage.IdentityPoint
	if len(pts) > 0 {
		last = &pts[len(pts)-1]
	}
	rev := slices.Clone(pts)
	slices.Reverse(rev)
	if len(rev) > 200 {
		rev = rev[:200]
	}
	s.render(w, r, "identity", struct {
		base
		Site, Device, ID string
		Last             *storage.IdentityPoint
		Points           []storage.IdentityPoint
		Chart            template.HTML
		Alerts           []storage.Alert
		Next             string
	}{s.base(r, id+" · "+dev, "fleet"), site, dev, id, last, rev, IdentitySVG(pts), alerts, r.URL.RequestURI()})
}

// events streams store changes as server-sent events until the client
// goes away, the server shuts down or the session ends (checked at every
// keep-alive ping: expired, signed out here or on another instance, user
// removed; and at once when the users file is reloaded, which also
// applies the user's sites as it now gives them). The browser then reconnects, gets 401 and the page offers to
// sign in again (static/app.js).
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		httpError(w, r, CodeInternal, "streaming unsupported")
		return
	}
	// The users in force from here on: a reload after this line closes
	// usersChanged, one before it is seen by stillValid.
	usersChanged := *s.usersChanged.Load()
	sess := who(r).Sess
	u, ok := s.stillValid(r.Context(), sess)
	if !ok {
		httpError(w, r, CodeUnauthorized, "authentication required")
		return
	}
	scope := u.Sites
	ch, cancel := s.store.Subscribe()
	defer cancel()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	fmt.Fprint(w, "retry: 2000\n: connected\n\n")
	fl.Flush()
	ping := time.NewTicker(s.ssePing)
	defer ping.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-s.sseStop:
			return
		case <-ping.C:
			if _, ok := s.stillValid(r.Context(), sess); !ok {
				return
			}
			fmt.Fprint(w, ": ping\n\n")
		case <-usersChanged:
			// The users file was reloaded: the session ends with its
			// user (removed, new password); their sites apply from now
			// on, and a page whose sites changed refreshes (resync).
			usersChanged = *s.usersChanged.Load()
			u, ok := s.stillValid(r.Context(), sess)
			if !ok {
				return
			}
			if u.Sites.String() == scope.String() {
				continue
			}
			scope = u.Sites
			b, _ := json.Marshal(storage.Change{Kind: "resync"})
			fmt.Fprintf(w, "event: change\ndata: %s\n\n", b)
		case c := <-ch:
			if c.Site != "" && !scope.Allows(c.Site) {
				continue // another site's: not a word of it
			}
			b, _ := json.Marshal(c)
			fmt.Fprintf(w, "event: change\ndata: %s\n\n", b)
		}
		fl.Flush()
	}
}

func (s *Server) adminPage(w http.ResponseWriter, r *http.Request) {
	audit, err := s.store.Audit(r.Context(), 200)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	rejects, err := s.store.Rejects(r.Context(), 50)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var stats, commands []counter
	if s.d.IngestStats != nil {
		stats = countersOf(s.d.IngestStats())
	}
	if s.d.CommandStats != nil {
		commands = countersOf(s.d.CommandStats())
	}
	// A correction's request without an outcome: the fleet never learnt
	// what became of it (it stopped while waiting), unless it is waiting
	// still.
	pending := map[uint64]string{}
	var wait time.Duration
	if s.d.Commands != nil {
		wait = s.d.Commands.Timeout() + 30*time.Second
	}
	unanswered := storage.PendingCorrections(audit)
	for _, e := range audit {
		if unanswered[e.ID] {
			pending[e.ID] = "no outcome recorded: unknown whether the device applied it; review the identity on the device"
			if s.now().Sub(e.At) < wait {
				pending[e.ID] = "waiting for the device's answer"
			}
		}
	}
	var users []User
	for _, u := range s.allUsers() {
		users = append(users, User{Name: u.Name, Role: u.Role, Sites: u.Sites})
	}
	sort.Slice(users, func(i, j int) bool { return users[i].Name < users[j].Name })
	s.render(w, r, "admin", struct {
		base
		Audit     []storage.AuditEntry
		Pending   map[uint64]string
		Rejects   []storage.Reject
		Stats     []counter
		Users     []User
		Retention storage.Retention
		Pruned    string
		Commands  []counter
	}{s.base(r, "Settings", "admin"), audit, pending, rejects, stats, users, s.d.Retention, r.URL.Query().Get("pruned"), commands})
}

// counter is one line of a counters table on the Settings page.
type counter struct{ Name, Value string }

// countersOf lists the fields of v's JSON object in their order, their
// names in words ("timed_out" -> "timed out"); nil when v is not an
// object. A nested value is shown as its JSON.
func countersOf(v any) []counter {
	b, err := json.Marshal(v)
	if err != nil {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil
	}
	var out []counter
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return out
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return out
		}
		val := string(raw)
		var str string
		if json.Unmarshal(raw, &str) == nil {
			val = str
			if val == "" {
				val = "-"
			}
		}
		out = append(out, counter{strings.ReplaceAll(fmt.Sprint(k), "_", " "), val})
	}
	return out
}

func (s *Server) prune(w http.ResponseWriter, r *http.Request) {
	if s.d.Retention.History <= 0 || s.d.Retention.Alerts <= 0 {
		httpError(w, r, CodeBadRequest, "retention not configured")
		return
	}
	st, err := s.store.Prune(r.Context(), s.now(), s.d.Retention)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("fleet web: pruned", "user", who(r).User.Name, "stats", fmt.Sprintf("%+v", st))
	http.Redirect(w, r, "/admin?pruned="+url.QueryEscape(fmt.Sprintf("%+v", st)), http.StatusSeeOther)
}

// removeDevice forgets a decommissioned or renamed device (form or JSON
// API; admin).
func (s *Server) removeDevice(w http.ResponseWriter, r *http.Request) {
	in, ok := s.input(w, r, "site", "device")
	if !ok {
		return
	}
	p := who(r)
	rm := storage.Removal{Site: in["site"], Device: in["device"], User: p.User.Name, Role: p.User.Role, Remote: r.RemoteAddr, At: s.now().UTC(),
		StaleAfter: s.cfg.StaleAfter}
	if err := s.store.RemoveDevice(r.Context(), rm); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("fleet web: device removed", "site", rm.Site, "device", rm.Device, "user", rm.User, "remote", rm.Remote)
	if strings.HasPrefix(r.URL.Path, "/api/") {
		writeJSON(w, map[string]string{"removed": rm.Site + "/" + rm.Device})
		return
	}
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// purgeIdentity erases one identity of one device (an erasure request;
// form or JSON API; admin).
func (s *Server) purgeIdentity(w http.ResponseWriter, r *http.Request) {
	in, ok := s.input(w, r, "site", "device", "identity")
	if !ok {
		return
	}
	if err := wire.ValidateID(in["identity"], 128); err != nil {
		s.fail(w, r, coded(CodeBadRequest, "identity: %w", err))
		return
	}
	if !strings.HasPrefix(r.URL.Path, "/api/") && strings.TrimSpace(r.PostFormValue("confirm")) != in["identity"] {
		s.confirmPurge(w, r, in)
		return
	}
	p := who(r)
	ip := storage.IdentityPurge{Site: in["site"], Device: in["device"], Identity: in["identity"], User: p.User.Name, Role: p.User.Role,
		Remote: r.RemoteAddr, At: s.now().UTC()}
	n, err := s.store.PurgeIdentity(r.Context(), ip)
	warning := ""
	if errors.Is(err, storage.ErrNotScrubbed) {
		// Erased and committed; old copies remain in the file for now.
		warning, err = err.Error(), nil
		s.log.Warn("fleet web: identity erased, not yet scrubbed from the store file", "err", warning)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("fleet web: identity purged", "site", ip.Site, "device", ip.Device, "alerts", n, "user", ip.User, "remote", ip.Remote)
	if strings.HasPrefix(r.URL.Path, "/api/") {
		out := map[string]any{"purged": ip.Identity, "alerts": n}
		if warning != "" {
			out["warning"] = warning
		}
		writeJSON(w, out)
		return
	}
	s.render(w, r, "erased", struct {
		base
		Site, Device, ID, Warning string
		Alerts                    int
	}{s.base(r, "Erased "+ip.Identity, "fleet"), ip.Site, ip.Device, ip.Identity, warning, n})
}

// confirmPurge answers an erasure form whose confirm field does not name
// the identity: nothing is erased; the page says what would be and asks
// for the identity typed again (400 when something else was typed).
func (s *Server) confirmPurge(w http.ResponseWriter, r *http.Request, in map[string]string) {
	alerts, err := s.alerts(r, storage.AlertFilter{Site: in["site"], Device: in["device"], IdentityID: in["identity"], Limit: storage.DefaultAlertLimit})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	typed := strings.TrimSpace(r.PostFormValue("confirm"))
	code := http.StatusOK
	if typed != "" {
		code = http.StatusBadRequest
	}
	s.renderCode(w, r, code, "erase", struct {
		base
		Site, Device, ID, Typed string
		Alerts                  int
		More                    bool
	}{s.base(r, "Erase "+in["identity"], "fleet"), in["site"], in["device"], in["identity"], typed, len(alerts), len(alerts) >= storage.DefaultAlertLimit})
}

// input reads a form (pages) or a JSON object of strings (/api/: unknown
// fields refused) with the given fields, each required; a failure is
// answered and gives false.
func (s *Server) input(w http.ResponseWriter, r *http.Request, fields ...string) (map[string]string, bool) {
	in := map[string]string{}
	if strings.HasPrefix(r.URL.Path, "/api/") {
		var raw map[string]any
		if err := json.NewDecoder(r.Body).Decode(&raw); err != nil {
			s.fail(w, r, coded(CodeBadJSON, "bad JSON: %w", err))
			return nil, false
		}
		for k, v := range raw {
			str, isStr := v.(string)
			if !slices.Contains(fields, k) || !isStr {
				code := CodeUnknownField
				if slices.Contains(fields, k) {
					code = CodeBadJSON
				}
				s.fail(w, r, coded(code, "field %q: want only %s, each a string", k, strings.Join(fields, ", ")))
				return nil, false
			}
			in[k] = str
		}
	} else {
		for _, f := range fields {
			in[f] = r.PostFormValue(f)
		}
	}
	for _, f := range fields {
		if in[f] == "" {
			s.fail(w, r, coded(CodeBadRequest, "%s is required", strings.Join(fields, ", ")))
			return nil, false
		}
	}
	return in, true
}

// backuper is a store that can copy itself while running (the embedded one;
// PostgreSQL is backed up with pg_dump).
type backuper interface {
	Backup(ctx context.Context, w io.Writer) (int64, error)
}

func (s *Server) backup(w http.ResponseWriter, r *http.Request) {
	b, ok := s.store.(backuper)
	if !ok {
		httpError(w, r, CodeNotImplemented, "this store is backed up with its own tools (PostgreSQL: pg_dump)")
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=atm-fleet-%s.db", s.now().UTC().Format("20060102-150405")))
	n, err := b.Backup(r.Context(), w)
	if err != nil {
		s.log.Error("fleet web: backup failed", "err", err, "bytes", n)
		return
	}
	s.log.Info("fleet web: backup", "user", who(r).User.Name, "bytes", n)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// apiDevice is a device in the JSON API.
type apiDevice struct {
	Site         string        `json:"site"`
	Device       string        `json:"device"`
	State        string        `json:"state"`
	CameraOK     bool          `json:"camera_ok"`
	Backlog      int           `json:"backlog"`
	OpenAlerts   int           `json:"open_alerts"`
	FirstSeq     uint64        `json:"first_seq"` // lowest seq received (since a sequence restart)
	MaxSeq       uint64        `json:"max_seq"`
	Unique       uint64        `json:"received"` // distinct seqs received
	Gaps         uint64        `json:"gaps"`
	Duplicates   uint64        `json:"duplicates"`
	Rejected     uint64        `json:"rejected"`
	Behind       uint64        `json:"behind"`
	LastReceived time.Time     `json:"last_received,omitzero"`
	Stale        bool          `json:"stale"`               // set by apiDeviceOf
	LastHeard    time.Time     `json:"last_heard,omitzero"` // set by apiDeviceOf
	Status       *wire.Status  `json:"status"`
	Summary      *wire.Summary `json:"summary"`
	// StatusAuthenticated, SummaryAuthenticated: Status and Summary were
	// signed by the device key pinned for the device.
	StatusAuthenticated  bool `json:"status_authenticated"`
	SummaryAuthenticated bool `json:"summary_authenticated"`
}

// apiReplyKey is the key pinned for a device's command replies
// (atm-fleet devices key set): null when none, and its replies are
// unauthenticated.
type apiReplyKey struct {
	Fingerprint string    `json:"fingerprint"`
	PublicKey   string    `json:"public_key"`
	Pinned      time.Time `json:"pinned"`
	// By, an administrator's login, is for an admin only (as the audit
	// log): absent for anyone else.
	By string `json:"by,omitempty"`
}

// replyKey is the device's pinned reply key for its page and the API:
// nil when none is pinned; who pinned it to an admin only.
func (s *Server) replyKey(r *http.Request, site, device string) (*apiReplyKey, error) {
	k, err := s.store.DeviceKey(r.Context(), site, device)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	key := &apiReplyKey{Fingerprint: wire.Fingerprint(k.PublicKey), PublicKey: wire.EncodePublicKey(k.PublicKey), Pinned: k.Pinned}
	if who(r).User.Can(PermAdmin) {
		key.By = k.By
	}
	return key, nil
}

func toAPI(d storage.Device) apiDevice {
	return apiDevice{Site: d.Site, Device: d.Device, State: d.State(), CameraOK: d.CameraOK(), Backlog: d.Backlog(),
		OpenAlerts: d.OpenAlerts, FirstSeq: d.FirstSeq, MaxSeq: d.MaxSeq, Unique: d.Unique, Gaps: d.Gaps(), Duplicates: d.Duplicates, Rejected: d.Rejected,
		Behind: d.Behind(), LastReceived: d.LastReceived, Status: d.Status, Summary: d.Summary,
		StatusAuthenticated: d.StatusAuthenticated, SummaryAuthenticated: d.SummaryAuthenticated}
}

// APIAlert is an alert as the JSON API answers it: the agent's alert fields
// under the wire names (sync/wire.Alert), then the fleet's own (receipt and
// workflow).
type APIAlert struct {
	Site        string    `json:"site"`
	Device      string    `json:"device"`
	AlertID     string    `json:"alert_id"`
	Rule        string    `json:"rule"`
	Kind        string    `json:"kind"`
	IdentityID  string    `json:"identity_id,omitempty"`
	VisitID     string    `json:"visit_id,omitempty"`
	TxnID       string    `json:"txn_id,omitempty"`
	Window      string    `json:"window"`
	WindowStart time.Time `json:"window_start"`
	Count       int       `json:"count"`
	Threshold   int       `json:"threshold"`
	FirstSeen   time.Time `json:"first_seen"`
	LastSeen    time.Time `json:"last_seen"`
	Raised      time.Time `json:"raised"`
	MessageID   string    `json:"message_id"`
	Seq         uint64    `json:"seq"`
	Historical  bool      `json:"historical"`
	// Authenticated: the message that raised it was signed by the device
	// key pinned for the device.
	Authenticated bool `json:"authenticated"`

	Received     time.Time          `json:"received"`
	Raises       int                `json:"raises"`
	State        storage.AlertState `json:"state"`
	AckBy        string             `json:"ack_by,omitempty"`
	AckNote      string             `json:"ack_note,omitempty"`
	AckAt        time.Time          `json:"ack_at,omitzero"`
	ResolvedBy   string             `json:"resolved_by,omitempty"`
	ResolvedNote string             `json:"resolved_note,omitempty"`
	ResolvedAt   time.Time          `json:"resolved_at,omitzero"`
}

func alertAPI(a storage.Alert) APIAlert {
	return APIAlert{Site: a.Site, Device: a.Device, AlertID: a.AlertID, Rule: a.Rule, Kind: a.Kind, IdentityID: a.IdentityID,
		VisitID: a.VisitID, TxnID: a.TxnID, Window: a.Window, WindowStart: a.WindowStart, Count: a.Count, Threshold: a.Threshold,
		FirstSeen: a.FirstSeen, LastSeen: a.LastSeen, Raised: a.Raised, MessageID: a.MessageID, Seq: a.Seq, Historical: a.Historical,
		Authenticated: a.Authenticated, Received: a.Received, Raises: a.Raises, State: a.State, AckBy: a.AckBy, AckNote: a.AckNote, AckAt: a.AckAt,
		ResolvedBy: a.ResolvedBy, ResolvedNote: a.ResolvedNote, ResolvedAt: a.ResolvedAt}
}

// sessionInfo is who is signed in, as the session API and a program's
// sign-in answer it.
type sessionInfo struct {
	User string `json:"user"`
	Role string `json:"role"`
	// Sites: the user's scope (exact names and "prefix*" patterns);
	// absent for a user of every site.
	Sites       []string     `json:"sites,omitempty"`
	Permissions []Permission `json:"permissions"`
	CSRFToken   string       `json:"csrf_token"`
}

func (s *Server) sessionInfo(u User, sess session) sessionInfo {
	return sessionInfo{User: u.Name, Role: u.Role, Sites: u.Sites.Patterns(), Permissions: u.Permissions(), CSRFToken: s.csrfToken(sess)}
}

func (s *Server) apiSession(w http.ResponseWriter, r *http.Request) {
	p := who(r)
	writeJSON(w, s.sessionInfo(p.User, p.Sess))
}

func (s *Server) apiDevices(w http.ResponseWriter, r *http.Request) {
	devs, err := s.devices(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// Paged as the alerts are: every device's full last summary at once
	// was 209 MB for 1,000 ATMs at the 200-identity cap (and gigabytes of
	// memory for a few concurrent calls).
	q := r.URL.Query()
	limit, offset, err := pageOf(q, DevicesPageDefault, DevicesPageMax)
	if err != nil {
		httpError(w, r, CodeBadRequest, err.Error())
		return
	}
	out := []apiDevice{}
	seen := 0
	for _, d := range devs {
		if site := q.Get("site"); site != "" && d.Site != site {
			continue
		}
		if seen++; seen <= offset {
			continue
		}
		if len(out) == limit {
			break
		}
		out = append(out, s.apiDeviceOf(d))
	}
	writeJSON(w, out)
}

// The JSON API's page of devices: DevicesPageDefault when no limit is
// given, at most DevicesPageMax.
const (
	DevicesPageDefault = 500
	DevicesPageMax     = 10000
)

func (s *Server) apiDevice(w http.ResponseWriter, r *http.Request) {
	site, dev := r.PathValue("site"), r.PathValue("device")
	d, err := s.device(r, site, dev)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	now := s.now().UTC()
	pts, err := s.summaries(r, site, dev, now.Add(-48*time.Hour))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	key, err := s.replyKey(r, site, dev)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	refused, err := s.refusal(r, d)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, struct {
		apiDevice
		Hourly   []HourBar    `json:"visits_per_hour"`
		ReplyKey *apiReplyKey `json:"reply_key"`
		// Refused: why its messages are refused for their signature,
		// since the last one taken (null: none are).
		Refused *ingest.Refusal `json:"refused"`
	}{s.apiDeviceOf(d), HourlyVisits(pts, now, 48), key, refused})
}

func (s *Server) apiAlerts(w http.ResponseWriter, r *http.Request) {
	if !knownState(r.URL.Query().Get("state")) {
		httpError(w, r, CodeBadRequest, "bad state: want active, all, open, acknowledged or resolved")
		return
	}
	if _, err := hoursOf(r.URL.Query().Get("hours")); err != nil {
		httpError(w, r, CodeBadRequest, err.Error())
		return
	}
	q := r.URL.Query()
	f, _ := filterOf(q, s.now())
	switch q.Get("order") {
	case "", "raised":
		f.Order = storage.ByRaised
	case "received":
		f.Order = storage.ByReceived
	default:
		httpError(w, r, CodeBadRequest, "order: want raised (newest raised first, the default) or received (oldest received first)")
		return
	}
	if v := q.Get("received_since"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			httpError(w, r, CodeBadRequest, fmt.Sprintf("received_since %q: want an RFC 3339 time, e.g. 2026-12-07T16:00:00Z", v))
			return
		}
		f.ReceivedSince = t
	}
	limit, offset, err := alertsPage(q, storage.DefaultAlertLimit, MaxAlertLimit)
	if err != nil {
		httpError(w, r, CodeBadRequest, err.Error())
		return
	}
	f.Offset = offset
	if v := q.Get("after"); v != "" {
		cur, err := storage.ParseCursor(v)
		if err == nil && cur.Order != f.Order {
			err = errors.New("the cursor is of another order= than this request's")
		}
		if err != nil {
			httpError(w, r, CodeBadRequest, "after: "+err.Error())
			return
		}
		f.After = &cur
	}
	f.Limit = limit + 1 // one more tells whether a next page exists
	alerts, err := s.alerts(r, f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	more := len(alerts) > limit
	alerts = alerts[:min(len(alerts), limit)]
	// The next page starts after the last alert listed: alerts raised
	// meanwhile do not shift it (RFC 8288 link). In receipt order the
	// link is also where to poll next, so it is given whenever the page
	// holds an alert.
	if n := len(alerts); more || (f.Order == storage.ByReceived && n > 0) {
		q.Set("after", f.CursorOf(alerts[n-1]).String())
		q.Del("offset")
		w.Header().Set("Link", "<"+r.URL.Path+"?"+q.Encode()+`>; rel="next"`)
	}
	out := make([]APIAlert, len(alerts))
	for i, a := range alerts {
		out[i] = alertAPI(a)
	}
	writeJSON(w, out)
}

// Run serves until ctx ends, then shuts down within 5 s (live streams are
// closed first).
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("web: listen %s: %w", s.cfg.Listen, err)
	}
	return s.Serve(ctx, ln)
}

// Serve is Run on a given listener.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		IdleTimeout: 2 * time.Minute, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	srv.RegisterOnShutdown(func() { s.once.Do(func() { close(s.sseStop) }) })
	if s.cfg.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(s.cfg.TLSCertFile, s.cfg.TLSKeyFile)
		if err != nil {
			ln.Close()
			return fmt.Errorf("web: tls: %w", err)
		}
		ln = tls.NewListener(ln, &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}})
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	s.log.Info("fleet web listening", "addr", ln.Addr().String(), "tls", s.cfg.TLSCertFile != "")
	select {
	case err := <-errc:
		return fmt.Errorf("web: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("web: shutdown: %w", err)
	}
	<-errc
	return nil
}
