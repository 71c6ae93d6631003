package web

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
	"gopkg.in/yaml.v3"

	"github.com/periocular/atm-agent/sync/fleet/secretfile"
	"github.com/periocular/atm-agent/sync/fleet/storage"
)

// Roles. A viewer reads everything in its scope (pages, CSV, JSON, the
// live stream); an analyst also acknowledges or resolves alerts and
// reviews and corrects identities; an admin can also open the settings
// page (audit log, rejected payloads, ingest counters, pruning, backup,
// removing devices, erasing identities).
const (
	RoleViewer  = "viewer"
	RoleAnalyst = "analyst"
	RoleAdmin   = "admin"
)

// Permission is what a route needs of its user's role.
type Permission string

const (
	// PermPublic: no sign-in (assets, health, the sign-in itself).
	PermPublic Permission = ""
	// PermRead: the pages, the CSV export, the JSON API's GETs, the live
	// stream, signing out.
	PermRead Permission = "read"
	// PermAct: acknowledging and resolving alerts.
	PermAct Permission = "act"
	// PermReview: the identity review (it costs the ATM a signed command
	// and shows visit timelines) and its split and merge.
	PermReview Permission = "review"
	// PermAdmin: the settings page and its actions.
	PermAdmin Permission = "admin"
)

// permissions is what each role may do: the one place roles are told
// apart (User.Can).
var permissions = map[string][]Permission{
	RoleViewer:  {PermRead},
	RoleAnalyst: {PermRead, PermAct, PermReview},
	RoleAdmin:   {PermRead, PermAct, PermReview, PermAdmin},
}

// refusal says what a role lacks a permission for (the 403's message).
var refusal = map[Permission]string{
	PermAct:    "acknowledging or resolving alerts needs the analyst or admin role",
	PermReview: "reviewing or correcting identities needs the analyst or admin role",
	PermAdmin:  "admin role required",
}

// User is one account from the users file.
type User struct {
	Name         string
	Role         string
	PasswordHash string // bcrypt ($2a$/$2b$/$2y$)
	// Sites is the user's scope: the only sites whose devices and alerts
	// they see and act on; nil for every site (always so for an admin).
	Sites *storage.Sites
	// gen is the user's generation in the store (Server.withGenerations):
	// a session carries it, so one from before the user was removed and
	// added again is refused.
	gen string
}

// Can reports whether the user's role has permission p.
func (u User) Can(p Permission) bool {
	return p == PermPublic || slices.Contains(permissions[u.Role], p)
}

// Permissions lists what the user's role may do (the session API).
func (u User) Permissions() []Permission { return slices.Clone(permissions[u.Role]) }

// Users maps names to accounts.
type Users map[string]User

// LoadUsers reads a users file (YAML, strict):
//
//	users:
//	  - {name: ana, role: analyst, password_hash: "$2a$12$..."}
//	  - {name: vic, role: viewer, password_hash: "$2a$12$...", sites: [lisbon-01, "porto-*"]}
//	  - {name: root, role: admin, password_hash: "$2a$12$..."}
//
// role is viewer, analyst or admin. sites scopes a viewer or an analyst to
// those sites: exact names, or a prefix ending in '*' ("porto-*": every
// site whose name starts with "porto-"); "sites: all", or no sites on a
// user written as one {...}, gives every site. A viewer or analyst written
// as a block (a key per line) must say its sites (blockEntries: a file
// read halfway through a write must not widen anyone). An empty list,
// other glob syntax, a list on an admin (the settings are fleet-wide) and
// a last line without its newline (but for a file that is one {...},
// JSON) are errors.
// Hashes come from `atm-fleet passwd` (bcrypt).
//
// The file must not be writable by group or others (anyone who can write
// it can add an admin): 0600 or 0640 (group read) are accepted.
func LoadUsers(path string) (Users, error) {
	b, err := secretfile.Read(path, "users file", 0o022)
	if err != nil {
		return nil, err
	}
	u, err := ParseUsers(b)
	if err != nil {
		// The file to edit: the source of a credential copy.
		return nil, fmt.Errorf("%s: %w", secretfile.Named(path), err)
	}
	return u, nil
}

// usersFile is a users file as ParseUsers decodes it: strictly (an
// unknown key is an error with its line), with the file's root node kept
// for what the values do not say (how each user is written).
type usersFile struct {
	Users []struct {
		Name         string `yaml:"name"`
		Role         string `yaml:"role"`
		PasswordHash string `yaml:"password_hash"`
		// A node: "sites:" with no value is an error, not every site.
		Sites yaml.Node `yaml:"sites"`
	} `yaml:"users"`
	root *yaml.Node
}

