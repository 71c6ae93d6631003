package web

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// fromAddr is a client of base whose connections come from the loopback
// address local (127.0.0.0/8 is all loopback on Linux).
func fromAddr(t *testing.T, base, local string) *client {
	c := newClient(t, base)
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	c.Transport = &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return d.DialContext(ctx, network, addr)
	}}
	return c
}

// signIn posts a sign-in with the form's token: the status and the
// Location.
func (c *client) signIn(user, pw string, hdr ...string) (int, string) {
	c.t.Helper()
	_, page := c.get("/login")
	m := hiddenRe.FindStringSubmatch(page)
	if m == nil {
		c.t.Fatalf("no sign-in token in %.200s", page)
	}
	r, _ := c.post("/login", url.Values{"csrf": {m[1]}, "user": {user}, "password": {pw}, "next": {"/alerts"}}, hdr...)
	return r.StatusCode, r.Header.Get("Location")
}

// attack guesses ana's password 40 times and sprays 30 made-up names from
// c (hdr: extra headers of each try, e.g. a forged X-Forwarded-For) and
// checks that the guessing is throttled: at most pairFailLimit of ana's
// wrong passwords checked, the right one from there refused, and the
// made-up names refused past addrFailLimit.
func attack(t *testing.T, c *client, hdr func(i int) []string) {
	t.Helper()
	// Made-up names are checked against a cheap hash here (the real one
	// costs as much as a user's: about 0.3 s each).
	defer func(h func() []byte) { dummyHash = h }(dummyHash)
	cheap, _ := bcrypt.GenerateFromPassword([]byte("not a password"), bcrypt.MinCost)
	dummyHash = func() []byte { return cheap }
	checked := 0
	for i := range 40 {
		switch code, _ := c.signIn("ana", fmt.Sprintf("guess %d", i), hdr(i)...); code {
		case http.StatusSeeOther:
			checked++
		case http.StatusTooManyRequests:
		default:
			t.Fatalf("guess %d: %d", i, code)
		}
	}
	if checked > pairFailLimit {
		t.Errorf("%d of ana's 40 guessed passwords checked, want <= %d", checked, pairFailLimit)
	}
	// The right password is refused there too.
	if code, _ := c.signIn("ana", "correct horse", hdr(40)...); code != http.StatusTooManyRequests {
		t.Errorf("attacker's right password for ana after 40 guesses: %d, want 429", code)
	}
	refused := 0
	for i := range 30 {
		if code, _ := c.signIn(fmt.Sprintf("made-up-%d", i), "nope", hdr(41+i)...); code == http.StatusTooManyRequests {
			refused++
		}
	}
	if refused < 30-addrFailLimit {
		t.Errorf("%d of 30 made-up names refused from the attacker's address, want >= %d", refused, 30-addrFailLimit)
	}
}

// An attacker's failures, for a user and for made-up names, throttle the
// attacker only: the user signs in from another address at once, and a
// user the attacker has not guessed for signs in from the attacker's own
// address (a shared NAT).
func TestSignInNoLockout(t *testing.T) {
	s, hs := newTestServer(t, openBolt(t))
	frozen := time.Now()
	s.now = func() time.Time { return frozen } // no delay runs out during the test
	// Its forged X-Forwarded-For, from an untrusted address, changes nothing.
	attack(t, fromAddr(t, hs.URL, "127.0.0.2"), func(int) []string { return []string{"X-Forwarded-For", "127.0.0.3"} })
	if code, loc := fromAddr(t, hs.URL, "127.0.0.3").signIn("ana", "correct horse"); code != http.StatusSeeOther || loc != "/alerts" {
		t.Errorf("ana from another address after the attack: %d %q, want 303 /alerts", code, loc)
	}
	if code, loc := fromAddr(t, hs.URL, "127.0.0.2").signIn("root", "correct horse"); code != http.StatusSeeOther || loc != "/alerts" {
		t.Errorf("root from the attacker's address: %d %q, want 303 /alerts", code, loc)
	}
}

