package store

import (
	"bytes"
	"context"
	"crypto/cipher"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"

	"github.com/periocular/atm-agent/store/record"

	"github.com/periocular/atm-agent/internal/fileops"
	bolt "go.etcd.io/bbolt"
)

// SalvageReport says what Salvage copied and what it left behind.
type SalvageReport struct {
	Source string `json:"source"`
	Dest   string `json:"dest"`
	// Kept: records written to the new store per bucket (indexes rebuilt
	// from the visits kept); Skipped: records of the damaged file that did
	// not decode or disagreed with their key, per bucket.
	Kept    map[string]int `json:"kept"`
	Skipped map[string]int `json:"skipped"`
	// BadPages: pages that could not be read; their records are lost.
	BadPages int `json:"bad_pages"`
	// TemplatesLost: visits kept without their (unreadable) template.
	TemplatesLost int `json:"templates_lost"`
	// IdentitiesRecreated: identities whose record was lost but whose
	// visits were kept, recreated as "pending".
	IdentitiesRecreated int      `json:"identities_recreated"`
	Problems            []string `json:"problems"`
	More                int      `json:"more_problems,omitempty"`
	Warnings            []string `json:"warnings,omitempty"`
}

const salvageBatch = 1000

// salvageMinSchema is the oldest schema whose records Salvage reads: from
// schema 2 on, the records have one format (schema 3 only added the
// constraints bucket, which a schema-2 file lacks and Salvage reads as
// empty). A damaged file cannot be opened to migrate it, so Salvage is
// the migration: it writes the current schema.
const salvageMinSchema = 2

// Salvage copies every readable record of the (damaged) database at src
// into a new database at dst, which must not exist. Records on pages that
// cannot be read, and records that do not decode, are skipped and counted;
// the indexes (visit ids, identity index, identity counts, last alerts,
// outbox coalescing) are rebuilt from the records kept rather than copied.
// src is only read, never written. dst gets src's owner, group and mode
// when the process may set them. opts.Key is needed for an encrypted store
// (its templates are authenticated and copied as they are).
func Salvage(ctx context.Context, src, dst string, opts Options) (*SalvageReport, error) {
	rep := &SalvageReport{Source: src, Dest: dst, Kept: map[string]int{}, Skipped: map[string]int{}}
	if err := opts.setDefaults(); err != nil {
		return nil, fmt.Errorf("salvage: %w", err)
	}
	if sameFile(src, dst) {
		return nil, fmt.Errorf("salvage: the new store %q must be another file than the damaged one", dst)
	}
	if _, err := os.Lstat(dst); err == nil {
		return nil, fmt.Errorf("salvage: %q exists: give a new file (-o)", dst)
	}
	srcInfo, err := os.Stat(src)
	if err != nil {
		return nil, fmt.Errorf("salvage: %w", err)
	}
	var aead cipher.AEAD
	if opts.Key != nil {
		if aead, err = newAEAD(opts.Key); err != nil {
			return nil, fmt.Errorf("salvage: %w", err)
		}
	}
	unlock, err := lockShared(ctx, src, opts.Timeout)
	if err != nil {
		return nil, fmt.Errorf("salvage: %w", err)
	}
	defer unlock()

	bf, warns, err := openBoltFile(src, true)
	if err != nil {
		return nil, fmt.Errorf("salvage %q: nothing readable: %w", src, err)
	}
	defer bf.Close()
	rep.Warnings = warns
	recs, w := salvageWalk(bf, aead)
	if len(recs.buckets) == 0 {
		// The root page is unreadable: the previous transaction's tree
		// (the other meta page) has its own root page, and bbolt does not
		// reuse the pages of that tree before the next commit.
		for _, m := range bf.metas {
			if m.invalid == "" && m.page != bf.meta.page && bf.checkMetaBounds(m) == nil {
				rep.Warnings = append(rep.Warnings, fmt.Sprintf("root page %d unreadable; read the previous transaction (meta page %d, txid %d): the last transaction is lost", bf.meta.root, m.page, m.txid))
				bf.meta = m
				recs, w = salvageWalk(bf, aead)
			}
		}
	}
	problem := func(format string, args ...any) {
		if len(rep.Problems) >= maxProblems {
			rep.More++
			return
		}
		rep.Problems = append(rep.Problems, fmt.Sprintf(format, args...))
	}
	for _, p := range recs.rejected {
		problem("%s", p)
	}
	for _, p := range w.problems {
		problem("%s", p)
	}
	recs.finish(problem)
	rep.BadPages = w.badPages
	for b, n := range recs.bad {
		rep.Skipped[b] += n
	}
	for b, n := range w.skipped {
		rep.Skipped[b] += n
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("salvage: %w", err)
	}
	switch v := recs.schema(); {
	case v > uint64(SchemaVersion()):
		return nil, fmt.Errorf("salvage %q: %w: file has version %d", src, ErrSchemaTooNew, v)
	case v != 0 && v < salvageMinSchema && len(recs.visits) > 0:
		return nil, fmt.Errorf("salvage %q: schema version %d: salvage reads schema %d to %d stores; open it once with this build to migrate, or restore a backup", src, v, salvageMinSchema, SchemaVersion())
	}
	if v := recs.schema(); v != 0 && v < uint64(SchemaVersion()) {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("the damaged file has schema version %d: the new store is written as schema %d (what opening it would have migrated it to)", v, SchemaVersion()))
	}
	if recs.wrongKey {
		return nil, fmt.Errorf("salvage %q: %w", src, ErrWrongKey)
	}
	if aead == nil && (recs.encrypted > 0 || recs.meta[string(kKeyCheck)] != nil) {
		return nil, fmt.Errorf("salvage %q: %w (templates are encrypted: give the key file, --key-file)", src, ErrKeyRequired)
	}

	o := opts
	o.NoCreate, o.ReadOnly = false, false
	if id := recs.meta[string(kDeviceID)]; len(id) > 0 && isPrint(id) && o.DeviceID == "" {
		o.DeviceID = string(id)
	}
	out, err := Open(dst, o)
	if err != nil {
		return nil, fmt.Errorf("salvage: create %q: %w", dst, err)
	}
	werr := out.writeSalvaged(ctx, recs, rep)
	if err := errors.Join(werr, out.Close()); err != nil {
		os.Remove(dst)
		return nil, fmt.Errorf("salvage: write %q: %w", dst, err)
	}
	if err := fileops.KeepOwner(dst, srcInfo); err != nil {
		return rep, fmt.Errorf("salvage: %w", err)
	}
	return rep, nil
}

