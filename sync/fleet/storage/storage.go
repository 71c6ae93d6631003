// Package storage holds the fleet service's state: devices (last status and
// summary, sequence accounting), alerts with their acknowledgements, the
// summary history behind the charts, an audit log and rejected payloads.
//
// Store is implemented by the embedded default (boltstore: one instance, one
// file) and by PostgreSQL (pgstore: several instances on one database). Both
// pass the same conformance suite (storage/storetest).
package storage

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/periocular/atm-agent/sync/wire"
)

// Sentinel errors, compared with errors.Is.
var (
	// ErrBadRecord: the store refuses a record for what it holds (a key
	// too large, a value its columns cannot take), not for its own state:
	// writing the same record again fails the same way, and other records
	// are unaffected. Ingest makes such a message a reject.
	ErrBadRecord = errors.New("the store refuses this record")
	ErrNotFound  = errors.New("not found")
	// ErrState: the alert is not in a state that allows the action (e.g.
	// resolving an alert someone else resolved a moment ago).
	ErrState = errors.New("alert state does not allow this action")
	// The reasons of ErrState a program tells apart (errors.Is matches
	// ErrState too; the text is ErrState's): an alert acknowledged or
	// resolved by another user (StateErr), a device to remove online or
	// with active alerts (CheckRemovable). The fleet's API answers each
	// with its own code.
	ErrAcknowledged = &stateReason{"acknowledged"}
	ErrResolved     = &stateReason{"resolved"}
	ErrDeviceOnline = &stateReason{"device online"}
	ErrActiveAlerts = &stateReason{"active alerts"}
)

// stateReason is one reason of ErrState.
type stateReason struct{ name string }

func (e *stateReason) Error() string        { return ErrState.Error() }
func (e *stateReason) Is(target error) bool { return target == ErrState }

// StateErr is the ErrState reason an action on a is refused for (it is
// not Allowed): the alert is resolved, or acknowledged.
func StateErr(a Alert) error {
	if a.State == AlertResolved {
		return ErrResolved
	}
	return ErrAcknowledged
}

// NotFoundError is a store's answer for a device or alert it does not hold
// (errors.Is ErrNotFound). Its message names only what was asked for,
// whatever a store wraps around it: the web answers it as is, and answers
// a device or alert outside a user's sites with the same one.
type NotFoundError struct{ What string }

func (e *NotFoundError) Error() string { return e.What + ": not found" }
func (e *NotFoundError) Unwrap() error { return ErrNotFound }

// DeviceNotFound: no device site/device.
func DeviceNotFound(site, device string) error {
	return &NotFoundError{What: "device " + site + "/" + device}
}

// AlertNotFound: no alert k.
func AlertNotFound(k AlertKey) error { return &NotFoundError{What: "alert " + k.String()} }

// Message is one validated summary or alert, as the ingest hands it over.
type Message struct {
	Site, Device string
	Kind         string // wire.KindSummary or wire.KindAlert
	MessageID    string
	Seq          uint64
	TS           time.Time
	Historical   bool
	Received     time.Time
	Summary      *wire.Summary // Kind == summary
	Alert        *wire.Alert   // Kind == alert
	// Retained: the broker's retained copy, given again at each
	// subscribe. Already stored, it is not a duplicate of the device's.
	Retained bool
	// Authenticated: signed by the key pinned for the device
	// (wire.VerifyMessage). False: no key is pinned, the message was
	// taken as agents before signed messages send it.
	Authenticated bool
}

// Status is one device status as received (retained or live).
type Status struct {
	Site, Device string
	Received     time.Time
	Status       wire.Status
	// Retained: the broker's retained copy, given at a (re)subscribe; it
	// may have been built long before it arrived.
	Retained bool
	// Authenticated: signed by the key pinned for the device.
	Authenticated bool
}

// Reject is a payload that failed validation. It is kept (bounded, with
// retention) so nothing sent is silently lost.
type Reject struct {
	Received     time.Time
	Topic        string
	Site, Device string // empty when the topic itself was bad
	Error        string
	Payload      string // truncated to MaxRejectPayload bytes
}

// MaxRejectPayload bounds the bytes of a rejected payload that are kept.
const MaxRejectPayload = 4096

// MaxHeldRejects bounds the rejects a store keeps (oldest dropped first).
const MaxHeldRejects = 1000

// Device is one ATM as the fleet sees it.
type Device struct {
	Site, Device string
	// Status is the device's present status: the last one received that
	// NextStatus let replace the one held (a Last Will carries an older ts
	// than the online status it replaces, and still replaces it).
	Status         *wire.Status
	StatusReceived time.Time
	// StatusMaxTS is the newest ts among the statuses of Status's run
	// (its started_at) applied so far, StatusWillTS the ts of the last
	// will (offline) of that run applied: NextStatus orders by them.
	StatusMaxTS  time.Time `json:",omitzero"`
	StatusWillTS time.Time `json:",omitzero"`
	// StatusAuthenticated: Status was signed by the key pinned for the
	// device (false: no key was pinned when it came).
	StatusAuthenticated bool `json:",omitempty"`
	// Summary is the summary with the highest seq received in the current
	// sequence (see Restarted).
	Summary *wire.Summary
	// SummaryAuthenticated: Summary was signed by the pinned key.
	SummaryAuthenticated bool `json:",omitempty"`
	// Sequence accounting over summaries and alerts: FirstSeq..MaxSeq is
	// the range seen, Unique the distinct message ids in it.
	FirstSeq, MaxSeq uint64
	Unique           uint64
	Duplicates       uint64
	// Rejected counts rejected payloads of a device that exists; a reject
	// never creates a device (it is kept in the bounded reject list only).
	Rejected     uint64
	LastReceived time.Time
	// LastTS is the newest agent ts among the summaries and alerts applied.
	LastTS time.Time
	// SeqRestart is the ts of the message that last restarted the
	// sequence (zero: never); see Restarted.
	SeqRestart time.Time
	OpenAlerts int // open + acknowledged, filled by Devices/Device
}

