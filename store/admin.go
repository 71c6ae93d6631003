package store

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/fileops"
	"github.com/periocular/atm-agent/store/record"
)

// PurgeExpired removes what is older than the retention window (see Purge)
// and, when it removed visits, compacts the file in place as PurgeIdentity
// does: bbolt copies pages on write, so without it the expired templates
// (plaintext, or sealed with the key that stays on the device) are left in
// free pages for as long as bbolt does not reuse them. When the deletion
// succeeded but the compaction failed, it returns the count with the error.
func (s *Store) PurgeExpired(ctx context.Context) (int, error) {
	n, err := s.Purge(ctx, s.opts.Now().Add(-s.opts.Retention))
	if err != nil || n == 0 {
		return n, err
	}
	if err := s.Compact(ctx, ""); err != nil {
		return n, fmt.Errorf("retention purge: deleted %d visits, but scrubbing the file failed (run atm-agent db compact): %w", n, err)
	}
	return n, nil
}

// Purge removes visits with Time before `before`, identities left without
// visits, and alerts raised before `before`. It works in bounded
// transactions so the agent keeps committing meanwhile; it returns the number
// of visits removed.
func (s *Store) Purge(ctx context.Context, before time.Time) (int, error) {
	total := 0
	end := timeKey(before)
	for {
		n := 0
		err := s.update(ctx, "purge", func(tx *bolt.Tx) error {
			n = 0
			vb := tx.Bucket(bVisits)
			var keys [][]byte
			c := vb.Cursor()
			for k, _ := c.First(); k != nil && bytes.Compare(k[:8], end) < 0 && len(keys) < defaultPurgeBatch; k, _ = c.Next() {
				keys = append(keys, bytes.Clone(k))
			}
			touched := map[string]bool{}
			gone := map[string]bool{}
			for _, k := range keys {
				id, vid, err := s.deleteVisit(tx, k)
				if err != nil {
					return err
				}
				touched[id], gone[vid] = true, true
				n++
			}
			if n > 0 {
				if err := s.markCompactPending(tx, CompactAfterPurge); err != nil {
					return err
				}
			}
			if err := pruneConstraints(tx, gone); err != nil {
				return err
			}
			return s.refreshOrDrop(tx, touched)
		})
		total += n
		if err != nil {
			return total, err
		}
		if n < defaultPurgeBatch {
			break
		}
	}
	err := s.update(ctx, "purge", func(tx *bolt.Tx) error {
		// Identities without visits (whatever left them empty).
		var empty [][]byte
		iv := tx.Bucket(bIdentityVisits)
		if err := tx.Bucket(bIdentities).ForEach(func(k, _ []byte) error {
			if countPrefix(iv, identityIndexPrefix(string(k))) == 0 {
				empty = append(empty, bytes.Clone(k))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range empty {
			if err := tx.Bucket(bIdentities).Delete(k); err != nil {
				return err
			}
		}
		return deleteAlerts(tx, func(a visit.Alert) bool { return a.Raised.Before(before) })
	})
	return total, err
}

// deleteVisit removes one visit, its template and its index entries,
// returning its identity and its id (the caller prunes the constraints
// naming it, pruneConstraints).
func (s *Store) deleteVisit(tx *bolt.Tx, k []byte) (identity, visitID string, err error) {
	vb := tx.Bucket(bVisits)
	v, err := s.decodeVisit(tx, k, vb.Get(k), false)
	if err != nil {
		return "", "", err
	}
	if err := vb.Delete(k); err != nil {
		return "", "", err
	}
	if err := tx.Bucket(bTemplates).Delete(k); err != nil {
		return "", "", err
	}
	if err := tx.Bucket(bVisitIDs).Delete([]byte(v.ID)); err != nil {
		return "", "", err
	}
	if v.IdentityID != "" {
		if err := tx.Bucket(bIdentityVisits).Delete(identityIndexKey(v.IdentityID, k)); err != nil {
			return "", "", err
		}
	}
	return v.IdentityID, v.ID, nil
}

// refreshOrDrop recomputes derived identity fields and deletes identities
// left without visits.
func (s *Store) refreshOrDrop(tx *bolt.Tx, ids map[string]bool) error {
	ib := tx.Bucket(bIdentities)
	for id := range ids {
		if id == "" || ib.Get([]byte(id)) == nil {
			continue
		}
		if countPrefix(tx.Bucket(bIdentityVisits), identityIndexPrefix(id)) == 0 {
			if err := ib.Delete([]byte(id)); err != nil {
				return err
			}
			continue
		}
		if err := s.refreshIdentity(tx, id); err != nil {
			return err
		}
	}
	return nil
}

func deleteAlerts(tx *bolt.Tx, match func(visit.Alert) bool) error {
	ab := tx.Bucket(bAlerts)
	var keys [][]byte
	if err := ab.ForEach(func(k, v []byte) error {
		var a visit.Alert
		if err := json.Unmarshal(v, &a); err != nil {
			return fmt.Errorf("decode alert %q: %w", k, err)
		}
		if match(a) {
			keys = append(keys, bytes.Clone(k))
		}
		return nil
	}); err != nil {
		return err
	}
	for _, k := range keys {
		if err := ab.Delete(k); err != nil {
			return err
		}
	}
	// So does the last alert's record (LastStoredAlert) naming one: the
	// id is a hash of the identity's.
	meta := tx.Bucket(bMeta)
	if v := meta.Get(kLastAlert); len(v) > 8 && ab.Get(v[8:]) == nil {
		if err := meta.Delete(kLastAlert); err != nil {
			return err
		}
	}
	// alert_last entries pointing at deleted alerts go too.
	lb := tx.Bucket(bAlertLast)
	var lk [][]byte
	if err := lb.ForEach(func(k, v []byte) error {
		var l alertLast
		if json.Unmarshal(v, &l) != nil || ab.Get([]byte(l.ID)) == nil {
			lk = append(lk, bytes.Clone(k))
		}
		return nil
	}); err != nil {
		return err
	}
	for _, k := range lk {
		if err := lb.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// PurgeIdentity removes an identity, all its visits and its alerts (a
// privacy deletion request), in one transaction, then compacts the file in
// place: bbolt copies pages on write, so the deleted templates would stay
// readable in free pages until reused; the compacted file holds none of
// them (the old file is replaced by rename). Messages already in the outbox
// are left as they are. It returns the number of visits removed, and
// ErrNotFound when the identity does not exist.
func (s *Store) PurgeIdentity(ctx context.Context, id string) (int, error) {
	n, err := s.purgeIdentity(ctx, id)
	if err != nil || n == 0 {
		return n, err
	}
	if err := s.Compact(ctx, ""); err != nil {
		return n, fmt.Errorf("purge identity %q: deleted %d visits, but scrubbing the file failed (run atm-agent db compact): %w", id, n, err)
	}
	return n, nil
}

func (s *Store) purgeIdentity(ctx context.Context, id string) (int, error) {
	n := 0
	err := s.update(ctx, "purge identity", func(tx *bolt.Tx) error {
		n = 0
		if tx.Bucket(bIdentities).Get([]byte(id)) == nil {
			return fmt.Errorf("identity %q: %w", id, ErrNotFound)
		}
		p := identityIndexPrefix(id)
		var keys [][]byte
		c := tx.Bucket(bIdentityVisits).Cursor()
		for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
			keys = append(keys, bytes.Clone(k[len(p):]))
		}
		gone := map[string]bool{}
		for _, k := range keys {
			_, vid, err := s.deleteVisit(tx, k)
			if err != nil {
				return err
			}
			gone[vid] = true
			n++
		}
		if n > 0 {
			if err := s.markCompactPending(tx, CompactAfterPurge); err != nil {
				return err
			}
		}
		if err := pruneConstraints(tx, gone); err != nil {
			return err
		}
		if err := tx.Bucket(bIdentities).Delete([]byte(id)); err != nil {
			return err
		}
		if err := deleteAlerts(tx, func(a visit.Alert) bool { return a.IdentityID == id }); err != nil {
			return err
		}
		// Its cooldowns too, also one carried over from an identity merged
		// into it (whose alert is not its own, so not deleted above).
		lb := tx.Bucket(bAlertLast)
		var lk [][]byte
		_ = lb.ForEach(func(k, _ []byte) error {
			if bytes.HasSuffix(k, []byte("\x00"+id)) {
				lk = append(lk, bytes.Clone(k))
			}
			return nil
		})
		for _, k := range lk {
			if err := lb.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	return n, err
}

// Stats describes the database for `atm-agent db stats`.
type Stats struct {
	Path          string `json:"path"`
	FileSize      int64  `json:"file_size"`
	SchemaVersion int    `json:"schema_version"`
	DeviceID      string `json:"device_id"`
	// Encrypted: a key is set and every template is encrypted.
	// KeyCheck: the store has a key (new templates are encrypted);
	// TemplatesEncrypted/Plain count what is actually stored.
	Encrypted          bool              `json:"encrypted"`
	KeyCheck           bool              `json:"key_check"`
	TemplatesEncrypted int               `json:"templates_encrypted"`
	TemplatesPlain     int               `json:"templates_plain"`
	Buckets            map[string]int    `json:"buckets"` // keys per bucket
	OutboxDepth        int               `json:"outbox_depth"`
	OutboxBytes        int64             `json:"outbox_bytes"`
	Dropped            map[string]uint64 `json:"outbox_dropped"`
	VisitSeq           uint64            `json:"visit_seq"`
	OutboxSeq          uint64            `json:"outbox_seq"`
	OldestVisit        time.Time         `json:"oldest_visit,omitzero"`
	NewestVisit        time.Time         `json:"newest_visit,omitzero"`
	// Templates counts the stored templates (visits with an embedding) per
	// template model tag (the embedder, plus its projection head's checksum
	// when one is applied; "" for visits stored before tags existed).
	// Templates of a tag the agent does not run are kept until retention
	// removes them but never restored into the identity engine.
	Templates map[string]int `json:"templates"`
	// CompactionPending: a rekey or encrypt committed but was stopped
	// before its compaction, so free pages may still hold what it
	// replaced (null when none; the next writing open finishes it).
	CompactionPending *PendingCompaction `json:"compaction_pending"`
}

// Stats gathers counts per bucket, file size, schema version, outbox depth
// and the oldest and newest visit.
func (s *Store) Stats(ctx context.Context) (Stats, error) {
	st := Stats{Path: s.path, Buckets: map[string]int{}, Templates: map[string]int{}}
	err := s.scan(ctx, "stats", func(tx *bolt.Tx) error {
		meta := tx.Bucket(bMeta)
		v, err := metaSchema(meta)
		if err != nil {
			return err
		}
		st.SchemaVersion = v
		st.DeviceID = string(meta.Get(kDeviceID))
		st.KeyCheck = meta.Get(kKeyCheck) != nil
		st.TemplatesEncrypted, st.TemplatesPlain = countTemplateCrypt(tx)
		st.Encrypted = st.KeyCheck && st.TemplatesPlain == 0
		st.VisitSeq = getU64(meta, kVisitSeq)
		st.OutboxSeq = getU64(meta, kOutboxSeq)
		st.CompactionPending = readPending(tx)
		for _, name := range allBuckets {
			if b := tx.Bucket(name); b != nil { // an older schema opened read-only
				st.Buckets[string(name)] = b.Stats().KeyN
			}
		}
		c := tx.Bucket(bVisits).Cursor()
		if k, _ := c.First(); k != nil {
			st.OldestVisit = visitKeyTime(k)
		}
		if k, _ := c.Last(); k != nil {
			st.NewestVisit = visitKeyTime(k)
		}
		if err := countTemplates(c, st.Templates); err != nil {
			return err
		}
		st.FileSize = tx.Size()
		return nil
	})
	if err != nil {
		return st, err
	}
	st.OutboxDepth, st.OutboxBytes, st.Dropped = s.OutboxStats()
	if fs := fileSize(s.path); fs > 0 {
		st.FileSize = fs
	}
	return st, nil
}

// countTemplates counts the visits that hold a template, per model tag,
// from the record headers alone (no template is read or decrypted).
func countTemplates(c *bolt.Cursor, out map[string]int) error {
	for k, v := c.First(); k != nil; k, v = c.Next() {
		flags, hb, inline, err := splitVisit(k, v)
		if err != nil {
			return err
		}
		if flags&flagTemplate == 0 && len(inline) == 0 {
			continue
		}
		var h struct {
			Model string `json:"model"`
		}
		if err := json.Unmarshal(hb, &h); err != nil {
			return fmt.Errorf("decode visit %x: %w", k, err)
		}
		out[h.Model]++
	}
	return nil
}

// ExportOptions selects what Export writes.
type ExportOptions struct {
	// Embeddings includes visit embeddings (decrypted). Off by default: an
	// export is usually for an audit, which needs no biometric templates.
	Embeddings bool
}

type exportVisit struct {
	Type       string          `json:"type"`
	ID         string          `json:"id"`
	Seq        uint64          `json:"seq"`
	Time       time.Time       `json:"time"`
	Trigger    string          `json:"trigger,omitempty"`
	Context    visit.Context   `json:"context,omitzero"`
	Outcome    string          `json:"outcome"`
	Model      string          `json:"model,omitempty"`
	Mask       visit.MaskState `json:"mask"`
	MaskScore  float32         `json:"mask_score"`
	Quality    float32         `json:"quality"`
	Frames     int             `json:"frames"`
	Used       int             `json:"used"`
	IdentityID string          `json:"identity_id,omitempty"`
	Distance   float32         `json:"distance"`
	Embedding  []float32       `json:"embedding,omitempty"`
}

// Export writes the database as JSON lines, one object per line with a
// "type" field: "meta" first, then every "identity", "visit" (oldest first),
// "alert" and "constraint" (an analyst's correction). The outbox is not
// exported.
func (s *Store) Export(ctx context.Context, w io.Writer, opts ExportOptions) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	err := s.scan(ctx, "export", func(tx *bolt.Tx) error {
		meta := tx.Bucket(bMeta)
		if err := enc.Encode(map[string]any{
			"type": "meta", "schema_version": getU64(meta, kSchema),
			"device_id": string(meta.Get(kDeviceID)), "exported": s.opts.Now().UTC(),
			"embeddings": opts.Embeddings,
		}); err != nil {
			return err
		}
		if err := tx.Bucket(bIdentities).ForEach(func(_, v []byte) error {
			var id record.Identity
			if err := json.Unmarshal(v, &id); err != nil {
				return err
			}
			return enc.Encode(struct {
				Type string `json:"type"`
				record.Identity
			}{"identity", id})
		}); err != nil {
			return err
		}
		n := 0
		if err := tx.Bucket(bVisits).ForEach(func(k, v []byte) error {
			if n++; n%1000 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			vis, err := s.decodeVisit(tx, k, v, opts.Embeddings)
			if err != nil {
				return err
			}
			return enc.Encode(exportVisit{
				Type: "visit", ID: vis.ID, Seq: vis.Seq, Time: vis.Time, Trigger: vis.Trigger,
				Context: vis.Context, Outcome: vis.Outcome.String(), Model: vis.Model, Mask: vis.Mask,
				MaskScore: vis.MaskScore, Quality: vis.Quality, Frames: vis.Frames, Used: vis.Used,
				// Visits stored before distances were clamped may hold
				// a rounding error below 0 (-1.19e-7): 0 is what it means.
				IdentityID: vis.IdentityID, Distance: max(vis.Distance, 0), Embedding: vis.Embedding,
			})
		}); err != nil {
			return err
		}
		if err := tx.Bucket(bAlerts).ForEach(func(_, v []byte) error {
			var a visit.Alert
			if err := json.Unmarshal(v, &a); err != nil {
				return err
			}
			return enc.Encode(struct {
				Type string `json:"type"`
				visit.Alert
			}{"alert", a})
		}); err != nil {
			return err
		}
		return forEachConstraint(tx, func(_ []byte, c record.Constraint) error {
			return enc.Encode(struct {
				Type string `json:"type"`
				record.Constraint
			}{"constraint", c})
		})
	})
	if err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return nil
}

// Compact rewrites the database into a fresh file without free pages
// (bbolt.Compact) and renames it atomically to dst. With dst "" or the
// store's own path the live database is replaced and reopened; the store
// is unusable only if that reopen fails. A store path that is a symbolic
// link is resolved: the file it points to is replaced (in its directory),
// and the link is left as it is, pointing at the compacted file.
func (s *Store) Compact(ctx context.Context, dst string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	inPlace := dst == "" || sameFile(dst, s.path)
	if inPlace {
		// Renaming onto a symbolic link would replace the link and leave
		// the old file, with everything deleted still in its free pages.
		real, err := filepath.EvalSymlinks(s.path)
		if err != nil {
			return fmt.Errorf("compact: resolve %q: %w", s.path, err)
		}
		dst = real
	}
	tmp := dst + ".compact.tmp"
	_ = os.Remove(tmp)

	if !s.lock(true) {
		return fmt.Errorf("compact: %w", s.Broken())
	}
	defer s.mu.Unlock()
	if err := s.Broken(); err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	if s.db == nil {
		return fmt.Errorf("compact: %w", errClosed)
	}
	if s.opts.ReadOnly {
		return fmt.Errorf("compact: store opened read-only")
	}
	// The new file takes the old one's owner, group and mode: an operator
	// compacting as root must not leave a file the service cannot open.
	was, err := os.Stat(s.path)
	if err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	if err := fileops.RoomFor(filepath.Dir(dst), was.Size()); err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	out, err := bolt.Open(tmp, defaultOpenFileMode, &bolt.Options{Timeout: s.opts.Timeout})
	if err != nil {
		return fmt.Errorf("compact: create %q: %w", tmp, err)
	}
	if err := safely(func() error { return bolt.Compact(out, s.db, defaultCompactTxMaxSize) }); err != nil {
		if isPanic(err) {
			s.markBroken(err)
		}
		out.Close()
		os.Remove(tmp)
		return fmt.Errorf("compact %q: %w", s.path, err)
	}
	// The copy holds nothing of the old file's free pages: a compaction
	// left pending by a rekey or encrypt is done once it replaces the file
	// (a crash before the rename leaves the old file, flag and all).
	if err := safely(func() error { return dropPending(out) }); err != nil {
		out.Close()
		os.Remove(tmp)
		return fmt.Errorf("compact %q: %w", s.path, err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		os.Remove(tmp)
		return fmt.Errorf("compact: sync %q: %w", tmp, err)
	}
	if err := out.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("compact: close %q: %w", tmp, err)
	}
	if err := fileops.KeepOwner(tmp, was); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("compact: %w", err)
	}
	if inPlace {
		if err := s.db.Close(); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("compact: close %q: %w", s.path, err)
		}
		s.db, s.file = nil, nil
	}
	renameErr := os.Rename(tmp, dst)
	if renameErr == nil {
		fileops.SyncDir(filepath.Dir(dst))
	} else {
		os.Remove(tmp)
	}
	if inPlace {
		// Between the close and this open the file is unlocked: another
		// process (an operator's `db export`) may hold it a while. Waiting
		// for it a few times over keeps the agent's store open; giving up at
		// the first timeout left it closed until a restart.
		_ = s.hook("compact reopen")
		var db *bolt.DB
		var f *os.File
		var err error
		for range compactReopenTries {
			if db, f, err = s.openDB(context.Background(), s.path); !errors.Is(err, bolt.ErrTimeout) {
				break
			}
		}
		if err != nil {
			return fmt.Errorf("compact: reopen: %w", errors.Join(renameErr, err))
		}
		s.db, s.file = db, f
	}
	if renameErr != nil {
		return fmt.Errorf("compact: %w", renameErr)
	}
	return nil
}

func sameFile(a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	if err1 != nil || err2 != nil {
		return filepath.Clean(a) == filepath.Clean(b)
	}
	return os.SameFile(fa, fb)
}

// countTemplateCrypt counts encrypted and plaintext templates (and inline
// embeddings of schema-1 records).
func countTemplateCrypt(tx *bolt.Tx) (enc, plain int) {
	if tb := tx.Bucket(bTemplates); tb != nil {
		_ = tb.ForEach(func(_, v []byte) error {
			if len(v) > 0 && v[0]&flagEncrypted != 0 {
				enc++
			} else {
				plain++
			}
			return nil
		})
	}
	return enc, plain
}

// Encrypt seals every plaintext template with the store's key, in bounded
// transactions, then compacts the file in place so that no plaintext copy
// is left in free pages. Each transaction that seals templates also
// records the compaction as pending (meta "compact_pending"), so a crash
// before it leaves a flag the next writing open acts on (pending.go). It
// returns the number of templates encrypted. The store must be opened
// with a key.
func (s *Store) Encrypt(ctx context.Context) (int, error) {
	if s.aead == nil {
		return 0, fmt.Errorf("encrypt: %w", ErrKeyRequired)
	}
	total := 0
	for {
		n := 0
		err := s.update(ctx, "encrypt", func(tx *bolt.Tx) error {
			n = 0
			tb := tx.Bucket(bTemplates)
			type rec struct{ k, v []byte }
			var todo []rec
			c := tb.Cursor()
			for k, v := c.First(); k != nil && len(todo) < defaultPurgeBatch; k, v = c.Next() {
				if len(v) > 0 && v[0]&flagEncrypted == 0 {
					todo = append(todo, rec{bytes.Clone(k), bytes.Clone(v[1:])})
				}
			}
			if len(todo) > 0 {
				// The plaintext copies stay in free pages until the
				// compaction below: owed, in this same commit.
				if err := s.markCompactPending(tx, CompactAfterEncrypt); err != nil {
					return err
				}
			}
			for _, r := range todo {
				sealed, err := seal(s.aead, r.v, r.k)
				clear(r.v)
				if err != nil {
					return err
				}
				if err := tb.Put(r.k, append([]byte{flagEncrypted}, sealed...)); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		total += n
		if err != nil {
			return total, err
		}
		if n < defaultPurgeBatch {
			break
		}
	}
	if err := s.hook("encrypt committed"); err != nil {
		return total, err
	}
	if err := s.Compact(ctx, ""); err != nil {
		return total, fmt.Errorf("encrypt: %d templates encrypted, but compacting failed (plaintext copies remain in free pages until the compaction, left pending: the next writing open or atm-agent db compact does it): %w", total, err)
	}
	s.plainTemplates = 0
	return total, nil
}

// PlainTemplates is the number of plaintext templates the open check found.
func (s *Store) PlainTemplates() int { return s.plainTemplates }

// Rekey re-encrypts every template under newKey and replaces the key check,
// in one transaction (a crash leaves the store wholly under the old key or
// wholly under the new one), then compacts the file in place so that no
// template sealed with the old key is left in free pages. Plaintext
// templates are sealed too. The store must be opened with its current key
// (Open refuses a wrong one); a store without a key check may be opened
// without a key. It returns the number of templates sealed with newKey;
// afterwards the open store uses newKey.
//
// newKey must look random (CheckNewKey: not all zero, at least 16
// distinct byte values) and must not be the current key (ErrSameKey). The
// rekey transaction also records the compaction as pending (meta
// "compact_pending"): a crash between the commit and the compaction leaves
// the flag, and the next writing open compacts first (pending.go).
func (s *Store) Rekey(ctx context.Context, newKey []byte) (int, error) {
	na, err := newAEAD(newKey)
	if err != nil {
		return 0, fmt.Errorf("rekey: new %w", err)
	}
	if err := CheckNewKey(newKey); err != nil {
		return 0, fmt.Errorf("rekey: new key refused: %w (the store is unchanged)", err)
	}
	n := 0
	err = s.update(ctx, "rekey", func(tx *bolt.Tx) error {
		n = 0
		// The key check opens with the new key: it is the current one
		// (or a copy of it), and a rotation to it rotates nothing.
		if c := tx.Bucket(bMeta).Get(kKeyCheck); c != nil && verifyKeyCheck(na, c) == nil {
			return fmt.Errorf("%w: nothing would be rotated; make a new key with %s", ErrSameKey, KeyHint)
		}
		tb := tx.Bucket(bTemplates)
		type rec struct{ k, v []byte }
		var todo []rec
		defer func() {
			for _, r := range todo {
				clear(r.v)
			}
		}()
		if err := tb.ForEach(func(k, v []byte) error {
			if len(v) == 0 {
				return fmt.Errorf("template %x: empty record", k)
			}
			p := bytes.Clone(v[1:])
			if v[0]&flagEncrypted != 0 {
				if s.aead == nil {
					return ErrKeyRequired
				}
				var err error
				if p, err = open(s.aead, v[1:], k); err != nil {
					return fmt.Errorf("template %x: decrypt with the current key: %w", k, err)
				}
			}
			todo = append(todo, rec{bytes.Clone(k), p})
			return nil
		}); err != nil {
			return err
		}
		for _, r := range todo {
			sealed, err := seal(na, r.v, r.k)
			if err != nil {
				return err
			}
			if err := tb.Put(r.k, append([]byte{flagEncrypted}, sealed...)); err != nil {
				return err
			}
			n++
		}
		c, err := makeKeyCheck(na)
		if err != nil {
			return err
		}
		if err := tx.Bucket(bMeta).Put(kKeyCheck, c); err != nil {
			return err
		}
		// The old ciphertexts stay in free pages until the compaction
		// below: owed, in this same commit.
		return s.markCompactPending(tx, CompactAfterRekey)
	})
	if err != nil {
		return 0, fmt.Errorf("rekey: %w (the store is unchanged, still under its current key)", err)
	}
	if !s.lock(true) {
		return n, fmt.Errorf("rekey: %d templates sealed with the new key, but the store broke before it could use it: %w", n, s.Broken())
	}
	s.aead, s.plainTemplates = na, 0
	s.mu.Unlock()
	if err := s.hook("rekey committed"); err != nil {
		return n, err
	}
	if err := s.Compact(ctx, ""); err != nil {
		return n, fmt.Errorf("rekey: %d templates sealed with the new key, but compacting failed (copies under the old key remain in free pages until the compaction, left pending: the next writing open with the new key, or atm-agent db compact with it, does it): %w", n, err)
	}
	return n, nil
}

// compactReopenTries is how many lock
// timeouts (store.lock_timeout each) an in-place compaction waits for
// another process that took the file between its close and reopen.
const compactReopenTries = 5

// CompactReserve is the free space a compaction leaves on the file system
// beyond its copy: the store's disk is the ATM controller's, and the ATM
// application must not find it full because the agent compacted.
const CompactReserve = fileops.Reserve

// ErrNoRoom: a compaction would leave less than CompactReserve free.
var ErrNoRoom = fileops.ErrNoRoom
