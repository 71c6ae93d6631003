package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/store/record"
)

// Constraints returns the analysts' corrections (record.Constraint), by id.
// A store of schema 2 opened read-only has none.
func (s *Store) Constraints(ctx context.Context) ([]record.Constraint, error) {
	var out []record.Constraint
	err := s.view(ctx, "list constraints", func(tx *bolt.Tx) error {
		out = nil
		return forEachConstraint(tx, func(_ []byte, c record.Constraint) error {
			out = append(out, c)
			return nil
		})
	})
	return out, err
}

// forEachConstraint decodes every stored constraint in key order; a store
// without the bucket (schema 2, opened read-only) has none.
func forEachConstraint(tx *bolt.Tx, fn func(k []byte, c record.Constraint) error) error {
	b := tx.Bucket(bConstraints)
	if b == nil {
		return nil
	}
	return b.ForEach(func(k, v []byte) error {
		var c record.Constraint
		if err := json.Unmarshal(v, &c); err != nil {
			return fmt.Errorf("decode constraint %q: %w", k, err)
		}
		return fn(k, c)
	})
}

// putConstraint stores c after checking it and that every visit it names
// is stored.
func putConstraint(tx *bolt.Tx, c record.Constraint) error {
	if err := c.Check(); err != nil {
		return fmt.Errorf("store constraint: %w", err)
	}
	ids := tx.Bucket(bVisitIDs)
	var missing string
	c.Visits(func(v string) {
		if missing == "" && ids.Get([]byte(v)) == nil {
			missing = v
		}
	})
	if missing != "" {
		return fmt.Errorf("store constraint %s: visit %q: %w", c.ID, missing, ErrNotFound)
	}
	c.Created = c.Created.UTC()
	j, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode constraint %s: %w", c.ID, err)
	}
	return tx.Bucket(bConstraints).Put([]byte(c.ID), j)
}

// pruneConstraints removes the visits gone (deleted in this transaction)
// from the constraints that name them, and deletes the constraints left
// constraining nothing.
func pruneConstraints(tx *bolt.Tx, gone map[string]bool) error {
	b := tx.Bucket(bConstraints)
	if len(gone) == 0 || b == nil {
		return nil
	}
	type upd struct {
		key []byte
		c   record.Constraint
		del bool
	}
	var us []upd
	if err := forEachConstraint(tx, func(k []byte, c record.Constraint) error {
		out, changed, keep := c.Prune(func(v string) bool { return gone[v] })
		if changed {
			us = append(us, upd{bytes.Clone(k), out, !keep})
		}
		return nil
	}); err != nil {
		return err
	}
	for _, u := range us {
		if u.del {
			if err := b.Delete(u.key); err != nil {
				return err
			}
			continue
		}
		j, err := json.Marshal(u.c)
		if err != nil {
			return err
		}
		if err := b.Put(u.key, j); err != nil {
			return err
		}
	}
	return nil
}
