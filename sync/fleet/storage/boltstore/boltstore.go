// Package boltstore is the fleet service's embedded store: one bbolt file,
// for a single instance. Use storage/pgstore for more than one.
package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/sync/fleet/storage"
)

var (
	bDevices  = []byte("devices")          // site\0device -> storage.Device JSON
	bMessages = []byte("messages")         // site\0device\0message_id -> received unix ns (8 bytes)
	bAlerts   = []byte("alerts")           // site\0device\0alert_id -> storage.Alert JSON
	bSummary  = []byte("summaries")        // site\0device\0 seq(8) -> SummaryPoint JSON
	bIdent    = []byte("identities")       // site\0device\0identity\0 seq(8) -> IdentityPoint JSON
	bAudit    = []byte("audit")            // id(8) -> AuditEntry JSON
	bRejects  = []byte("rejects")          // id(8) -> Reject JSON
	bRevoked  = []byte("revoked_sessions") // storage.SessionHash(id) -> session expiry, unix seconds (8 bytes)
	bMeta     = []byte("meta")
	bKeys     = []byte("device_keys") // site\0device -> storage.DeviceKey JSON: the pinned reply-signing keys
	bUsers    = []byte("web_users")   // user name -> generation (storage.Store.SyncUsers)
	// The alert indexes, kept in the transactions that write alerts.
	bActive   = []byte("alerts_active")   // site\0device\0alert_id -> "": every alert not resolved
	bRaised   = []byte("alerts_raised")   // raised (8 bytes, newest first) site\0device\0alert_id -> ""
	bReceived = []byte("alerts_received") // received (8 bytes, oldest first) site\0device\0alert_id -> ""
	buckets   = [][]byte{bDevices, bMessages, bAlerts, bSummary, bIdent, bAudit, bRejects, bRevoked, bMeta, bActive, bRaised, bReceived, bKeys, bUsers}
)

// schemaVersion is written to the meta bucket. Version 2 added the alert
// indexes, 3 the index by received time; a file of another version (an
// older service wrote "1" or "2", and writes it again if it opens the
// file) has them rebuilt at open.
const schemaVersion = "3"

// maxRejects bounds the kept rejected payloads (oldest dropped first).
const maxRejects = storage.MaxHeldRejects

// Store is the bbolt implementation of storage.Store.
type Store struct {
	// mu: every transaction holds it shared; an in-place compaction
	// (after an identity's erasure) holds it alone while it replaces db.
	mu   sync.RWMutex
	db   *bolt.DB
	path string   // the store file (a symbolic link resolved)
	lock *os.File // path + ".lock", held from Open to Close
	storage.Hub
	phantoms int   // removed by Open
	scrubErr error // the scrub owed at Open failed (ScrubPending)
}

// ScrubPending reports whether an erasure's records may still be in the
// file's free pages: a scrub owed since an erasure found no room for its
// copy, and failed again at Open (the error).
func (s *Store) ScrubPending() error { return s.scrubErr }

var _ storage.Store = (*Store)(nil)

// Open opens or creates the store file. The file lock wait is bounded by
// timeout (another process holding it gives an error, not a hang).
func Open(path string, timeout time.Duration) (*Store, error) {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("open fleet store %q: %w", path, err)
	}
	real := realPath(path)
	lock, err := lockStore(real, timeout)
	if err != nil {
		return nil, fmt.Errorf("open fleet store %q: %w", path, err)
	}
	// bbolt faults (SIGSEGV) mapping a truncated or damaged file: check it
	// first and refuse it with a clear error.
	if err := checkFile(real); err != nil {
		lock.Close()
		return nil, fmt.Errorf("open fleet store %q: %w; the file was not opened and is left as it is: restore it from a backup (atm-fleet backup) or move it away to start an empty store", path, err)
	}
	db, err := bolt.Open(real, 0o600, &bolt.Options{Timeout: timeout})
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("open fleet store %q: %w", path, err)
	}
	var phantoms int
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range buckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if string(tx.Bucket(bMeta).Get([]byte("schema"))) != schemaVersion {
			if err := rebuildAlertIndexes(tx); err != nil {
				return fmt.Errorf("index alerts: %w", err)
			}
		}
		if err := tx.Bucket(bMeta).Put([]byte("schema"), []byte(schemaVersion)); err != nil {
			return err
		}
		var err error
		phantoms, err = removePhantoms(tx)
		return err
	})
	if err != nil {
		db.Close()
		lock.Close()
		return nil, fmt.Errorf("open fleet store %q: init: %w", path, err)
	}
	st := &Store{db: db, path: real, lock: lock, phantoms: phantoms}
	var owed bool
	_ = db.View(func(tx *bolt.Tx) error { owed = tx.Bucket(bMeta).Get(metaScrubPending) != nil; return nil })
	if owed {
		// An erasure's scrub that found no room before: done now if it
		// can be; the store opens either way.
		st.scrubErr = st.compactInPlace()
	}
	return st, nil
}

// metaPhantoms, in the meta bucket, records that removePhantoms ran (the
// value: how many records it removed).
var metaPhantoms = []byte("phantom_devices_removed")

