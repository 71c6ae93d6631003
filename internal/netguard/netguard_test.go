package netguard

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/netutil"
)

// serve starts a server with h on a loopback listener capped at max, wrapped
// by wrap (Limit, or netutil.LimitListener for the comparison).
func serve(t *testing.T, h http.Handler, tm Timeouts, wrap func(net.Listener) net.Listener) (string, net.Listener) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := wrap(ln)
	srv := NewServer(h, tm, nil)
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(l) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return ln.Addr().String(), l
}

var ok = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })

// flood opens n connections to addr in parallel that each do what kind
// says and then stay open; they are closed at the end of the test.
func flood(t *testing.T, addr string, n int, kind string) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c, err := net.DialTimeout("tcp", addr, 2*time.Second)
			if err != nil {
				errs[i] = err
				return
			}
			conns[i] = c
			switch kind {
			case "keepalive": // one request, then idle on a kept-alive connection
				fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
				c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
				http.ReadResponse(bufio.NewReader(c), nil) // an evicted or unserved one fails: fine for a flood
			case "slowloris": // a request line and part of the headers
				fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\nX-A: ")
			case "slowbody": // whole headers, then 1 byte of a 4000-byte body
				fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n{")
			}
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	for i, err := range errs {
		if err != nil {
			t.Fatalf("flood connection %d: %v", i, err)
		}
	}
	return conns
}

// get does one request on a new connection and returns how long it took.
func get(addr string, timeout time.Duration) (time.Duration, error) {
	t0 := time.Now()
	c := http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
	r, err := c.Get("http://" + addr + "/")
	if err != nil {
		return time.Since(t0), err
	}
	io.Copy(io.Discard, r.Body)
	r.Body.Close()
	if r.StatusCode != 200 {
		return time.Since(t0), fmt.Errorf("status %d", r.StatusCode)
	}
	return time.Since(t0), nil
}

// Under a flood of idle, kept-alive and slowloris connections far above the
// cap, the listener holds at most its cap and a new client is served at
// once. With netutil.LimitListener (the same cap) the same client waits
// behind the flood until the timeouts free slots: the test fails there.
func TestFloodServedAtCap(t *testing.T) {
	const max, n = 8, 300
	tm := Timeouts{ReadHeader: 3 * time.Second, Read: 3 * time.Second, Write: 3 * time.Second, Idle: 30 * time.Second}
	for _, kind := range []string{"idle", "keepalive", "slowloris"} {
		t.Run(kind, func(t *testing.T) {
			addr, l := serve(t, ok, tm, func(l net.Listener) net.Listener { return Limit(l, max) })
			flood(t, addr, n, kind)
			for i := 0; i < 5; i++ {
				d, err := get(addr, 2*time.Second)
				if err != nil {
					t.Fatalf("request %d under a flood of %d %s connections: %v after %v", i, n, kind, err, d)
				}
				if d > 500*time.Millisecond {
					t.Errorf("request %d took %v under the flood", i, d)
				}
			}
			st := l.(*Listener).Stats()
			if st.Open > max {
				t.Errorf("%d connections open, cap %d", st.Open, max)
			}
			t.Logf("%s: %d flood connections, cap %d: open %d, accepted %d, evicted %d", kind, n, max, st.Open, st.Accepted, st.Evicted)
		})
	}
	t.Run("netutil.LimitListener", func(t *testing.T) {
		addr, _ := serve(t, ok, tm, func(l net.Listener) net.Listener { return netutil.LimitListener(l, max) })
		flood(t, addr, n, "keepalive")
		if d, err := get(addr, time.Second); err == nil {
			t.Fatalf("a plain cap served a request within %v under the flood; the flood did not hold the slots", d)
		} else {
			t.Logf("plain cap under a keep-alive flood: %v after %v (what Limit prevents)", err, d.Round(time.Millisecond))
		}
	})
}

// A connection serving a request is never closed to make room: with every
// slot busy, a new connection waits until one ends, then is served. That
// holds for a POST whose body the handler has read, while the server's
// background read is pending on its connection (only a connection the
// server waits on for body bytes is evictable, see TestSlowBodyEvicted).
func TestBusyNotEvicted(t *testing.T) {
	for _, method := range []string{"GET", "POST"} {
		t.Run(method, func(t *testing.T) { testBusyNotEvicted(t, method) })
	}
}

func testBusyNotEvicted(t *testing.T, method string) {
	const max = 3
	release := make(chan struct{})
	var started sync.WaitGroup
	started.Add(max)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			if b, err := io.ReadAll(r.Body); err != nil || (method == "POST" && string(b) != `{"txn_id":"T1"}`) {
				t.Errorf("body %q, %v", b, err)
			}
			started.Done()
			<-release
		}
		io.WriteString(w, "ok\n")
	})
	addr, l := serve(t, h, DefaultTimeouts, func(l net.Listener) net.Listener { return Limit(l, max) })
	errs := make(chan error, max)
	for i := 0; i < max; i++ {
		go func() {
			c := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			var body io.Reader
			if method == "POST" {
				body = strings.NewReader(`{"txn_id":"T1"}`)
			}
			req, _ := http.NewRequest(method, "http://"+addr+"/slow", body)
			r, err := c.Do(req)
			if err == nil {
				r.Body.Close()
			}
			errs <- err
		}()
	}
	started.Wait()
	time.Sleep(20 * time.Millisecond) // the background reads are pending
	if _, err := get(addr, 300*time.Millisecond); err == nil {
		t.Fatal("a request was served while every slot was busy: a busy connection was evicted or the cap not applied")
	}
	got := make(chan error, 1)
	go func() { _, err := get(addr, 5*time.Second); got <- err }()
	time.Sleep(100 * time.Millisecond)
	close(release)
	for i := 0; i < max; i++ {
		if err := <-errs; err != nil {
			t.Errorf("slow request %d: %v (evicted?)", i, err)
		}
	}
	if err := <-got; err != nil {
		t.Errorf("the waiting request after a slot freed: %v", err)
	}
	if st := l.(*Listener).Stats(); st.Evicted != 1 { // the timed-out probe's connection
		t.Logf("stats %+v", st)
	}
}

