package trigger

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
)

// VisitsPath prefixes GET /v1/visits/{txn_id}, the outcome of the visit a
// txn_id was taken as.
const VisitsPath = "/v1/visits/"

// StoredVisit is what the agent's store says of one visit for GET
// /v1/visits/{txn_id}: never its identity's id, template or card data.
type StoredVisit struct {
	Time       time.Time // the visit's stored time (its trigger's)
	Outcome    string    // visit.Outcome: face, noface, lowquality, camera_error
	Mask       string    // visit.MaskState: masked, unmasked, unknown
	Identified bool      // an identity was assigned to the visit
	Coalesced  bool      // the txn_id asked about joined the visit (coalesced_txn_ids)
}

// ErrVisitNotStored is what a VisitLookup returns for a visit the store
// does not hold (yet): queued, being filmed, or not committed yet.
var ErrVisitNotStored = errors.New("visit not stored")

// VisitLookup returns the stored visit visitID, which the endpoint took
// txnID as; ErrVisitNotStored when the store does not hold it. It is
// bounded by ctx.
type VisitLookup func(ctx context.Context, visitID, txnID string) (StoredVisit, error)

// WithVisitLookup serves GET /v1/visits/{txn_id} with f (without it, that
// path is a 404 not_found like any path the endpoint does not serve).
func WithVisitLookup(f VisitLookup) HTTPOption { return func(h *HTTP) { h.lookup = f } }

// VisitStatus is the body of a 200 GET /v1/visits/{txn_id}.
type VisitStatus struct {
	TxnID      string `json:"txn_id"`
	ID         string `json:"id"`   // the visit id POST /v1/visit answered
	Time       string `json:"time"` // RFC 3339, UTC: the visit's time
	Outcome    string `json:"outcome"`
	Mask       string `json:"mask"`
	Identified bool   `json:"identified"`
	Coalesced  bool   `json:"coalesced"`
}

// More error codes, of GET /v1/visits/{txn_id}.
const (
	CodeVisitUnknown = "visit_unknown" // 404: the txn_id was not taken within the idempotency window, or its visit was lost
	CodeVisitPending = "visit_pending" // 404: taken, but its visit is not stored yet
	CodeStoreError   = "store_error"   // 503: the store did not answer
)

// serveVisit answers GET /v1/visits/{txn_id}; rest is the path after
// VisitsPath, still escaped.
func (h *HTTP) serveVisit(w http.ResponseWriter, r *http.Request, rest string) {
	if r.Method != http.MethodGet {
		abandonBody(w, r)
		w.Header().Set("Allow", http.MethodGet)
		writeError(w, http.StatusMethodNotAllowed, CodeMethodNotAllowed, "use GET")
		return
	}
	// The server has parsed the path: its escapes are valid.
	txn, _ := url.PathUnescape(rest)
	if err := ValidateContext(visit.Context{TxnID: txn}); err != nil {
		writeError(w, http.StatusBadRequest, requestCode(err), err.Error())
		return
	}
	h.txns.mu.Lock()
	e, ok := h.txns.lookup(txn, h.clock.Now())
	h.txns.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, CodeVisitUnknown, fmt.Sprintf("no visit was taken for this txn_id within the last %s (trigger.http.idempotency_window), or its visit could not be stored", h.txns.window))
		return
	}
	sv, err := h.lookup(r.Context(), e.id, txn)
	switch {
	case errors.Is(err, ErrVisitNotStored):
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusNotFound, CodeVisitPending, "the visit is queued, being filmed or not stored yet; ask again")
		return
	case err != nil:
		h.log.Warn("trigger: visit lookup failed", "visit", e.id, "err", err)
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, CodeStoreError, "the store did not answer; ask again")
		return
	}
	writeJSON(w, http.StatusOK, VisitStatus{TxnID: txn, ID: e.id, Time: sv.Time.UTC().Format(time.RFC3339Nano),
		Outcome: sv.Outcome, Mask: sv.Mask, Identified: sv.Identified, Coalesced: sv.Coalesced})
}

// visitRest returns the still-escaped txn_id of a GET /v1/visits/{txn_id}
// path, and whether r is one (the endpoint has a VisitLookup, and the id
// is not empty).
func (h *HTTP) visitRest(r *http.Request) (string, bool) {
	if h.lookup == nil {
		return "", false
	}
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), VisitsPath)
	return rest, ok && rest != ""
}
