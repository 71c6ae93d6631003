package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/agent/visit"
)

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

// CommitVisit writes c in a single bbolt transaction: either all of it is
// stored or, on any error, none of it.
func (s *Store) CommitVisit(ctx context.Context, c Commit) (CommitResult, error) {
	var res CommitResult
	var vcopy visit.Visit
	if c.Visit != nil {
		vcopy = *c.Visit
		if vcopy.Time.IsZero() || vcopy.Time.UnixNano() <= 0 {
			return res, fmt.Errorf("commit visit %q: time not set", vcopy.ID)
		}
		if vcopy.ID == "" {
			vcopy.ID = newID()
		}
	}
	err := s.update(ctx, "commit visit", func(tx *bolt.Tx) error {
		res = CommitResult{} // a retried closure starts clean
		now := s.opts.Now().UTC()
		touched := map[string]bool{}

		for _, id := range c.Identities {
			if err := s.putIdentity(tx, id, now); err != nil {
				return err
			}
			touched[id.ID] = true
		}
		if err := s.hook("identities"); err != nil {
			return err
		}

		if c.Visit != nil {
			v := vcopy
			if err := s.putVisit(tx, &v); err != nil {
				return err
			}
			res.VisitID, res.VisitSeq = v.ID, v.Seq
			if v.IdentityID != "" {
				touched[v.IdentityID] = true
			}
		}
		if err := s.hook("visit"); err != nil {
			return err
		}

		for _, r := range c.Relabels {
			old, ok, err := s.relabel(tx, r)
			if err != nil {
				return err
			}
			if !ok {
				res.MissingRelabels = append(res.MissingRelabels, r.VisitID)
				continue
			}
			touched[old], touched[r.IdentityID] = true, true
		}
		if err := s.hook("relabels"); err != nil {
			return err
		}

		for _, id := range c.DeleteIdentities {
			if n := countPrefix(tx.Bucket(bIdentityVisits), identityIndexPrefix(id)); n > 0 {
				return fmt.Errorf("delete identity %q: still has %d visits (relabel them first)", id, n)
			}
			if err := tx.Bucket(bIdentities).Delete([]byte(id)); err != nil {
				return err
			}
			delete(touched, id)
		}
		for id := range touched {
			if err := s.refreshIdentity(tx, id); err != nil {
				return err
			}
		}
		if err := s.hook("deletes"); err != nil {
			return err
		}

		var msgs []visit.OutboxMessage
		for _, a := range c.Alerts {
			isNew, err := s.putAlert(tx, a.Alert)
			if err != nil {
				return err
			}
			if !isNew {
				res.DuplicateAlerts = append(res.DuplicateAlerts, a.Alert.ID)
				continue
			}
			res.NewAlerts = append(res.NewAlerts, a.Alert.ID)
			if a.Message != nil {
				m := *a.Message
				if m.Kind == "" {
					m.Kind = "alert"
				}
				msgs = append(msgs, m)
			}
		}
		if err := s.hook("alerts"); err != nil {
			return err
		}

		msgs = append(msgs, c.Outbox...)
		for _, m := range msgs {
			if m.Created.IsZero() {
				m.Created = now
			}
			key, seq, err := s.enqueue(tx, &m)
			if err != nil {
				return err
			}
			m.Key, m.Seq, m.Payload = key, seq, nil
			res.Enqueued = append(res.Enqueued, m)
		}
		if err := s.hook("outbox"); err != nil {
			return err
		}

		dropped, err := s.enforceBounds(tx)
		if err != nil {
			return err
		}
		res.Dropped = dropped
		return s.hook("bounds")
	})
	if err != nil {
		return CommitResult{}, err
	}
	if len(res.Enqueued) > 0 {
		select {
		case s.outboxReady <- struct{}{}:
		default:
		}
	}
	return res, nil
}

func newID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return hex.EncodeToString(b[:])
}

func validIdentityID(id string) error {
	if id == "" {
		return fmt.Errorf("identity id is empty")
	}
	if bytes.IndexByte([]byte(id), identityIndexSep) >= 0 || len(id) > maxIdentityIDLen {
		return fmt.Errorf("identity id %q: invalid", id)
	}
	return nil
}

func (s *Store) putIdentity(tx *bolt.Tx, id Identity, now time.Time) error {
	if err := validIdentityID(id.ID); err != nil {
		return fmt.Errorf("upsert identity: %w", err)
	}
	b := tx.Bucket(bIdentities)
	if old := b.Get([]byte(id.ID)); old != nil {
		var prev Identity
		if err := json.Unmarshal(old, &prev); err == nil && !prev.Created.IsZero() {
			id.Created = prev.Created
		}
	}
	if id.Created.IsZero() {
		id.Created = now
	}
	id.Updated = now
	return writeIdentity(b, id)
}

func writeIdentity(b *bolt.Bucket, id Identity) error {
	j, err := json.Marshal(id)
	if err != nil {
		return fmt.Errorf("encode identity %q: %w", id.ID, err)
	}
	return b.Put([]byte(id.ID), j)
}