// Behind a trusted reverse proxy every connection comes from the proxy;
// the client's address is the one the proxy appends to X-Forwarded-For,
// whatever the client wrote there.
func TestSignInNoLockoutBehindProxy(t *testing.T) {
	cfg := DefaultConfig()
	cfg.UsersFile = "unused"
	cfg.ProxyAuth.TrustedProxies = []string{"127.0.0.1/32"}
	frozen := time.Now()
	s, err := New(cfg, openBolt(t), testUsers(t), []byte(strings.Repeat("k", 32)), Deps{Now: func() time.Time { return frozen }})
	if err != nil {
		t.Fatal(err)
	}
	fleet := httptest.NewServer(s.Handler())
	t.Cleanup(fleet.Close)
	target, _ := url.Parse(fleet.URL)
	proxy := httptest.NewServer(httputil.NewSingleHostReverseProxy(target)) // appends the client's address to X-Forwarded-For
	t.Cleanup(proxy.Close)

	attack(t, fromAddr(t, proxy.URL, "127.0.0.2"), func(i int) []string {
		return []string{"X-Forwarded-For", fmt.Sprintf("198.51.100.%d", i%250)} // a new forged address each time
	})
	if code, loc := fromAddr(t, proxy.URL, "127.0.0.3").signIn("ana", "correct horse"); code != http.StatusSeeOther || loc != "/alerts" {
		t.Errorf("ana through the proxy from another address: %d %q, want 303 /alerts", code, loc)
	}
	// A client's address the fleet never saw: what the proxy forwarded.
	if got := s.signInAddr(&http.Request{RemoteAddr: "127.0.0.1:5000",
		Header: http.Header{"X-Forwarded-For": {"203.0.113.7, 2001:db8:1:2:3::9", "127.0.0.1"}}}); got != "2001:db8:1:2::/64" {
		t.Errorf("address through two proxies, IPv6 client: %q", got)
	}
	if got := s.signInAddr(&http.Request{RemoteAddr: "127.0.0.2:5000", Header: http.Header{"X-Forwarded-For": {"203.0.113.7"}}}); got != "127.0.0.2" {
		t.Errorf("X-Forwarded-For from an untrusted address: taken as %q", got)
	}
}

// The delays double per (address, name); every password check waits for
// one of checkSlots, and a try that finds none in checkWait gets 503.
func TestSignInThrottleUnit(t *testing.T) {
	var th throttle
	t0 := time.Unix(1000, 0)
	for range pairFailLimit {
		th.begin("bob", "10.0.0.1", true, t0)
	}
	if w, v := th.begin("bob", "10.0.0.1", true, t0); v != tryRefuse || w != time.Second {
		t.Errorf("after 5 failures: wait %v verdict %v, want 1s refused", w, v)
	}
	if _, v := th.begin("bob", "10.0.0.2", true, t0); v != tryCheck {
		t.Errorf("bob from another address: verdict %v, want checked", v)
	}
	th.begin("bob", "10.0.0.1", true, t0.Add(time.Second))
	if w, v := th.begin("bob", "10.0.0.1", true, t0.Add(time.Second)); v != tryRefuse || w != 2*time.Second {
		t.Errorf("after 6 failures: wait %v verdict %v, want 2s", w, v)
	}
	// One address spraying many names is locked for names it does not
	// know; a user's password is still checked there.
	for i := range addrFailLimit {
		th.begin(fmt.Sprint("x", i), "10.0.0.9", false, t0)
	}
	if _, v := th.begin("zz", "10.0.0.9", false, t0); v != tryRefusePaced {
		t.Errorf("unknown name from a spraying address: verdict %v, want refused", v)
	}
	if _, v := th.begin("bob", "10.0.0.9", true, t0); v != tryCheckLocked {
		t.Errorf("user from a spraying address: verdict %v, want checked", v)
	}
	// Forgotten failWindow after the last failure, once the delay is over.
	if _, v := th.begin("bob", "10.0.0.1", true, t0.Add(failWindow+maxLockout)); v != tryCheck {
		t.Errorf("after the window: verdict %v", v)
	}

	s, hs := newTestServer(t, openBolt(t))
	c := newClient(t, hs.URL)
	_, page := c.get("/login")
	busy(s, func() {
		r, _ := c.post("/login", url.Values{"csrf": {hiddenRe.FindStringSubmatch(page)[1]}, "user": {"ana"}, "password": {"correct horse"}})
		if r.StatusCode != http.StatusServiceUnavailable || r.Header.Get("Retry-After") != "1" {
			t.Errorf("sign-in with every check slot busy: %d, Retry-After %q, want 503, 1", r.StatusCode, r.Header.Get("Retry-After"))
		}
	})
	if code, _ := c.signIn("ana", "correct horse"); code != http.StatusSeeOther {
		t.Errorf("sign-in with the slots free again: %d", code)
	}
}

// busy runs f while every password check slot of s is taken (and a try
// waits 200 ms for one).
func busy(s *Server, f func()) {
	defer func(w time.Duration) { checkWait = w }(checkWait)
	checkWait = 200 * time.Millisecond
	for s.throttle.acquire(context.Background()) {
	}
	f()
	for range checkSlots {
		s.throttle.release()
	}
}
