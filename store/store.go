// Package store keeps the agent's state in one bbolt file: visits (templates,
// never images), identities, alerts, per-device counters and the bounded MQTT
// outbox. Every state change caused by one visit is written in one bbolt
// transaction (see CommitVisit), so a crash never leaves a visit without its
// identity update or an alert without its outbox message.
//
// Layout (bucket: key -> value):
//
//	meta:               "schema", "device_id", "visit_seq", "outbox_seq",
//	                    "outbox_key", "outbox_count", "outbox_bytes",
//	                    "dropped/<kind>", "keycheck", "compact_pending"
//	                    (pending.go)
//	visits:             be64(unix nanos) || be64(seq) -> encoded visit without
//	                    its embedding (codec.go)
//	templates:          visits key -> flags || embedding (codec.go); only visits
//	                    with an embedding have one (schema >= 2)
//	visit_ids:          visit id -> visits key
//	identity_visits:    identity id || 0x00 || visits key -> empty
//	identities:         identity id -> Identity JSON
//	alerts:             alert id -> visit.Alert JSON
//	alert_last:         rule || 0x00 || identity id -> alert id of the newest alert
//	outbox:             be64(key) -> encoded OutboxMessage (codec.go)
//	outbox_coalesce:    coalesce key -> be64(newest outbox key with that key)
//	outbox_superseded:  be64(key) -> empty, for unsent messages replaced by a newer one
//	constraints:        constraint id -> record.Constraint JSON: analysts'
//	                    corrections that consolidation respects (schema >= 3)
//
// Counters are plain big-endian uint64 values in meta (not bucket sequences)
// so that they survive Compact unchanged.
package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/periocular/atm-agent/store/record"
	bolt "go.etcd.io/bbolt"
)

// Sentinel errors, compared with errors.Is.
var (
	ErrSchemaTooNew    = errors.New("database was written by a newer atm-agent (schema version too new)")
	ErrKeyRequired     = errors.New("database embeddings are encrypted: an encryption key is required")
	ErrWrongKey        = errors.New("encryption key does not match the one this database was created with")
	ErrDuplicateVisit  = record.ErrDuplicateVisit // a commit whose visit id is already stored
	ErrUnknownIdentity = errors.New("unknown identity")
	ErrNotFound        = record.ErrNotFound // no such record
	// ErrBroken: bbolt failed (panicked) inside a transaction of the open
	// store, so its handle can no longer be trusted; every later call
	// fails with it at once (see Store.Broken).
	ErrBroken = errors.New("store is broken")
)

var (
	bMeta             = []byte("meta")
	bVisits           = []byte("visits")
	bTemplates        = []byte("templates")
	bVisitIDs         = []byte("visit_ids")
	bIdentityVisits   = []byte("identity_visits")
	bIdentities       = []byte("identities")
	bAlerts           = []byte("alerts")
	bAlertLast        = []byte("alert_last")
	bOutbox           = []byte("outbox")
	bOutboxCoalesce   = []byte("outbox_coalesce")
	bOutboxSuperseded = []byte("outbox_superseded")
	bConstraints      = []byte("constraints")

	allBuckets = [][]byte{bMeta, bVisits, bVisitIDs, bIdentityVisits, bIdentities,
		bAlerts, bAlertLast, bOutbox, bOutboxCoalesce, bOutboxSuperseded, bTemplates, bConstraints}
)

var (
	kSchema      = []byte("schema")
	kDeviceID    = []byte("device_id")
	kVisitSeq    = []byte("visit_seq")
	kOutboxSeq   = []byte("outbox_seq")
	kOutboxKey   = []byte("outbox_key")
	kOutboxCount = []byte("outbox_count")
	kOutboxBytes = []byte("outbox_bytes")
	kKeyCheck    = []byte("keycheck")
	// kStateSummary: what the retained MQTT state says of the last summary
	// the broker acknowledged (totals only, no identity), kept for the
	// next start (StateSummary).
	kStateSummary = []byte("state_summary")
	// kLastAlert: the outbox seq (8 bytes) and the id of the last alert
	// stored with a message, so a restarted agent's state names it
	// (LastStoredAlert). The alert itself stays in bAlerts, where an
	// erasure deletes it.
	kLastAlert = []byte("last_alert")
	droppedPfx = "dropped/"
)

