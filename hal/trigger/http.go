package trigger

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/netguard"
	"github.com/periocular/atm-agent/internal/regfile"
	"github.com/periocular/atm-agent/internal/secretfile"
)

// HTTPConfig configures the local trigger endpoint for the ATM application.
// At least one of Socket and Listen must be set.
type HTTPConfig struct {
	// Socket is a Unix socket path. Access is controlled by its permissions
	// (SocketMode, SocketGroup) and, if TokenFile is set, also by the token.
	Socket      string `yaml:"socket"`
	SocketMode  string `yaml:"socket_mode"`  // octal, default "0660"
	SocketGroup string `yaml:"socket_group"` // group name or gid; "" keeps the process group
	// Listen is a loopback TCP address ("127.0.0.1:8787", "[::1]:8787",
	// "localhost:8787"). Non-loopback addresses are refused. Requires TokenFile.
	Listen string `yaml:"listen"`
	// TokenFile holds the bearer token (surrounding whitespace is ignored).
	TokenFile string `yaml:"token_file"`
	// MaxBodyBytes bounds a request body. Default 4096.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// IdempotencyWindow is how long a txn_id is remembered: a repeat
	// within it is answered with the first visit's id and starts nothing.
	// Default 10m; 1s..24h.
	IdempotencyWindow time.Duration `yaml:"idempotency_window"`
	// IdempotencyMax bounds the remembered txn_ids (the oldest is
	// forgotten first). Default 4096 (under 1 MB).
	IdempotencyMax int `yaml:"idempotency_max"`
}

// DefaultHTTPConfig returns the defaults (no endpoint enabled).
func DefaultHTTPConfig() HTTPConfig {
	return HTTPConfig{SocketMode: "0660", MaxBodyBytes: 4096, IdempotencyWindow: 10 * time.Minute, IdempotencyMax: 4096}
}

func (c HTTPConfig) withDefaults() HTTPConfig {
	d := DefaultHTTPConfig()
	if c.SocketMode == "" {
		c.SocketMode = d.SocketMode
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = d.MaxBodyBytes
	}
	if c.IdempotencyWindow == 0 {
		c.IdempotencyWindow = d.IdempotencyWindow
	}
	if c.IdempotencyMax == 0 {
		c.IdempotencyMax = d.IdempotencyMax
	}
	return c
}

// Validate reports configuration mistakes.
func (c HTTPConfig) Validate() error {
	var errs []error
	if c.Socket == "" && c.Listen == "" {
		errs = append(errs, errors.New("trigger.http: set socket and/or listen"))
	}
	if _, err := parseMode(c.SocketMode); err != nil {
		errs = append(errs, err)
	}
	if c.Listen != "" {
		if err := checkLoopback(c.Listen); err != nil {
			errs = append(errs, err)
		}
		if c.TokenFile == "" {
			errs = append(errs, errors.New("trigger.http.listen needs token_file: TCP has no socket permissions to rely on"))
		}
	}
	if c.MaxBodyBytes < 0 || c.MaxBodyBytes > 1<<20 {
		errs = append(errs, fmt.Errorf("trigger.http.max_body_bytes %d: want 1..1048576", c.MaxBodyBytes))
	}
	if c.IdempotencyWindow != 0 && (c.IdempotencyWindow < time.Second || c.IdempotencyWindow > 24*time.Hour) {
		errs = append(errs, fmt.Errorf("trigger.http.idempotency_window %v: want 1s..24h", c.IdempotencyWindow))
	}
	if c.IdempotencyMax < 0 || c.IdempotencyMax > 1<<20 {
		errs = append(errs, fmt.Errorf("trigger.http.idempotency_max %d: want 1..1048576", c.IdempotencyMax))
	}
	return errors.Join(errs...)
}

func parseMode(s string) (os.FileMode, error) {
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o777 {
		return 0, fmt.Errorf("trigger.http.socket_mode %q: want octal permissions such as 0660", s)
	}
	if m&0o007 != 0 {
		return 0, fmt.Errorf("trigger.http.socket_mode %q: must not grant access to others", s)
	}
	// Connecting to a unix socket takes write permission: a mode that
	// leaves the owner (the agent's user) without read and write (0000,
	// 0060) left nobody but root able to post, behind a clean start.
	if m&0o600 != 0o600 {
		return 0, fmt.Errorf("trigger.http.socket_mode %q: must give the owner read and write (0600 or 0660: connecting to a socket takes write permission)", s)
	}
	return os.FileMode(m), nil
}

