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
	"runtime/debug"
	"sort"
	"strings"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/store/record"
)

// ErrDamaged marks a database file that is damaged (errors.Is); the error
// is a *DamagedError naming the file and what is wrong.
var ErrDamaged = errors.New("database file is damaged")

// DamagedError: the file at Path is not a usable database. Open returns it
// instead of creating a new store or letting bbolt panic, and the daemon
// refuses to start on it.
type DamagedError struct {
	Path     string
	Problems []string // what is wrong, first found first (at most maxProblems)
	More     int      // problems not listed
}

const maxProblems = 200

func (e *DamagedError) Error() string {
	what := "unknown damage"
	if len(e.Problems) > 0 {
		what = e.Problems[0]
	}
	if n := len(e.Problems) - 1 + e.More; n > 0 {
		what += fmt.Sprintf(" (and %d more)", n)
	}
	return fmt.Sprintf("store %q is damaged: %s; it was not opened and is left as it is: "+
		"`atm-agent db check --db %s` lists the damage, `atm-agent db salvage --db %s` copies every readable record into a new file",
		e.Path, what, e.Path, e.Path)
}

func (e *DamagedError) Unwrap() error { return ErrDamaged }

// CheckReport is the result of CheckFile (`atm-agent db check`).
type CheckReport struct {
	Path     string `json:"path"`
	FileSize int64  `json:"file_size"`
	PageSize int    `json:"page_size"`
	Pages    uint64 `json:"pages"`
	TxID     uint64 `json:"txid"`
	// Records per bucket that decode and agree with the others.
	Records map[string]int `json:"records"`
	// Problems: damage; the agent refuses a file with any. Warnings are
	// worth knowing but the file is usable (one meta page invalid).
	Problems []string `json:"problems"`
	More     int      `json:"more_problems,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
	// BoltCheck says whether bbolt's own consistency check (Tx.Check) ran:
	// it runs only on a file whose page structure is sound (it would panic
	// or fault otherwise).
	BoltCheck bool `json:"bolt_check"`
	// TemplatesVerified: encrypted templates were authenticated with the
	// key (without a key only their framing is checked).
	TemplatesVerified bool `json:"templates_verified"`
	// WrongKey: the key given is not this store's (its key check and every
	// template refuse it). That is no damage: the file may be sound.
	WrongKey bool `json:"wrong_key,omitempty"`
	// CompactionPending: a rekey or encrypt committed but was stopped
	// before its compaction: free pages may still hold templates under the
	// old key or in plaintext (also a warning). No damage.
	CompactionPending *PendingCompaction `json:"compaction_pending,omitempty"`
}

// OK reports a file without problems.
func (r *CheckReport) OK() bool { return len(r.Problems) == 0 && r.More == 0 }

func (r *CheckReport) problem(format string, args ...any) {
	if len(r.Problems) >= maxProblems {
		r.More++
		return
	}
	r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
}

func (r *CheckReport) damaged() *DamagedError {
	return &DamagedError{Path: r.Path, Problems: r.Problems, More: r.More}
}

// CheckOptions configures CheckFile.
type CheckOptions struct {
	// Key authenticates encrypted templates (optional).
	Key []byte
	// BoltCheck also runs bbolt's Tx.Check when the page structure is sound.
	BoltCheck bool
	// Timeout bounds the wait for the file lock (another process writing).
	Timeout time.Duration
}

// CheckFile checks a database file without opening it through bbolt
// first: the meta pages, the file size against the pages they record, every
// page reachable from the root (type, bounds, key order, single
// reference), the freelist, every record of every bucket (decoding) and the
// indexes against the records. A missing file is an error; the file is
// never written. The returned error is about the check itself (missing
// file, lock held); damage is in the report.
func CheckFile(ctx context.Context, path string, opts CheckOptions) (*CheckReport, error) {
	var aead cipher.AEAD
	if opts.Key != nil {
		a, err := newAEAD(opts.Key)
		if err != nil {
			return nil, err
		}
		aead = a
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultLockTimeout
	}
	unlock, err := lockShared(ctx, path, opts.Timeout)
	if err != nil {
		return nil, err
	}
	defer unlock()
	rep, recs := checkFile(path, aead, false)
	rep.WrongKey = recs.wrongKey
	if v := recs.meta[string(kCompactPending)]; v != nil {
		if p, err := decodePending(v); err == nil {
			rep.CompactionPending = p
			rep.Warnings = append(rep.Warnings, p.String())
		}
	}
	if rep.OK() && opts.BoltCheck {
		rep.BoltCheck = true
		for _, p := range boltCheck(path, opts.Timeout) {
			rep.problem("bbolt check: %s", p)
		}
	}
	return rep, nil
}

// lockShared takes a shared flock on path (as a bbolt reader does), so
// the file is not read while a writer holds it; bbolt's own lock on its own
// descriptor is taken afterwards, so this one is released first. The wait
// for a lock another process holds ends after timeout or when ctx ends
// (SIGTERM, SIGINT), whichever comes first (ErrLockWaitCancelled).
func lockShared(ctx context.Context, path string, timeout time.Duration) (func(), error) {
	if _, err := checkRegular(path); err != nil {
		return nil, err
	}
	f, err := openNoWait(path)
	if err != nil {
		return nil, fmt.Errorf("open store %q: %w", path, err)
	}
	if fi, err := f.Stat(); err == nil && !fi.Mode().IsRegular() {
		f.Close()
		return nil, notRegular(path, fi.Mode())
	}
	start := time.Now()
	deadline := start.Add(timeout)
	poll := time.NewTimer(0)
	defer poll.Stop()
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
		if err == nil {
			return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock store %q: %w", path, err)
		}
		if ctx.Err() != nil {
			f.Close()
			return nil, lockWaitCancelled(ctx, path, time.Since(start))
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("open store %q: database is locked by another process (waited %v): %w", path, timeout, bolt.ErrTimeout)
		}
		poll.Reset(50 * time.Millisecond)
		select {
		case <-poll.C:
		case <-ctx.Done():
		}
	}
}

// ErrLockWaitCancelled is wrapped by the error of an open or check whose
// wait for the file lock another process holds was ended by its context
// (the command got SIGTERM or SIGINT) before store.lock_timeout; the
// error wraps the context's error too.
var ErrLockWaitCancelled = errors.New("stopped waiting for the database lock")

func lockWaitCancelled(ctx context.Context, path string, waited time.Duration) error {
	return fmt.Errorf("open store %q: %w held by another process (another atm-agent or db command) after %v: %w",
		path, ErrLockWaitCancelled, waited.Round(time.Millisecond), context.Cause(ctx))
}

// boltCheck runs bbolt's Tx.Check on a read-only open. Only called on a
// file whose structure checkFile found sound.
func boltCheck(path string, timeout time.Duration) (problems []string) {
	err := safely(func() error {
		db, err := bolt.Open(path, 0, &bolt.Options{ReadOnly: true, Timeout: timeout})
		if err != nil {
			return err
		}
		defer db.Close()
		return db.View(func(tx *bolt.Tx) error {
			for e := range tx.Check() {
				problems = append(problems, e.Error())
			}
			return nil
		})
	})
	if err != nil {
		problems = append(problems, err.Error())
	}
	return problems
}

// safely runs fn, turning a panic (a bbolt assertion, or a memory fault
// on a mapping, made a panic by SetPanicOnFault) into an error (a
// *panicError, wrapping ErrDamaged: isPanic).
func safely(fn func() error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			err = &panicError{r}
		}
	}()
	return fn()
}

// panicError is a panic safely recovered.
type panicError struct{ v any }

func (e *panicError) Error() string {
	return fmt.Sprintf("%v: bbolt failed reading it: %v", ErrDamaged, e.v)
}

func (e *panicError) Unwrap() error { return ErrDamaged }

// isPanic reports an error from a panic safely recovered.
func isPanic(err error) bool {
	var p *panicError
	return errors.As(err, &p)
}

// records gathers what the cross-checks need from every bucket. With keep
// set (salvage), the raw values of good records are kept too.
type records struct {
	keep bool
	aead cipher.AEAD

	meta       map[string][]byte
	visits     map[string]*visitRec // by visit key
	visitOrder []string
	templates  map[string][]byte // visit key -> template (value kept only with keep)
	visitIDs   map[string]string // id -> visit key
	idxEntries map[string]bool   // identity||0||visit key
	identities map[string]*identRec
	alerts     map[string]*alertRec
	alertLast  map[string]string // key -> alert id
	outbox     map[uint64]*outboxRec
	coalesce   map[string]uint64
	superseded map[uint64]bool
	// constraints by id (decoded: salvage prunes them to the visits kept).
	constraints map[string]record.Constraint

	good, bad map[string]int // records per bucket
	rejected  []string       // why records were rejected (salvage)
	buckets   map[string]bool
	// wrongKey: the key given is not this store's (the key check and
	// every template refuse it). keyCheckBad: the key check refused it;
	// authOK/authFail: templates that did / did not authenticate.
	wrongKey, keyCheckBad bool
	authOK                int
	authFail              []string
	encrypted             int // templates flagged encrypted
	plain                 int
}

type visitRec struct {
	id, identity string
	flags        byte
	header       []byte // JSON (kept with keep)
}

type identRec struct {
	count int
	val   []byte
}

type alertRec struct {
	rule, identity string
	raised         time.Time
	val            []byte
}

type outboxRec struct {
	seq      uint64
	coalesce string
	payload  int
	val      []byte
}

func newRecords(keep bool, aead cipher.AEAD) *records {
	return &records{keep: keep, aead: aead,
		meta: map[string][]byte{}, visits: map[string]*visitRec{}, templates: map[string][]byte{},
		visitIDs: map[string]string{}, idxEntries: map[string]bool{}, identities: map[string]*identRec{},
		alerts: map[string]*alertRec{}, alertLast: map[string]string{}, outbox: map[uint64]*outboxRec{},
		coalesce: map[string]uint64{}, superseded: map[uint64]bool{}, constraints: map[string]record.Constraint{},
		good: map[string]int{}, bad: map[string]int{}, buckets: map[string]bool{}}
}

// schema is the version recorded in meta (0 when absent or damaged); the
// meta bucket sorts before the record buckets, so it is known by then.
func (r *records) schema() uint64 {
	if v := r.meta[string(kSchema)]; len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (r *records) clone(b []byte) []byte {
	if !r.keep {
		return nil
	}
	return bytes.Clone(b)
}

// add decodes one record of a bucket; it returns why the record is bad,
// or "" when it is good.
func (r *records) add(bucket string, k, v []byte) string {
	if bucket != string(bMeta) && r.schema() > uint64(SchemaVersion()) {
		r.good[bucket]++ // a newer build's records: not ours to judge
		return ""
	}
	why := r.decode(bucket, k, v)
	if why == "" {
		r.good[bucket]++
	} else {
		r.bad[bucket]++
	}
	return why
}

func (r *records) decode(bucket string, k, v []byte) string {
	switch bucket {
	case string(bMeta):
		r.meta[string(k)] = bytes.Clone(v)
		switch string(k) {
		case string(kSchema), string(kVisitSeq), string(kOutboxSeq), string(kOutboxKey), string(kOutboxCount), string(kOutboxBytes):
			if len(v) != 8 {
				return fmt.Sprintf("%d bytes, want 8", len(v))
			}
		case string(kDeviceID):
			if len(v) == 0 || !isPrint(v) {
				return "not a device id"
			}
		case string(kKeyCheck):
			if len(v) < 12+16 {
				return "key check too short"
			}
			// A check value the key does not open is another key, or a
			// damaged check value: finish() tells them apart by the
			// templates.
			r.keyCheckBad = r.aead != nil && verifyKeyCheck(r.aead, v) != nil
		case string(kStateSummary):
			if err := checkStateSummary(v); err != nil {
				return err.Error()
			}
		case string(kLastAlert):
			if len(v) <= 8 || !isPrint(v[8:]) {
				return "not a seq and an alert id"
			}
		case string(kCompactPending):
			if _, err := decodePending(v); err != nil {
				return "pending compaction: " + err.Error()
			}
		default:
			if !strings.HasPrefix(string(k), droppedPfx) || len(v) != 8 {
				return "unknown meta key"
			}
		}
	case string(bVisits):
		if len(k) != visitKeyLen {
			return fmt.Sprintf("key %d bytes, want %d", len(k), visitKeyLen)
		}
		flags, hb, inline, err := splitVisit(k, v)
		if err != nil {
			return err.Error()
		}
		if flags&^(flagEncrypted|flagTemplate) != 0 || (len(inline) > 0 && r.schema() >= 2) {
			return fmt.Sprintf("flags %#x / %d inline bytes not written by this schema", flags, len(inline))
		}
		var h visitHeader
		if err := decodeStrict(hb, &h); err != nil {
			return "header: " + err.Error()
		}
		switch {
		case h.ID == "":
			return "no visit id"
		case h.Seq != binary.BigEndian.Uint64(k[8:]):
			return fmt.Sprintf("seq %d does not match its key (%d)", h.Seq, binary.BigEndian.Uint64(k[8:]))
		case !h.Time.Equal(visitKeyTime(k)):
			return fmt.Sprintf("time %v does not match its key (%v)", h.Time, visitKeyTime(k))
		case h.IdentityID != "" && validIdentityID(h.IdentityID) != nil:
			return "invalid identity id"
		case h.Outcome > visit.CameraError:
			return fmt.Sprintf("unknown outcome %d", h.Outcome)
		}
		r.visits[string(k)] = &visitRec{id: h.ID, identity: h.IdentityID, flags: flags, header: r.clone(hb)}
		r.visitOrder = append(r.visitOrder, string(k))
	case string(bTemplates):
		if len(k) != visitKeyLen {
			return fmt.Sprintf("key %d bytes, want %d", len(k), visitKeyLen)
		}
		if len(v) < 2 || v[0]&^flagEncrypted != 0 {
			return "not a template"
		}
		if v[0]&flagEncrypted != 0 {
			r.encrypted++
			if len(v)-1 < 12+16+4 {
				return "encrypted template too short"
			}
			if r.aead != nil {
				p, err := open(r.aead, v[1:], k)
				if err != nil {
					// Judged in finish(): damage, or another key.
					r.authFail = append(r.authFail, string(k))
					r.templates[string(k)] = r.clone(v)
					return ""
				}
				clear(p)
				r.authOK++
			}
		} else {
			r.plain++
			if (len(v)-1)%4 != 0 {
				return fmt.Sprintf("template %d bytes, not float32s", len(v)-1)
			}
		}
		r.templates[string(k)] = r.clone(v)
	case string(bVisitIDs):
		if len(v) != visitKeyLen {
			return fmt.Sprintf("value %d bytes, want a %d-byte visit key", len(v), visitKeyLen)
		}
		r.visitIDs[string(k)] = string(v)
	case string(bIdentityVisits):
		i := bytes.IndexByte(k, identityIndexSep)
		if i <= 0 || len(k)-i-1 != visitKeyLen || len(v) != 0 {
			return "not an identity index entry"
		}
		r.idxEntries[string(k)] = true
	case string(bIdentities):
		var id record.Identity
		if err := decodeStrict(v, &id); err != nil {
			return err.Error()
		}
		if id.ID != string(k) {
			return fmt.Sprintf("record names identity %q", id.ID)
		}
		r.identities[string(k)] = &identRec{count: id.Count, val: r.clone(v)}
	case string(bAlerts):
		var a visit.Alert
		if err := decodeStrict(v, &a); err != nil {
			return err.Error()
		}
		if a.ID != string(k) {
			return fmt.Sprintf("record names alert %q", a.ID)
		}
		r.alerts[string(k)] = &alertRec{rule: a.Rule, identity: a.IdentityID, raised: a.Raised, val: r.clone(v)}
	case string(bAlertLast):
		var l alertLast
		if err := decodeStrict(v, &l); err != nil {
			return err.Error()
		}
		r.alertLast[string(k)] = l.ID
	case string(bOutbox):
		if len(k) != outboxKeyLen {
			return fmt.Sprintf("key %d bytes, want %d", len(k), outboxKeyLen)
		}
		m, err := decodeOutbox(k, v)
		if err != nil {
			return err.Error()
		}
		if m.Kind == "" || m.Topic == "" || m.Seq == 0 {
			return "outbox message without kind, topic or seq"
		}
		r.outbox[m.Key] = &outboxRec{seq: m.Seq, coalesce: m.Coalesce, payload: len(m.Payload), val: r.clone(v)}
	case string(bOutboxCoalesce):
		if len(v) != outboxKeyLen {
			return "not an outbox key"
		}
		r.coalesce[string(k)] = binary.BigEndian.Uint64(v)
	case string(bOutboxSuperseded):
		if len(k) != outboxKeyLen || len(v) != 0 {
			return "not an outbox key"
		}
		r.superseded[binary.BigEndian.Uint64(k)] = true
	case string(bConstraints):
		var c record.Constraint
		if err := decodeStrict(v, &c); err != nil {
			return err.Error()
		}
		if c.ID != string(k) {
			return fmt.Sprintf("record names constraint %q", c.ID)
		}
		if err := c.Check(); err != nil {
			return err.Error()
		}
		r.constraints[c.ID] = c
	}
	return ""
}

// finish judges the templates that did not authenticate: with a key check
// that refused the key too and no template that authenticated, the key is
// another one (Open says ErrWrongKey); otherwise each is damaged, and so is
// a key check that refused the key the templates accept.
func (r *records) finish(problem func(format string, args ...any)) {
	if r.keyCheckBad && r.authOK == 0 {
		r.wrongKey = true
		return
	}
	if r.keyCheckBad {
		problem("bucket meta: record \"keycheck\": damaged (the key authenticates %d templates but not the key check)", r.authOK)
		r.good[string(bMeta)]--
		r.bad[string(bMeta)]++
	}
	for _, k := range r.authFail {
		problem("bucket templates: record %x: encrypted template does not authenticate (damaged)", k)
		delete(r.templates, k)
		r.good[string(bTemplates)]--
		r.bad[string(bTemplates)]++
	}
}

// decodeStrict: JSON that decodes and has no trailing bytes (a flipped
// byte often leaves valid JSON of another shape, which this does not catch;
// the cross-checks do).
func decodeStrict(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("trailing bytes after JSON")
	}
	return nil
}

func isPrint(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// crossCheck reports records that disagree with each other: an index
// entry without its visit, a visit without its index entry or template,
// an identity whose count is not its number of visits, and so on. These
// are the damage a flipped byte in a key makes while every record still
// decodes (an index entry moved to another identity silently hides that
// identity's visits from the alert rules).
func (r *records) crossCheck(rep *CheckReport) {
	if len(r.buckets) == 0 {
		// bbolt created the file but the first transaction never
		// committed: an empty store, which Open initialises.
		return
	}
	switch v := r.schema(); {
	case v == 0:
		rep.problem("bucket meta: schema version missing or damaged")
	case v > uint64(SchemaVersion()):
		// Not damage: Open refuses it as ErrSchemaTooNew.
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("schema version %d is newer than this build (%d): records not checked", v, SchemaVersion()))
		return
	case v < uint64(SchemaVersion()):
		// Open migrates older schemas; only their structure and the
		// records' framing are checked here.
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("schema version %d (this build writes %d): indexes not cross-checked", v, SchemaVersion()))
		return
	}
	for _, b := range allBuckets {
		if !r.buckets[string(b)] {
			rep.problem("bucket %s: missing", b)
		}
	}
	maxSeq := uint64(0)
	for _, k := range r.visitOrder {
		v := r.visits[k]
		maxSeq = max(maxSeq, binary.BigEndian.Uint64([]byte(k)[8:]))
		if r.visitIDs[v.id] != k {
			rep.problem("visit %s (key %x): no visit_ids entry points to it", v.id, k)
		}
		if v.identity != "" {
			if !r.idxEntries[string(identityIndexKey(v.identity, []byte(k)))] {
				rep.problem("visit %s: missing from the index of identity %q (its alerts would not count it)", v.id, v.identity)
			}
			if r.identities[v.identity] == nil {
				rep.problem("visit %s: identity %q not stored", v.id, v.identity)
			}
		}
		_, hasT := r.templates[k]
		if v.flags&flagTemplate != 0 && !hasT {
			rep.problem("visit %s: template missing", v.id)
		}
	}
	if seq := r.meta[string(kVisitSeq)]; len(seq) == 8 && binary.BigEndian.Uint64(seq) < maxSeq {
		rep.problem("bucket meta: visit_seq %d is below a stored visit's seq %d", binary.BigEndian.Uint64(seq), maxSeq)
	}
	for k := range r.templates {
		if v := r.visits[k]; v == nil || v.flags&flagTemplate == 0 {
			rep.problem("bucket templates: template %x belongs to no visit", k)
		}
	}
	for id, k := range r.visitIDs {
		if v := r.visits[k]; v == nil || v.id != id {
			rep.problem("bucket visit_ids: %q points to key %x, which holds no such visit", id, k)
		}
	}
	counts := map[string]int{}
	for e := range r.idxEntries {
		i := strings.IndexByte(e, identityIndexSep)
		id, k := e[:i], e[i+1:]
		if v := r.visits[k]; v == nil || v.identity != id {
			rep.problem("bucket identity_visits: entry for identity %q points to key %x, which holds no visit of it", id, k)
		}
		counts[id]++
	}
	for id, ir := range r.identities {
		if ir.count != counts[id] {
			rep.problem("identity %q: count %d, but %d visits are indexed for it", id, ir.count, counts[id])
		}
	}
	stored := make(map[string]bool, len(r.visits))
	for _, v := range r.visits {
		stored[v.id] = true
	}
	for _, id := range sortedKeys(r.constraints) {
		r.constraints[id].Visits(func(v string) {
			if !stored[v] {
				rep.problem("constraint %s: names visit %s, which is not stored (retention and purges drop it from constraints)", id, v)
			}
		})
	}
	for k, id := range r.alertLast {
		if r.alerts[id] == nil {
			rep.problem("bucket alert_last: %q points to alert %q, which is not stored", k, id)
		}
	}
	var n, size uint64
	maxKey := uint64(0)
	for k, m := range r.outbox {
		n++
		size += uint64(m.payload)
		maxKey = max(maxKey, k)
	}
	if c := r.meta[string(kOutboxCount)]; len(c) == 8 && binary.BigEndian.Uint64(c) != n {
		rep.problem("bucket meta: outbox_count %d, but %d messages are stored", binary.BigEndian.Uint64(c), n)
	}
	if c := r.meta[string(kOutboxBytes)]; len(c) == 8 && binary.BigEndian.Uint64(c) != size {
		rep.problem("bucket meta: outbox_bytes %d, but the stored payloads hold %d", binary.BigEndian.Uint64(c), size)
	}
	if c := r.meta[string(kOutboxKey)]; len(c) == 8 && binary.BigEndian.Uint64(c) < maxKey {
		rep.problem("bucket meta: outbox_key %d is below a stored message's key %d", binary.BigEndian.Uint64(c), maxKey)
	}
	for ck, k := range r.coalesce {
		if m := r.outbox[k]; m == nil || m.coalesce != ck {
			rep.problem("bucket outbox_coalesce: %q points to message %d, which is not stored with that key", ck, k)
		}
	}
	for k := range r.superseded {
		if r.outbox[k] == nil {
			rep.problem("bucket outbox_superseded: message %d is not stored", k)
		}
	}
}

// checkFile runs every check on path; the caller holds a lock. keep makes
// the returned records hold the good records' values (salvage).
func checkFile(path string, aead cipher.AEAD, keep bool) (*CheckReport, *records) {
	rep := &CheckReport{Path: path, Records: map[string]int{}}
	recs := newRecords(keep, aead)
	rep.TemplatesVerified = aead != nil
	bf, warns, err := openBoltFile(path, false)
	if fi, serr := os.Stat(path); serr == nil {
		rep.FileSize = fi.Size()
	}
	if err != nil {
		rep.problem("%v", err)
		return rep, recs
	}
	defer bf.Close()
	rep.Warnings = append(rep.Warnings, warns...)
	rep.PageSize, rep.Pages, rep.TxID = bf.pageSize, bf.meta.pgid, bf.meta.txid
	free, flPages, ferr := bf.freelist()
	if ferr != nil {
		rep.problem("%v", ferr)
	}
	w := &treeWalk{bf: bf,
		onBucket: func(b string) { recs.buckets[b] = true },
		onRecord: func(b string, k, v []byte) {
			if why := recs.add(b, k, v); why != "" {
				rep.problem("bucket %s: record %s: %s", b, printableKey(k), why)
			}
		}}
	w.walk()
	for _, p := range w.problems {
		rep.problem("%s", p)
	}
	rep.Warnings = append(rep.Warnings, w.warnings...)
	recs.finish(rep.problem)
	rep.TemplatesVerified = recs.aead != nil && !recs.wrongKey
	if ferr == nil {
		if rf := w.reachedFree(free); len(rf) > 0 {
			rep.problem("pages %v are in use and also on the freelist (they would be overwritten)", trimList(rf))
		}
		if ur := w.unreached(free, flPages); len(ur) > 0 {
			rep.problem("pages %v are neither in use nor free (a lost subtree or a damaged freelist)", trimList(ur))
		}
	}
	if len(w.problems) == 0 {
		recs.crossCheck(rep)
	}
	for b, n := range recs.good {
		rep.Records[b] = n
	}
	return rep, recs
}

func trimList[T any](ids []T) string {
	s := fmt.Sprint(ids[:min(len(ids), 10)])
	if len(ids) > 10 {
		s = s[:len(s)-1] + fmt.Sprintf(" ... %d in all]", len(ids))
	}
	return s
}

func printableKey(k []byte) string {
	if len(k) > 0 && isPrint(k) {
		return fmt.Sprintf("%q", k)
	}
	return fmt.Sprintf("%x", k)
}

// preOpen checks an existing file before bbolt maps it. exists is false
// for a missing file (a new store, unless the caller only reads).
func (s *Store) preOpen(ctx context.Context, path string) (exists bool, err error) {
	if exists, err := checkRegular(path); !exists || err != nil {
		return exists, err
	}
	unlock, err := lockShared(ctx, path, s.opts.Timeout)
	if err != nil {
		return true, err
	}
	defer unlock()
	start := time.Now()
	rep, recs := checkFile(path, s.aead, false)
	for _, w := range rep.Warnings {
		s.opts.Logger.Warn("store check", "path", path, "warning", w)
	}
	if !rep.OK() {
		return true, rep.damaged()
	}
	s.opts.Logger.Debug("store checked", "path", path, "pages", rep.Pages, "visits", rep.Records[string(bVisits)], "took", time.Since(start))
	s.plainTemplates = recs.plain
	return true, nil
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