// UnmarshalYAML keeps the root node, then decodes the file with the
// decoder that called it: yaml.v3 hands this (yaml.v2's) form of the
// interface its own decoder, KnownFields and all, where a yaml.Node's
// Decode would not be strict. The file is parsed once.
func (f *usersFile) UnmarshalYAML(unmarshal func(any) error) error {
	var root nodeOf
	if err := unmarshal(&root); err != nil {
		return err
	}
	f.root = root.n
	type plain usersFile
	return unmarshal((*plain)(f))
}

// nodeOf keeps the node it is decoded from.
type nodeOf struct{ n *yaml.Node }

func (c *nodeOf) UnmarshalYAML(n *yaml.Node) error {
	c.n = n
	return nil
}

// ParseUsers decodes and checks a users file.
func ParseUsers(b []byte) (Users, error) {
	var f usersFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("users file: %w", err)
	}
	// A file read halfway through a write may end inside a line: a site
	// name cut short (paris-0) is another site. (A document that is one
	// {...}, JSON, cut short is a YAML error.)
	flowDoc := f.root != nil && f.root.Style&yaml.FlowStyle != 0
	if !flowDoc && len(b) > 0 && b[len(b)-1] != '\n' {
		return nil, fmt.Errorf("users file: line %d does not end with a newline: a file cut short by a write in progress? end it with one", bytes.Count(b, []byte{'\n'})+1)
	}
	blocks := blockEntries(f.root)
	out := Users{}
	for i, e := range f.Users {
		u := User{Name: e.Name, Role: e.Role, PasswordHash: e.PasswordHash}
		switch {
		case u.Name == "" || len(u.Name) > 64 || strings.ContainsAny(u.Name, "|\x00\r\n"):
			return nil, fmt.Errorf("users file: user %d: name must be 1-64 bytes without '|' or control characters", i+1)
		case permissions[u.Role] == nil:
			return nil, fmt.Errorf("users file: user %q: role %q: want %q, %q or %q", u.Name, u.Role, RoleViewer, RoleAnalyst, RoleAdmin)
		case out[u.Name].Name != "":
			return nil, fmt.Errorf("users file: user %q listed twice", u.Name)
		}
		if _, err := bcrypt.Cost([]byte(u.PasswordHash)); err != nil {
			return nil, fmt.Errorf("users file: user %q: password_hash is not a bcrypt hash: %w", u.Name, err)
		}
		allSites := e.Sites.Kind == yaml.ScalarNode && e.Sites.Value == "all"
		switch {
		case allSites:
			// Every site, said: as no sites, and the one way for a user
			// written as a block.
		case e.Sites.Kind == 0 && i < len(blocks) && blocks[i] > 0 && !u.Can(PermAdmin):
			return nil, fmt.Errorf("users file: user %q (line %d): a user written as a block (a key per line) must say its sites: "+
				"sites: all for every site, or a list; without sites a file cut short by a write in progress would give every site "+
				"(or write the user as one {...}, whose closing brace shows it was read whole)", u.Name, blocks[i])
		case e.Sites.Kind != 0:
			var list []string
			if e.Sites.Kind != yaml.SequenceNode || e.Sites.Decode(&list) != nil {
				return nil, fmt.Errorf("users file: user %q: sites (line %d): want a list of site names, e.g. [lisbon-01, \"porto-*\"], or all for every site",
					u.Name, e.Sites.Line)
			}
			if u.Can(PermAdmin) {
				return nil, fmt.Errorf("users file: user %q: an admin is not scoped to sites (the settings are fleet-wide): remove sites, or make the user an analyst or viewer", u.Name)
			}
			sites, err := storage.ParseSites(list)
			if err != nil {
				return nil, fmt.Errorf("users file: user %q: %w", u.Name, err)
			}
			u.Sites = sites
		}
		out[u.Name] = u
	}
	if len(out) == 0 {
		return nil, errors.New("users file: no users")
	}
	return out, nil
}