// removePhantoms deletes, once per store, the device records that earlier
// versions created for rejected payloads ("phantom" devices: a name that
// never sent a valid message showed up in the fleet): a record with no
// status, no summary, no accepted or duplicate message, and nothing stored
// under its name (dedup records, alerts, series). A record that does not
// decode is left alone. It returns how many it removed; after the first
// open it does nothing (the meta key).
func removePhantoms(tx *bolt.Tx) (int, error) {
	meta := tx.Bucket(bMeta)
	if meta.Get(metaPhantoms) != nil {
		return 0, nil
	}
	var gone [][]byte
	err := tx.Bucket(bDevices).ForEach(func(k, v []byte) error {
		var d storage.Device
		if json.Unmarshal(v, &d) != nil {
			return nil
		}
		if d.Status != nil || d.Summary != nil || d.Unique != 0 || d.Duplicates != 0 || !d.LastReceived.IsZero() {
			return nil
		}
		for _, b := range [][]byte{bMessages, bAlerts, bSummary, bIdent} {
			if n, _ := tx.Bucket(b).Cursor().Seek(k); n != nil && bytes.HasPrefix(n, k) {
				return nil // k is site\0device\0: the prefix of that device's keys
			}
		}
		gone = append(gone, bytes.Clone(k))
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("remove phantom devices: %w", err)
	}
	for _, k := range gone {
		if err := tx.Bucket(bDevices).Delete(k); err != nil {
			return 0, fmt.Errorf("remove phantom devices: %w", err)
		}
	}
	return len(gone), meta.Put(metaPhantoms, []byte(strconv.Itoa(len(gone))))
}

// RemovedPhantoms is how many phantom device records Open removed (see
// removePhantoms): non-zero only on the first open of a store that an
// earlier version wrote them to.
func (s *Store) RemovedPhantoms() int { return s.phantoms }

// Close closes the file.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.db.Close()
	s.lock.Close()
	return err
}

func dkey(site, device string) []byte { return []byte(site + "\x00" + device + "\x00") }

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func getJSON(b *bolt.Bucket, k []byte, v any) (bool, error) {
	raw := b.Get(k)
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return true, fmt.Errorf("decode %q: %w", k, err)
	}
	return true, nil
}

func putJSON(b *bolt.Bucket, k []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(k, raw)
}

func loadDevice(tx *bolt.Tx, site, device string) (storage.Device, error) {
	var d storage.Device
	if _, err := getJSON(tx.Bucket(bDevices), dkey(site, device), &d); err != nil {
		return d, err
	}
	d.Site, d.Device = site, device
	return d, nil
}

