package cvcam

import (
	"net"
	"sync"
	"testing"
	"time"

	. "github.com/periocular/atm-agent/hal/camera"
)

// blackHole accepts TCP connections and never answers (the hostile test's
// bh.py); closing it closes the connections too.
func blackHole(t *testing.T) (addr string, closeAll func()) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	var once sync.Once
	closeAll = func() {
		once.Do(func() {
			l.Close()
			mu.Lock()
			defer mu.Unlock()
			for _, c := range conns {
				c.Close()
			}
		})
	}
	t.Cleanup(closeAll)
	return l.Addr().String(), closeAll
}

// The real driver against an RTSP server that accepts and never answers:
// OpenCV's open blocks (FFmpeg's own timeout is ~30 s), the supervisor
// abandons it after open_timeout and starts no other while it hangs, so
// one open (one OS thread in OpenCV) is in flight at most, however short
// open_timeout and reopen_max are. Before, a new open started every
// reopen_max and the agent's threads grew without limit.
func TestStreamBlackHoleOneOpenAtATime(t *testing.T) {
	addr, closeAll := blackHole(t)
	var mu sync.Mutex
	var opens, inFlight, maxIn int
	open := func(cfg Config) (Device, error) {
		mu.Lock()
		opens++
		inFlight++
		maxIn = max(maxIn, inFlight)
		mu.Unlock()
		defer func() {
			mu.Lock()
			inFlight--
			mu.Unlock()
		}()
		return Open(cfg)
	}
	c, err := New(Config{Source: "rtsp://" + addr + "/x", OpenTimeout: 100 * time.Millisecond,
		ReopenMin: 10 * time.Millisecond, ReopenMax: 20 * time.Millisecond, CloseTimeout: 100 * time.Millisecond}, open, nil)
	if err != nil {
		t.Fatal(err)
	}
	if k := c.Health().Kind; k != KindStream {
		t.Fatalf("kind %q", k)
	}
	startCamera(t, c)
	// 20 open timeouts' worth of reopen backoff.
	time.Sleep(2 * time.Second)
	mu.Lock()
	n, in, most := opens, inFlight, maxIn
	mu.Unlock()
	h := c.Health()
	t.Logf("after 2s: %d opens, %d in flight, at most %d; health %+v", n, in, most, h)
	if most != 1 {
		t.Errorf("%d opens in flight at once, want 1", most)
	}
	if in == 1 && !h.OpenBlocked {
		t.Errorf("an open hangs and Health.OpenBlocked is false: %+v", h)
	}
	// The server goes away: the hanging open fails, and the next one too;
	// still one at a time.
	closeAll()
	waitFor(t, "the hanging open to return", 40*time.Second, func() bool { return !c.Health().OpenBlocked })
	mu.Lock()
	most = maxIn
	mu.Unlock()
	if most != 1 {
		t.Errorf("%d opens in flight at once, want 1", most)
	}
}