// blockEntries gives, for each entry of the users list, the line it
// starts on if it is a block mapping (a key per line), 0 if it is a flow
// mapping ({...}). A file read halfway through a write (rewritten in
// place) is a prefix of the file meant: a flow mapping cut short is a
// YAML error, a block mapping is not, and one cut before its sites would
// give its user every site; so a viewer or analyst written as a block
// must say its sites (ParseUsers). top is the file's root node (nil for
// an empty one).
func blockEntries(top *yaml.Node) []int {
	if top == nil {
		return nil
	}
	for i := 0; i+1 < len(top.Content); i += 2 {
		if top.Content[i].Value != "users" || top.Content[i+1].Kind != yaml.SequenceNode {
			continue
		}
		var lines []int
		for _, n := range top.Content[i+1].Content {
			line := n.Line
			if n.Style&yaml.FlowStyle != 0 {
				line = 0
			}
			lines = append(lines, line)
		}
		return lines
	}
	return nil
}

// HashPassword returns the bcrypt hash to put in a users file.
func HashPassword(pw string) (string, error) {
	if len(pw) < 8 {
		return "", errors.New("password shorter than 8 characters")
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), 12)
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	return string(h), nil
}

// dummyHash keeps the time of a login with an unknown name close to that of
// a wrong password (the cost of HashPassword).
var dummyHash = sync.OnceValue(func() []byte {
	h, _ := bcrypt.GenerateFromPassword([]byte("not a password"), 12)
	return h
})

// Check verifies a login.
func (u Users) Check(name, pw string) (User, bool) {
	user, ok := u[name]
	if !ok {
		_ = bcrypt.CompareHashAndPassword(dummyHash(), []byte(pw))
		return User{}, false
	}
	if bcrypt.CompareHashAndPassword([]byte(user.PasswordHash), []byte(pw)) != nil {
		return User{}, false
	}
	return user, true
}

// LoadSessionKey reads a key file (at least 32 bytes); an empty path gives a
// random key, so sessions end with the process. Instances behind one load
// balancer need the same key file. Whoever reads the key can forge any
// session, so a file with any group or other permission bit is refused
// (create it with: umask 077; head -c 48 /dev/urandom | base64 > FILE).
func LoadSessionKey(path string) ([]byte, error) {
	if path == "" {
		k := make([]byte, 32)
		_, err := rand.Read(k)
		return k, err
	}
	b, err := secretfile.Read(path, "session key", 0o077)
	if err != nil {
		return nil, err
	}
	b = bytes.TrimSpace(b)
	if len(b) < 32 {
		return nil, fmt.Errorf("session key %s: %d bytes, want at least 32 (e.g. (umask 077; head -c 48 /dev/urandom | base64 > %s))",
			secretfile.Named(path), len(b), secretfile.Source(path))
	}
	return b, nil
}

// session is what the signed cookie carries. Every request looks its
// user up in the users in force (read at start, replaced by ReloadUsers:
// their role and sites as the file now gives them), so removing a user
// ends their sessions; Gen ties it to the user's generation in the store,
// new each time a start or reload finds the user added (again), so the
// user removed and added again does not bring them back; Pass ties it to
// the user's password hash, so a new password ends them too.
type session struct {
	User    string `json:"u"`
	Expires int64  `json:"e"`
	Nonce   string `json:"n"`
	Pass    string `json:"p"`
	Gen     string `json:"g"`
}

// passTag is what a session holds of its user's password hash: a keyed
// digest (the hash itself stays out of the cookie).
func (s *Server) passTag(u User) string {
	return base64.RawURLEncoding.EncodeToString(s.mac("password", u.Name, u.PasswordHash)[:12])
}

const (
	sessionCookie = "atm_fleet_session"
	loginCookie   = "atm_fleet_login"
)

func (s *Server) mac(parts ...string) []byte {
	m := hmac.New(sha256.New, s.key)
	for _, p := range parts {
		m.Write([]byte(p))
		m.Write([]byte{0})
	}
	return m.Sum(nil)
}

func (s *Server) cookie(name, value string, maxAge int) *http.Cookie {
	return &http.Cookie{Name: name, Value: value, Path: "/", MaxAge: maxAge, HttpOnly: true,
		Secure: s.secureCookies(), SameSite: http.SameSiteStrictMode}
}

func (s *Server) newSession(w http.ResponseWriter, u User) session {
	n := make([]byte, 16)
	_, _ = rand.Read(n)
	sess := session{User: u.Name, Expires: s.now().Add(s.cfg.SessionTTL).Unix(), Nonce: base64.RawURLEncoding.EncodeToString(n),
		Pass: s.passTag(u), Gen: u.gen}
	b, _ := json.Marshal(sess)
	p := base64.RawURLEncoding.EncodeToString(b)
	sig := base64.RawURLEncoding.EncodeToString(s.mac("session", p))
	http.SetCookie(w, s.cookie(sessionCookie, p+"."+sig, int(s.cfg.SessionTTL/time.Second)))
	return sess
}