// refreshIdentity recomputes the derived fields of one identity from the
// index. A missing identity record is an error: visits must reference a
// known identity.
func (s *Store) refreshIdentity(tx *bolt.Tx, id string) error {
	if id == "" {
		return nil
	}
	b := tx.Bucket(bIdentities)
	raw := b.Get([]byte(id))
	if raw == nil {
		return fmt.Errorf("identity %q: %w (upsert it in the same commit)", id, ErrUnknownIdentity)
	}
	var ident Identity
	if err := json.Unmarshal(raw, &ident); err != nil {
		return fmt.Errorf("decode identity %q: %w", id, err)
	}
	ident.Count, ident.FirstSeen, ident.LastSeen = 0, time.Time{}, time.Time{}
	p := identityIndexPrefix(id)
	c := tx.Bucket(bIdentityVisits).Cursor()
	for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
		t := visitKeyTime(k[len(p):])
		if ident.Count == 0 {
			ident.FirstSeen = t
		}
		ident.LastSeen = t
		ident.Count++
	}
	return writeIdentity(b, ident)
}

func countPrefix(b *bolt.Bucket, p []byte) int {
	n := 0
	c := b.Cursor()
	for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
		n++
	}
	return n
}

func (s *Store) putVisit(tx *bolt.Tx, v *visit.Visit) error {
	meta := tx.Bucket(bMeta)
	ids := tx.Bucket(bVisitIDs)
	if ids.Get([]byte(v.ID)) != nil {
		return fmt.Errorf("store visit %q: %w", v.ID, ErrDuplicateVisit)
	}
	last := getU64(meta, kVisitSeq)
	if v.Seq == 0 {
		v.Seq = last + 1
	}
	if v.Seq > last {
		if err := putU64(meta, kVisitSeq, v.Seq); err != nil {
			return err
		}
	}
	if v.IdentityID != "" {
		if err := validIdentityID(v.IdentityID); err != nil {
			return fmt.Errorf("store visit %q: %w", v.ID, err)
		}
	}
	k := visitKey(v.Time, v.Seq)
	val, tmpl, err := s.encodeVisit(v, k)
	if err != nil {
		return err
	}
	vb := tx.Bucket(bVisits)
	// Keys grow with time, so a split page is rarely written again: fill
	// it (bbolt's default leaves split pages half empty).
	vb.FillPercent = visitsFillPercent
	if err := vb.Put(k, val); err != nil {
		return fmt.Errorf("store visit %q: %w", v.ID, err)
	}
	if tmpl != nil {
		if err := tx.Bucket(bTemplates).Put(k, tmpl); err != nil {
			return fmt.Errorf("store visit %q template: %w", v.ID, err)
		}
	}
	if err := ids.Put([]byte(v.ID), k); err != nil {
		return fmt.Errorf("store visit %q: %w", v.ID, err)
	}
	if v.IdentityID != "" {
		if err := tx.Bucket(bIdentityVisits).Put(identityIndexKey(v.IdentityID, k), nil); err != nil {
			return fmt.Errorf("store visit %q: %w", v.ID, err)
		}
	}
	return nil
}

// relabel returns the previous identity and whether the visit exists.
func (s *Store) relabel(tx *bolt.Tx, r Relabel) (string, bool, error) {
	k := tx.Bucket(bVisitIDs).Get([]byte(r.VisitID))
	if k == nil {
		return "", false, nil
	}
	k = bytes.Clone(k)
	vb := tx.Bucket(bVisits)
	val := vb.Get(k)
	if val == nil {
		return "", false, fmt.Errorf("relabel visit %q: index points to a missing record", r.VisitID)
	}
	if r.IdentityID != "" {
		if err := validIdentityID(r.IdentityID); err != nil {
			return "", false, fmt.Errorf("relabel visit %q: %w", r.VisitID, err)
		}
	}
	nv, old, err := s.relabelRecord(k, val, r.IdentityID, r.Distance)
	if err != nil {
		return "", false, err
	}
	if err := vb.Put(k, nv); err != nil {
		return "", false, err
	}
	idx := tx.Bucket(bIdentityVisits)
	if old != "" {
		if err := idx.Delete(identityIndexKey(old, k)); err != nil {
			return "", false, err
		}
	}
	if r.IdentityID != "" {
		if err := idx.Put(identityIndexKey(r.IdentityID, k), nil); err != nil {
			return "", false, err
		}
	}
	return old, true, nil
}

type alertLast struct {
	ID     string    `json:"id"`
	Raised time.Time `json:"raised"`
}

func alertLastKey(rule, identity string) []byte {
	return []byte(rule + "\x00" + identity)
}

func (s *Store) putAlert(tx *bolt.Tx, a visit.Alert) (bool, error) {
	if a.ID == "" {
		return false, fmt.Errorf("store alert for rule %q: empty id", a.Rule)
	}
	b := tx.Bucket(bAlerts)
	if b.Get([]byte(a.ID)) != nil {
		return false, nil
	}
	j, err := json.Marshal(a)
	if err != nil {
		return false, fmt.Errorf("encode alert %q: %w", a.ID, err)
	}
	if err := b.Put([]byte(a.ID), j); err != nil {
		return false, fmt.Errorf("store alert %q: %w", a.ID, err)
	}
	lb := tx.Bucket(bAlertLast)
	lk := alertLastKey(a.Rule, a.IdentityID)
	if prev := lb.Get(lk); prev != nil {
		var p alertLast
		if json.Unmarshal(prev, &p) == nil && p.Raised.After(a.Raised) {
			return true, nil
		}
	}
	lj, _ := json.Marshal(alertLast{ID: a.ID, Raised: a.Raised.UTC()})
	return true, lb.Put(lk, lj)
}
