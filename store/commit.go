package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/store/record"
)

// CommitVisit writes c in a single bbolt transaction: either all of it is
// stored or, on any error, none of it.
func (s *Store) CommitVisit(ctx context.Context, c record.Commit) (record.CommitResult, error) {
	var res record.CommitResult
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
		res = record.CommitResult{} // a retried closure starts clean
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

		movedTo := map[string]map[string]bool{} // identity -> identities its visits went to
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
			if old != "" && r.IdentityID != "" && old != r.IdentityID {
				if movedTo[old] == nil {
					movedTo[old] = map[string]bool{}
				}
				movedTo[old][r.IdentityID] = true
			}
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
			// Merged: every visit went to one identity, which inherits the
			// cooldowns (alert_last) of the one deleted, so the same person
			// is not alerted again right after a merge.
			if len(movedTo[id]) == 1 {
				for to := range movedTo[id] {
					if err := carryAlertLast(tx, id, to, now); err != nil {
						return err
					}
				}
			}
		}
		for _, cc := range c.CarryCooldowns {
			if cc.From == "" || cc.To == "" || cc.From == cc.To {
				return fmt.Errorf("carry cooldowns from %q to %q: two identities needed", cc.From, cc.To)
			}
			if err := carryAlertLast(tx, cc.From, cc.To, now); err != nil {
				return err
			}
		}
		for id := range touched {
			if err := s.refreshIdentity(tx, id); err != nil {
				return err
			}
		}
		for _, id := range c.DeleteConstraints {
			if err := tx.Bucket(bConstraints).Delete([]byte(id)); err != nil {
				return err
			}
		}
		for _, k := range c.Constraints {
			if err := putConstraint(tx, k); err != nil {
				return err
			}
		}
		if err := s.hook("deletes"); err != nil {
			return err
		}

		var msgs []visit.OutboxMessage
		alertOf := map[int]string{} // index in msgs: the alert's id
		for _, a := range c.Alerts {
			isNew, err := s.putAlert(tx, a.Alert, now)
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
				alertOf[len(msgs)] = a.Alert.ID
				msgs = append(msgs, m)
			}
		}
		if err := s.hook("alerts"); err != nil {
			return err
		}

		msgs = append(msgs, c.Outbox...)
		for i, m := range msgs {
			if m.Created.IsZero() {
				m.Created = now
			}
			key, seq, err := s.enqueue(tx, &m)
			if err != nil {
				return err
			}
			if id, ok := alertOf[i]; ok {
				if err := tx.Bucket(bMeta).Put(kLastAlert, append(binary.BigEndian.AppendUint64(nil, seq), id...)); err != nil {
					return err
				}
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
		return record.CommitResult{}, err
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

func (s *Store) putIdentity(tx *bolt.Tx, id record.Identity, now time.Time) error {
	if err := validIdentityID(id.ID); err != nil {
		return fmt.Errorf("upsert identity: %w", err)
	}
	b := tx.Bucket(bIdentities)
	if old := b.Get([]byte(id.ID)); old != nil {
		var prev record.Identity
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

func writeIdentity(b *bolt.Bucket, id record.Identity) error {
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
	var ident record.Identity
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
func (s *Store) relabel(tx *bolt.Tx, r record.Relabel) (string, bool, error) {
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

// carryAlertLast gives identity to, for every rule, the later of its own
// last alert and from's (a last alert stamped after now is not carried: it
// was raised under a wrong clock, see putAlert).
func carryAlertLast(tx *bolt.Tx, from, to string, now time.Time) error {
	lb := tx.Bucket(bAlertLast)
	type carry struct {
		key []byte
		val alertLast
	}
	var cs []carry
	suffix := "\x00" + from
	if err := lb.ForEach(func(k, v []byte) error {
		rule, ok := strings.CutSuffix(string(k), suffix)
		if !ok || strings.Contains(rule, "\x00") {
			return nil
		}
		var a alertLast
		if err := json.Unmarshal(v, &a); err != nil || a.Raised.After(now) {
			return nil
		}
		cs = append(cs, carry{alertLastKey(rule, to), a})
		return nil
	}); err != nil {
		return err
	}
	for _, c := range cs {
		if prev := lb.Get(c.key); prev != nil {
			var p alertLast
			if json.Unmarshal(prev, &p) == nil && !p.Raised.Before(c.val.Raised) && !p.Raised.After(now) {
				continue
			}
		}
		j, _ := json.Marshal(c.val)
		if err := lb.Put(c.key, j); err != nil {
			return err
		}
	}
	return nil
}

func alertLastKey(rule, identity string) []byte {
	return []byte(rule + "\x00" + identity)
}

// putAlert stores a new alert and makes it its rule and identity's last
// alert (alert_last, the cooldown's reference) unless that one was raised
// later. A last alert stamped after the store's clock now was raised under a
// wrong clock (a controller that booted in 2038, then NTP): it is replaced,
// or it would stay the last one, and the cooldown's reference, until the
// clock caught up with it.
func (s *Store) putAlert(tx *bolt.Tx, a visit.Alert, now time.Time) (bool, error) {
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
		if json.Unmarshal(prev, &p) == nil && p.Raised.After(a.Raised) && !p.Raised.After(now) {
			return true, nil
		}
	}
	lj, _ := json.Marshal(alertLast{ID: a.ID, Raised: a.Raised.UTC()})
	return true, lb.Put(lk, lj)
}
