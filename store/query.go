package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/store/record"
)

// VisitsBetween returns visits with from <= Time < to, oldest first, without
// embeddings.
func (s *Store) VisitsBetween(ctx context.Context, from, to time.Time) ([]visit.Visit, error) {
	var out []visit.Visit
	err := s.scan(ctx, "visits between", func(tx *bolt.Tx) error {
		out = nil
		end := timeKey(to)
		c := tx.Bucket(bVisits).Cursor()
		for k, v := c.Seek(timeKey(from)); k != nil && bytes.Compare(k[:8], end) < 0; k, v = c.Next() {
			vis, err := s.decodeVisit(tx, k, v, false)
			if err != nil {
				return err
			}
			out = append(out, vis)
		}
		return nil
	})
	return out, err
}

// VisitsSince returns visits with Time strictly after since, oldest first,
// without embeddings: those of one identity, or of the whole device when
// identityID is "". It satisfies the alert rules' history interface.
func (s *Store) VisitsSince(ctx context.Context, identityID string, since time.Time) ([]visit.Visit, error) {
	var out []visit.Visit
	// One identity's visits are few records, but a frequent visitor's lie
	// on pages all over the file, each mapping its neighbours: release too.
	err := s.scan(ctx, "visits since", func(tx *bolt.Tx) error {
		out = nil
		vb := tx.Bucket(bVisits)
		if identityID == "" {
			c := vb.Cursor()
			for k, v := c.Seek(timeKey(since.Add(1))); k != nil; k, v = c.Next() {
				vis, err := s.decodeVisit(tx, k, v, false)
				if err != nil {
					return err
				}
				out = append(out, vis)
			}
			return nil
		}
		p := identityIndexPrefix(identityID)
		c := tx.Bucket(bIdentityVisits).Cursor()
		for k, _ := c.Seek(append(bytes.Clone(p), timeKey(since.Add(1))...)); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
			vk := k[len(p):]
			val := vb.Get(vk)
			if val == nil {
				return fmt.Errorf("identity index points to missing visit %x", vk)
			}
			vis, err := s.decodeVisit(tx, vk, val, false)
			if err != nil {
				return err
			}
			out = append(out, vis)
		}
		return nil
	})
	return out, err
}

// IdentityVisits returns every stored visit of one identity, oldest first,
// with embeddings.
func (s *Store) IdentityVisits(ctx context.Context, identityID string) ([]visit.Visit, error) {
	var out []visit.Visit
	err := s.scan(ctx, "identity visits", func(tx *bolt.Tx) error {
		out = nil
		vb := tx.Bucket(bVisits)
		p := identityIndexPrefix(identityID)
		c := tx.Bucket(bIdentityVisits).Cursor()
		for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
			vk := k[len(p):]
			vis, err := s.decodeVisit(tx, vk, vb.Get(vk), true)
			if err != nil {
				return err
			}
			out = append(out, vis)
		}
		return nil
	})
	return out, err
}

// Visit returns one visit by id, with its embedding.
func (s *Store) Visit(ctx context.Context, id string) (visit.Visit, error) {
	var out visit.Visit
	err := s.view(ctx, "get visit", func(tx *bolt.Tx) error {
		k := tx.Bucket(bVisitIDs).Get([]byte(id))
		if k == nil {
			return fmt.Errorf("visit %q: %w", id, ErrNotFound)
		}
		var err error
		out, err = s.decodeVisit(tx, k, tx.Bucket(bVisits).Get(k), true)
		return err
	})
	return out, err
}

// Members returns the face visits (with an embedding) inside the retention
// window, oldest first, for rebuilding the identity engine.
func (s *Store) Members(ctx context.Context) ([]visit.Member, error) {
	return s.members(ctx, "members", false)
}

// Unassigned returns the face visits (with an embedding) inside the
// retention window that have no identity, oldest first: visits too poor to
// found an identity, which the agent offers the engine again later. Only
// their templates are decoded.
func (s *Store) Unassigned(ctx context.Context) ([]visit.Member, error) {
	return s.members(ctx, "unassigned visits", true)
}

