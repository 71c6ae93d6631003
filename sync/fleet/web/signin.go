package web

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Sign-in throttling (docs/fleet.md "Sign-in"). Failures are counted per
// client address and typed name (a pair) and per client address:
//
//   - after pairFailLimit failures of one pair, its next try waits a delay
//     that doubles from 1 s up to maxLockout; a try during the delay is
//     answered 429 at once, without running bcrypt. So one client guesses
//     one user's password slowly, and nobody else is slowed by it.
//   - after addrFailLimit failures from one address (any names), the
//     address waits the same doubling delays, except for a user of the
//     users file whose pair has not reached pairFailLimit: their password is
//     still checked (a correct one signs in; a wrong one is answered 429 like
//     the rest), so a client spraying made-up names from a shared address
//     (a NAT, a proxy whose X-Forwarded-For is not trusted) does not lock the
//     real users of that address out.
//
// No count is kept per name alone: failures from other addresses never
// refuse a correct password. A successful sign-in forgets its pair's
// failures and takes back the try's count on the address; any count is
// forgotten failWindow after its last failure. The client address is the
// connection's, or, from a proxy listed in web.proxy_auth.trusted_proxies,
// the one X-Forwarded-For gives (signInAddr); IPv6 addresses count per /64.
//
// bcrypt runs at most checkSlots at once (half the CPUs, at least 1):
// a flood of sign-ins from many addresses costs at most that many cores;
// a try that finds no slot within checkWait is answered 503 with
// Retry-After.
const (
	pairFailLimit = 5
	addrFailLimit = 20
	maxLockout    = 5 * time.Minute
	failWindow    = 15 * time.Minute
	maxThrottled  = 50_000
)

var (
	checkSlots = max(1, runtime.NumCPU()/2)
	checkWait  = 10 * time.Second
)

type failState struct {
	fails int
	until time.Time // locked until
	last  time.Time
}

// stale: nothing to remember any more.
func (st *failState) stale(now time.Time) bool {
	return now.Sub(st.last) > failWindow && !now.Before(st.until)
}

// fail counts a failure, locking once fails reaches limit.
func (st *failState) fail(now time.Time, limit int) {
	st.fails++
	st.lock(now, limit)
}

// lock sets the delay of the failures counted, from now.
func (st *failState) lock(now time.Time, limit int) {
	st.last = now
	if st.fails >= limit {
		d := maxLockout
		if n := st.fails - limit; n < 20 {
			d = min(time.Second<<n, maxLockout)
		}
		st.until = now.Add(d)
	}
}

// verdict is what begin decides for one try.
type verdict int

const (
	tryCheck       verdict = iota // check the password
	tryCheckLocked                // check it; a wrong one is answered 429 (the address is locked)
	tryRefuse                     // 429 at once
	tryRefusePaced                // 429 after about one check's time (an unknown name's answer does not tell it apart from a user's)
)

type throttle struct {
	mu    sync.Mutex
	m     map[string]*failState // "p\x00addr\x00name" and "a\x00addr"
	slots chan struct{}         // one per password check running (checkSlots)
}

// acquire takes a check slot, waiting at most checkWait; release gives it back.
func (t *throttle) acquire(ctx context.Context) bool {
	t.mu.Lock()
	if t.slots == nil {
		t.slots = make(chan struct{}, checkSlots)
	}
	slots := t.slots
	t.mu.Unlock()
	wait := time.NewTimer(checkWait)
	defer wait.Stop()
	select {
	case slots <- struct{}{}:
		return true
	case <-wait.C:
	case <-ctx.Done():
	}
	return false
}

func (t *throttle) release() { <-t.slots }

// nameKey bounds what a typed name costs in memory: a user's name is at
// most 64 bytes (ParseUsers), anything longer is kept as a digest.
func nameKey(name string) string {
	if len(name) <= 64 {
		return name
	}
	h := sha256.Sum256([]byte(name))
	return "#" + hex.EncodeToString(h[:16])
}

// get returns the live state of key, creating it when create; nil when the
// table is full of live states (the try is then counted on its other key).
func (t *throttle) get(key string, now time.Time, create bool) *failState {
	st := t.m[key]
	if st != nil && st.stale(now) {
		delete(t.m, key)
		st = nil
	}
	if st != nil || !create {
		return st
	}
	if len(t.m) >= maxThrottled {
		for k, o := range t.m {
			if o.stale(now) {
				delete(t.m, k)
			}
		}
		if len(t.m) >= maxThrottled {
			return nil
		}
	}
	st = &failState{}
	t.m[key] = st
	return st
}