// migrations[i] upgrades a database from schema version i to i+1. Version 0 is
// an empty file. Append only; never edit a released step. A step that
// returns errMigrateMore has committed part of its work: it runs again in a
// new transaction, and the schema version advances only when it returns nil,
// so each step must be correct when re-run on its own partial result.
var migrations = []func(tx *bolt.Tx) error{
	// 0 -> 1: initial layout.
	func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		return nil
	},
	// 1 -> 2: templates move out of the visit records into their own bucket.
	migrateTemplates,
	// 2 -> 3: analysts' corrections (split_visits, merge_identities).
	func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(bConstraints); err != nil {
			return fmt.Errorf("create bucket %s: %w", bConstraints, err)
		}
		return nil
	},
}

// errMigrateMore: the step made progress and must run again in a new
// transaction.
var errMigrateMore = errors.New("migration step continues in a new transaction")

// migrateTemplatesBatch bounds the visit records one transaction of the
// 1 -> 2 step rewrites (a few MB of dirty pages).
var migrateTemplatesBatch = 2000

// migrateTemplates moves inline embedding bytes, unchanged (still sealed
// with the visit key when encrypted), into the templates bucket and rewrites
// the visit records without them. Records already converted are skipped, so
// a re-run after a crash or a partial batch continues where it stopped.
func migrateTemplates(tx *bolt.Tx) error {
	tb, err := tx.CreateBucketIfNotExists(bTemplates)
	if err != nil {
		return fmt.Errorf("create bucket %s: %w", bTemplates, err)
	}
	vb := tx.Bucket(bVisits)
	vb.FillPercent = visitsFillPercent
	type rec struct{ key, val []byte }
	var todo []rec
	more := false
	c := vb.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		_, _, inline, err := splitVisit(k, v)
		if err != nil {
			return err
		}
		if len(inline) == 0 {
			continue
		}
		if len(todo) == migrateTemplatesBatch {
			more = true
			break
		}
		todo = append(todo, rec{bytes.Clone(k), bytes.Clone(v)})
	}
	for _, r := range todo {
		flags, hb, inline, _ := splitVisit(r.key, r.val)
		t := append([]byte{flags & flagEncrypted}, inline...)
		if err := tb.Put(r.key, t); err != nil {
			return fmt.Errorf("store template %x: %w", r.key, err)
		}
		nf := flags&^flagEncrypted | flagTemplate
		if err := vb.Put(r.key, visitRecord(nf, hb, nil)); err != nil {
			return fmt.Errorf("rewrite visit %x: %w", r.key, err)
		}
	}
	if more {
		return errMigrateMore
	}
	return nil
}

// SchemaVersion is the schema this build writes.
func SchemaVersion() int { return len(migrations) }

// Defaults for Options fields left zero.
const (
	DefaultRetention           = 30 * 24 * time.Hour
	DefaultOutboxMaxMessages   = 10000
	DefaultOutboxMaxBytes      = 16 << 20
	DefaultOutboxAlertCapMsgs  = 50000
	DefaultOutboxAlertCapBytes = 64 << 20
	DefaultLockTimeout         = 5 * time.Second
	lockStep                   = 250 * time.Millisecond // bbolt lock waits between looks at the context
	defaultPurgeBatch          = 1000
	identityIndexSep           = 0x00
	visitKeyLen                = 16
	outboxKeyLen               = 8
	maxIdentityIDLen           = 256
	defaultCompactTxMaxSize    = 4 << 20
	deviceIDBytes              = 8
	defaultOpenFileMode        = 0o600
	visitsFillPercent          = 0.9
)