func (s *Store) members(ctx context.Context, op string, unassigned bool) ([]visit.Member, error) {
	since := s.opts.Now().Add(-s.opts.Retention)
	var out []visit.Member
	err := s.scan(ctx, op, func(tx *bolt.Tx) error {
		out = nil
		c := tx.Bucket(bVisits).Cursor()
		for k, v := c.Seek(timeKey(since)); k != nil; k, v = c.Next() {
			if unassigned {
				h, err := s.decodeVisit(tx, k, v, false)
				if err != nil {
					return err
				}
				if h.Outcome != visit.FaceFound || h.IdentityID != "" {
					continue
				}
			}
			vis, err := s.decodeVisit(tx, k, v, true)
			if err != nil {
				return err
			}
			if vis.Outcome != visit.FaceFound || len(vis.Embedding) == 0 {
				continue
			}
			out = append(out, visit.Member{
				VisitID: vis.ID, Time: vis.Time, Embedding: vis.Embedding, Model: vis.Model,
				Mask: vis.Mask, Quality: vis.Quality, IdentityID: vis.IdentityID,
			})
		}
		return nil
	})
	return out, err
}

// Identities returns all identities ordered by id.
func (s *Store) Identities(ctx context.Context) ([]record.Identity, error) {
	var out []record.Identity
	err := s.view(ctx, "list identities", func(tx *bolt.Tx) error {
		out = nil
		return tx.Bucket(bIdentities).ForEach(func(k, v []byte) error {
			var id record.Identity
			if err := json.Unmarshal(v, &id); err != nil {
				return fmt.Errorf("decode identity %q: %w", k, err)
			}
			out = append(out, id)
			return nil
		})
	})
	return out, err
}

// Identity returns one identity; ErrNotFound when absent.
func (s *Store) Identity(ctx context.Context, id string) (record.Identity, error) {
	var out record.Identity
	err := s.view(ctx, "get identity", func(tx *bolt.Tx) error {
		v := tx.Bucket(bIdentities).Get([]byte(id))
		if v == nil {
			return fmt.Errorf("identity %q: %w", id, ErrNotFound)
		}
		return json.Unmarshal(v, &out)
	})
	return out, err
}

// Alerts returns alerts raised at or after since, ordered by Raised.
func (s *Store) Alerts(ctx context.Context, since time.Time) ([]visit.Alert, error) {
	var out []visit.Alert
	err := s.view(ctx, "list alerts", func(tx *bolt.Tx) error {
		out = nil
		return tx.Bucket(bAlerts).ForEach(func(k, v []byte) error {
			var a visit.Alert
			if err := json.Unmarshal(v, &a); err != nil {
				return fmt.Errorf("decode alert %q: %w", k, err)
			}
			if !a.Raised.Before(since) {
				out = append(out, a)
			}
			return nil
		})
	})
	sort.SliceStable(out, func(i, j int) bool { return out[i].Raised.Before(out[j].Raised) })
	return out, err
}

// AlertExists reports whether an alert with this id is stored.
func (s *Store) AlertExists(ctx context.Context, id string) (bool, error) {
	var ok bool
	err := s.view(ctx, "alert exists", func(tx *bolt.Tx) error {
		ok = tx.Bucket(bAlerts).Get([]byte(id)) != nil
		return nil
	})
	return ok, err
}

// LastAlert returns when a rule last raised an alert for an identity ("" for
// device-wide rules). It satisfies the alert rules' history interface.
func (s *Store) LastAlert(ctx context.Context, rule, identityID string) (time.Time, bool, error) {
	var last alertLast
	var ok bool
	err := s.view(ctx, "last alert", func(tx *bolt.Tx) error {
		v := tx.Bucket(bAlertLast).Get(alertLastKey(rule, identityID))
		if v == nil {
			return nil
		}
		ok = true
		return json.Unmarshal(v, &last)
	})
	return last.Raised, ok, err
}