// checkLoopback refuses listen addresses that are not loopback.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("trigger.http.listen %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("trigger.http.listen %q: only loopback addresses (127.0.0.1, ::1, localhost) are allowed", addr)
	}
	return nil
}

// Connection caps of the trigger listeners, each counted on its own. The
// ATM application needs one or two connections. The unix socket is open to
// its group only. The TCP port is open to every local user, and under a
// flood a new connection must send its request before cap newer ones
// arrive (the oldest waiting one makes room): a larger cap widens that
// window (256 at 1,100 reconnects a second: about 230 ms). 32 + 256 + the
// metrics port's 64 stay far below the unit's LimitNOFILE=4096.
const (
	MaxSocketConns = 32
	MaxTCPConns    = 256
)

// HTTP is the local trigger endpoint (docs/trigger-api.md,
// docs/openapi/trigger.yaml):
//
//	POST /v1/visit   optional JSON {"card_hash": "...", "txn_id": "..."}
//	                 -> 202 {"id", "time", "status": "accepted"|"coalesced"}
//	                 -> 200 {"id", "time", "status": "duplicate"} (txn_id seen within the window)
//	GET  /v1/health  -> 200 {"status": "ok", "accepted", "dropped", "duplicates", "coalesced",
//	                         "version", "ready", "camera", "reasons"} (the last four when set: WithVersion, WithReadiness)
//	GET  /v1/visits/{txn_id} -> 200 VisitStatus (WithVisitLookup; visitquery.go)
//
// A busy consumer answers 503 (the visit was not started).
type HTTP struct {
	cfg   HTTPConfig
	log   *slog.Logger
	clock Clock
	mode  os.FileMode
	gid   int
	token [sha256.Size]byte // sha256 of the token; zero if none
	auth  bool
	counters
	txns       *txnCache
	duplicates atomic.Uint64
	coalesced  atomic.Uint64
	// version and readiness, when set, are reported by GET /v1/health.
	version   string
	readiness func() Readiness
	lookup    VisitLookup // GET /v1/visits/{txn_id}, when set

	mu   sync.Mutex
	lns  []net.Listener
	tcp  net.Addr
	used bool
}

// HTTPOption customises the endpoint.
type HTTPOption func(*HTTP)

// WithHTTPClock sets the clock that stamps events.
func WithHTTPClock(c Clock) HTTPOption { return func(h *HTTP) { h.clock = c } }

// WithVersion sets the agent version GET /v1/health reports ("version").
func WithVersion(v string) HTTPOption { return func(h *HTTP) { h.version = v } }

// WithReadiness sets what GET /v1/health reports of the agent behind the
// endpoint ("ready", "camera", "reasons"); f is called at every request and
// must not block.
func WithReadiness(f func() Readiness) HTTPOption { return func(h *HTTP) { h.readiness = f } }

// Readiness is whether the agent can take a visit now: film it, store it
// and evaluate its rules.
type Readiness struct {
	// Ready: a visit triggered now would be filmed and stored.
	Ready bool
	// Camera is the camera's state ("ok", "degraded", "down"); "" when
	// the agent has no camera of its own to report (a simulated one).
	Camera string
	// Reasons say why the agent is not ready (none when it is).
	Reasons []string
}

// NewHTTP validates cfg, reads the token file and resolves the socket group.
func NewHTTP(cfg HTTPConfig, log *slog.Logger, opts ...HTTPOption) (*HTTP, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	h := &HTTP{cfg: cfg, log: log, clock: RealClock, gid: -1, txns: newTxnCache(cfg.IdempotencyWindow, cfg.IdempotencyMax)}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	for _, o := range opts {
		o(h)
	}
	h.mode, _ = parseMode(cfg.SocketMode)
	if cfg.TokenFile != "" {
		// A token every local user can read lets any of them post visits.
		b, err := secretfile.ReadFile(cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("trigger.http: read token file: %w", err)
		}
		tok := bytes.TrimSpace(b)
		if len(tok) < 16 {
			return nil, fmt.Errorf("trigger.http: token in %s is shorter than 16 characters", cfg.TokenFile)
		}
		h.token, h.auth = sha256.Sum256(tok), true
	}
	if cfg.SocketGroup != "" {
		// Resolved, and refused when this process could not give the
		// socket that group, before run opens anything.
		gid, label, err := ResolveSocketGroup(cfg.SocketGroup)
		if err != nil {
			return nil, err
		}
		if cfg.Socket != "" {
			if err := CheckSocketGroupMember(gid, label); err != nil {
				return nil, err
			}
		}
		h.gid = gid
	}
	return h, nil
}