func (s *Store) update(ctx context.Context, op string, fn func(tx *bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if err := s.db.Update(fn); err != nil {
		if errors.Is(err, bolt.ErrKeyTooLarge) || errors.Is(err, bolt.ErrValueTooLarge) || errors.Is(err, bolt.ErrKeyRequired) {
			return fmt.Errorf("%s: %w: %w", op, storage.ErrBadRecord, err)
		}
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

func (s *Store) view(ctx context.Context, op string, fn func(tx *bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if err := s.db.View(fn); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

// Apply implements storage.Store.
func (s *Store) Apply(ctx context.Context, msgs []storage.Message) ([]bool, error) {
	fresh := make([]bool, len(msgs))
	err := s.update(ctx, "apply messages", func(tx *bolt.Tx) error {
		devs := map[string]*storage.Device{}
		for i, m := range msgs {
			k := string(dkey(m.Site, m.Device))
			d := devs[k]
			if d == nil {
				rec, err := loadDevice(tx, m.Site, m.Device)
				if err != nil {
					return err
				}
				d = &rec
				devs[k] = d
			}
			mk := cat(dkey(m.Site, m.Device), []byte(m.MessageID))
			if tx.Bucket(bMessages).Get(mk) != nil {
				if !m.Retained {
					d.Duplicates++
				}
				continue
			}
			fresh[i] = true
			if err := tx.Bucket(bMessages).Put(mk, u64(uint64(m.Received.UnixNano()))); err != nil {
				return err
			}
			earlier := storage.Earlier(*d, m)
			restart := storage.Restarted(*d, m)
			// The latest summary: the highest seq of the current
			// sequence; one left from an earlier sequence (its seq above
			// the current maximum after a restart) is replaced.
			newer := !earlier && (d.Summary == nil || m.Seq > d.Summary.Seq || d.Summary.Seq > d.MaxSeq || restart)
			if restart {
				d.FirstSeq, d.MaxSeq, d.Unique, d.SeqRestart = m.Seq, m.Seq, 0, m.TS.UTC()
			}
			if !earlier {
				if d.Unique == 0 || m.Seq < d.FirstSeq {
					d.FirstSeq = m.Seq
				}
				d.MaxSeq = max(d.MaxSeq, m.Seq)
				d.Unique++
			}
			if m.Received.After(d.LastReceived) {
				d.LastReceived = m.Received
			}
			if m.TS.After(d.LastTS) && !storage.Ahead(m) {
				d.LastTS = m.TS.UTC()
			}
			switch {
			case m.Summary != nil:
				if newer {
					d.Summary, d.SummaryAuthenticated = m.Summary, m.Authenticated
				}
				p, ids := storage.PointsFromSummary(m.Summary)
				if err := putJSON(tx.Bucket(bSummary), cat(dkey(m.Site, m.Device), u64(m.Seq)), p); err != nil {
					return err
				}
				for id, ip := range ids {
					if err := putJSON(tx.Bucket(bIdent), cat(dkey(m.Site, m.Device), []byte(id+"\x00"), u64(m.Seq)), ip); err != nil {
						return err
					}
				}
			case m.Alert != nil:
				if err := applyAlert(tx, m); err != nil {
					return err
				}
			}
		}
		for k, d := range devs {
			if err := putJSON(tx.Bucket(bDevices), []byte(k), d); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, c := range storage.ChangesOf(msgs, fresh) {
		s.Publish(c)
	}
	return fresh, nil
}

// MergeAlert folds one alert message into the stored alert (nil: new).
func MergeAlert(old *storage.Alert, m storage.Message) storage.Alert {
	a := m.Alert
	if old == nil {
		return storage.Alert{AlertKey: storage.AlertKey{Site: m.Site, Device: m.Device, AlertID: a.AlertID},
			Rule: a.Rule, Kind: a.Kind, IdentityID: a.IdentityID, VisitID: a.VisitID, TxnID: a.TxnID,
			Window: a.Window, WindowStart: a.WindowStart.UTC(),
			Count: a.Count, Threshold: a.Threshold, FirstSeen: a.FirstSeen.UTC(), LastSeen: a.LastSeen.UTC(),
			Raised: a.Raised.UTC(), MessageID: m.MessageID, Seq: m.Seq, Historical: m.Historical,
			Received: m.Received.UTC(), Raises: 1, State: storage.AlertOpen, Authenticated: m.Authenticated}
	}
	n := *old
	n.Raises++
	n.Count = max(n.Count, a.Count)
	if a.LastSeen.After(n.LastSeen) {
		n.LastSeen = a.LastSeen.UTC()
	}
	return n
}

func applyAlert(tx *bolt.Tx, m storage.Message) error {
	b := tx.Bucket(bAlerts)
	k := cat(dkey(m.Site, m.Device), []byte(m.Alert.AlertID))
	var old storage.Alert
	found, err := getJSON(b, k, &old)
	if err != nil {
		return err
	}
	var a storage.Alert
	if found {
		a = MergeAlert(&old, m)
	} else {
		a = MergeAlert(nil, m)
	}
	return putAlert(tx, k, a)
}

// putAlert stores an alert and keeps the alert indexes.
func putAlert(tx *bolt.Tx, k []byte, a storage.Alert) error {
	var old storage.Alert
	found, err := getJSON(tx.Bucket(bAlerts), k, &old)
	if err != nil {
		return err
	}
	if found {
		if err := unindexAlert(tx, k, old); err != nil {
			return err
		}
	}
	if err := putJSON(tx.Bucket(bAlerts), k, a); err != nil {
		return err
	}
	return indexAlert(tx, k, a)
}

func indexAlert(tx *bolt.Tx, k []byte, a storage.Alert) error {
	if err := tx.Bucket(bRaised).Put(raisedKey(a.Raised, k), nil); err != nil {
		return err
	}
	if err := tx.Bucket(bReceived).Put(receivedKey(a.Received, k), nil); err != nil {
		return err
	}
	if a.State != storage.AlertResolved {
		return tx.Bucket(bActive).Put(k, nil)
	}
	return nil
}

func unindexAlert(tx *bolt.Tx, k []byte, a storage.Alert) error {
	if err := tx.Bucket(bRaised).Delete(raisedKey(a.Raised, k)); err != nil {
		return err
	}
	if err := tx.Bucket(bReceived).Delete(receivedKey(a.Received, k)); err != nil {
		return err
	}
	return tx.Bucket(bActive).Delete(k)
}

// rebuildAlertIndexes indexes every stored alert anew.
func rebuildAlertIndexes(tx *bolt.Tx) error {
	for _, b := range [][]byte{bActive, bRaised, bReceived} {
		if err := tx.DeleteBucket(b); err != nil {
			return err
		}
		if _, err := tx.CreateBucket(b); err != nil {
			return err
		}
	}
	return tx.Bucket(bAlerts).ForEach(func(k, v []byte) error {
		var a storage.Alert
		if err := json.Unmarshal(v, &a); err != nil {
			return fmt.Errorf("decode alert %q: %w", k, err)
		}
		return indexAlert(tx, k, a)
	})
}

// raisedKey orders alerts newest raised first: the raised time's
// timeOrder inverted, then the alert key.
func raisedKey(t time.Time, k []byte) []byte { return cat(u64(^timeOrder(t)), k) }

// receivedKey orders alerts oldest received first.
func receivedKey(t time.Time, k []byte) []byte { return cat(u64(timeOrder(t)), k) }

// timeOrder is t in unix nanoseconds (clamped to the years 1678..2262
// they can hold), sign bit flipped: byte order is time order.
func timeOrder(t time.Time) uint64 {
	var n int64
	switch {
	case t.Before(minNano):
		n = math.MinInt64
	case t.After(maxNano):
		n = math.MaxInt64
	default:
		n = t.UnixNano()
	}
	return uint64(n) ^ 1<<63
}

var (
	minNano = time.Unix(0, math.MinInt64)
	maxNano = time.Unix(0, math.MaxInt64)
)

// PutStatus implements storage.Store.
func (s *Store) PutStatus(ctx context.Context, st storage.Status) error {
	return s.PutStatuses(ctx, []storage.Status{st})
}

// PutStatuses implements storage.BatchWriter: one transaction for all.
func (s *Store) PutStatuses(ctx context.Context, sts []storage.Status) error {
	if len(sts) == 0 {
		return nil
	}
	var applied []storage.Status
	err := s.update(ctx, "put status", func(tx *bolt.Tx) error {
		devs := map[string]*storage.Device{}
		var order []string
		applied = applied[:0]
		for _, st := range sts {
			k := string(dkey(st.Site, st.Device))
			d := devs[k]
			if d == nil {
				rec, err := loadDevice(tx, st.Site, st.Device)
				if err != nil {
					return err
				}
				d = &rec
				devs[k] = d
				order = append(order, k)
			}
			if storage.NextStatus(d, st) {
				applied = append(applied, st)
			}
		}
		for _, k := range order {
			if err := putJSON(tx.Bucket(bDevices), []byte(k), devs[k]); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		seen := map[storage.Change]bool{}
		for _, st := range applied {
			c := storage.Change{Kind: "status", Site: st.Site, Device: st.Device}
			if !seen[c] {
				seen[c] = true
				s.Publish(c)
			}
		}
	}
	return err
}

// PutReject implements storage.Store.
func (s *Store) PutReject(ctx context.Context, r storage.Reject) error {
	return s.PutRejects(ctx, []storage.Reject{r})
}

// PutRejects implements storage.BatchWriter: one transaction for all. The
// payloads are kept (at most maxRejects, oldest dropped first) and counted
// on their device only when it exists: a reject never creates a device.
func (s *Store) PutRejects(ctx context.Context, rs []storage.Reject) error {
	if len(rs) == 0 {
		return nil
	}
	return s.update(ctx, "put reject", func(tx *bolt.Tx) error {
		b := tx.Bucket(bRejects)
		devs := tx.Bucket(bDevices)
		for _, r := range rs {
			if len(r.Payload) > storage.MaxRejectPayload {
				r.Payload = r.Payload[:storage.MaxRejectPayload]
			}
			id, _ := b.NextSequence()
			if err := putJSON(b, u64(id), r); err != nil {
				return err
			}
			if r.Site == "" || devs.Get(dkey(r.Site, r.Device)) == nil {
				continue
			}
			d, err := loadDevice(tx, r.Site, r.Device)
			if err != nil {
				return err
			}
			d.Rejected++
			if err := putJSON(devs, dkey(r.Site, r.Device), d); err != nil {
				return err
			}
		}
		// Drop the oldest beyond the bound (keys are increasing ids).
		n := b.Stats().KeyN
		c := b.Cursor()
		for k, _ := c.First(); k != nil && n > maxRejects; k, _ = c.First() {
			if err := b.Delete(k); err != nil {
				return err
			}
			n--
		}
		return nil
	})
}

// fewActive reports whether the active alerts in scope are few enough
// to read them all and sort them (at most 2,000, or four pages' worth): a
// fleet where nobody resolves alerts has them all active, and a listing
// then walks the order index instead, stopping at its page.
func fewActive(active *bolt.Bucket, scope []byte, page int) bool {
	most := max(2000, 4*page)
	n := 0
	c := active.Cursor()
	for k, _ := c.Seek(scope); k != nil && bytes.HasPrefix(k, scope); k, _ = c.Next() {
		if n++; n > most {
			return false
		}
	}
	return true
}

// openAlertCounts counts every device's active alerts from the index of
// active alerts: no alert is read (every stored alert was decoded for each
// fleet page: 1.27 s at 106,000 alerts).
func openAlertCounts(tx *bolt.Tx) map[string]int {
	out := map[string]int{}
	_ = tx.Bucket(bActive).ForEach(func(k, _ []byte) error {
		if i := bytes.IndexByte(k, 0); i >= 0 {
			if j := bytes.IndexByte(k[i+1:], 0); j >= 0 {
				out[string(k[:i+1+j])]++
			}
		}
		return nil
	})
	return out
}

// openAlertCount counts one device's active alerts: its keys in the index
// share a prefix.
func openAlertCount(tx *bolt.Tx, site, device string) int {
	n := 0
	p := dkey(site, device)
	c := tx.Bucket(bActive).Cursor()
	for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
		n++
	}
	return n
}

// Devices implements storage.Store, sorted by site then device.
func (s *Store) Devices(ctx context.Context) ([]storage.Device, error) {
	var out []storage.Device
	err := s.view(ctx, "list devices", func(tx *bolt.Tx) error {
		open := openAlertCounts(tx)
		return tx.Bucket(bDevices).ForEach(func(k, v []byte) error {
			var d storage.Device
			if err := json.Unmarshal(v, &d); err != nil {
				return fmt.Errorf("decode device %q: %w", k, err)
			}
			d.OpenAlerts = open[d.Site+"\x00"+d.Device]
			out = append(out, d)
			return nil
		})
	})
	return out, err
}

// Device implements storage.Store.
func (s *Store) Device(ctx context.Context, site, device string) (storage.Device, error) {
	var d storage.Device
	err := s.view(ctx, "get device", func(tx *bolt.Tx) error {
		found, err := getJSON(tx.Bucket(bDevices), dkey(site, device), &d)
		if err != nil {
			return err
		}
		if !found {
			return storage.DeviceNotFound(site, device)
		}
		d.OpenAlerts = openAlertCount(tx, site, device)
		return nil
	})
	return d, err
}

// Alerts implements storage.Store: newest raised first, or oldest
// received first (f.Order). Active alerts
// come from their index, one device's from its own keys, and any other
// listing walks the index of its order until its page is full (or, newest
// raised first, the alerts are older than f.Since): no listing decodes
// every stored alert.
func (s *Store) Alerts(ctx context.Context, f storage.AlertFilter) ([]storage.Alert, error) {
	if f.Order == 0 {
		f.Order = storage.ByRaised
	}
	limit := f.Limit
	if limit <= 0 {
		limit = storage.DefaultAlertLimit
	}
	skip := max(f.Offset, 0)
	var out []storage.Alert
	err := s.view(ctx, "list alerts", func(tx *bolt.Tx) error {
		alerts := tx.Bucket(bAlerts)
		take := func(k, v []byte) error {
			if v == nil {
				return fmt.Errorf("alert index names %q, which is not stored: stop the service and run atm-fleet compact, which rebuilds the indexes", k)
			}
			var a storage.Alert
			if err := json.Unmarshal(v, &a); err != nil {
				return fmt.Errorf("decode alert %q: %w", k, err)
			}
			if f.Match(a) {
				out = append(out, a)
			}
			return nil
		}
		prefix := func(b *bolt.Bucket, p []byte, get func(k, v []byte) []byte) error {
			c := b.Cursor()
			for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
				if err := take(k, get(k, v)); err != nil {
					return err
				}
			}
			return nil
		}
		scope := []byte(nil)
		if f.Site != "" {
			scope = []byte(f.Site + "\x00")
			if f.Device != "" {
				scope = dkey(f.Site, f.Device)
			}
		}
		active := tx.Bucket(bActive)
		onlyActive := f.Active || f.State == storage.AlertOpen || f.State == storage.AlertAcknowledged
		switch {
		case onlyActive && fewActive(active, scope, skip+limit):
			return prefix(active, scope, func(k, _ []byte) []byte { return alerts.Get(k) })
		case f.Device != "" && f.Site != "":
			return prefix(alerts, scope, func(_, v []byte) []byte { return v })
		}
		// Walking an order index, what its keys tell is checked before an
		// alert is decoded: the scope (site, device, the user's sites) and, for active
		// listings, membership of the active index.
		walk := func(k []byte) error {
			ak := k[8:]
			site, _, _ := bytes.Cut(ak, []byte{0})
			if !bytes.HasPrefix(ak, scope) || !f.Sites.Allows(string(site)) || (onlyActive && active.Get(ak) == nil) {
				return nil
			}
			return take(ak, alerts.Get(ak))
		}
		if f.Order == storage.ByReceived {
			c := tx.Bucket(bReceived).Cursor()
			from := f.ReceivedSince
			if f.After != nil && f.After.At.After(from) {
				from = f.After.At
			}
			for k, _ := c.Seek(receivedKey(from, nil)); k != nil && len(out) < skip+limit; k, _ = c.Next() {
				if err := walk(k); err != nil {
					return err
				}
			}
			return nil
		}
		c := tx.Bucket(bRaised).Cursor()
		k, _ := c.First()
		if f.After != nil {
			k, _ = c.Seek(raisedKey(f.After.At, nil))
		}
		var stop []byte // index keys past it are older than f.Since
		if !f.Since.IsZero() {
			stop = raisedKey(f.Since, nil)
		}
		for ; k != nil && len(out) < skip+limit; k, _ = c.Next() {
			if stop != nil && bytes.Compare(k[:8], stop) > 0 {
				break
			}
			if err := walk(k); err != nil {
				return err
			}
		}
		return nil
	})
	slices.SortStableFunc(out, f.Compare)
	out = out[min(skip, len(out)):]
	if len(out) > limit {
		out = out[:limit]
	}
	return out, err
}

// Alert implements storage.Store.
func (s *Store) Alert(ctx context.Context, k storage.AlertKey) (storage.Alert, error) {
	var a storage.Alert
	err := s.view(ctx, "get alert", func(tx *bolt.Tx) error {
		found, err := getJSON(tx.Bucket(bAlerts), cat(dkey(k.Site, k.Device), []byte(k.AlertID)), &a)
		if err == nil && !found {
			err = storage.AlertNotFound(k)
		}
		return err
	})
	return a, err
}

// ApplyAction changes an alert's state; shared with the PostgreSQL store's
// tests of the same rules.
func ApplyAction(a storage.Alert, act storage.Action) (storage.Alert, error) {
	if !storage.Allowed(act.Action, a.State) {
		who := a.AckBy
		if a.State == storage.AlertResolved {
			who = a.ResolvedBy
		}
		return a, fmt.Errorf("%s alert %s: it is %s (by %s): %w", act.Action, a.AlertKey, a.State, who, storage.StateErr(a))
	}
	switch act.Action {
	case storage.ActionAck:
		a.State, a.AckBy, a.AckNote, a.AckAt = storage.AlertAcknowledged, act.User, act.Note, act.At.UTC()
	case storage.ActionResolve:
		a.State, a.ResolvedBy, a.ResolvedNote, a.ResolvedAt = storage.AlertResolved, act.User, act.Note, act.At.UTC()
	}
	return a, nil
}

// Act implements storage.Store.
func (s *Store) Act(ctx context.Context, act storage.Action) (storage.Alert, error) {
	if err := act.Validate(); err != nil {
		return storage.Alert{}, err
	}
	var a storage.Alert
	repeated := false
	err := s.update(ctx, act.Action+" alert", func(tx *bolt.Tx) error {
		k := cat(dkey(act.Key.Site, act.Key.Device), []byte(act.Key.AlertID))
		found, err := getJSON(tx.Bucket(bAlerts), k, &a)
		if err != nil {
			return err
		}
		if !found {
			return storage.AlertNotFound(act.Key)
		}
		if storage.Repeated(act, a) {
			repeated = true
			return nil
		}
		if a, err = ApplyAction(a, act); err != nil {
			return err
		}
		if err := putAlert(tx, k, a); err != nil {
			return err
		}
		b := tx.Bucket(bAudit)
		id, _ := b.NextSequence()
		return putJSON(b, u64(id), storage.AuditEntry{ID: id, At: act.At.UTC(), User: act.User, Role: act.Role,
			Action: act.Action, Key: act.Key, Note: act.Note, Remote: act.Remote})
	})
	if err != nil {
		return storage.Alert{}, err
	}
	if !repeated {
		s.Publish(storage.Change{Kind: "action", Site: act.Key.Site, Device: act.Key.Device, Alert: act.Key.AlertID})
	}
	return a, nil
}

// RemoveDevice implements storage.Store. The record goes, with the audit
// entry, in one transaction; the dedup records and series after it, in
// transactions of pruneBatch keys (a month of a device's identity series
// is over a million records).
func (s *Store) RemoveDevice(ctx context.Context, r storage.Removal) error {
	p := dkey(r.Site, r.Device)
	var maxSeq uint64
	err := s.update(ctx, "remove device", func(tx *bolt.Tx) error {
		var d storage.Device
		found, err := getJSON(tx.Bucket(bDevices), p, &d)
		if err != nil {
			return err
		}
		if !found {
			return storage.DeviceNotFound(r.Site, r.Device)
		}
		d.OpenAlerts = openAlertCount(tx, r.Site, r.Device)
		if err := storage.CheckRemovable(d, r); err != nil {
			return err
		}
		maxSeq = d.MaxSeq
		if err := tx.Bucket(bDevices).Delete(p); err != nil {
			return err
		}
		b := tx.Bucket(bAudit)
		id, _ := b.NextSequence()
		return putJSON(b, u64(id), storage.AuditEntry{ID: id, At: r.At.UTC(), User: r.User, Role: r.Role,
			Action: storage.ActionRemoveDevice, Key: storage.AlertKey{Site: r.Site, Device: r.Device}, Note: storage.RemovalNote(d, r), Remote: r.Remote})
	})
	if err != nil {
		return err
	}
	// What the device sent until its removal goes; what it sends after
	// (a device that was not stopped for good is created again) stays: a
	// series point of a seq above the removed record's highest, a dedup
	// record received after the removal.
	old := func(name, k, v []byte) bool {
		if bytes.Equal(name, bMessages) {
			return len(v) == 8 && int64(binary.BigEndian.Uint64(v)) <= r.At.UnixNano()
		}
		return len(k) >= 8 && binary.BigEndian.Uint64(k[len(k)-8:]) <= maxSeq
	}
	for _, name := range [][]byte{bMessages, bSummary, bIdent} {
		for {
			var keys [][]byte
			err := s.view(ctx, "remove device", func(tx *bolt.Tx) error {
				c := tx.Bucket(name).Cursor()
				for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p) && len(keys) < pruneBatch; k, v = c.Next() {
					if old(name, k, v) {
						keys = append(keys, bytes.Clone(k))
					}
				}
				return nil
			})
			if err == nil && len(keys) > 0 {
				err = s.update(ctx, "remove device", func(tx *bolt.Tx) error {
					b := tx.Bucket(name)
					for _, k := range keys {
						if v := b.Get(k); v != nil && old(name, k, v) {
							if err := b.Delete(k); err != nil {
								return err
							}
						}
					}
					return nil
				})
			}
			if err != nil {
				return fmt.Errorf("remove device %s/%s: bucket %s: %w", r.Site, r.Device, name, err)
			}
			if len(keys) < pruneBatch {
				break
			}
		}
	}
	s.Publish(storage.Change{Kind: "device", Site: r.Site, Device: r.Device})
	return nil
}

// PurgeIdentity implements storage.Store, in one transaction (an
// identity's series is one summary's worth of records per summary kept).
func (s *Store) PurgeIdentity(ctx context.Context, p storage.IdentityPurge) (int, error) {
	n := 0
	err := s.update(ctx, "purge identity", func(tx *bolt.Tx) error {
		dk := dkey(p.Site, p.Device)
		var d storage.Device
		found, err := getJSON(tx.Bucket(bDevices), dk, &d)
		if err != nil {
			return err
		}
		if found && storage.DropIdentity(d.Summary, p.Identity) {
			if err := putJSON(tx.Bucket(bDevices), dk, d); err != nil {
				return err
			}
		}
		c := tx.Bucket(bIdent).Cursor()
		ip := cat(dk, []byte(p.Identity+"\x00"))
		points := 0
		for k, _ := c.Seek(ip); k != nil && bytes.HasPrefix(k, ip); k, _ = c.Seek(ip) {
			if err := c.Delete(); err != nil {
				return err
			}
			points++
		}
		// The device's alerts of this identity, in every state.
		var drop []storage.Alert
		ac := tx.Bucket(bAlerts).Cursor()
		for k, v := ac.Seek(dk); k != nil && bytes.HasPrefix(k, dk); k, v = ac.Next() {
			var a storage.Alert
			if err := json.Unmarshal(v, &a); err != nil {
				return fmt.Errorf("decode alert %q: %w", k, err)
			}
			if a.IdentityID == p.Identity {
				drop = append(drop, a)
			}
		}
		for _, a := range drop {
			k := cat(dk, []byte(a.AlertID))
			if err := unindexAlert(tx, k, a); err != nil {
				return err
			}
			if err := tx.Bucket(bAlerts).Delete(k); err != nil {
				return err
			}
		}
		n = len(drop)
		var rejects [][]byte
		ofDevice := 0 // rejects of the device (not of no device) erased
		rb := tx.Bucket(bRejects)
		if err := rb.ForEach(func(k, v []byte) error {
			var r storage.Reject
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("decode reject %x: %w", k, err)
			}
			if storage.RejectNames(r, p) {
				rejects = append(rejects, k)
				if r.Site != "" {
					ofDevice++
				}
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range rejects {
			if err := rb.Delete(k); err != nil {
				return err
			}
		}
		if !found && n == 0 && points == 0 && ofDevice == 0 {
			return storage.DeviceNotFound(p.Site, p.Device)
		}
		if err := tx.Bucket(bMeta).Put(metaScrubPending, []byte(p.At.UTC().Format(time.RFC3339))); err != nil {
			return err
		}
		b := tx.Bucket(bAudit)
		id, _ := b.NextSequence()
		return putJSON(b, u64(id), storage.AuditEntry{ID: id, At: p.At.UTC(), User: p.User, Role: p.Role,
			Action: storage.ActionPurgeIdentity, Key: storage.AlertKey{Site: p.Site, Device: p.Device},
			Note: storage.PurgeNote(p, n), Remote: p.Remote})
	})
	if err != nil {
		return 0, err
	}
	s.Publish(storage.Change{Kind: "device", Site: p.Site, Device: p.Device})
	// bbolt copies pages on write: the erased records stay in the file's
	// free pages until the file is rewritten (a hostile review read 6
	// copies back after an erasure).
	if err := s.compactInPlace(); err != nil {
		return n, fmt.Errorf("%w: %w", storage.ErrNotScrubbed, err)
	}
	return n, nil
}

// RecordCorrection implements storage.Store.
func (s *Store) RecordCorrection(ctx context.Context, c storage.Correction) error {
	if err := c.Validate(); err != nil {
		return err
	}
	err := s.update(ctx, "record correction", func(tx *bolt.Tx) error {
		b := tx.Bucket(bAudit)
		id, _ := b.NextSequence()
		return putJSON(b, u64(id), storage.AuditEntry{ID: id, At: c.At.UTC(), User: c.User, Role: c.Role,
			Action: c.Action, Key: storage.AlertKey{Site: c.Site, Device: c.Device}, Note: storage.CorrectionNote(c), Remote: c.Remote})
	})
	if err != nil {
		return err
	}
	s.Publish(storage.Change{Kind: "action", Site: c.Site, Device: c.Device})
	return nil
}

// Audit implements storage.Store: newest first.
func (s *Store) Audit(ctx context.Context, limit int) ([]storage.AuditEntry, error) {
	if limit <= 0 {
		limit = 200
	}
	var out []storage.AuditEntry
	err := s.view(ctx, "read audit log", func(tx *bolt.Tx) error {
		c := tx.Bucket(bAudit).Cursor()
		for k, v := c.Last(); k != nil && len(out) < limit; k, v = c.Prev() {
			var e storage.AuditEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("decode audit %x: %w", k, err)
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

// Summaries implements storage.Store: oldest first by ts.
func (s *Store) Summaries(ctx context.Context, site, device string, since time.Time) ([]storage.SummaryPoint, error) {
	var out []storage.SummaryPoint
	err := s.view(ctx, "read summaries", func(tx *bolt.Tx) error {
		c := tx.Bucket(bSummary).Cursor()
		p := dkey(site, device)
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			var sp storage.SummaryPoint
			if err := json.Unmarshal(v, &sp); err != nil {
				return fmt.Errorf("decode summary %q: %w", k, err)
			}
			if !sp.TS.Before(since) {
				out = append(out, sp)
			}
		}
		return nil
	})
	sort.SliceStable(out, func(i, j int) bool { return out[i].TS.Before(out[j].TS) })
	return out, err
}

// IdentityPoints implements storage.Store: oldest first by ts.
func (s *Store) IdentityPoints(ctx context.Context, site, device, identity string, since time.Time) ([]storage.IdentityPoint, error) {
	var out []storage.IdentityPoint
	err := s.view(ctx, "read identity series", func(tx *bolt.Tx) error {
		c := tx.Bucket(bIdent).Cursor()
		p := cat(dkey(site, device), []byte(identity+"\x00"))
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			var ip storage.IdentityPoint
			if err := json.Unmarshal(v, &ip); err != nil {
				return fmt.Errorf("decode identity point %q: %w", k, err)
			}
			if !ip.TS.Before(since) {
				out = append(out, ip)
			}
		}
		return nil
	})
	sort.SliceStable(out, func(i, j int) bool { return out[i].TS.Before(out[j].TS) })
	return out, err
}

// Rejects implements storage.Store: newest first.
func (s *Store) Rejects(ctx context.Context, limit int) ([]storage.Reject, error) {
	if limit <= 0 {
		limit = 100
	}
	var out []storage.Reject
	err := s.view(ctx, "read rejects", func(tx *bolt.Tx) error {
		c := tx.Bucket(bRejects).Cursor()
		for k, v := c.Last(); k != nil && len(out) < limit; k, v = c.Prev() {
			var r storage.Reject
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("decode reject %x: %w", k, err)
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// Prune implements storage.Store.
func (s *Store) Prune(ctx context.Context, now time.Time, r storage.Retention) (storage.PruneStats, error) {
	var st storage.PruneStats
	hist := now.Add(-r.History)
	alerts := now.Add(-r.Alerts)
	// Each bucket is scanned in a read transaction and its old records
	// deleted in write transactions of pruneBatch keys, each record
	// judged again as it is deleted: one write transaction over the whole
	// store stopped ingest for 5 s on a 1.2 GB store (minutes on a month's
	// store), at every prune and every start.
	del := func(name []byte, n *int, old func(k, v []byte) (bool, error), drop func(tx *bolt.Tx, k, v []byte) error) error {
		var keys [][]byte
		err := s.view(ctx, "prune scan", func(tx *bolt.Tx) error {
			return tx.Bucket(name).ForEach(func(k, v []byte) error {
				o, err := old(k, v)
				if o {
					keys = append(keys, bytes.Clone(k))
				}
				return err
			})
		})
		if err != nil {
			return err
		}
		for len(keys) > 0 {
			batch := keys[:min(len(keys), pruneBatch)]
			keys = keys[len(batch):]
			err := s.update(ctx, "prune", func(tx *bolt.Tx) error {
				b := tx.Bucket(name)
				for _, k := range batch {
					v := b.Get(k)
					if v == nil {
						continue
					}
					if o, err := old(k, v); err != nil || !o {
						continue // changed since the scan: judged again next time
					}
					if drop != nil {
						if err := drop(tx, k, v); err != nil {
							return err
						}
					}
					if err := b.Delete(k); err != nil {
						return err
					}
					*n++
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	}
	tsOf := func(v []byte) (time.Time, error) {
		var x struct{ TS, At, Received, ResolvedAt time.Time }
		err := json.Unmarshal(v, &x)
		return x.TS, err
	}
	// What goes with a deleted record: an alert's index entries.
	drops := map[string]func(tx *bolt.Tx, k, v []byte) error{string(bAlerts): func(tx *bolt.Tx, k, v []byte) error {
		var a storage.Alert
		if err := json.Unmarshal(v, &a); err != nil {
			return err
		}
		return unindexAlert(tx, k, a)
	}}
	steps := []struct {
		b   []byte
		n   *int
		old func(k, v []byte) (bool, error)
	}{
		{bMessages, &st.Messages, func(k, v []byte) (bool, error) {
			return len(v) == 8 && int64(binary.BigEndian.Uint64(v)) < hist.UnixNano(), nil
		}},
		{bSummary, &st.Summaries, func(k, v []byte) (bool, error) { t, err := tsOf(v); return t.Before(hist), err }},
		{bIdent, &st.IdentityPoints, func(k, v []byte) (bool, error) { t, err := tsOf(v); return t.Before(hist), err }},
		{bRejects, &st.Rejects, func(k, v []byte) (bool, error) {
			var x storage.Reject
			err := json.Unmarshal(v, &x)
			return x.Received.Before(hist), err
		}},
		{bAlerts, &st.Alerts, func(k, v []byte) (bool, error) {
			var a storage.Alert
			err := json.Unmarshal(v, &a)
			return a.State == storage.AlertResolved && a.ResolvedAt.Before(alerts), err
		}},
		{bAudit, &st.Audit, func(k, v []byte) (bool, error) {
			var e storage.AuditEntry
			err := json.Unmarshal(v, &e)
			return e.At.Before(alerts), err
		}},
		// A revocation is needed until its session expires.
		{bRevoked, &st.Sessions, func(k, v []byte) (bool, error) {
			return len(v) != 8 || int64(binary.BigEndian.Uint64(v)) < now.Unix(), nil
		}},
	}
	for _, step := range steps {
		if err := del(step.b, step.n, step.old, drops[string(step.b)]); err != nil {
			return st, fmt.Errorf("prune: bucket %s: %w", step.b, err)
		}
	}
	return st, nil
}

// pruneBatch is how many records one prune transaction deletes.
const pruneBatch = 5000

// RevokeSession implements storage.Store.
func (s *Store) RevokeSession(ctx context.Context, id string, expires time.Time) error {
	return s.update(ctx, "revoke session", func(tx *bolt.Tx) error {
		b, k := tx.Bucket(bRevoked), storage.SessionHash(id)
		if v := b.Get(k); len(v) == 8 && int64(binary.BigEndian.Uint64(v)) >= expires.Unix() {
			return nil // already revoked as long or longer
		}
		return b.Put(k, u64(uint64(expires.Unix())))
	})
}

// SessionRevoked implements storage.Store.
func (s *Store) SessionRevoked(ctx context.Context, id string) (bool, error) {
	var found bool
	err := s.view(ctx, "check session", func(tx *bolt.Tx) error {
		found = tx.Bucket(bRevoked).Get(storage.SessionHash(id)) != nil
		return nil
	})
	return found, err
}

// SyncUsers implements storage.Store.
func (s *Store) SyncUsers(ctx context.Context, names []string) (map[string]string, error) {
	gens := make(map[string]string, len(names))
	err := s.update(ctx, "record the web users", func(tx *bolt.Tx) error {
		b := tx.Bucket(bUsers)
		want := make(map[string]bool, len(names))
		for _, n := range names {
			want[n] = true
		}
		var gone [][]byte
		if err := b.ForEach(func(k, _ []byte) error {
			if !want[string(k)] {
				gone = append(gone, k)
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range gone {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		for _, n := range names {
			g := string(b.Get([]byte(n)))
			if g == "" {
				g = storage.NewUserGeneration()
				if err := b.Put([]byte(n), []byte(g)); err != nil {
					return err
				}
			}
			gens[n] = g
		}
		return nil
	})
	return gens, err
}

// Backup writes a consistent copy of the store file to w while the service
// runs. The copy is spooled to a temporary file beside the store inside
// one read transaction (local disk: about a gigabyte a second), and only
// then sent to w: a bbolt read transaction held while a slow or stalled
// client took the download stopped every write that had to grow the file,
// and every read queued behind it (ingest and the pages froze until the
// client went away). The spool needs free space the size of the store.
func (s *Store) Backup(ctx context.Context, w io.Writer) (int64, error) {
	tmp, err := os.CreateTemp(filepath.Dir(s.path), ".backup-*")
	if err != nil {
		return 0, fmt.Errorf("backup: spool: %w", err)
	}
	// Unlinked at once: the spool is a whole copy of the file, free pages
	// included, and one a killed service left by name kept an erased
	// identity for good (a hostile review). Open, it lives until closed.
	os.Remove(tmp.Name())
	defer tmp.Close()
	err = s.view(ctx, "backup", func(tx *bolt.Tx) error {
		_, err := tx.WriteTo(tmp)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("backup: spool: %w", err)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	return io.Copy(w, tmp)
}

// PutDeviceKey implements storage.Store.
func (s *Store) PutDeviceKey(ctx context.Context, k storage.DeviceKey, c storage.KeyChange) error {
	if err := k.Validate(); err != nil {
		return err
	}
	k.Pinned = k.Pinned.UTC()
	return s.update(ctx, "pin device key", func(tx *bolt.Tx) error {
		var before storage.DeviceKey
		found, err := getJSON(tx.Bucket(bKeys), dkey(k.Site, k.Device), &before)
		if err != nil {
			return err
		}
		if err := putJSON(tx.Bucket(bKeys), dkey(k.Site, k.Device), k); err != nil {
			return err
		}
		note := storage.KeyNote(nil, &k)
		if found {
			note = storage.KeyNote(&before, &k)
		}
		return auditKey(tx, storage.ActionPinKey, k.Site, k.Device, note, c)
	})
}

// auditKey appends a pin's or unpin's audit entry.
func auditKey(tx *bolt.Tx, action, site, device, note string, c storage.KeyChange) error {
	b := tx.Bucket(bAudit)
	id, _ := b.NextSequence()
	return putJSON(b, u64(id), storage.AuditEntry{ID: id, At: c.At.UTC(), User: c.User, Role: c.Role, Action: action,
		Key: storage.AlertKey{Site: site, Device: device}, Note: note, Remote: c.Remote})
}

// DeviceKey implements storage.Store.
func (s *Store) DeviceKey(ctx context.Context, site, device string) (storage.DeviceKey, error) {
	var k storage.DeviceKey
	err := s.view(ctx, "device key", func(tx *bolt.Tx) error {
		found, err := getJSON(tx.Bucket(bKeys), dkey(site, device), &k)
		if err == nil && !found {
			err = storage.DeviceKeyNotFound(site, device)
		}
		return err
	})
	return k, err
}

// DeviceKeys implements storage.Store.
func (s *Store) DeviceKeys(ctx context.Context) ([]storage.DeviceKey, error) {
	var out []storage.DeviceKey
	err := s.view(ctx, "device keys", func(tx *bolt.Tx) error {
		return tx.Bucket(bKeys).ForEach(func(_, v []byte) error {
			var k storage.DeviceKey
			if err := json.Unmarshal(v, &k); err != nil {
				return err
			}
			out = append(out, k)
			return nil
		})
	})
	return out, err
}

// RemoveDeviceKey implements storage.Store.
func (s *Store) RemoveDeviceKey(ctx context.Context, site, device string, c storage.KeyChange) error {
	return s.update(ctx, "unpin device key", func(tx *bolt.Tx) error {
		b, k := tx.Bucket(bKeys), dkey(site, device)
		var before storage.DeviceKey
		found, err := getJSON(b, k, &before)
		if err != nil {
			return err
		}
		if !found {
			return storage.DeviceKeyNotFound(site, device)
		}
		if err := b.Delete(k); err != nil {
			return err
		}
		return auditKey(tx, storage.ActionUnpinKey, site, device, storage.KeyNote(&before, nil), c)
	})
}