// begin is called before checking a password. known says whether name is
// a user of the users file. It counts the try as a failure up front, so
// parallel tries cannot all pass before any failure is recorded; succeed
// undoes it. wait is the delay a refusal (or a locked wrong password)
// announces.
func (t *throttle) begin(name, addr string, known bool, now time.Time) (wait time.Duration, v verdict) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[string]*failState{}
	}
	pk, ak := "p\x00"+addr+"\x00"+nameKey(name), "a\x00"+addr
	if st := t.get(pk, now, false); st != nil && now.Before(st.until) {
		return st.until.Sub(now), tryRefuse
	}
	v = tryCheck
	if st := t.get(ak, now, false); st != nil && now.Before(st.until) {
		if !known {
			return st.until.Sub(now), tryRefusePaced
		}
		wait, v = st.until.Sub(now), tryCheckLocked
	}
	if st := t.get(pk, now, true); st != nil {
		st.fail(now, pairFailLimit)
	}
	if st := t.get(ak, now, true); st != nil {
		st.fail(now, addrFailLimit)
	}
	return wait, v
}

// failed is called when a password check has failed: the delays its
// failures set run from now, not from when the check began (a check can
// take longer than the first delay).
func (t *throttle) failed(name, addr string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if st := t.m["p\x00"+addr+"\x00"+nameKey(name)]; st != nil {
		st.lock(now, pairFailLimit)
	}
	if st := t.m["a\x00"+addr]; st != nil {
		st.lock(now, addrFailLimit)
	}
}

// succeed forgets the pair's failures and takes back the address's
// up-front count for this try.
func (t *throttle) succeed(name, addr string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, "p\x00"+addr+"\x00"+nameKey(name))
	if st := t.m["a\x00"+addr]; st != nil && st.fails > 0 {
		st.fails--
		if st.fails < addrFailLimit {
			st.until = time.Time{}
		}
	}
}

// signInAddr is the client address the throttle counts: the connection's;
// from a trusted proxy (web.proxy_auth.trusted_proxies), the last address
// of X-Forwarded-For that is not itself a trusted proxy (the proxy appends
// the address it received the request from, so what a client wrote in the
// header comes before it and is passed over). An IPv6 address is counted
// by its /64, which one client usually holds whole.
func (s *Server) signInAddr(r *http.Request) string {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return clientAddr(r.RemoteAddr)
	}
	addr := ap.Addr().Unmap()
	if s.trustedProxy(addr) {
		fwd := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
		for i := len(fwd) - 1; i >= 0; i-- {
			a, err := netip.ParseAddr(strings.TrimSpace(fwd[i]))
			if err != nil {
				break // a malformed entry: the last good one is as far as the header can be trusted
			}
			addr = a.Unmap()
			if !s.trustedProxy(addr) {
				break
			}
		}
	}
	if addr.Is6() {
		p, _ := addr.Prefix(64)
		return p.String()
	}
	return addr.String()
}

func (s *Server) trustedProxy(a netip.Addr) bool {
	for _, p := range s.cfg.ProxyAuth.TrustedProxies {
		if pfx, err := netip.ParsePrefix(p); err == nil && pfx.Contains(a) {
			return true
		}
	}
	return false
}

// lastCheck is how long the last password check took: the pace of a
// refusal that must not answer faster than a check would.
var lastCheck atomic.Int64

// checkPassword runs the throttle and the password check of a sign-in.
// It answers the request itself (429, 503) and returns done when the
// password was not checked, or was wrong while its address is locked;
// otherwise the caller answers ok (signed in, the throttle told) or not.
func (s *Server) checkPassword(w http.ResponseWriter, r *http.Request, name, pw string) (u User, ok, done bool) {
	addr := s.signInAddr(r)
	users := s.allUsers() // one snapshot: a reload may swap them meanwhile
	_, known := users[name]
	wait, v := s.throttle.begin(name, addr, known, s.now())
	refuse := func() {
		secs := int((wait + time.Second - 1) / time.Second)
		s.log.Warn("fleet web: sign-in throttled", append(s.typedName(name), "remote", r.RemoteAddr, "client", addr, "wait", wait)...)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		httpError(w, r, CodeThrottled, fmt.Sprintf("too many failed sign-ins: try again in %d s", secs))
	}
	switch v {
	case tryRefuse:
		refuse()
		return User{}, false, true
	case tryRefusePaced:
		pause(r.Context(), time.Duration(cmp.Or(lastCheck.Load(), int64(250*time.Millisecond))))
		refuse()
		return User{}, false, true
	}
	if !s.throttle.acquire(r.Context()) {
		s.log.Warn("fleet web: sign-in refused: every password check slot busy", "remote", r.RemoteAddr, "slots", checkSlots)
		w.Header().Set("Retry-After", "1")
		httpError(w, r, CodeBusy, "busy checking other sign-ins: try again in a second")
		return User{}, false, true
	}
	t0 := time.Now()
	u, ok = users.Check(name, pw)
	lastCheck.Store(int64(time.Since(t0)))
	s.throttle.release()
	if ok {
		s.throttle.succeed(name, addr)
		return u, true, false
	}
	s.throttle.failed(name, addr, s.now())
	if v == tryCheckLocked {
		refuse()
		return User{}, false, true
	}
	return User{}, false, false
}

func clientAddr(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}

// pause waits d or until ctx ends.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