// The server's timeouts: a slowloris connection is closed after
// ReadHeader, an idle keep-alive one after Idle.
func TestTimeoutsClose(t *testing.T) {
	tm := Timeouts{ReadHeader: 300 * time.Millisecond, Read: time.Second, Write: time.Second, Idle: 300 * time.Millisecond}
	addr, l := serve(t, ok, tm, func(l net.Listener) net.Listener { return Limit(l, 100) })
	for _, kind := range []string{"slowloris", "keepalive", "idle"} {
		c := flood(t, addr, 1, kind)[0]
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		t0 := time.Now()
		b, err := io.ReadAll(c)
		d := time.Since(t0)
		if err != nil || d > 2*time.Second {
			t.Errorf("%s connection not closed by the server: %v after %v", kind, err, d)
		}
		if kind != "keepalive" && len(b) > 0 && !strings.Contains(string(b), "408") && !strings.Contains(string(b), "400") {
			t.Logf("%s: server wrote %q", kind, b)
		}
	}
	time.Sleep(50 * time.Millisecond)
	if st := l.(*Listener).Stats(); st.Open != 0 {
		t.Errorf("%d connections still counted after the server closed them", st.Open)
	}
}

// Close unblocks an Accept that waits for a free slot.
func TestCloseUnblocksAccept(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := Limit(ln, 1)
	c1, _ := net.Dial("tcp", ln.Addr().String())
	defer c1.Close()
	a, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	ConnState(a, http.StateActive) // busy: not evictable
	c2, _ := net.Dial("tcp", ln.Addr().String())
	defer c2.Close()
	done := make(chan error, 1)
	go func() { _, err := l.Accept(); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("Accept returned %v with the only slot busy", err)
	case <-time.After(100 * time.Millisecond):
	}
	l.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Accept after Close returned a connection")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Accept still blocked 2 s after Close")
	}
	a.Close()
}

// At the cap, a connection whose request has arrived but is not read yet
// (a starved server) is passed over even when it is the oldest; the oldest
// silent one is closed instead.
func TestUnreadRequestNotEvicted(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := Limit(ln, 3)
	defer l.Close()
	var clients []net.Conn
	var accepted []net.Conn
	for i := range 3 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if i == 0 {
			io.WriteString(c, "POST /v1/visit HTTP/1.1\r\nHost: x\r\n\r\n") // the real client, oldest
		}
		clients = append(clients, c)
		a, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		accepted = append(accepted, a)
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // the request bytes reach the server's socket
	c4, _ := net.Dial("tcp", ln.Addr().String())
	defer c4.Close()
	if _, err := l.Accept(); err != nil {
		t.Fatal(err)
	}
	// The real client's connection is open (its server side still reads
	// its bytes); the first silent one (clients[1]) was closed.
	buf := make([]byte, 64)
	accepted[0].SetReadDeadline(time.Now().Add(time.Second))
	if n, err := accepted[0].Read(buf); err != nil || !strings.HasPrefix(string(buf[:n]), "POST") {
		t.Fatalf("the connection with an unread request was evicted: %d %v", n, err)
	}
	clients[1].SetReadDeadline(time.Now().Add(time.Second))
	if _, err := clients[1].Read(buf); err != io.EOF {
		t.Errorf("the oldest silent connection was not closed: %v", err)
	}
	if st := l.Stats(); st.Evicted != 1 || st.Open != 3 {
		t.Errorf("stats %+v, want 1 evicted, 3 open", st)
	}
}

// A flood of connections that send their headers and then stall in the
// request body holds a connection each (the server blocks reading the
// body, or discarding it after a handler that ignores it). At the cap the
// one stalled longest is closed, so a real request is served at once;
// without the slow-body rule every slot stays busy until the read timeout
// (3 s here) and the request times out.
func TestSlowBodyEvicted(t *testing.T) {
	const max, n = 8, 100
	tm := Timeouts{ReadHeader: 3 * time.Second, Read: 3 * time.Second, Write: 3 * time.Second, Idle: 30 * time.Second}
	handlers := map[string]http.Handler{
		"reads body": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if _, err := io.Copy(io.Discard, r.Body); err != nil {
				return
			}
			io.WriteString(w, "ok\n")
		}),
		"ignores body": ok,
	}
	for name, h := range handlers {
		t.Run(name, func(t *testing.T) {
			addr, l := serve(t, h, tm, func(l net.Listener) net.Listener { return Limit(l, max) })
			flood(t, addr, n, "slowbody")
			time.Sleep(100 * time.Millisecond) // the handlers are blocked on the bodies
			for i := 0; i < 5; i++ {
				d, err := get(addr, 2*time.Second)
				if err != nil {
					t.Fatalf("request %d under a flood of %d slow-body connections: %v after %v", i, n, err, d)
				}
				if d > 500*time.Millisecond {
					t.Errorf("request %d took %v under the flood", i, d)
				}
			}
			st := l.(*Listener).Stats()
			if st.Open > max {
				t.Errorf("%d connections open, cap %d", st.Open, max)
			}
			t.Logf("%s: %d slow-body connections, cap %d: open %d, accepted %d, evicted %d", name, n, max, st.Open, st.Accepted, st.Evicted)
		})
	}
}