// State is the device's availability, "unknown" before any status.
func (d Device) State() string {
	if d.Status == nil {
		return "unknown"
	}
	return string(d.Status.State)
}

// LastHeard is when the fleet last heard from d: the later of its
// status's StatusReceived and the arrival of its last summary or alert.
func (d Device) LastHeard() time.Time {
	if d.LastReceived.Before(d.StatusReceived) {
		return d.StatusReceived
	}
	return d.LastReceived
}

// NextStatus applies s to d when it is the device's present status, and
// reports whether it did. Statuses are ordered by the agent's run (their
// started_at), then by ts within a run:
//   - a status of another run than the one held replaces it only when its
//     ts is after every ts of the held run taken so far: a new run's
//     statuses come after the last run's end, while a replayed status, or
//     will, of an earlier run is older than the run that followed it
//     (started_at alone is not compared: an ATM that booted with its
//     clock behind keeps a wrong started_at for the whole run);
//   - an online or stopped status replaces one of its own run only when
//     its ts is after every ts of the run applied so far (a replayed
//     status of the run, also after the run's will made it offline);
//   - a will (offline) replaces one of its own run when its ts is after
//     that of the run's last will applied, and the run has not stopped: a
//     will's ts is when its connection was made, before the online status
//     published on it, so it is not ordered against those; a will of an
//     earlier connection of the run, replayed, is not after the last one.
//
// A status without started_at, or held while its started_at lay more
// than MaxAhead past its arrival (an agent clock gone wrong at start),
// is taken in arrival order, as before started_at was read.
func NextStatus(d *Device, s Status) bool {
	st := s.Status
	if h := d.Status; h != nil && !st.StartedAt.IsZero() && !h.StartedAt.IsZero() && !h.StartedAt.After(d.StatusReceived.Add(MaxAhead)) {
		switch {
		case !st.StartedAt.Equal(h.StartedAt):
			if !st.TS.After(d.StatusMaxTS) {
				return false
			}
			d.StatusMaxTS, d.StatusWillTS = time.Time{}, time.Time{} // a new run
		case st.State == wire.StateOffline:
			if h.State == wire.StateStopped || !st.TS.After(d.StatusWillTS) {
				return false
			}
		case !st.TS.After(d.StatusMaxTS):
			return false
		}
	} else {
		d.StatusMaxTS, d.StatusWillTS = time.Time{}, time.Time{}
	}
	// A status is heard from at its arrival, but the broker's retained
	// copy at its own ts when that is earlier: it speaks for when the
	// agent built it (a fleet restarted after an ATM went silent without
	// a will does not see it alive again). A live status is dated by its
	// arrival, so an ATM whose clock runs behind is not stale; a live
	// replay of one taken already is refused above (its ts is not after
	// the run's newest).
	heard := s.Received.UTC()
	if s.Retained && !st.TS.IsZero() && st.TS.Before(heard) {
		heard = st.TS.UTC()
	}
	d.Status, d.StatusReceived, d.StatusAuthenticated = &st, heard, s.Authenticated
	if st.TS.After(d.StatusMaxTS) && !st.TS.After(s.Received.Add(MaxAhead)) {
		d.StatusMaxTS = st.TS.UTC()
	}
	if st.State == wire.StateOffline {
		d.StatusWillTS = st.TS.UTC()
	}
	return true
}

// Stale reports whether d's last status says online but nothing has come
// from it for longer than after, counted to now (web.stale_after: the
// pages show it stale). after 0: never.
func (d Device) Stale(now time.Time, after time.Duration) bool {
	return after > 0 && d.State() == "online" && now.Sub(d.LastHeard()) > after
}

// MaxAhead is how far past its receive time a message's ts may lie and
// still speak for the device's clock.
const MaxAhead = time.Hour

// Ahead reports whether m's ts lies more than MaxAhead past the time it was
// received: an agent clock gone wrong, or a forged message. Such a message
// is stored and counted like any other, but its ts never restarts the
// sequence and never becomes the device's LastTS, so one message dated
// 2099 cannot make every later one "earlier than the restart" and freeze
// the device's view.
func Ahead(m Message) bool {
	return m.TS.After(m.Received.Add(MaxAhead))
}

// Restarted reports whether m restarts the device's sequence: a seq below
// the highest seen with a ts newer than any seen (the agent was reinstalled
// or its store reset, and counts from 1 again), and not Ahead. The sequence
// accounting (FirstSeq, MaxSeq, Unique, so Gaps) then starts again at m's
// seq, m's summary replaces the latest one and SeqRestart is set to m's ts.
func Restarted(d Device, m Message) bool {
	return d.Unique > 0 && m.Seq < d.MaxSeq && !d.LastTS.IsZero() && m.TS.After(d.LastTS) && !Ahead(m)
}