// Stats returns accepted and dropped event counts.
func (h *HTTP) Stats() Stats { return h.stats() }

// TCPAddr returns the bound TCP address after Listen, or nil.
func (h *HTTP) TCPAddr() net.Addr {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.tcp
}

// Listen opens the socket and/or TCP listener so errors surface before Run;
// Run calls it if it was not called.
func (h *HTTP) Listen() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lns != nil {
		return nil
	}
	var lns []net.Listener
	fail := func(err error) error {
		for _, l := range lns {
			l.Close()
		}
		return err
	}
	if p := h.cfg.Socket; p != "" {
		// A path that cannot be the socket (a directory, a regular file,
		// a missing folder) is refused before the lock file is created
		// beside it (it left FILE.lock next to a refused FILE).
		if err := CheckSocketTarget(p); err != nil {
			return fail(err)
		}
		// The lock makes judging the socket stale and replacing it one
		// step: without it two agents starting in the same instant both
		// found the stale socket unanswered, both removed it, and the
		// second unlinked the first one's fresh socket and bound its own.
		lock, err := lockSocket(p)
		if err != nil {
			return fail(err)
		}
		if fi, err := os.Lstat(p); err == nil {
			if fi.Mode()&os.ModeSocket == 0 {
				lock.Close()
				return fail(fmt.Errorf("trigger socket %s: exists and is not a socket", p))
			}
			// Only a socket nobody listens on is stale (left by a killed
			// run): a live one belongs to another process (one that does
			// not take the lock, such as an older agent), and replacing it
			// would cut that one off from every card insert.
			if err := probeSocket(p); err != nil {
				lock.Close()
				return fail(err)
			}
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				lock.Close()
				return fail(fmt.Errorf("trigger socket %s: remove stale: %w", p, err))
			}
		}
		l, ino, err := listenUnix(p, h.mode, h.gid)
		if err != nil {
			lock.Close()
			return fail(err)
		}
		lns = append(lns, &lockedListener{Listener: l, lock: lock, path: p, ino: ino})
	}
	if h.cfg.Listen != "" {
		l, err := net.Listen("tcp", h.cfg.Listen)
		if err != nil {
			return fail(fmt.Errorf("trigger listen: %w", err))
		}
		lns = append(lns, l)
		if a, ok := l.Addr().(*net.TCPAddr); !ok || !a.IP.IsLoopback() {
			return fail(fmt.Errorf("trigger listen %q: bound to non-loopback %s", h.cfg.Listen, l.Addr()))
		}
		h.tcp = l.Addr()
	}
	h.lns = lns
	return nil
}

// lockSocket takes the lock of the trigger socket p: an exclusive
// advisory lock (flock) on p+".lock", created 0600 beside the socket and
// opened without following a symlink, so that of two agents started with
// the same socket at once exactly one goes on to judge and replace a stale
// socket and to listen. The holder writes its pid into the file for the
// other's error message. The caller holds the returned file for the
// listener's lifetime (lockedListener); closing it, or the process
// ending, releases the lock. The file itself stays: removing it would let
// a third starter lock a new file while a second still holds the old one.
func lockSocket(p string) (*os.File, error) {
	lp := p + ".lock"
	f, err := os.OpenFile(lp, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("trigger socket %s: lock file %s is a symbolic link: refusing to start", p, lp)
		}
		return nil, fmt.Errorf("trigger socket %s: lock file: %w", p, err)
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		if err == nil {
			err = errors.New("not a regular file")
		}
		return nil, fmt.Errorf("trigger socket %s: lock file %s: %w: refusing to start", p, lp, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			holder := ""
			if b, err := regfile.ReadFile(lp); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
					holder = fmt.Sprintf(" by pid %d", pid)
				}
			}
			return nil, fmt.Errorf("trigger socket %s is in use by another process: its lock %s is held%s (another atm-agent with the same trigger.http.socket, running or starting?): refusing to start", p, lp, holder)
		}
		return nil, fmt.Errorf("trigger socket %s: lock %s: %w", p, lp, err)
	}
	// Best effort: the pid only makes the other starter's message clearer.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// lockedListener is the socket's listener holding the socket's lock: Close
// closes the listener (which unlinks the socket) and then releases the
// lock, so the next starter never sees this one's socket as its own.
type lockedListener struct {
	net.Listener
	lock *os.File
	path string // the socket, removed on Close if it is still this one
	ino  uint64
	once sync.Once
}

