// Package netguard bounds what a local HTTP listener can cost the agent:
// a connection cap per listener that never queues a real request behind an
// idle or slow one, and the server timeouts that go with it.
//
// A plain cap (golang.org/x/net/netutil.LimitListener) bounds file
// descriptors but lets a flood of idle or slowloris connections hold every
// slot: a real client then waits in the kernel's accept queue behind the
// flood until the attacker's connections time out one by one (minutes for
// a few thousand). Listener instead accepts at once and, when it is at its
// cap, closes the connection that has waited longest without a request in
// progress (accepted but no request read yet, or idle between keep-alive
// requests), passing over one whose request bytes have arrived but are not
// read yet (the server is about to serve it). A client that sends its request as soon as it connects (the
// ATM application, a scraper) is therefore served however many idle
// connections there are; only a connection whose request is being read or
// answered is never closed, and those are bounded by the server's read and
// write timeouts. With every slot busy serving requests, Accept waits for
// one to end.
//
// Use: wrap the listener with Limit, and build the server with
// NewServer (or set Server.ConnState to ConnState) so the listener knows
// which connections are between requests.
package netguard

import (
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
		Handler:           h,
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
	gc := &conn{Conn: c, l: l, since: time.Now()}
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
// without a request in progress, the one that has waited longest, passing
// over any whose request bytes already sit unread in the kernel (its
// request arrived, the server has not got to it yet: under load that is
// a real client); if all have unread bytes, the oldest. nil if every
// connection is serving a request. l.mu is held.
func (l *Listener) oldestWaiting() *conn {
	var cands []*conn
	for c := range l.conns {
		if !c.busy.Load() {
			cands = append(cands, c)
		}
	}
	if len(cands) == 0 {
		return nil
	}
	slices.SortFunc(cands, func(a, b *conn) int { return a.waitingSince().Compare(b.waitingSince()) })
	for _, c := range cands {
		if !c.unread() {
			return c
		}
	}
	return cands[0]
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

// conn tracks whether a request is in progress on it.
type conn struct {
	net.Conn
	l      *Listener
	busy   atomic.Bool
	mu     sync.Mutex
	since  time.Time // accepted, or became idle
	closed sync.Once
}

func (c *conn) waitingSince() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.since
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.closed.Do(func() { c.l.remove(c) })
	return err
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
		c.busy.Store(true)
	case http.StateIdle:
		c.mu.Lock()
		c.since = time.Now()
		c.mu.Unlock()
		c.busy.Store(false)
	case http.StateHijacked, http.StateClosed:
		// The server closes it through c.Close (StateClosed), or the
		// handler owns it (StateHijacked): either way it no longer counts
		// against the cap once closed; a hijacked one is never evicted.
		c.busy.Store(true)
	}
}
