// Package record holds what callers hand the store and get back from it:
// the commit request and result, identities, relabels, new alerts and
// identity-engine members. Pure Go: the agent builds commits without
// linking bbolt (internal/layout checks it).
package record

import (
	"errors"
	"fmt"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
)

// ErrDuplicateVisit is returned by a commit whose visit id is already stored.
var ErrDuplicateVisit = errors.New("visit id already stored")

// ErrNotFound is returned for a record that is not stored (an identity
// purge_identity names, a visit...).
var ErrNotFound = errors.New("not found")

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
// order: identity upserts, the visit, relabels, identity deletions,
// constraints, alerts, outbox messages, then the outbox bound policy. Every field is optional.
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
	// Constraints are stored (replacing one of the same ID) after the
	// relabels and DeleteConstraints removed; every visit a constraint
	// names must be stored, or the commit fails.
	Constraints       []Constraint
	DeleteConstraints []string
	// CarryCooldowns gives identity To, for every rule, the later of its
	// own last alert and From's (the cooldowns), as a merge does for the
	// identity it deletes; From keeps its own. An analyst's split hands the
	// split identity's cooldowns to the new one.
	CarryCooldowns []CooldownCarry
}

// CooldownCarry names the identity whose cooldowns another inherits.
type CooldownCarry struct {
	From, To string
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

// Constraint kinds.
const (
	// ConstraintApart: no visit of A is ever grouped with a visit of B (an
	// analyst's split: A the visits moved off, B those that stayed).
	ConstraintApart = "apart"
	// ConstraintTogether: the visits of A always stay in one identity (an
	// analyst's merge); B is empty.
	ConstraintTogether = "together"
)

// Constraint is an analyst's correction of the identity engine's grouping,
// which consolidation respects from then on. It names visits, not
// identities: identity ids change with consolidation, visits do not. A
// constraint whose visits are deleted (retention, purge_identity) shrinks
// with them and goes once it constrains nothing (Prune).
type Constraint struct {
	ID      string    `json:"id"`
	Kind    string    `json:"kind"`
	Created time.Time `json:"created"`
	A       []string  `json:"a"`
	B       []string  `json:"b,omitempty"`
	// Moved, in a together constraint, are the visits of A that an
	// analyst's merge moved (the identity merged away's, and those of the
	// merges it absorbed), as an apart constraint's A are those a split
	// moved: the review marks them corrected. Empty in an apart one.
	Moved []string `json:"moved,omitempty"`
}

// Check says whether c is well formed and constrains something: apart
// needs a visit on each side and no visit on both, together two visits and
// no B.
func (c Constraint) Check() error {
	if c.ID == "" {
		return errors.New("constraint: empty id")
	}
	seen := map[string]int{}
	for side, vs := range [][]string{c.A, c.B} {
		for _, v := range vs {
			if v == "" {
				return fmt.Errorf("constraint %s: empty visit id", c.ID)
			}
			if s, dup := seen[v]; dup {
				if s != side {
					return fmt.Errorf("constraint %s: visit %s on both sides", c.ID, v)
				}
				return fmt.Errorf("constraint %s: visit %s twice", c.ID, v)
			}
			seen[v] = side
		}
	}
	moved := map[string]bool{}
	for _, v := range c.Moved {
		if s, ok := seen[v]; !ok || s != 0 || moved[v] {
			return fmt.Errorf("constraint %s: moved visit %q not in A, or twice", c.ID, v)
		}
		moved[v] = true
	}
	switch c.Kind {
	case ConstraintApart:
		if len(c.A) == 0 || len(c.B) == 0 {
			return fmt.Errorf("constraint %s: apart needs visits on both sides", c.ID)
		}
		if len(c.Moved) > 0 {
			return fmt.Errorf("constraint %s: apart names its moved visits in A, not in moved", c.ID)
		}
	case ConstraintTogether:
		if len(c.A) < 2 || len(c.B) > 0 {
			return fmt.Errorf("constraint %s: together needs two visits or more, and no second side", c.ID)
		}
	default:
		return fmt.Errorf("constraint %s: unknown kind %q", c.ID, c.Kind)
	}
	return nil
}

// Visits calls f for every visit c names.
func (c Constraint) Visits(f func(visitID string)) {
	for _, vs := range [][]string{c.A, c.B} {
		for _, v := range vs {
			f(v)
		}
	}
}

// Prune returns c without the visits gone says are gone; changed reports
// that some were, keep that what is left still constrains something.
func (c Constraint) Prune(gone func(visitID string) bool) (out Constraint, changed, keep bool) {
	out = c
	out.A, out.B, out.Moved = nil, nil, nil
	for _, v := range c.A {
		if !gone(v) {
			out.A = append(out.A, v)
		}
	}
	for _, v := range c.B {
		if !gone(v) {
			out.B = append(out.B, v)
		}
	}
	for _, v := range c.Moved {
		if !gone(v) {
			out.Moved = append(out.Moved, v)
		}
	}
	changed = len(out.A) != len(c.A) || len(out.B) != len(c.B) || len(out.Moved) != len(c.Moved)
	if !changed {
		out = c
	}
	return out, changed, out.Check() == nil
}