// writeSalvaged writes the kept records in bounded transactions.
func (s *Store) writeSalvaged(ctx context.Context, r *records, rep *SalvageReport) error {
	le := func(k string) uint64 { return binary.BigEndian.Uint64([]byte(k)[8:]) }
	sort.Strings(r.visitOrder)
	maxSeq := uint64(0)
	for _, k := range r.visitOrder {
		maxSeq = max(maxSeq, le(k))
	}
	var maxKey, maxOutSeq uint64
	for k, m := range r.outbox {
		maxKey, maxOutSeq = max(maxKey, k), max(maxOutSeq, m.seq)
	}
	metaU64 := func(k []byte) uint64 {
		if v := r.meta[string(k)]; len(v) == 8 {
			return binary.BigEndian.Uint64(v)
		}
		return 0
	}
	// Counters never go backwards: a message or visit seq reused after a
	// salvage would look like a duplicate to the dashboards.
	err := s.update(ctx, "salvage meta", func(tx *bolt.Tx) error {
		meta := tx.Bucket(bMeta)
		for k, v := range r.meta {
			if len(k) > len(droppedPfx) && k[:len(droppedPfx)] == droppedPfx && len(v) == 8 {
				if err := meta.Put([]byte(k), v); err != nil {
					return err
				}
			}
		}
		for _, c := range []struct {
			k []byte
			v uint64
		}{{kVisitSeq, max(metaU64(kVisitSeq), maxSeq)}, {kOutboxSeq, max(metaU64(kOutboxSeq), maxOutSeq)}, {kOutboxKey, max(metaU64(kOutboxKey), maxKey)}} {
			if err := putU64(meta, c.k, c.v); err != nil {
				return err
			}
		}
		ib := tx.Bucket(bIdentities)
		for _, id := range sortedKeys(r.identities) {
			if err := ib.Put([]byte(id), r.identities[id].val); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}

	now := s.opts.Now().UTC()
	seenIDs := map[string]bool{}
	touched := map[string]bool{}
	for start := 0; start < len(r.visitOrder); start += salvageBatch {
		batch := r.visitOrder[start:min(start+salvageBatch, len(r.visitOrder))]
		err := s.update(ctx, "salvage visits", func(tx *bolt.Tx) error {
			vb, tb, ids, idx, ib := tx.Bucket(bVisits), tx.Bucket(bTemplates), tx.Bucket(bVisitIDs), tx.Bucket(bIdentityVisits), tx.Bucket(bIdentities)
			vb.FillPercent = visitsFillPercent
			for _, k := range batch {
				v := r.visits[k]
				if seenIDs[v.id] {
					rep.Skipped[string(bVisits)]++
					rep.Problems = append(rep.Problems, fmt.Sprintf("visit %s: stored twice, second copy (key %x) skipped", v.id, k))
					continue
				}
				seenIDs[v.id] = true
				key := []byte(k)
				flags := v.flags
				if t := r.templates[k]; t != nil && flags&flagTemplate != 0 {
					if err := tb.Put(key, t); err != nil {
						return err
					}
					rep.Kept[string(bTemplates)]++
				} else if flags&flagTemplate != 0 {
					flags &^= flagTemplate
					rep.TemplatesLost++
				}
				if err := vb.Put(key, visitRecord(flags, v.header, nil)); err != nil {
					return err
				}
				if err := ids.Put([]byte(v.id), key); err != nil {
					return err
				}
				rep.Kept[string(bVisits)]++
				if v.identity == "" {
					continue
				}
				if ib.Get([]byte(v.identity)) == nil {
					if err := writeIdentity(ib, record.Identity{ID: v.identity, Status: "pending", Created: now, Updated: now,
						Attrs: map[string]string{"salvaged": "identity record was unreadable"}}); err != nil {
						return err
					}
					rep.IdentitiesRecreated++
				}
				if err := idx.Put(identityIndexKey(v.identity, key), nil); err != nil {
					return err
				}
				touched[v.identity] = true
			}
			return nil
		})
		if err != nil {
			return err
		}
	}

	return s.update(ctx, "salvage identities, alerts, outbox", func(tx *bolt.Tx) error {
		// Identities: derived fields from the visits kept; those left
		// without visits go (as Purge does).
		all := map[string]bool{}
		for id := range r.identities {
			all[id] = true
		}
		for id := range touched {
			all[id] = true
		}
		for id := range all {
			if !touched[id] {
				if err := tx.Bucket(bIdentities).Delete([]byte(id)); err != nil {
					return err
				}
				continue
			}
			if err := s.refreshIdentity(tx, id); err != nil {
				return err
			}
			rep.Kept[string(bIdentities)]++
		}
		ab, lb := tx.Bucket(bAlerts), tx.Bucket(bAlertLast)
		newest := map[string]*alertRec{}
		newestID := map[string]string{}
		for _, id := range sortedKeys(r.alerts) {
			a := r.alerts[id]
			if err := ab.Put([]byte(id), a.val); err != nil {
				return err
			}
			rep.Kept[string(bAlerts)]++
			lk := string(alertLastKey(a.rule, a.identity))
			if n := newest[lk]; n == nil || a.raised.After(n.raised) {
				newest[lk], newestID[lk] = a, id
			}
		}
		for lk, a := range newest {
			j, err := json.Marshal(alertLast{ID: newestID[lk], Raised: a.raised.UTC()})
			if err != nil {
				return err
			}
			if err := lb.Put([]byte(lk), j); err != nil {
				return err
			}
		}
		keys := make([]uint64, 0, len(r.outbox))
		for k := range r.outbox {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
		ob, cb, sb, meta := tx.Bucket(bOutbox), tx.Bucket(bOutboxCoalesce), tx.Bucket(bOutboxSuperseded), tx.Bucket(bMeta)
		var size uint64
		for _, k := range keys {
			m := r.outbox[k]
			if err := ob.Put(be64(k), m.val); err != nil {
				return err
			}
			size += uint64(m.payload)
			if m.coalesce != "" {
				if prev := cb.Get([]byte(m.coalesce)); prev != nil {
					if err := sb.Put(bytes.Clone(prev), nil); err != nil {
						return err
					}
				}
				if err := cb.Put([]byte(m.coalesce), be64(k)); err != nil {
					return err
				}
			}
			rep.Kept[string(bOutbox)]++
		}
		if err := putU64(meta, kOutboxCount, uint64(len(keys))); err != nil {
			return err
		}
		// Constraints, without the visits not kept; one left constraining
		// nothing goes.
		for _, id := range sortedKeys(r.constraints) {
			c, changed, keep := r.constraints[id].Prune(func(v string) bool { return !seenIDs[v] })
			if !keep {
				rep.Skipped[string(bConstraints)]++
				rep.Problems = append(rep.Problems, fmt.Sprintf("constraint %s: dropped, its visits were not kept", id))
				continue
			}
			if changed {
				rep.Problems = append(rep.Problems, fmt.Sprintf("constraint %s: visits not kept were removed from it", id))
			}
			if err := putConstraint(tx, c); err != nil {
				return err
			}
			rep.Kept[string(bConstraints)]++
		}
		return putU64(meta, kOutboxBytes, size)
	})
}

// salvageWalk reads every record reachable from bf's meta page.
func salvageWalk(bf *boltFile, aead cipher.AEAD) (*records, *treeWalk) {
	recs := newRecords(true, aead)
	w := &treeWalk{bf: bf,
		onBucket: func(b string) { recs.buckets[b] = true },
		onRecord: func(b string, k, v []byte) {
			if why := recs.add(b, k, v); why != "" {
				recs.rejected = append(recs.rejected, fmt.Sprintf("bucket %s: record %s skipped: %s", b, printableKey(k), why))
			}
		}}
	w.walk()
	return recs, w
}