func (l *lockedListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() {
		if fi, err := os.Lstat(l.path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Ino == l.ino {
				_ = os.Remove(l.path)
			}
		}
		l.lock.Close()
	})
	return err
}

// CheckSocketPath refuses a socket path a unix socket cannot have: over
// 107 bytes (sun_path and its NUL), or in a folder so deep that the private
// folder listenUnix binds in first (DIR/.tNNNNNNNNNN/s, up to 10 random
// digits) is over it. `config check` calls it, so that what run refuses
// does not pass the check.
func CheckSocketPath(p string) error {
	max := len(syscall.RawSockaddrUnix{}.Path) - 1
	if len(p) > max {
		return fmt.Errorf("trigger socket %s: %d bytes, the longest a unix socket path can be is %d", p, len(p), max)
	}
	if n := len(filepath.Dir(p)) + len("/.t") + 10 + len("/s"); n > max {
		return fmt.Errorf("trigger socket %s: its folder is too deep: the socket is bound first in a private folder beside it (%s/.tNNNNNNNNNN/s, %d bytes; at most %d)", p, filepath.Dir(p), n, max)
	}
	return nil
}

// ErrSocketFolderMissing is wrapped by CheckSocketTarget's error for a
// socket path whose folder does not exist (the agent creates no folder).
var ErrSocketFolderMissing = errors.New("does not exist (the agent creates no folder for its socket)")

// CheckSocketTarget refuses a socket path that Listen would refuse on this
// machine: one CheckSocketPath refuses, one whose folder is missing or is
// not a folder, one that exists and is not a socket (a directory, a
// regular file, a symbolic link: never replaced), and one whose lock file
// (p+".lock") exists and is not a regular file. Listen calls it before it
// creates the lock file, and `config check` calls it, so that both refuse
// the same paths. A socket nobody listens on (left by kill -9) passes:
// Listen replaces it.
func CheckSocketTarget(p string) error {
	if err := CheckSocketPath(p); err != nil {
		return err
	}
	dir := filepath.Dir(p)
	switch fi, err := os.Stat(dir); {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("trigger socket %s: its folder %s %w", p, dir, ErrSocketFolderMissing)
	case err != nil:
		return fmt.Errorf("trigger socket %s: %w", p, err)
	case !fi.IsDir():
		return fmt.Errorf("trigger socket %s: %s is not a folder but %s", p, dir, regfile.Kind(fi.Mode()))
	}
	switch fi, err := os.Lstat(p); {
	case err == nil && fi.Mode()&os.ModeSocket == 0:
		return fmt.Errorf("trigger socket %s: exists and is not a socket but %s: refusing to replace it (check trigger.http.socket)", p, regfile.Kind(fi.Mode()))
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("trigger socket %s: %w", p, err)
	}
	lp := p + ".lock"
	if fi, err := os.Lstat(lp); err == nil && !fi.Mode().IsRegular() {
		return fmt.Errorf("trigger socket %s: lock file %s is not a regular file but %s: refusing to start", p, lp, regfile.Kind(fi.Mode()))
	}
	return nil
}

