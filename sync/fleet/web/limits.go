package web

import (
	"sync"
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
