// Package record holds what callers hand the store and get back from it:
// the commit request and result, identities, relabels, new alerts and
// identity-engine members. Pure Go: the agent builds commits without
// linking bbolt (internal/layout checks it).
package record

import (
	"errors"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
)

// ErrDuplicateVisit is returned by a commit whose visit id is already stored.
var ErrDuplicateVisit = errors.New("visit id already stored")

// Identity is one unknown person as the identity engine sees it. The engine
// owns Status, Confidence, Model and Attrs; the store derives Count,
// FirstSeen and LastSeen from the visits assigned to it, in the same
// transaction, so they always agree with the visits bucket.
type Identity struct {
	ID         string            `json:"id"`
	Status     string            `json:"status"` // e.g. "pending", "confirmed"
	Confidence float32           `json:"confidence"`
	Model      string            `json:"model,omitempty"`
	Attrs      map[string]string `json:"attrs,omitempty"`
	Created    time.Time         `json:"created"`
	Updated    time.Time         `json:"updated"`
	// Derived by the store.
	Count     int       `json:"count"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
}

// Relabel moves one stored visit to another identity ("" unassigns it).
type Relabel struct {
	VisitID    string
	IdentityID string
	// Distance, when set, replaces the visit's stored distance.
	Distance *float32
}

// NewAlert is an alert with the outbox message announcing it. If an alert
// with the same ID is already stored, neither is written.
type NewAlert struct {
	Alert   visit.Alert
	Message *visit.OutboxMessage // may be nil
}

// Commit is everything one state change writes, in one transaction, in this
// order: identity upserts, the visit, relabels, identity deletions, alerts,
// outbox messages, then the outbox bound policy. Every field is optional.
type Commit struct {
	// Visit is stored when non-nil. The store assigns ID (when empty) and Seq
	// (when zero, from the per-device visit counter); Time must be set.
	Visit *visit.Visit
	// Identities are upserted before the visit is written, so a visit may
	// reference an identity created in the same commit.
	Identities []Identity
	// Relabels apply consolidation results to older visits. Visits no longer
	// stored (purged meanwhile) are skipped and reported.
	Relabels []Relabel
	// DeleteIdentities removes identities; one that still has visits after
	// the relabels fails the commit.
	DeleteIdentities []string
	Alerts           []NewAlert
	// Outbox messages to enqueue; Key and Seq are assigned here.
	Outbox []visit.OutboxMessage
}

// CommitResult says what a commit wrote.
type CommitResult struct {
	VisitID  string
	VisitSeq uint64
	// NewAlerts are the IDs of alerts written; DuplicateAlerts were already
	// stored and were skipped together with their messages.
	NewAlerts       []string
	DuplicateAlerts []string
	// Enqueued are the messages written to the outbox, with Key and Seq
	// (payloads omitted).
	Enqueued []visit.OutboxMessage
	// MissingRelabels are visit ids of relabels skipped because the visit is
	// gone.
	MissingRelabels []string
	// Dropped counts messages the bound policy dropped in this commit, by kind.
	Dropped map[string]uint64
}