// Options configures Open. Zero values take the defaults above.
type Options struct {
	// Retention: visits older than this are removed by PurgeExpired, and
	// Members only returns visits inside it.
	Retention time.Duration

	// Outbox bounds. When the outbox holds more than OutboxMaxMessages
	// messages or OutboxMaxBytes payload bytes, unsent summaries and events
	// are dropped (superseded ones first, then the oldest). Alerts are only
	// dropped, oldest first, when the outbox exceeds the hard caps.
	OutboxMaxMessages      int
	OutboxMaxBytes         int64
	OutboxAlertCapMessages int
	OutboxAlertCapBytes    int64

	// Key, when set (32 bytes), encrypts embeddings at rest with AES-256-GCM.
	// A database that holds a key check value refuses to open without it
	// (ErrKeyRequired) or with another key (ErrWrongKey). Setting a key on an
	// existing plaintext database encrypts new records only (per-record flag).
	Key []byte

	// DeviceID is stored in meta and returned by DeviceID. When empty a
	// random id is created at first open; when set it replaces the stored
	// one (the configuration stays authoritative).
	DeviceID string

	// Timeout bounds the wait for the file lock (another process holding
	// the database). Always > 0.
	Timeout time.Duration

	// Now is the clock; time.Now when nil.
	Now func() time.Time

	// NoCreate makes a missing file an error instead of a new store
	// (operator commands). ReadOnly also opens without writing anything:
	// no migration, no device id, and no key needed unless embeddings are
	// read (a wrong key is still refused).
	NoCreate bool
	ReadOnly bool

	Logger *slog.Logger
}

func (o *Options) setDefaults() error {
	if o.Retention == 0 {
		o.Retention = DefaultRetention
	}
	if o.OutboxMaxMessages == 0 {
		o.OutboxMaxMessages = DefaultOutboxMaxMessages
	}
	if o.OutboxMaxBytes == 0 {
		o.OutboxMaxBytes = DefaultOutboxMaxBytes
	}
	if o.OutboxAlertCapMessages == 0 {
		o.OutboxAlertCapMessages = max(DefaultOutboxAlertCapMsgs, o.OutboxMaxMessages)
	}
	if o.OutboxAlertCapBytes == 0 {
		o.OutboxAlertCapBytes = max(DefaultOutboxAlertCapBytes, o.OutboxMaxBytes)
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultLockTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case o.Retention < 0:
		return fmt.Errorf("retention %v: must be positive", o.Retention)
	case o.OutboxMaxMessages < 0 || o.OutboxMaxBytes < 0:
		return fmt.Errorf("outbox bounds must be positive")
	case o.OutboxAlertCapMessages < o.OutboxMaxMessages:
		return fmt.Errorf("outbox alert cap (%d messages) is below the outbox bound (%d messages)", o.OutboxAlertCapMessages, o.OutboxMaxMessages)
	case o.OutboxAlertCapBytes < o.OutboxMaxBytes:
		return fmt.Errorf("outbox alert cap (%d bytes) is below the outbox bound (%d bytes)", o.OutboxAlertCapBytes, o.OutboxMaxBytes)
	case o.Key != nil && len(o.Key) != 32:
		return fmt.Errorf("encryption key: want 32 bytes, got %d", len(o.Key))
	}
	return nil
}

// Store is the agent's database. Its methods are safe for concurrent use.
type Store struct {
	path string
	opts Options
	aead aeadCipher // nil without a key

	mu       sync.RWMutex // write-locked only while Compact swaps the file
	db       *bolt.DB
	file     *os.File // the file bbolt opened for db (closed directly when broken)
	deviceID string

	// broken is set once, when bbolt panics inside a transaction: the
	// panic can leave bbolt's own locks held (its rollback faults too), so
	// the handle is abandoned: every later call fails at once and Close
	// closes the file without bbolt. brokenCh is closed when it is set.
	broken     atomic.Pointer[brokenError]
	brokenCh   chan struct{}
	brokenOnce sync.Once
	closeOnce  sync.Once

	// plainTemplates counts unencrypted templates found by the open check.
	plainTemplates int

	// compactedAtOpen is the pending compaction Open finished (nil when
	// none was pending).
	compactedAtOpen *PendingCompaction

	// outboxReady (cap 1) receives after a commit that added outbox
	// messages (OutboxReady).
	outboxReady chan struct{}

	// testHook, when set, is called between the stages of a commit; an
	// error aborts the transaction (atomicity tests).
	testHook func(stage string) error
}