// Earlier reports whether m belongs to a sequence the device restarted
// since (its ts is before SeqRestart): it is stored (dedup, series,
// alerts) but neither counted in the sequence accounting nor made the
// latest summary.
func Earlier(d Device, m Message) bool {
	return !d.SeqRestart.IsZero() && m.TS.Before(d.SeqRestart)
}

// Gaps counts sequence numbers between FirstSeq and MaxSeq never received.
// The range may cover all 2^64 values: it is counted without overflow.
func (d Device) Gaps() uint64 {
	if d.Unique == 0 || d.MaxSeq < d.FirstSeq {
		return 0
	}
	width := d.MaxSeq - d.FirstSeq // span - 1, never overflows
	if d.Unique-1 >= width {
		return 0
	}
	return width - (d.Unique - 1)
}

// Behind is how many sequence numbers the broker acknowledged (the status
// seq) beyond the highest one received here.
func (d Device) Behind() uint64 {
	if d.Status == nil || d.Status.Seq <= d.MaxSeq {
		return 0
	}
	return d.Status.Seq - d.MaxSeq
}

// CameraOK reports whether every camera in the last status is ok (true
// when the status names none).
func (d Device) CameraOK() bool {
	if d.Status == nil {
		return true
	}
	for _, c := range d.Status.Cameras {
		if !c.OK {
			return false
		}
	}
	return true
}

// Backlog is the outbox depth in the last status (-1 when unknown).
func (d Device) Backlog() int {
	if d.Status == nil || d.Status.Outbox == nil {
		return -1
	}
	return d.Status.Outbox.Depth
}

// AlertState is an alert's workflow state.
type AlertState string

const (
	AlertOpen         AlertState = "open"
	AlertAcknowledged AlertState = "acknowledged"
	AlertResolved     AlertState = "resolved"
)

// AlertKey names one alert: alert ids are stable per rule, identity and
// window on one device.
type AlertKey struct {
	Site, Device, AlertID string
}

func (k AlertKey) String() string { return k.Site + "/" + k.Device + "/" + k.AlertID }

// Alert is one alert with its workflow.
type Alert struct {
	AlertKey
	Rule, Kind, IdentityID, Window string
	// VisitID and TxnID: the visit that first raised it and its
	// transaction id, when the agent sent them.
	VisitID, TxnID              string
	WindowStart                 time.Time
	Count, Threshold            int
	FirstSeen, LastSeen, Raised time.Time
	MessageID                   string // of the first message that raised it
	Seq                         uint64
	Historical                  bool
	Received                    time.Time
	Raises                      int // distinct messages carrying this alert id
	// Authenticated: the message that raised it was signed by the key
	// pinned for the device (Message.Authenticated).
	Authenticated bool `json:",omitempty"`

	State                    AlertState
	AckBy, AckNote           string
	AckAt                    time.Time
	ResolvedBy, ResolvedNote string
	ResolvedAt               time.Time
}

// AlertFilter selects alerts; zero fields match everything.
type AlertFilter struct {
	State            AlertState // "" for any; "active" is not a state: use Active
	Active           bool       // open or acknowledged
	Site, Device     string
	Rule, IdentityID string
	// Sites, when not nil, lists only alerts of the sites it allows (a
	// user's scope): applied by the store's query, before Offset and
	// Limit, so a scoped listing's pages are full.
	Sites *Sites
	Since time.Time // raised at or after
	Limit int       // 0: DefaultAlertLimit
	// Offset skips that many matching alerts (newest first) before Limit:
	// pages through more alerts than one listing holds.
	Offset int
	// ReceivedSince: received by the fleet at or after.
	ReceivedSince time.Time
	// Order of the listing: newest raised first (the default), or oldest
	// received first (a feed to poll).
	Order AlertOrder
	// After, when set, lists only the alerts that come after it in the
	// listing's order (keyset paging: pages do not shift when alerts are
	// raised between two requests). It must be of the same order.
	After *AlertCursor
}

// AlertOrder is the order of an alert listing; ties are broken by site,
// device and alert id in byte order.
type AlertOrder byte

const (
	// ByRaised lists the newest raised (the agent's clock) first.
	ByRaised AlertOrder = 'r'
	// ByReceived lists the oldest received (the fleet's clock) first: an
	// alert that reached the fleet late, from an agent's outbox after an
	// outage, comes where it arrived, not where it was raised.
	ByReceived AlertOrder = 'v'
)

func (o AlertOrder) orDefault() AlertOrder {
	if o == 0 {
		return ByRaised
	}
	return o
}

// AlertCursor is a place in an alert listing: the alert's time in the
// listing's order (raised or received) and its key.
type AlertCursor struct {
	Order AlertOrder
	At    time.Time
	Key   AlertKey
}

// CursorOf is the place of a listed alert.
func (f AlertFilter) CursorOf(a Alert) AlertCursor {
	if f.Order.orDefault() == ByReceived {
		return AlertCursor{Order: ByReceived, At: a.Received, Key: a.AlertKey}
	}
	return AlertCursor{Order: ByRaised, At: a.Raised, Key: a.AlertKey}
}

