package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// kCompactPending, in meta, says that a committed change left copies of
// templates the file must not keep (sealed with a retired key, or in
// plaintext) in its free pages, and that the compaction that scrubs them
// has not run yet. It is written in the same transaction as that change
// and is absent from the compacted file (Compact removes it from the copy
// before the copy replaces the store), so a crash anywhere in between
// leaves either the flag or a clean file. Any writing open finishes it
// (finishPendingCompaction); `db check` and `db stats` report it.
var kCompactPending = []byte("compact_pending")

// Reasons for a pending compaction.
const (
	CompactAfterRekey   = "rekey"   // templates sealed with the old key
	CompactAfterEncrypt = "encrypt" // plaintext templates
	CompactAfterPurge   = "purge"   // templates of deleted visits
)

// PendingCompaction is a compaction a committed rekey or encrypt still
// owes the file (meta "compact_pending").
type PendingCompaction struct {
	// Reason: CompactAfterRekey or CompactAfterEncrypt.
	Reason string `json:"reason"`
	// Since: when the change that left the copies committed.
	Since time.Time `json:"since"`
}

// Leftovers says what the file's free pages may still hold.
func (p *PendingCompaction) Leftovers() string {
	switch p.Reason {
	case CompactAfterEncrypt:
		return "plaintext copies of templates sealed by `db encrypt`"
	case CompactAfterPurge:
		return "templates of the visits a purge deleted (an identity purge or the retention purge)"
	}
	return "templates sealed with the key `db rekey` replaced"
}

func (p *PendingCompaction) String() string {
	return fmt.Sprintf("compaction pending since %s (an interrupted `db %s`): the file's free pages may still hold %s; "+
		"the agent's next start or any writing db command (`atm-agent db compact`) finishes it",
		p.Since.UTC().Format(time.RFC3339), p.Reason, p.Leftovers())
}

func decodePending(v []byte) (*PendingCompaction, error) {
	var p PendingCompaction
	if err := decodeStrict(v, &p); err != nil {
		return nil, err
	}
	if p.Reason != CompactAfterRekey && p.Reason != CompactAfterEncrypt && p.Reason != CompactAfterPurge {
		return nil, fmt.Errorf("unknown reason %q", p.Reason)
	}
	return &p, nil
}

// markCompactPending records, inside the transaction that makes the copies,
// that the file owes a compaction.
func (s *Store) markCompactPending(tx *bolt.Tx, reason string) error {
	meta := tx.Bucket(bMeta)
	if meta.Get(kCompactPending) != nil {
		return nil // the earliest reason and time stand
	}
	b, err := json.Marshal(PendingCompaction{Reason: reason, Since: s.opts.Now().UTC()})
	if err != nil {
		return err
	}
	return meta.Put(kCompactPending, b)
}

// readPending reads the flag in tx (nil when none). A flag that does not
// decode still means a compaction is owed: it is reported as a rekey's,
// the reason that leaves the most behind.
func readPending(tx *bolt.Tx) *PendingCompaction {
	meta := tx.Bucket(bMeta)
	if meta == nil {
		return nil
	}
	v := meta.Get(kCompactPending)
	if v == nil {
		return nil
	}
	p, err := decodePending(v)
	if err != nil {
		return &PendingCompaction{Reason: CompactAfterRekey}
	}
	return p
}

// dropPending removes the flag from a compacted copy (out), before the
// copy replaces the store: the copy has no free pages with anything of the
// old file, so it owes nothing.
func dropPending(out *bolt.DB) error {
	has := false
	if err := out.View(func(tx *bolt.Tx) error {
		has = readPending(tx) != nil
		return nil
	}); err != nil || !has {
		return err
	}
	return out.Update(func(tx *bolt.Tx) error { return tx.Bucket(bMeta).Delete(kCompactPending) })
}

// PendingCompaction returns the compaction the file still owes (nil when
// none): a rekey or encrypt committed and was stopped (a crash, kill -9, a
// full disk) before its compaction replaced the file.
func (s *Store) PendingCompaction(ctx context.Context) (*PendingCompaction, error) {
	var p *PendingCompaction
	err := s.view(ctx, "pending compaction", func(tx *bolt.Tx) error {
		p = readPending(tx)
		return nil
	})
	return p, err
}

// CompactedAtOpen is the pending compaction Open finished (nil when there
// was none), for a command to say so.
func (s *Store) CompactedAtOpen() *PendingCompaction { return s.compactedAtOpen }

// finishPendingCompaction runs, at a writing open, the compaction a
// stopped rekey or encrypt left owed. When it fails the flag stays (the
// next open, `db check` and `db stats` still see it) and the store stays
// open, unless the failed compaction left it closed.
func (s *Store) finishPendingCompaction(ctx context.Context) error {
	p, err := s.PendingCompaction(ctx)
	if err != nil || p == nil {
		return err
	}
	s.opts.Logger.Warn("store: an interrupted `db "+p.Reason+"` left a compaction pending: the file's free pages may still hold "+p.Leftovers()+"; compacting the file now",
		"path", s.path, "reason", p.Reason, "since", p.Since)
	if err := s.Compact(ctx, ""); err != nil {
		if s.db == nil || s.Broken() != nil {
			return fmt.Errorf("open store %q: finishing the compaction left pending by `db %s`: %w", s.path, p.Reason, err)
		}
		s.opts.Logger.Error("store: the pending compaction failed; it is tried again at the next open (or run atm-agent db compact)",
			"path", s.path, "reason", p.Reason, "err", err)
		return nil
	}
	s.compactedAtOpen = p
	s.opts.Logger.Info("store: pending compaction finished: no "+p.Leftovers()+" left in the file", "path", s.path, "reason", p.Reason)
	return nil
}

// Key checks.

// ErrWeakKey: a key refused as a new store key (all zero, or too few
// distinct byte values to have come from a random source).
var ErrWeakKey = errors.New("not a random key")

// ErrSameKey: `db rekey` to the key the store already has.
var ErrSameKey = errors.New("the new key is the store's current key")

// minDistinctKeyBytes: 32 random bytes hold about 30 distinct values; fewer
// than 16 happens by chance with a probability far below 2^-64.
const minDistinctKeyBytes = 16

// KeyHint is how the documentation makes a key.
const KeyHint = "(umask 077; head -c 32 /dev/urandom > FILE)"

// CheckNewKey refuses a key that did not come from a random source: all
// zero bytes (`head -c 32 /dev/zero`), or fewer than 16 distinct byte
// values of 32. It is applied where a key is adopted (`db rekey`'s new key,
// `db encrypt`'s key); a store already under such a key still opens (its
// open logs a warning), so that it can be rekeyed.
func CheckNewKey(key []byte) error {
	if len(key) != 32 {
		return fmt.Errorf("encryption key: want 32 bytes, got %d", len(key))
	}
	var seen [256]bool
	distinct, zero := 0, true
	for _, b := range key {
		if !seen[b] {
			seen[b] = true
			distinct++
		}
		zero = zero && b == 0
	}
	switch {
	case zero:
		return fmt.Errorf("%w: the key is 32 zero bytes; make one with %s", ErrWeakKey, KeyHint)
	case distinct < minDistinctKeyBytes:
		return fmt.Errorf("%w: the key has only %d distinct byte values of 32 (a random key has about 30); make one with %s", ErrWeakKey, distinct, KeyHint)
	}
	return nil
}