// Open opens (creating when absent, mode 0600) the database at path,
// migrates it to the current schema and checks the encryption key.
//
// An existing file is checked before bbolt maps it (CheckFile: meta pages,
// size, every page and record, the indexes): a damaged file, an empty one
// or one that is not a bbolt database gives a *DamagedError (ErrDamaged)
// and is left untouched; only a missing file becomes a new store.
func Open(path string, opts Options) (*Store, error) {
	return OpenContext(context.Background(), path, opts)
}

// OpenContext is Open whose wait for the file lock another process holds
// (bounded by Options.Timeout) also ends when ctx does: a command stopped
// by SIGTERM or SIGINT while another agent holds the store then returns at
// once, with an error wrapping ErrLockWaitCancelled and ctx's error.
func OpenContext(ctx context.Context, path string, opts Options) (*Store, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, fmt.Errorf("open store %q: %w", path, err)
	}
	s := &Store{path: path, opts: opts, outboxReady: make(chan struct{}, 1), brokenCh: make(chan struct{})}
	if opts.Key != nil {
		a, err := newAEAD(opts.Key)
		if err != nil {
			return nil, fmt.Errorf("open store %q: %w", path, err)
		}
		s.aead = a
	}
	exists, err := s.preOpen(ctx, path)
	if err != nil {
		return nil, err
	}
	if !exists && (opts.NoCreate || opts.ReadOnly) {
		return nil, fmt.Errorf("open store %q: %w (this command never creates a store: check --db or store.path)", path, os.ErrNotExist)
	}
	db, f, err := s.openDB(ctx, path)
	if err != nil {
		return nil, err
	}
	s.db, s.file = db, f
	if !opts.ReadOnly {
		// A rekey or encrypt stopped after its commit and before its
		// compaction left what it replaced in free pages: scrubbed first.
		if err := s.finishPendingCompaction(ctx); err != nil {
			s.Close()
			return nil, err
		}
	}
	if s.aead != nil && s.plainTemplates > 0 && !opts.ReadOnly {
		opts.Logger.Warn("store holds templates in plaintext, written before the key was set; `atm-agent db encrypt` seals them",
			"path", path, "plaintext_templates", s.plainTemplates)
	}
	if opts.Key != nil {
		if err := CheckNewKey(opts.Key); err != nil {
			opts.Logger.Warn("store key does not look random; rotate it: atm-agent db rekey --new-key-file NEW, NEW made with "+KeyHint,
				"path", path, "why", err.Error())
		}
	}
	return s, nil
}