// listenUnix listens on the unix socket p with mode and group gid (< 0:
// the process's) set before p exists: it binds in a new 0700 folder beside
// p, sets mode and group there and renames the socket to p. Binding at p
// and then chmod-ing left p, for that moment, with the permissions of the
// umask: under umask 000 (a run outside the unit, whose UMask=0077 hides
// it) every local user could connect, and a connection made then stays
// open after the chmod, posting card inserts at will. It returns the
// socket's inode, for Close to remove p only while it is this socket.
func listenUnix(p string, mode os.FileMode, gid int) (net.Listener, uint64, error) {
	if err := CheckSocketPath(p); err != nil {
		return nil, 0, err
	}
	dir, err := os.MkdirTemp(filepath.Dir(p), ".t")
	if err != nil {
		return nil, 0, fmt.Errorf("trigger socket %s: %w", p, err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	if len(tmp) >= len(syscall.RawSockaddrUnix{}.Path) {
		return nil, 0, fmt.Errorf("trigger socket %s: path too long (the socket is bound as %s first, at most %d bytes)", p, tmp, len(syscall.RawSockaddrUnix{}.Path)-1)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, 0, fmt.Errorf("trigger socket %s: %w", p, err)
	}
	l.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, uint64, error) {
		l.Close()
		return nil, 0, err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return fail(fmt.Errorf("trigger socket %s: chmod: %w", p, err))
	}
	if gid >= 0 {
		if err := os.Chown(tmp, -1, gid); err != nil {
			if errors.Is(err, fs.ErrPermission) {
				err = fmt.Errorf("%w (trigger.http.socket_group: this process is not a member of group %d; usermod -aG GROUP USER and restart)", err, gid)
			}
			return fail(fmt.Errorf("trigger socket %s: chown to group %d: %w", p, gid, err))
		}
	}
	fi, err := os.Lstat(tmp)
	if err != nil {
		return fail(fmt.Errorf("trigger socket %s: %w", p, err))
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	if st == nil {
		return fail(fmt.Errorf("trigger socket %s: no inode", p))
	}
	// rename(2) replaces p only if it reappeared since the stale check
	// under the lock: a socket nobody listens on.
	if err := os.Rename(tmp, p); err != nil {
		return fail(fmt.Errorf("trigger socket %s: %w", p, err))
	}
	return l, st.Ino, nil
}

// probeSocket connects to the existing socket p: nil if nobody listens on
// it (stale: connection refused, or it is gone), an error if something
// answers or the probe cannot tell.
func probeSocket(p string) error {
	c, err := net.DialTimeout("unix", p, time.Second)
	switch {
	case err == nil:
		c.Close()
		return fmt.Errorf("trigger socket %s is in use by another process (another atm-agent with the same trigger.http.socket?): refusing to start", p)
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, fs.ErrNotExist):
		return nil
	case errors.Is(err, syscall.EAGAIN): // a listener whose accept queue is full
		return fmt.Errorf("trigger socket %s is in use by another process (it is listening, its queue is full): refusing to start", p)
	default:
		return fmt.Errorf("trigger socket %s exists and cannot be probed: refusing to replace it: %w", p, err)
	}
}

// Run serves until ctx is done, sending events on out without blocking (a
// full out answers 503); see RunAdmit.
func (h *HTTP) Run(ctx context.Context, out chan<- visit.Trigger) error {
	return h.RunAdmit(ctx, h.offerAdmit(out))
}

// offerAdmit admits a trigger by offering it to out: a new visit or, when
// out is full, refused.
func (h *HTTP) offerAdmit(out chan<- visit.Trigger) func(visit.Trigger) visit.Admission {
	return func(ev visit.Trigger) visit.Admission {
		select {
		case out <- ev:
			return visit.Admission{ID: ev.ID}
		default:
			return visit.Admission{ID: ev.ID, Refused: true}
		}
	}
}

// RunAdmit serves until ctx is done, handing every trigger to admit (which
// must not block) and answering the client with its decision; then it
// shuts the server down (2 s grace for requests in flight) and returns nil
// after its serve goroutines end.
func (h *HTTP) RunAdmit(ctx context.Context, admit func(visit.Trigger) visit.Admission) error {
	if err := h.Listen(); err != nil {
		return err
	}
	h.mu.Lock()
	if h.used {
		h.mu.Unlock()
		return errors.New("trigger.http: Run called twice")
	}
	h.used = true
	lns := h.lns
	h.mu.Unlock()

	// Each listener has its own connection cap, so a flood of the TCP port
	// cannot take the socket's slots (or the metrics port's), and a flood
	// of idle or slowloris connections never queues a card insert: the
	// oldest connection without a request in progress makes room
	// (internal/netguard).
	srv := netguard.NewServer(h.AdmitHandler(admit), netguard.DefaultTimeouts, h.log)
	errc := make(chan error, len(lns))
	for _, l := range lns {
		max := MaxSocketConns
		if _, ok := l.Addr().(*net.TCPAddr); ok {
			max = MaxTCPConns
		}
		go func() { errc <- srv.Serve(netguard.Limit(l, max)) }() // exits when srv shuts down
	}
	h.log.Info("trigger endpoint listening", "socket", h.cfg.Socket, "tcp", h.cfg.Listen)
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("trigger endpoint: %w", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if serr := srv.Shutdown(sctx); serr != nil {
		srv.Close()
	}
	for range len(lns) - boolInt(err != nil) {
		<-errc
	}
	return err
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Handler returns the endpoint's handler, sending events on out without
// blocking.
func (h *HTTP) Handler(out chan<- visit.Trigger) http.Handler {
	return h.AdmitHandler(h.offerAdmit(out))
}

// Visit statuses in a POST /v1/visit reply.
const (
	StatusAccepted  = "accepted"  // a visit of its own was started or queued
	StatusCoalesced = "coalesced" // joined the already-queued visit whose id is returned
	StatusDuplicate = "duplicate" // txn_id seen within the window: the first visit's id, nothing new
)

// VisitReply is the body of a successful POST /v1/visit.
type VisitReply struct {
	ID     string `json:"id"`
	Time   string `json:"time"` // RFC 3339, UTC: when the trigger was received
	Status string `json:"status"`
}

// BodyTimeout bounds the reading of a request body, from the end of its
// headers: the body is at most max_body_bytes (4 KiB by default, 1 MiB at
// most) from a process on the same host, so a client still sending after
// this is stalled. Such a request is answered 408 and its connection
// closed (the server's read timeout, 10 s, would hold it much longer).
const BodyTimeout = 2 * time.Second

// AdmitHandler returns the endpoint's handler, handing triggers to admit.
func (h *HTTP) AdmitHandler(admit func(visit.Trigger) visit.Admission) http.Handler {
	visitH := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			abandonBody(w, r)
			w.Header().Set("Allow", http.MethodPost)
			writeError(w, http.StatusMethodNotAllowed, CodeMethodNotAllowed, "use POST")
			return
		}
		ctx, err := DecodeVisitRequest(http.MaxBytesReader(w, r.Body, h.cfg.MaxBodyBytes))
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				abandonBody(w, r)
				writeError(w, http.StatusRequestTimeout, CodeBodyTimeout, fmt.Sprintf("read body: not received within %v", BodyTimeout))
				return
			}
			status, code := http.StatusBadRequest, requestCode(err)
			if code == CodeTooLarge {
				status = http.StatusRequestEntityTooLarge
			}
			writeError(w, status, code, err.Error())
			return
		}
		now := h.clock.Now()
		ev := visit.Trigger{ID: NewID(), Time: now, Source: SourceSocket, Context: ctx}
		// The cache lock is held across admit (which never blocks) so
		// that two concurrent requests with one txn_id start one visit.
		h.txns.mu.Lock()
		if ctx.TxnID != "" {
			if e, ok := h.txns.lookup(ctx.TxnID, now); ok {
				h.txns.mu.Unlock()
				h.duplicates.Add(1)
				if ctx.CardHash != "" && e.card != "" && ctx.CardHash != e.card {
					// The contract keeps the first trigger's context; a
					// different card under one txn_id is the ATM
					// application's bug, worth a line of its own.
					h.log.Warn("socket trigger repeated with another card_hash: answered with the first visit, this card_hash not recorded", "visit", e.id)
				} else {
					h.log.Info("socket trigger repeated: answered with the first visit", "visit", e.id)
				}
				writeJSON(w, http.StatusOK, VisitReply{ID: e.id, Time: e.seen.UTC().Format(time.RFC3339Nano), Status: StatusDuplicate})
				return
			}
		}
		adm := admit(ev)
		if adm.Refused {
			h.txns.mu.Unlock()
			h.dropped.Add(1)
			w.Header().Set("Retry-After", "1")
			if adm.Full {
				h.log.Warn("socket trigger refused: the queued visit holds as many txn_ids or card hashes as it stores", "max", visit.MaxCoalesced, "dropped", h.dropped.Load())
				writeError(w, http.StatusServiceUnavailable, CodeCoalesceLimit,
					fmt.Sprintf("busy: the queued visit holds %d transaction ids or card hashes already; visit not started, retry", visit.MaxCoalesced))
				return
			}
			h.log.Warn("socket trigger dropped: consumer busy", "dropped", h.dropped.Load())
			writeError(w, http.StatusServiceUnavailable, CodeBusy, "busy: visit not started")
			return
		}
		if ctx.TxnID != "" {
			h.txns.add(ctx.TxnID, txnEntry{id: adm.ID, at: now, seen: now, card: ctx.CardHash})
		}
		h.txns.mu.Unlock()
		h.accepted.Add(1)
		status := StatusAccepted
		if adm.Coalesced {
			status = StatusCoalesced
			h.coalesced.Add(1)
		}
		writeJSON(w, http.StatusAccepted, VisitReply{ID: adm.ID, Time: now.UTC().Format(time.RFC3339Nano), Status: status})
	})
	healthH := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			abandonBody(w, r)
			w.Header().Set("Allow", http.MethodGet)
			writeError(w, http.StatusMethodNotAllowed, CodeMethodNotAllowed, "use GET")
			return
		}
		s := h.stats()
		body := map[string]any{"status": "ok", "accepted": s.Accepted, "dropped": s.Dropped,
			"duplicates": h.duplicates.Load(), "coalesced": h.coalesced.Load()}
		if h.version != "" {
			body["version"] = h.version
		}
		if h.readiness != nil {
			r := h.readiness()
			body["ready"], body["reasons"] = r.Ready, r.Reasons
			if r.Reasons == nil {
				body["reasons"] = []string{}
			}
			if r.Camera != "" {
				body["camera"] = r.Camera
			}
		}
		writeJSON(w, http.StatusOK, body)
	})
	// Routed here, not by http.ServeMux, which answered a path the API
	// does not have with a text/plain "404 page not found" (no JSON for
	// the client to parse, no Cache-Control) and an unclean path such as
	// /v1//visit with a bodiless 307 redirect (curl does not follow it;
	// Go's client re-posts). The path is cleaned as ServeMux cleans it and
	// served at once; any other path is a JSON 404.
	mux := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rest, ok := h.visitRest(r); ok {
			h.serveVisit(w, r, rest)
			return
		}
		switch cleanPath(r.URL.Path) {
		case "/v1/visit":
			visitH(w, r)
		case "/v1/health":
			healthH(w, r)
		default:
			abandonBody(w, r)
			writeError(w, http.StatusNotFound, CodeNotFound, "no such endpoint: the endpoints are POST /v1/visit, GET /v1/health and GET /v1/visits/{txn_id}")
		}
	})
	return h.knownHost(limitBodyTime(h.authenticate(mux)))
}