// CompareKeys orders alert keys by site, device and alert id, byte-wise.
func CompareKeys(a, b AlertKey) int {
	return cmp.Or(strings.Compare(a.Site, b.Site), strings.Compare(a.Device, b.Device), strings.Compare(a.AlertID, b.AlertID))
}

// Compare orders two alerts as the filter's listing does.
func (f AlertFilter) Compare(a, b Alert) int {
	return compareCursors(f.CursorOf(a), f.CursorOf(b))
}

func compareCursors(a, b AlertCursor) int {
	t := b.At.Compare(a.At) // newest raised first
	if a.Order == ByReceived {
		t = -t // oldest received first
	}
	return cmp.Or(t, CompareKeys(a.Key, b.Key))
}

// String is the cursor as the API gives it: opaque to clients, URL-safe.
func (c AlertCursor) String() string {
	return base64.RawURLEncoding.EncodeToString([]byte(strings.Join([]string{
		string(c.Order.orDefault()), c.At.UTC().Format(time.RFC3339Nano), c.Key.Site, c.Key.Device, c.Key.AlertID}, "\x00")))
}

// ParseCursor reads what AlertCursor.String wrote.
func ParseCursor(s string) (AlertCursor, error) {
	bad := fmt.Errorf("cursor %.40q: not one this service gave", s)
	b, err := base64.RawURLEncoding.DecodeString(s)
	parts := strings.Split(string(b), "\x00")
	if err != nil || !utf8.Valid(b) || len(parts) != 5 || parts[2] == "" || parts[3] == "" || parts[4] == "" {
		return AlertCursor{}, bad
	}
	if len(parts[0]) != 1 {
		return AlertCursor{}, bad
	}
	o := AlertOrder(parts[0][0])
	if o != ByRaised && o != ByReceived {
		return AlertCursor{}, bad
	}
	t, err := time.Parse(time.RFC3339Nano, parts[1])
	if err != nil {
		return AlertCursor{}, bad
	}
	return AlertCursor{Order: o, At: t, Key: AlertKey{Site: parts[2], Device: parts[3], AlertID: parts[4]}}, nil
}

// DefaultAlertLimit bounds an alert listing without a limit.
const DefaultAlertLimit = 500

// Match applies the filter to one alert (the embedded store filters in Go).
func (f AlertFilter) Match(a Alert) bool {
	switch {
	case f.State != "" && a.State != f.State,
		f.Active && a.State == AlertResolved,
		f.Site != "" && a.Site != f.Site,
		!f.Sites.Allows(a.Site),
		f.Device != "" && a.Device != f.Device,
		f.Rule != "" && a.Rule != f.Rule,
		f.IdentityID != "" && a.IdentityID != f.IdentityID,
		!f.Since.IsZero() && a.Raised.Before(f.Since),
		!f.ReceivedSince.IsZero() && a.Received.Before(f.ReceivedSince),
		f.After != nil && compareCursors(f.CursorOf(a), *f.After) <= 0:
		return false
	}
	return true
}

// Action is an acknowledgement or resolution by a user.
type Action struct {
	Key    AlertKey
	Action string // ActionAck or ActionResolve
	User   string
	Role   string
	Note   string
	Remote string // client address, for the audit log
	At     time.Time
}

const (
	ActionAck     = "acknowledge"
	ActionResolve = "resolve"
)

// Validate checks an action before it reaches a store.
func (a Action) Validate() error {
	switch a.Action {
	case ActionAck, ActionResolve:
	default:
		return fmt.Errorf("action %q: want %q or %q", a.Action, ActionAck, ActionResolve)
	}
	if a.User == "" {
		return errors.New("action: no user")
	}
	if len(a.Note) > 2000 {
		return errors.New("action: note longer than 2000 bytes")
	}
	if !utf8.ValidString(a.Note) || strings.ContainsRune(a.Note, 0) {
		return errors.New("action: note is not UTF-8 text (or holds a NUL byte)")
	}
	if a.At.IsZero() {
		return errors.New("action: no time")
	}
	return nil
}

// Allowed reports whether action may be applied to an alert in state s.
// ActionRemoveDevice is the audit log's name of a device's removal.
const ActionRemoveDevice = "remove device"

// ActionPurgeIdentity is the audit log's name of an identity's erasure;
// its note names the identity.
const ActionPurgeIdentity = "purge identity"

// ActionPinKey and ActionUnpinKey are the audit log's names of a device
// key's pin (or replacement) and unpin: a pin decides which key may speak
// for a device, an unpin turns the check off.
const (
	ActionPinKey   = "pin device key"
	ActionUnpinKey = "unpin device key"
)

// KeyChange is who pins or unpins a device key, and when: an
// administrator through the web API, or the CLI's user (role "cli").
type KeyChange struct {
	User, Role, Remote string
	At                 time.Time
}

// KeyNote is the audit log's note of a pin or unpin: the fingerprints of
// the key pinned before (nil: none) and after (nil: unpinned), and who
// had pinned the one replaced or removed.
func KeyNote(before, after *DeviceKey) string {
	was := "none pinned before"
	if before != nil {
		was = fmt.Sprintf("was %s (pinned %s by %s)", wire.Fingerprint(before.PublicKey), before.Pinned.UTC().Format(time.RFC3339), before.By)
	}
	if after == nil {
		return "unpinned; " + was
	}
	return "pinned " + wire.Fingerprint(after.PublicKey) + "; " + was
}