// openDB opens path with bbolt and initialises it; f is the file bbolt
// opened (bolt.Options.OpenFile), kept to close it without bbolt when
// bbolt fails. A panic inside bbolt leaves the handle unusable (its locks
// may be held): it is then abandoned, its file closed, never bolt's Close.
func (s *Store) openDB(ctx context.Context, path string) (db *bolt.DB, f *os.File, err error) {
	openFile := func(name string, flag int, perm os.FileMode) (*os.File, error) {
		if _, err := checkRegular(name); err != nil {
			return nil, err
		}
		file, err := os.OpenFile(name, flag, perm)
		if err != nil {
			return nil, err
		}
		if fi, err := file.Stat(); err == nil && !fi.Mode().IsRegular() {
			file.Close()
			return nil, notRegular(name, fi.Mode())
		}
		f = file
		return file, nil
	}
	// bbolt's own wait for the lock (its Timeout) cannot be cancelled: it
	// is taken in steps of at most lockStep, and ctx is looked at between
	// them.
	start := time.Now()
	deadline := start.Add(s.opts.Timeout)
	for {
		step := min(time.Until(deadline), lockStep)
		if step <= 0 {
			step = time.Millisecond // bbolt's 0 waits for good
		}
		err = safely(func() error {
			var err error
			db, err = bolt.Open(path, defaultOpenFileMode, &bolt.Options{Timeout: step, ReadOnly: s.opts.ReadOnly, OpenFile: openFile})
			return err
		})
		if !errors.Is(err, bolt.ErrTimeout) || !time.Now().Before(deadline) {
			break
		}
		if ctx.Err() != nil {
			return nil, nil, lockWaitCancelled(ctx, path, time.Since(start))
		}
	}
	if err != nil {
		if db == nil && isPanic(err) {
			releaseFile(f)
		}
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, nil, fmt.Errorf("open store %q: database is locked by another process (waited %v): %w", path, s.opts.Timeout, err)
		}
		return nil, nil, fmt.Errorf("open store %q: %w", path, err)
	}
	// fail closes db after err: bbolt's Close, unless bbolt panicked.
	fail := func(err error) (*bolt.DB, *os.File, error) {
		if isPanic(err) {
			releaseFile(f)
		} else {
			db.Close()
		}
		return nil, nil, fmt.Errorf("open store %q: %w", path, err)
	}
	if s.opts.ReadOnly {
		if err := safely(func() error { return db.View(s.initReadOnly) }); err != nil {
			return fail(err)
		}
		return db, f, nil
	}
	for {
		more := false
		err := safely(func() error {
			return db.Update(func(tx *bolt.Tx) error {
				var err error
				more, err = s.initTx(tx)
				return err
			})
		})
		if err != nil {
			return fail(err)
		}
		if !more {
			return db, f, nil
		}
	}
}

// initTx migrates, checks the key and records the device id. more reports
// a migration step that committed part of its work and must continue in
// another transaction (the key is checked in every one).
func (s *Store) initTx(tx *bolt.Tx) (more bool, err error) {
	ver := 0
	if m := tx.Bucket(bMeta); m != nil {
		if ver, err = metaSchema(m); err != nil {
			return false, err
		}
	}
	for v := ver; v < len(migrations); v++ {
		if err := migrations[v](tx); errors.Is(err, errMigrateMore) {
			s.opts.Logger.Info("store schema migration continues", "from", v, "to", v+1)
			more = true
			break
		} else if err != nil {
			return false, fmt.Errorf("migrate schema %d -> %d: %w", v, v+1, err)
		}
		if err := putU64(tx.Bucket(bMeta), kSchema, uint64(v+1)); err != nil {
			return false, err
		}
		if ver > 0 { // a new store is created, not migrated
			s.opts.Logger.Info("store schema migrated", "from", v, "to", v+1)
		}
	}
	meta := tx.Bucket(bMeta)

	check := meta.Get(kKeyCheck)
	switch {
	case check != nil && s.aead == nil:
		return false, ErrKeyRequired
	case check != nil:
		if err := verifyKeyCheck(s.aead, check); err != nil {
			return false, err
		}
	case s.aead != nil:
		c, err := makeKeyCheck(s.aead)
		if err != nil {
			return false, err
		}
		if err := meta.Put(kKeyCheck, c); err != nil {
			return false, err
		}
	}

	id := string(meta.Get(kDeviceID))
	switch {
	case s.opts.DeviceID != "" && s.opts.DeviceID != id:
		if id != "" {
			s.opts.Logger.Warn("store device id replaced by configuration", "old", id, "new", s.opts.DeviceID)
		}
		id = s.opts.DeviceID
	case id == "":
		var b [deviceIDBytes]byte
		if _, err := rand.Read(b[:]); err != nil {
			return false, fmt.Errorf("device id: %w", err)
		}
		id = hex.EncodeToString(b[:])
	}
	if err := meta.Put(kDeviceID, []byte(id)); err != nil {
		return false, err
	}
	s.deviceID = id
	return more, nil
}

