package web

import (
	"net"
	"sync"
	"time"
)

// revoked lists the sessions signed out on this instance before they
// expired, by session id (the cookie's random nonce), each until the
// session's own expiry. The store keeps every revocation durably and for
// all instances (storage.Store.RevokeSession); this set answers this
// instance's own sign-outs without asking the store and still refuses
// them if storing one failed.
type revoked struct {
	mu  sync.Mutex
	ids map[string]int64 // nonce -> unix expiry
}

// maxRevoked bounds the set; beyond it the entries closest to expiring go.
const maxRevoked = 100_000

func (v *revoked) add(id string, expires, now int64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.ids == nil {
		v.ids = map[string]int64{}
	}
	if len(v.ids) >= maxRevoked {
		for k, e := range v.ids {
			if e < now {
				delete(v.ids, k)
			}
		}
		for len(v.ids) >= maxRevoked {
			first, fe := "", int64(0)
			for k, e := range v.ids {
				if first == "" || e < fe {
					first, fe = k, e
				}
			}
			delete(v.ids, first)
		}
	}
	v.ids[id] = expires
}

func (v *revoked) has(id string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	_, ok := v.ids[id]
	return ok
}

// Sign-in throttling: after userFailLimit failed sign-ins for one name (or
// addrFailLimit from one client address), further tries wait a delay that
// doubles from 1 s up to maxLockout; a try during the delay is answered 429
// without running bcrypt. A name's count resets on a successful sign-in;
// any count is forgotten failWindow after its last failure.
const (
	userFailLimit = 5
	addrFailLimit = 20
	maxLockout    = 5 * time.Minute
	failWindow    = 15 * time.Minute
	maxThrottled  = 50_000
)

type failState struct {
	fails int
	until time.Time // locked until
	last  time.Time
}

type throttle struct {
	mu sync.Mutex
	m  map[string]*failState
}

func clientAddr(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}

// begin is called before checking a password: it refuses (with the wait)
// while the name or the address is locked, and otherwise counts the try as
// a failure up front, so parallel tries cannot all pass the check before
// any failure is recorded; succeed undoes it.
func (t *throttle) begin(user, addr string, now time.Time) (wait time.Duration, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[string]*failState{}
	}
	keys := [2]string{"u\x00" + user, "a\x00" + addr}
	for _, k := range keys {
		if st := t.m[k]; st != nil {
			if now.Sub(st.last) > failWindow && !now.Before(st.until) {
				delete(t.m, k)
			} else if w := st.until.Sub(now); w > 0 {
				return w, false
			}
		}
	}
	if len(t.m) >= maxThrottled {
		for k, st := range t.m {
			if now.Sub(st.last) > failWindow && !now.Before(st.until) {
				delete(t.m, k)
			}
		}
	}
	for i, k := range keys {
		st := t.m[k]
		if st == nil {
			if len(t.m) >= maxThrottled {
				continue // full of live entries: the other key still counts
			}
			st = &failState{}
			t.m[k] = st
		}
		st.fails++
		st.last = now
		limit := userFailLimit
		if i == 1 {
			limit = addrFailLimit
		}
		if st.fails >= limit {
			d := maxLockout
			if n := st.fails - limit; n < 20 {
				d = min(time.Second<<n, maxLockout)
			}
			st.until = now.Add(d)
		}
	}
	return 0, true
}

// succeed forgets the name's failures and takes back the address's
// up-front count for this try.
func (t *throttle) succeed(user, addr string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, "u\x00"+user)
	if st := t.m["a\x00"+addr]; st != nil && st.fails > 0 {
		st.fails--
		if st.fails < addrFailLimit {
			st.until = time.Time{}
		}
	}
}