// IdentityPurge is an administrator's erasure of one identity.
type IdentityPurge struct {
	Site, Device, Identity string
	User, Role, Remote     string
	At                     time.Time
}

// ErrNotScrubbed: an erasure was committed, but the store could not yet
// rewrite its file without the erased records' old copies (no room for the
// copy): they stay readable in the file's free pages until it can.
var ErrNotScrubbed = errors.New("erased, but not yet scrubbed from the store file")

// PurgeNote is the audit log's note of an erasure: the identity is not
// named (a digest of site, device and identity lets whoever knows them
// find the entry), with how many alerts went.
func PurgeNote(p IdentityPurge, alerts int) string {
	h := sha256.Sum256([]byte(p.Site + "\x00" + p.Device + "\x00" + p.Identity))
	return fmt.Sprintf("identity sha256:%x, %d alerts", h[:8], alerts)
}

// RejectNames reports whether the held reject r names the identity an
// erasure p removes: r is of p's device (or of no device: its topic was
// bad) and its payload or error holds the identity's id as a JSON string.
// A message refused for its signature (a reinstalled ATM's, before its new
// key was pinned) is one, and would otherwise outlive the erasure.
func RejectNames(r Reject, p IdentityPurge) bool {
	if (r.Site != p.Site || r.Device != p.Device) && r.Site != "" {
		return false
	}
	q := `"` + p.Identity + `"`
	return strings.Contains(r.Payload, q) || strings.Contains(r.Error, p.Identity)
}

// DropIdentity removes an identity's line from a summary (the device's
// last summary, as stored), reporting whether it was there.
func DropIdentity(s *wire.Summary, id string) bool {
	if s == nil {
		return false
	}
	n := len(s.Identities)
	s.Identities = slices.DeleteFunc(s.Identities, func(c wire.IdentityCounts) bool { return c.ID == id })
	return len(s.Identities) != n
}

// The audit log's names of an analyst's corrections of identities (split
// and merge): the note says which identities and how many visits.
const (
	ActionSplitIdentity = "split identity"
	ActionMergeIdentity = "merge identities"
)

// Correction is an analyst's split or merge of one device's identities,
// sent to its agent as a signed command (split_visits, merge_identities).
// Each is audited twice: OutcomeRequested before the command is first
// published (committed first: a fleet that stops or crashes while waiting
// still leaves a trace of what it may have sent), then its outcome
// (applied, refused, no usable answer, not sent), both naming the
// command's message id. A request without an outcome entry is one whose
// fate the fleet never learnt: the device may have applied it
// (PendingCorrections). No visit ids, transaction ids or card data are
// kept: only how many visits.
type Correction struct {
	Site, Device string
	// Action is ActionSplitIdentity or ActionMergeIdentity.
	Action string
	// Outcome is one of the Outcome constants.
	Outcome string
	// Identity is the identity corrected (split: the one the visits left;
	// merge: the one merged away); Other the new identity (split applied)
	// or the one to keep the visits (merge; empty for a split not applied).
	Identity, Other string
	// Visits is how many visits moved (applied) or were chosen (split
	// otherwise).
	Visits int
	// Reason: why it was refused or not sent (the device's or the
	// broker's words, bounded in the note).
	Reason             string
	MessageID          string // the command's message id (the reply's correlation id)
	User, Role, Remote string
	At                 time.Time
}

// The outcomes of a correction, as audited.
const (
	// OutcomeRequested: about to be published; the entry comes first.
	OutcomeRequested = "requested"
	// OutcomeApplied: the device answered that it applied it.
	OutcomeApplied = "applied"
	// OutcomeRefused: the device answered that it did not apply it.
	OutcomeRefused = "refused"
	// OutcomeUnknown: no usable answer (none within the reply timeout,
	// or one that does not fit the command): it may have been applied.
	OutcomeUnknown = "no usable answer"
	// OutcomeNotSent: the command never left the fleet (no broker
	// connection, too many commands in flight...): nothing was applied.
	OutcomeNotSent = "not sent"
)

// maxReasonNote bounds the reason kept in a correction's note.
const maxReasonNote = 300

// Validate checks a correction before it reaches a store.
func (c Correction) Validate() error {
	switch {
	case c.Action != ActionSplitIdentity && c.Action != ActionMergeIdentity:
		return fmt.Errorf("correction: action %q: want %q or %q", c.Action, ActionSplitIdentity, ActionMergeIdentity)
	case c.Site == "" || c.Device == "" || c.Identity == "":
		return errors.New("correction: site, device and identity are required")
	case c.User == "" || c.At.IsZero():
		return errors.New("correction: no user or no time")
	case c.Visits < 0:
		return errors.New("correction: negative visit count")
	case c.Outcome == OutcomeRequested && c.MessageID == "":
		return errors.New("correction: a request names the command's message id")
	}
	switch c.Outcome {
	case OutcomeRequested, OutcomeApplied, OutcomeRefused, OutcomeUnknown, OutcomeNotSent:
		return nil
	}
	return fmt.Errorf("correction: outcome %q: want %q, %q, %q, %q or %q", c.Outcome,
		OutcomeRequested, OutcomeApplied, OutcomeRefused, OutcomeUnknown, OutcomeNotSent)
}