// initReadOnly checks what initTx checks without writing: the schema is
// not newer than this build, a given key is the right one.
func (s *Store) initReadOnly(tx *bolt.Tx) error {
	meta := tx.Bucket(bMeta)
	if meta == nil {
		return fmt.Errorf("%w: no meta bucket (the store was never initialised)", ErrDamaged)
	}
	if _, err := metaSchema(meta); err != nil {
		return err
	}
	if check := meta.Get(kKeyCheck); check != nil && s.aead != nil {
		if err := verifyKeyCheck(s.aead, check); err != nil {
			return err
		}
	}
	s.deviceID = string(meta.Get(kDeviceID))
	return nil
}

// metaSchema reads the schema version from meta: ErrSchemaTooNew when it
// is newer than this build (compared as stored, an unsigned 64-bit value).
func metaSchema(meta *bolt.Bucket) (int, error) {
	v := getU64(meta, kSchema)
	if v > uint64(len(migrations)) {
		return 0, fmt.Errorf("%w: file has version %d, this build supports up to %d: run the newer atm-agent that wrote it, or restore a backup", ErrSchemaTooNew, v, len(migrations))
	}
	return int(v), nil
}

// Close closes the database file. On a broken store (Broken) it closes
// the file without bbolt, whose locks the failed transaction may hold, and
// returns why the store broke.
func (s *Store) Close() error {
	if !s.lock(true) {
		return s.closeBroken()
	}
	defer s.mu.Unlock()
	if s.Broken() != nil {
		return s.closeBroken()
	}
	if s.db == nil {
		return nil
	}
	err := s.db.Close()
	s.db = nil
	if err != nil {
		return fmt.Errorf("close store %q: %w", s.path, err)
	}
	return nil
}

// Path is the database file.
func (s *Store) Path() string { return s.path }

// DeviceID is the device id kept in meta.
func (s *Store) DeviceID() string { return s.deviceID }

// Retention is the configured retention window.
func (s *Store) Retention() time.Duration { return s.opts.Retention }

var errClosed = errors.New("store is closed")

// brokenError is why a store broke: the panic bbolt raised inside a
// transaction. It wraps ErrBroken and the failure (ErrDamaged).
type brokenError struct {
	path  string
	cause error
}

func (e *brokenError) Error() string {
	return fmt.Sprintf("%v: bbolt failed inside a transaction on %s (%v); nothing more is stored until the agent restarts "+
		"(it checks the file first; `atm-agent db check --db %s` lists the damage, `atm-agent db salvage` copies what is readable)",
		ErrBroken, e.path, e.cause, e.path)
}

func (e *brokenError) Unwrap() []error { return []error{ErrBroken, e.cause} }

// Broken returns nil while the store works, and an error wrapping
// ErrBroken once bbolt has failed (panicked) inside one of its
// transactions: the file was damaged or changed under the open store (a
// truncation, a disk fault). From then on every call fails at once with
// that error, nothing more is written, and Close releases the file
// without bbolt; a health check should report it.
func (s *Store) Broken() error {
	if e := s.broken.Load(); e != nil {
		return e
	}
	return nil
}

// markBroken records the first panic; later ones are consequences.
func (s *Store) markBroken(cause error) {
	s.brokenOnce.Do(func() {
		s.broken.Store(&brokenError{path: s.path, cause: cause})
		close(s.brokenCh)
		s.opts.Logger.Error("store broken: bbolt failed inside a transaction; every later store call fails until the agent is restarted",
			"path", s.path, "err", cause)
	})
}

// closeBroken unlocks and closes the file of a broken store directly,
// once: bbolt's Close would wait for the lock the failed transaction still
// holds. The mapping is left (a goroutine may still be reading through
// it); it goes with the process.
func (s *Store) closeBroken() error {
	err := s.Broken()
	s.closeOnce.Do(func() { releaseFile(s.file) })
	return fmt.Errorf("close store %q: %w", s.path, err)
}

// releaseFile unlocks and closes the file of an abandoned bbolt handle.
// The lock is dropped explicitly: bbolt's mapping of the file keeps it
// open, and its lock held, after the descriptor is closed.
func releaseFile(f *os.File) {
	if f == nil {
		return
	}
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	f.Close()
}

