package trigger

import (
	"sync"
	"time"
)

// txnCache remembers, for a bounded time and number of entries, which visit
// each txn_id was admitted as, so that a client retrying after a timeout
// gets the first visit's id instead of a second visit.
type txnCache struct {
	window time.Duration
	max    int

	mu    sync.Mutex
	m     map[string]txnEntry
	order []txnKey // insertion order (oldest first), for expiry and eviction
}

type txnEntry struct {
	id   string
	at   time.Time // when the first trigger was admitted
	seen time.Time // the visit's trigger time
	card string    // the first trigger's card_hash ("" if none, or restored from the store)
}

type txnKey struct {
	txn string
	at  time.Time
}

func newTxnCache(window time.Duration, max int) *txnCache {
	return &txnCache{window: window, max: max, m: make(map[string]txnEntry)}
}

// expire drops entries older than the window, then the oldest ones beyond
// max; c.mu must be held.
func (c *txnCache) expire(now time.Time) {
	n := 0
	for n < len(c.order) {
		k := c.order[n]
		if now.Sub(k.at) < c.window && len(c.order)-n <= c.max {
			break
		}
		if e, ok := c.m[k.txn]; ok && e.at.Equal(k.at) {
			delete(c.m, k.txn)
		}
		n++
	}
	if n > 0 {
		c.order = append(c.order[:0], c.order[n:]...)
	}
}

// lookup returns the entry for txn admitted within the window; c.mu must
// be held.
func (c *txnCache) lookup(txn string, now time.Time) (txnEntry, bool) {
	c.expire(now)
	e, ok := c.m[txn]
	return e, ok
}

// add records txn as admitted at now as visit id; c.mu must be held.
func (c *txnCache) add(txn string, e txnEntry) {
	c.m[txn] = e
	c.order = append(c.order, txnKey{txn, e.at})
	c.expire(e.at)
}

func (c *txnCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// Remember adds a visit admitted before this process started to the
// idempotency window (the daemon reads them from its store at start), so a
// client that retries across a restart of the agent is still answered with
// the first visit's id. Entries older than the window, and txn_ids already
// known, are ignored. Call it in time order, before serving.
func (h *HTTP) Remember(txnID, visitID string, at time.Time) {
	now := h.clock.Now()
	if txnID == "" || now.Sub(at) >= h.txns.window {
		return
	}
	h.txns.mu.Lock()
	defer h.txns.mu.Unlock()
	if _, ok := h.txns.lookup(txnID, now); ok {
		return
	}
	h.txns.add(txnID, txnEntry{id: visitID, at: at, seen: at})
}

// Forget drops the txn_ids admitted as visit visitID (its own and those
// coalesced into it) and returns how many: the agent calls it when that
// visit could not be stored, so a client's retry starts a new visit instead
// of being told "duplicate" for a visit that does not exist.
func (h *HTTP) Forget(visitID string) int {
	h.txns.mu.Lock()
	defer h.txns.mu.Unlock()
	n := 0
	for txn, e := range h.txns.m {
		if e.id == visitID {
			delete(h.txns.m, txn)
			n++
		}
	}
	return n
}

// IdempotencyWindow is how long a txn_id is remembered.
func (h *HTTP) IdempotencyWindow() time.Duration { return h.txns.window }