// CorrectionNote is the audit log's note of a correction: its outcome,
// the identities and the visit count, never a visit or card; it ends with
// the command's message id (CorrectionCommand reads it back).
func CorrectionNote(c Correction) string {
	what := fmt.Sprintf("%s of %s to split off", Visits(c.Visits), c.Identity)
	if c.Action == ActionMergeIdentity {
		what = fmt.Sprintf("%s into %s", c.Identity, c.Other)
	}
	reason := strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return ' '
		}
		return r
	}, c.Reason)
	if len(reason) > maxReasonNote {
		reason = strings.ToValidUTF8(reason[:maxReasonNote], "") + "..."
	}
	var s string
	switch {
	case c.Outcome == OutcomeRequested:
		s = "requested: " + what
	case c.Outcome == OutcomeRefused:
		s = "refused by the device, nothing changed: " + what + ": " + reason
	case c.Outcome == OutcomeNotSent:
		s = "not sent, nothing changed: " + what + ": " + reason
	case c.Outcome == OutcomeUnknown:
		s = what + ": no usable answer from the device (it may have applied it)"
	case c.Action == ActionSplitIdentity:
		s = fmt.Sprintf("%s of %s split off into %s", Visits(c.Visits), c.Identity, c.Other)
	default:
		s = fmt.Sprintf("%s merged into %s: %s moved", c.Identity, c.Other, Visits(c.Visits))
	}
	if c.MessageID != "" {
		s += commandNote + c.MessageID + ")"
	}
	return s
}

// Visits is "1 visit", "2 visits".
func Visits(n int) string {
	if n == 1 {
		return "1 visit"
	}
	return fmt.Sprintf("%d visits", n)
}

// commandNote starts the message id at the end of a correction's note.
const commandNote = " (command "

// CorrectionCommand reads an audit entry of a correction: the command's
// message id, and whether the entry is the request (OutcomeRequested)
// rather than an outcome. ok is false for any other entry.
func CorrectionCommand(e AuditEntry) (id string, requested, ok bool) {
	if e.Action != ActionSplitIdentity && e.Action != ActionMergeIdentity || !strings.HasSuffix(e.Note, ")") {
		return "", false, false
	}
	i := strings.LastIndex(e.Note, commandNote)
	if i < 0 {
		return "", false, false
	}
	id = e.Note[i+len(commandNote) : len(e.Note)-1]
	return id, strings.HasPrefix(e.Note, OutcomeRequested+": "), id != ""
}

// PendingCorrections returns the audit ids of the requests among entries
// (as Audit lists them, newest first) that have no outcome entry: the
// fleet never learnt what became of them (it stopped while waiting, or is
// waiting still).
func PendingCorrections(entries []AuditEntry) map[uint64]bool {
	answered := map[string]bool{}
	out := map[uint64]bool{}
	for _, e := range entries { // newest first: an outcome before its request
		id, requested, ok := CorrectionCommand(e)
		switch {
		case !ok:
		case !requested:
			answered[id] = true
		case !answered[id]:
			out[e.ID] = true
		}
	}
	return out
}

// Removal is an administrator's removal of a device.
type Removal struct {
	Site, Device       string
	User, Role, Remote string
	At                 time.Time
	// StaleAfter: a device whose last status says online but that has
	// not been heard from for longer (counted to At) is removed as an
	// offline one is (web.stale_after); 0: an online device never is.
	StaleAfter time.Duration
}

// CheckRemovable says why a device may not be removed by r, or nil.
func CheckRemovable(d Device, r Removal) error {
	if d.State() == "online" && !d.Stale(r.At, r.StaleAfter) {
		return fmt.Errorf("device %s/%s is online (last heard from %s ago): stop its agent (or let the rename take effect) before removing it: %w",
			d.Site, d.Device, r.At.Sub(d.LastHeard()).Round(time.Second), ErrDeviceOnline)
	}
	if d.OpenAlerts > 0 {
		return fmt.Errorf("device %s/%s has %d active alerts: resolve them before removing it: %w", d.Site, d.Device, d.OpenAlerts, ErrActiveAlerts)
	}
	return nil
}

// RemovalNote is the audit log's note of d's removal by r: for a stale
// device, that its last status said online and when it was last heard
// from; "" otherwise.
func RemovalNote(d Device, r Removal) string {
	if !d.Stale(r.At, r.StaleAfter) {
		return ""
	}
	return "stale: its last status said online, last heard from " + d.LastHeard().UTC().Format(time.RFC3339)
}

// Repeated reports whether the alert is already where this action by this
// user took it: a client's retry after a lost answer. The stores answer it
// with the alert as it is, recording nothing (the action is idempotent per
// user); the same action by another user is ErrState.
func Repeated(act Action, a Alert) bool {
	switch act.Action {
	case ActionAck:
		return a.State == AlertAcknowledged && a.AckBy == act.User
	case ActionResolve:
		return a.State == AlertResolved && a.ResolvedBy == act.User
	}
	return false
}

func Allowed(action string, s AlertState) bool {
	switch action {
	case ActionAck:
		return s == AlertOpen
	case ActionResolve:
		return s == AlertOpen || s == AlertAcknowledged
	}
	return false
}