// proxyUser is the user named by a trusted reverse proxy's header: named
// when a trusted proxy sent the header, ok when it names a user of the
// users file. A header from any other address is ignored (logged).
func (s *Server) proxyUser(r *http.Request) (u User, named, ok bool) {
	pa := s.cfg.ProxyAuth
	name := r.Header.Get(pa.Header)
	if pa.Header == "" || name == "" {
		return User{}, false, false
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return User{}, false, false
	}
	for _, p := range pa.TrustedProxies {
		if pfx, err := netip.ParsePrefix(p); err == nil && pfx.Contains(ap.Addr().Unmap()) {
			u, ok := s.allUsers()[name]
			if !ok {
				s.log.Warn("fleet web: proxy names an unknown user", "user", name, "remote", r.RemoteAddr)
			}
			return u, true, ok
		}
	}
	s.log.Warn("fleet web: auth header from an untrusted address ignored", "header", pa.Header, "remote", r.RemoteAddr)
	return User{}, false, false
}

// signedIn is the request's user: the one a trusted proxy names, when it
// names one (a session cookie of another user, left in a shared browser or
// outliving an SSO sign-out, is replaced; a user the users file lacks is
// refused, cookie or not), else the session cookie's.
func (s *Server) signedIn(w http.ResponseWriter, r *http.Request) (session, User, bool) {
	sess, u, ok := s.sessionOf(r)
	pu, named, known := s.proxyUser(r)
	switch {
	case !named:
		return sess, u, ok
	case !known:
		return session{}, User{}, false
	case ok && u.Name == pu.Name:
		return sess, u, true
	}
	if ok {
		s.log.Info("fleet web: the proxy names another user than the session cookie: new session", "user", pu.Name, "cookie_user", u.Name, "remote", r.RemoteAddr)
	}
	return s.newSession(w, pu), pu, true
}

// sessionOf returns the request's valid session and its user.
func (s *Server) sessionOf(r *http.Request) (session, User, bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return session{}, User{}, false
	}
	p, sig, ok := strings.Cut(c.Value, ".")
	if !ok {
		return session{}, User{}, false
	}
	want := s.mac("session", p)
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, want) {
		return session{}, User{}, false
	}
	b, err := base64.RawURLEncoding.DecodeString(p)
	if err != nil {
		return session{}, User{}, false
	}
	var sess session
	if json.Unmarshal(b, &sess) != nil {
		return session{}, User{}, false
	}
	u, ok := s.stillValid(r.Context(), sess)
	if !ok {
		return session{}, User{}, false
	}
	return sess, u, true
}

// stillValid checks a session whose cookie was verified: not expired, not
// signed out, and its user still in the users file, not removed since
// (the generation), with the password it signed in with. Also used by the live stream, which outlives the request
// that opened it.
func (s *Server) stillValid(ctx context.Context, sess session) (User, bool) {
	if s.now().Unix() > sess.Expires || sess.Nonce == "" || s.revoked.has(sess.Nonce) {
		return User{}, false
	}
	// Signed out on another instance or before a restart: the store
	// knows. A store that cannot tell refuses the session.
	if revoked, err := s.store.SessionRevoked(ctx, sess.Nonce); err != nil || revoked {
		if err != nil && ctx.Err() == nil {
			s.log.Warn("fleet web: session refused: cannot check it against the signed-out sessions", "user", sess.User, "err", err)
		}
		return User{}, false
	}
	u, ok := s.allUsers()[sess.User]
	if !ok || u.gen == "" || sess.Gen != u.gen || !hmac.Equal([]byte(sess.Pass), []byte(s.passTag(u))) {
		return User{}, false
	}
	return u, true
}

// csrfToken is bound to the session: HMAC(key, "csrf", nonce).
func (s *Server) csrfToken(sess session) string {
	return base64.RawURLEncoding.EncodeToString(s.mac("csrf", sess.Nonce))
}

func (s *Server) checkCSRF(r *http.Request, sess session) bool {
	tok := r.Header.Get("X-CSRF-Token")
	if tok == "" {
		tok = r.PostFormValue("csrf")
	}
	want := s.csrfToken(sess)
	return tok != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(want)) == 1
}

// sameOrigin refuses cross-site POSTs a browser labels with Origin (a second
// line behind the token and SameSite=Strict).
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	o = strings.TrimPrefix(strings.TrimPrefix(o, "https://"), "http://")
	return o == r.Host
}

var randRead = rand.Read
