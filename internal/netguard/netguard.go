// Package netguard bounds what a local HTTP listener can cost the agent:
// a connection cap per listener that never queues a real request behind an
// idle or slow one, and the server timeouts that go with it.
//
// A plain cap (golang.org/x/net/netutil.LimitListener) bounds file
// descriptors but lets a flood of idle or slowloris connections hold every
// slot: a real client then waits in the kernel's accept queue behind the
// flood until the attacker's connections time out one by one (minutes for
// a few thousand). Listener instead accepts at once and, when it is at its
// cap, closes the connection that has waited longest on its client:
// accepted but no request read yet, idle between keep-alive requests, or
// (with NewServer) stalled in the middle of its request body: the server
// is blocked reading a body the client announced but does not send. It
// passes over one whose bytes have arrived but are not read yet (the
// server is about to serve it). A client that sends its request as soon as
// it connects (the ATM application, a scraper) is therefore served however
// many idle or slow-body connections there are; a connection whose request
// is being handled or answered is never closed, and those are bounded by
// the server's read and write timeouts. With every slot busy serving
// requests, Accept waits for one to end.
//
// Use: wrap the listener with Limit and build the server with NewServer,
// which sets ConnState (so the listener knows which connections are
// between requests) and ConnContext with a handler wrapper (so it knows
// which are waiting for a request body). A server that only sets
// Server.ConnState to ConnState gets every rule but the slow-body one.
package netguard