// AuditEntry is one recorded action.
type AuditEntry struct {
	ID     uint64
	At     time.Time
	User   string
	Role   string
	Action string
	Key    AlertKey
	Note   string
	Remote string
}

// SummaryPoint is one summary's device-wide totals (the charts' series).
type SummaryPoint struct {
	Seq                                   uint64
	TS                                    time.Time
	Visits1h, Visits24h, Visits7d         int
	Identities24h, Masked24h, Faceless24h int
}

// IdentityPoint is one identity's counts in one summary.
type IdentityPoint struct {
	Seq                           uint64
	TS                            time.Time
	Visits, Masked, DistinctCards wire.WindowCounts
	FirstSeen, LastSeen           time.Time
}

// PointsFromSummary splits a summary into its stored series.
func PointsFromSummary(s *wire.Summary) (SummaryPoint, map[string]IdentityPoint) {
	p := SummaryPoint{Seq: s.Seq, TS: s.TS.UTC(), Visits1h: s.Totals.Visits.H1, Visits24h: s.Totals.Visits.H24,
		Visits7d: s.Totals.Visits.D7, Identities24h: s.Totals.Identities.H24, Masked24h: s.Totals.Masked.H24,
		Faceless24h: s.Faceless.H24}
	ids := make(map[string]IdentityPoint, len(s.Identities))
	for _, c := range s.Identities {
		ids[c.ID] = IdentityPoint{Seq: s.Seq, TS: s.TS.UTC(), Visits: c.Visits, Masked: c.Masked,
			DistinctCards: c.DistinctCards, FirstSeen: c.FirstSeen.UTC(), LastSeen: c.LastSeen.UTC()}
	}
	return p, ids
}

// PruneStats counts what Prune deleted.
type PruneStats struct {
	Messages, Summaries, IdentityPoints, Alerts, Rejects, Audit int
	// Sessions: revocations of signed-out sessions that have expired.
	Sessions int
}

// SessionHash is what a store keeps of a signed-out session's id (the
// cookie's random nonce): its SHA-256, so the store holds nothing a
// cookie is made of.
func SessionHash(id string) []byte {
	h := sha256.Sum256([]byte("atm-fleet session\x00" + id))
	return h[:]
}

// NewUserGeneration is a web user's new generation (Store.SyncUsers):
// 16 random bytes, hex.
func NewUserGeneration() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// DeviceKey is a device's pinned public key: the fleet acts on a reply
// of that device only when this key's signature verifies
// (wire.VerifyReply).
type DeviceKey struct {
	Site, Device string
	PublicKey    ed25519.PublicKey
	Pinned       time.Time // when it was set
	By           string    // who set it (the CLI's user)
}

// Validate checks the key and the names before a store writes them.
func (k DeviceKey) Validate() error {
	if err := wire.ValidateLevel("site", k.Site); err != nil {
		return fmt.Errorf("%w: %v", ErrBadRecord, err)
	}
	if err := wire.ValidateLevel("device", k.Device); err != nil {
		return fmt.Errorf("%w: %v", ErrBadRecord, err)
	}
	if len(k.PublicKey) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: a public key of %d bytes, an Ed25519 key has %d", ErrBadRecord, len(k.PublicKey), ed25519.PublicKeySize)
	}
	if len(k.By) > 256 {
		return fmt.Errorf("%w: by: %d bytes, at most 256", ErrBadRecord, len(k.By))
	}
	return nil
}

// UnheardPinWarning is the warning given with a key pinned for a device
// the fleet has not heard from: allowed (a new ATM), but a misspelt name
// would leave the real device unauthenticated.
func UnheardPinWarning(site, device string) string {
	return fmt.Sprintf("the fleet has not heard from %s/%s yet: check the site and device names (compared byte for byte, case included) "+
		"against the device list; the pin applies once that device publishes under exactly these names", site, device)
}

// DeviceKeyNotFound: no key pinned for site/device.
func DeviceKeyNotFound(site, device string) error {
	return &NotFoundError{What: "device key of " + site + "/" + device}
}

// Retention says how long each kind of record is kept.
type Retention struct {
	// History: dedup records, summary and identity series, rejects.
	History time.Duration
	// Alerts: resolved alerts (open ones are never pruned) and the audit log.
	Alerts time.Duration
}

// Change tells the web layer what changed, so open pages can refresh.
type Change struct {
	Kind string `json:"kind"` // "status", "summary", "alert", "action", "device"; "resync": changes may have been missed
	// Site is empty for a change of no one site (resync): every page
	// refreshes, scoped users' too.
	Site   string `json:"site"`
	Device string `json:"device"`
	Alert  string `json:"alert,omitempty"`
}