// lock takes s.mu (for writing with write) unless the store is or
// becomes broken first, reporting whether it holds the lock. A call stuck
// inside bbolt after the failure (waiting for bbolt's write lock, which is
// never released) holds s.mu's read lock for good: a wait for s.mu must
// end when the store breaks.
func (s *Store) lock(write bool) bool {
	try, lock, unlock := s.mu.TryRLock, s.mu.RLock, s.mu.RUnlock
	if write {
		try, lock, unlock = s.mu.TryLock, s.mu.Lock, s.mu.Unlock
	}
	if s.Broken() != nil {
		return false
	}
	if try() {
		return true
	}
	got, abandon := make(chan struct{}), make(chan struct{})
	go func() {
		lock()
		select {
		case got <- struct{}{}:
		case <-abandon:
			unlock()
		}
	}()
	select {
	case <-got:
		return true
	case <-s.brokenCh:
		close(abandon)
		return false
	}
}

// view and update run fn in a read-only or read-write transaction, under
// the store's read lock (Close takes the write lock), checking ctx first.
func (s *Store) view(ctx context.Context, op string, fn func(tx *bolt.Tx) error) error {
	return s.tx(ctx, op, false, fn)
}

// scan is view for reads over many records (every visit of a window, all
// templates): the pages they mapped are released at the end (releaseMapped).
func (s *Store) scan(ctx context.Context, op string, fn func(tx *bolt.Tx) error) error {
	return s.tx(ctx, op, false, func(tx *bolt.Tx) error {
		defer releaseMapped(s.db, tx)
		return fn(tx)
	})
}

func (s *Store) update(ctx context.Context, op string, fn func(tx *bolt.Tx) error) error {
	return s.tx(ctx, op, true, fn)
}

func (s *Store) tx(ctx context.Context, op string, write bool, fn func(tx *bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if !s.lock(false) {
		return fmt.Errorf("%s: %w", op, s.Broken())
	}
	defer s.mu.RUnlock()
	if err := s.Broken(); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if s.db == nil {
		return fmt.Errorf("%s: %w", op, errClosed)
	}
	run := s.db.View
	if write {
		run = s.db.Update
	}
	// A page damaged after the open check would make bbolt panic or
	// fault: an error instead. bbolt's rollback after the panic may fault
	// too and leave its locks held, so the handle is not used again: the
	// store is broken from here on.
	if err := safely(func() error { return run(fn) }); err != nil {
		if isPanic(err) {
			s.markBroken(err)
		}
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

func (s *Store) hook(stage string) error {
	if s.testHook != nil {
		return s.testHook(stage)
	}
	return nil
}

// ---- small helpers ----

func getU64(b *bolt.Bucket, k []byte) uint64 {
	v := b.Get(k)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func putU64(b *bolt.Bucket, k []byte, v uint64) error {
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], v)
	return b.Put(k, buf[:])
}

func addU64(b *bolt.Bucket, k []byte, delta int64) error {
	v := int64(getU64(b, k)) + delta
	if v < 0 {
		v = 0
	}
	return putU64(b, k, uint64(v))
}

func be64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

// visitKey orders visits chronologically, seq breaking ties.
func visitKey(t time.Time, seq uint64) []byte {
	k := make([]byte, visitKeyLen)
	binary.BigEndian.PutUint64(k, uint64(t.UnixNano()))
	binary.BigEndian.PutUint64(k[8:], seq)
	return k
}

// timeKey is the 8-byte time prefix of visit keys, clamped to the range
// UnixNano can represent.
func timeKey(t time.Time) []byte {
	switch {
	case t.Year() < 1970:
		return make([]byte, 8)
	case t.Year() > 2261:
		return be64(1<<63 - 1)
	}
	return be64(uint64(t.UnixNano()))
}

func visitKeyTime(k []byte) time.Time {
	return time.Unix(0, int64(binary.BigEndian.Uint64(k[:8]))).UTC()
}

func identityIndexPrefix(id string) []byte {
	p := make([]byte, 0, len(id)+1)
	p = append(p, id...)
	return append(p, identityIndexSep)
}

func identityIndexKey(id string, vk []byte) []byte {
	return append(identityIndexPrefix(id), vk...)
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}