import (
	"cmp"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Timeouts for a local HTTP endpoint whose requests are small and quick.
type Timeouts struct {
	ReadHeader time.Duration // the request line and headers, from the first byte
	Read       time.Duration // the whole request, body included
	Write      time.Duration // the response
	Idle       time.Duration // between keep-alive requests
	// MaxHeaderBytes bounds the request line and headers.
	MaxHeaderBytes int
}

// DefaultTimeouts suit the agent's endpoints (a card-insert POST of a few
// hundred bytes, a metrics scrape of a few KiB).
var DefaultTimeouts = Timeouts{ReadHeader: 5 * time.Second, Read: 10 * time.Second, Write: 10 * time.Second,
	Idle: 30 * time.Second, MaxHeaderBytes: 8 << 10}

// NewServer returns a server for h with the timeouts set and ConnState
// hooked to the Listeners it will serve. log receives the server's own
// errors at warn level; nil discards them.
func NewServer(h http.Handler, t Timeouts, log *slog.Logger) *http.Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &http.Server{
		Handler:           trackBodies(h),
		ConnContext:       connContext,
		ReadHeaderTimeout: t.ReadHeader,
		ReadTimeout:       t.Read,
		WriteTimeout:      t.Write,
		IdleTimeout:       t.Idle,
		MaxHeaderBytes:    t.MaxHeaderBytes,
		ConnState:         ConnState,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// Stats are a Listener's counters.
type Stats struct {
	Open     int    // connections open now
	Accepted uint64 // connections accepted in all
	Evicted  uint64 // closed to make room for a new one
}

// Listener is a net.Listener with a connection cap; see the package
// documentation. Create it with Limit.
type Listener struct {
	net.Listener
	max int

	mu    sync.Mutex
	conns map[*conn]struct{}
	freed chan struct{} // receives (non-blocking) when a connection closes
	done  chan struct{} // closed by Close
	close sync.Once

	accepted, evicted atomic.Uint64
}

// Limit wraps l so that at most max connections are open at once (max >= 1).
func Limit(l net.Listener, max int) *Listener {
	if max < 1 {
		max = 1
	}
	return &Listener{Listener: l, max: max, conns: map[*conn]struct{}{},
		freed: make(chan struct{}, 1), done: make(chan struct{})}
}

// Max returns the cap.
func (l *Listener) Max() int { return l.max }

// Stats returns the counters.
func (l *Listener) Stats() Stats {
	l.mu.Lock()
	n := len(l.conns)
	l.mu.Unlock()
	return Stats{Open: n, Accepted: l.accepted.Load(), Evicted: l.evicted.Load()}
}

// Close closes the listener (open connections are the server's to close).
func (l *Listener) Close() error {
	l.close.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// Accept waits for a connection. At the cap it first closes the open
// connection that has waited longest without a request in progress; if
// every connection is serving a request it waits until one closes.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.accepted.Add(1)
	gc := &conn{Conn: c, l: l}
	gc.touch()
	for {
		l.mu.Lock()
		if len(l.conns) < l.max {
			l.conns[gc] = struct{}{}
			l.mu.Unlock()
			return gc, nil
		}
		victim := l.oldestWaiting()
		l.mu.Unlock()
		if victim != nil {
			l.evicted.Add(1)
			victim.Close() // removes it from conns
			continue
		}
		select {
		case <-l.freed:
		case <-l.done:
			c.Close()
			return nil, net.ErrClosed
		}
	}
}

// oldestWaiting returns the connection to close to make room: of those
// waiting on their client (no request in progress, or a request body
// owed and the server blocked reading it), the one that has waited
// longest, passing over any whose bytes already sit unread in the kernel
// (its request or body arrived, the server has not got to it yet: under
// load that is a real client); if all have unread bytes, the oldest. nil
// if every connection is serving a request. l.mu is held.
func (l *Listener) oldestWaiting() *conn {
	var cands []*conn
	for c := range l.conns {
		if c.waiting() {
			cands = append(cands, c)
		}
	}
	if len(cands) == 0 {
		return nil
	}
	// Snapshot the times: they change under us (Read stamps them).
	since := make([]int64, len(cands))
	idx := make([]int, len(cands))
	for i, c := range cands {
		since[i], idx[i] = c.since.Load(), i
	}
	slices.SortFunc(idx, func(a, b int) int { return cmp.Compare(since[a], since[b]) })
	for _, i := range idx {
		if !cands[i].unread() {
			return cands[i]
		}
	}
	return cands[idx[0]]
}

// unread reports whether bytes are waiting in the kernel's receive buffer
// (a non-blocking MSG_PEEK of one byte).
func (c *conn) unread() bool {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	n := 0
	rc.Control(func(fd uintptr) {
		var b [1]byte
		n, _, _ = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	})
	return n > 0
}

func (l *Listener) remove(c *conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
	select {
	case l.freed <- struct{}{}:
	default:
	}
}

// conn tracks whether a request is in progress on it and whether the
// server waits for the client to send a request body.
type conn struct {
	net.Conn
	l    *Listener
	busy atomic.Bool // a request is in progress (or hijacked/closed)
	// body: the request in progress has a body the client has not finished
	// sending (set by trackBodies, cleared when the handler's reads reach
	// its end or at the next state change).
	body    atomic.Bool
	reading atomic.Int32 // Reads blocked in the kernel (or about to be)
	// since is when it started to wait on its client (UnixNano): accepted,
	// became idle, or (body owed) last received bytes.
	since  atomic.Int64
	closed sync.Once
}

func (c *conn) touch() { c.since.Store(time.Now().UnixNano()) }

// waiting reports whether c waits on its client: no request in progress,
// or a request whose body the server is blocked reading. A request being
// handled with its body read (or without one) is not waiting, even with
// the server's background read pending.
func (c *conn) waiting() bool {
	return !c.busy.Load() || (c.body.Load() && c.reading.Load() > 0)
}

// Read counts the reads in progress; while a body is owed, bytes received
// restart the wait.
func (c *conn) Read(p []byte) (int, error) {
	c.reading.Add(1)
	n, err := c.Conn.Read(p)
	if n > 0 && c.body.Load() {
		c.touch()
	}
	c.reading.Add(-1)
	return n, err
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.closed.Do(func() { c.l.remove(c) })
	return err
}

type connKey struct{}

// connContext is the http.Server.ConnContext hook that lets trackBodies
// find the Listener's connection of a request.
func connContext(ctx context.Context, nc net.Conn) context.Context {
	if c, ok := nc.(*conn); ok {
		return context.WithValue(ctx, connKey{}, c)
	}
	return ctx
}

// trackBodies marks a request's connection as owing a body until the
// handler's reads of r.Body reach its end (or fail). A handler that
// answers without reading the body leaves the mark set: the server then
// discards what the client still sends, and that wait is evictable too.
// (Its one blind spot: a handler that leaves the body unread, flushes a
// response, which makes the server discard the body, and keeps running;
// its connection stays marked, so at the cap it may be closed as if the
// client stalled. The agent's handlers do not do that.)
func trackBodies(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := r.Context().Value(connKey{}).(*conn)
		if ok && r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
			c.touch()
			c.body.Store(true)
			r.Body = &bodyReader{ReadCloser: r.Body, c: c}
		}
		h.ServeHTTP(w, r)
	})
}

type bodyReader struct {
	io.ReadCloser
	c *conn
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		// The end of the body (io.EOF), or it cannot be read (a timeout,
		// a closed connection, too large): the client owes nothing more
		// that the handler will wait for.
		b.c.body.Store(false)
	}
	return n, err
}

// ConnState is the http.Server.ConnState hook that tells a Listener which
// of its connections are serving a request. Connections of other listeners
// are ignored.
func ConnState(nc net.Conn, s http.ConnState) {
	c, ok := nc.(*conn)
	if !ok {
		return
	}
	switch s {
	case http.StateActive:
		c.body.Store(false)
		c.busy.Store(true)
	case http.StateIdle:
		c.body.Store(false)
		c.touch()
		c.busy.Store(false)
	case http.StateHijacked, http.StateClosed:
		// The server closes it through c.Close (StateClosed), or the
		// handler owns it (StateHijacked): either way it no longer counts
		// against the cap once closed; a hijacked one is never evicted.
		c.body.Store(false)
		c.busy.Store(true)
	}
}