// Store is the fleet's persistence. Every method is safe for concurrent use
// and bounded by ctx.
type Store interface {
	// Apply records validated summaries and alerts in one transaction and
	// reports for each whether it was new (false: a duplicate message id).
	Apply(ctx context.Context, msgs []Message) ([]bool, error)
	PutStatus(ctx context.Context, s Status) error
	// PutReject keeps a rejected payload (bounded) and counts it on its
	// device when that device exists; it never creates one.
	PutReject(ctx context.Context, r Reject) error

	Devices(ctx context.Context) ([]Device, error)
	Device(ctx context.Context, site, device string) (Device, error)
	Alerts(ctx context.Context, f AlertFilter) ([]Alert, error)
	Alert(ctx context.Context, k AlertKey) (Alert, error)
	// Act applies an acknowledgement or resolution and appends it to the
	// audit log in the same transaction. ErrState when not allowed.
	Act(ctx context.Context, a Action) (Alert, error)
	Audit(ctx context.Context, limit int) ([]AuditEntry, error)
	// RemoveDevice forgets a decommissioned or renamed device: its record,
	// dedup records and series, with an audit entry; its alerts stay
	// (pruned by retention once resolved). ErrNotFound for an unknown
	// device; ErrState while it is online or has active alerts.
	RemoveDevice(ctx context.Context, r Removal) error
	// PurgeIdentity erases one identity of one device (an erasure
	// request, after the agent's own purge_identity): its series, its
	// alerts in every state, and its line in the device's last summary,
	// with an audit entry (PurgeNote), also for a device already removed
	// whose alerts remain. It returns how many alerts went; ErrNotFound
	// when neither the device nor anything of the identity is stored;
	// ErrNotScrubbed (with the count) when the erasure is committed but
	// old copies remain in the file.
	PurgeIdentity(ctx context.Context, p IdentityPurge) (int, error)
	// RecordCorrection appends an analyst's split or merge of identities
	// to the audit log (CorrectionNote); the store holds no visits to
	// change: the agent applied it.
	RecordCorrection(ctx context.Context, c Correction) error
	Summaries(ctx context.Context, site, device string, since time.Time) ([]SummaryPoint, error)
	IdentityPoints(ctx context.Context, site, device, identity string, since time.Time) ([]IdentityPoint, error)
	Rejects(ctx context.Context, limit int) ([]Reject, error)
	// Prune deletes what the retention allows, and every session
	// revocation whose session has expired by now.
	Prune(ctx context.Context, now time.Time, r Retention) (PruneStats, error)

	// RevokeSession records that the web session id was signed out; it
	// stays revoked, across restarts and for every instance sharing the
	// store, until expires (the session's own expiry), after which Prune
	// removes it. Only SessionHash(id) is stored.
	RevokeSession(ctx context.Context, id string, expires time.Time) error
	// SessionRevoked reports whether the session id was revoked.
	SessionRevoked(ctx context.Context, id string) (bool, error)

	// SyncUsers makes the store's web users those named (the users in
	// force after a start or a reload of the users file), in one
	// transaction: a name the store lacks gets a new random generation,
	// a user the store has and names lacks is deleted (removed: if added
	// again, they get a new generation). It returns each name's
	// generation. A session carries its user's generation, so removing a
	// user ends their sessions for good, across restarts and instances.
	SyncUsers(ctx context.Context, names []string) (map[string]string, error)

	// PutDeviceKey pins the Ed25519 public key that signs a device's
	// command replies, replacing one pinned before (a device need not
	// be known yet: pin it when the ATM is set up), with an audit entry
	// by c (KeyNote) in the same transaction.
	PutDeviceKey(ctx context.Context, k DeviceKey, c KeyChange) error
	// DeviceKey is the key pinned for a device: ErrNotFound when none.
	DeviceKey(ctx context.Context, site, device string) (DeviceKey, error)
	// DeviceKeys lists every pinned key, by site and device.
	DeviceKeys(ctx context.Context) ([]DeviceKey, error)
	// RemoveDeviceKey unpins a device's key, with an audit entry by c
	// (KeyNote): ErrNotFound when none.
	RemoveDeviceKey(ctx context.Context, site, device string, c KeyChange) error

	// Subscribe delivers changes committed by any instance sharing the
	// store (best effort: a slow subscriber misses changes, never blocks
	// writers). cancel releases it.
	Subscribe() (ch <-chan Change, cancel func())
	Close() error
}

// BatchWriter is implemented by stores that write many statuses or
// rejects in one transaction; the ingest uses it so a burst of statuses
// (every agent reconnecting) does not cost one commit each.
type BatchWriter interface {
	PutStatuses(ctx context.Context, s []Status) error
	PutRejects(ctx context.Context, r []Reject) error
}

// Hub fans changes out to subscribers; stores embed it.
type Hub struct {
	mu   sync.Mutex
	subs map[chan Change]struct{}
}

// Subscribe registers a buffered subscriber.
func (h *Hub) Subscribe() (<-chan Change, func()) {
	ch := make(chan Change, 64)
	h.mu.Lock()
	if h.subs == nil {
		h.subs = map[chan Change]struct{}{}
	}
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			h.mu.Lock()
			delete(h.subs, ch)
			h.mu.Unlock()
		})
	}
}

// Publish delivers c to every subscriber that has room.
func (h *Hub) Publish(c Change) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		select {
		case ch <- c:
		default:
		}
	}
}

// ChangesOf returns the changes a batch of applied messages causes.
func ChangesOf(msgs []Message, fresh []bool) []Change {
	var out []Change
	seen := map[Change]bool{}
	for i, m := range msgs {
		if i < len(fresh) && !fresh[i] {
			continue
		}
		c := Change{Kind: m.Kind, Site: m.Site, Device: m.Device}
		if m.Alert != nil {
			c.Alert = m.Alert.AlertID
		}
		if !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	return out
}