// cleanPath is p cleaned as http.ServeMux cleans a request path: "."
// and ".." elements and repeated slashes removed, a trailing slash kept.
func cleanPath(p string) string {
	if p == "" || p[0] != '/' {
		p = "/" + p
	}
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c
}

// limitBodyTime gives a request with a body BodyTimeout to send it.
func limitBodyTime(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength != 0 {
			_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(BodyTimeout))
		}
		next.ServeHTTP(w, r)
	})
}

// abandonBody makes the reply that follows the last on its connection and
// stops reading the request body: without it the server reads (discards)
// what the client still sends before it writes the reply, and after it,
// which lets a client that announces a body and never sends it hold the
// reply and the connection until the read deadline.
func abandonBody(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Connection", "close")
	if r.ContentLength != 0 {
		_ = http.NewResponseController(w).SetReadDeadline(time.Now())
	}
}

// knownHost answers 421 to a request over TCP whose Host is not an IP
// address, localhost or the machine's hostname (netguard.Hosts): a web
// page whose name was rebound to 127.0.0.1. The socket is never refused.
func (h *HTTP) knownHost(next http.Handler) http.Handler {
	hosts := netguard.NewHosts(nil)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hosts.Allowed(r) {
			abandonBody(w, r)
			h.log.Warn("trigger: request for an unknown host refused", "host", r.Host, "remote", r.RemoteAddr, "path", r.URL.Path)
			writeError(w, http.StatusMisdirectedRequest, CodeWrongHost, fmt.Sprintf("this endpoint does not answer to %q: use 127.0.0.1 or localhost", r.Host))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// authenticate answers 401 before anything reads the body, and closes the
// connection (abandonBody): a client without the token costs no wait.
func (h *HTTP) authenticate(next http.Handler) http.Handler {
	if !h.auth {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !netguard.BearerMatches(r.Header.Get("Authorization"), h.token) {
			abandonBody(w, r)
			w.Header().Set("WWW-Authenticate", `Bearer realm="atm-agent"`)
			writeError(w, http.StatusUnauthorized, CodeUnauthorized, "missing or wrong bearer token")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// DecodeVisitRequest decodes and validates a POST /v1/visit body: empty, or
// one JSON object with optional card_hash and txn_id (strings, each at most
// once, names matched exactly) and nothing else. JSON's white space (space,
// tab, CR, LF) around the object is allowed, and so is a UTF-8 byte order
// mark before it (RFC 8259 lets a parser ignore one): a body of only those
// is an empty body. Any other white space (a no-break space, say) is a 400.
func DecodeVisitRequest(r io.Reader) (visit.Context, error) {
	body, err := io.ReadAll(r)
	if err != nil {
		return visit.Context{}, fmt.Errorf("read body: %w", err)
	}
	body = bytes.TrimPrefix(body, []byte("\xef\xbb\xbf"))
	if len(bytes.Trim(body, " \t\r\n")) == 0 {
		return visit.Context{}, nil
	}
	c, err := decodeVisitObject(body)
	if err != nil {
		return visit.Context{}, fmt.Errorf("decode body: %w", err)
	}
	return CanonicalContext(c)
}

// decodeVisitObject reads the body's JSON object member by member.
// encoding/json's Unmarshal would match field names case-insensitively
// ({"TXN_ID":...} as txn_id) and let a repeated name override the first
// ({"txn_id":"T3","txn_id":"T4"} as T4); the contract has exact names,
// each at most once, string values.
func decodeVisitObject(body []byte) (visit.Context, error) {
	var c visit.Context
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber() // a number is refused as a value, never parsed
	errObject := errors.New("want one JSON object")
	if tok, err := dec.Token(); err != nil {
		return c, err
	} else if tok != json.Delim('{') {
		return c, errObject
	}
	var seen [2]bool
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return c, err
		}
		name, _ := tok.(string) // Token refuses a key that is not a string
		var dst *string
		var i int
		switch name {
		case "card_hash":
			dst, i = &c.CardHash, 0
		case "txn_id":
			dst, i = &c.TxnID, 1
		default:
			return c, fmt.Errorf("%w %s: the fields are card_hash and txn_id (names are case-sensitive)", errUnknownField, fieldName(name))
		}
		if seen[i] {
			return c, fmt.Errorf("%w %q", errDuplicateField, name)
		}
		seen[i] = true
		if tok, err = dec.Token(); err != nil {
			return c, err
		}
		v, ok := tok.(string)
		if !ok {
			return c, fmt.Errorf("%s: want a string", name)
		}
		*dst = v
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return c, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return c, errObject
	}
	return c, nil
}

// fieldName quotes an unknown field's name for an error message if it
// looks like a name (letters, '_', '-', '.', up to 32), never if it could
// be data (digits, anything longer).
func fieldName(s string) string {
	if len(s) == 0 || len(s) > 32 {
		return "(name not shown)"
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch == '_' || ch == '-' || ch == '.') {
			return "(name not shown)"
		}
	}
	return strconv.Quote(s)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// ErrorReply is the body of every error reply: Code for programs (one of
// the Code constants; docs/trigger-api.md, "Error codes"), Error for
// people (its words may change from release to release; it never quotes
// the value sent).
type ErrorReply struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// Error codes of the trigger API. A client decides by the code (and the
// HTTP status for a code it does not know), never by the error's words.
const (
	CodeBadJSON          = "bad_json"           // 400: not one JSON object with string values
	CodeUnknownField     = "unknown_field"      // 400: a member other than card_hash and txn_id
	CodeDuplicateField   = "duplicate_field"    // 400: a member given twice
	CodeLooksLikePAN     = "looks_like_pan"     // 400: a field holds a card number
	CodeTrackData        = "track_data"         // 400: a field holds magnetic-stripe track data
	CodeBadCardHash      = "bad_card_hash"      // 400: card_hash is not 32..128 hex or base64 characters
	CodeBadEncoding      = "bad_encoding"       // 400: card_hash does not decode (odd hex, mixed base64 alphabets)
	CodeBadTxnID         = "bad_txn_id"         // 400: txn_id is not 1..64 printable ASCII characters
	CodeUnauthorized     = "unauthorized"       // 401: missing or wrong bearer token
	CodeNotFound         = "not_found"          // 404: no such endpoint
	CodeMethodNotAllowed = "method_not_allowed" // 405
	CodeBodyTimeout      = "body_timeout"       // 408: the body did not arrive within BodyTimeout
	CodeTooLarge         = "too_large"          // 413: the body is over max_body_bytes
	CodeWrongHost        = "wrong_host"         // 421: over TCP, a Host that is not this machine
	CodeBusy             = "busy"               // 503: the consumer did not take the trigger
	CodeCoalesceLimit    = "coalesce_limit"     // 503: the queued visit has no room for this trigger's txn_id or card hash
)

var (
	errUnknownField   = errors.New("unknown field")
	errDuplicateField = errors.New("duplicate field")
)

// requestCode is the code of a POST /v1/visit body that DecodeVisitRequest
// refused. Card data comes first: a body with a card number in one field
// and a malformed other is reported as the card number (the error names
// both).
func requestCode(err error) string {
	var mbe *http.MaxBytesError
	for _, c := range []struct {
		err  error
		code string
	}{
		{ErrLooksLikePAN, CodeLooksLikePAN},
		{ErrTrackData, CodeTrackData},
		{ErrBadCardHash, CodeBadCardHash},
		{visit.ErrCardHashEncoding, CodeBadEncoding},
		{ErrBadTxnID, CodeBadTxnID},
		{errUnknownField, CodeUnknownField},
		{errDuplicateField, CodeDuplicateField},
	} {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	if errors.As(err, &mbe) {
		return CodeTooLarge
	}
	return CodeBadJSON
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, ErrorReply{Error: msg, Code: code})
}
