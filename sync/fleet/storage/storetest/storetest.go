// Package storetest is the conformance suite every storage.Store passes:
// dedup, sequence accounting, alert workflow and audit, series, retention,
// change notifications.
package storetest

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/wire"
)

// T0 is the suite's clock origin.
var T0 = time.Date(2026, 3, 14, 9, 0, 0, 0, time.UTC)

// Summary builds a summary message of seq for one device.
func Summary(site, device string, seq uint64, ts time.Time, visits1h int, ids ...string) storage.Message {
	s := &wire.Summary{Envelope: wire.NewEnvelope(site, device, ts)}
	s.Seq, s.MessageID = seq, fmt.Sprintf("%d-s%s", seq, device)
	s.Totals.Visits = wire.WindowCounts{H1: visits1h, H24: visits1h * 5, D7: visits1h * 20}
	for i, id := range ids {
		s.Identities = append(s.Identities, wire.IdentityCounts{ID: id, Visits: wire.WindowCounts{H1: i + 1, H24: i + 2, D7: i + 3},
			DistinctCards: wire.WindowCounts{H1: 1, H24: 2, D7: 3}, FirstSeen: ts.Add(-time.Hour), LastSeen: ts})
	}
	return storage.Message{Site: site, Device: device, Kind: wire.KindSummary, MessageID: s.MessageID, Seq: seq,
		TS: ts, Received: ts.Add(time.Second), Summary: s}
}

// Alert builds an alert message of seq for one device.
func Alert(site, device string, seq uint64, ts time.Time, alertID, identity string, count int) storage.Message {
	a := &wire.Alert{Envelope: wire.NewEnvelope(site, device, ts), AlertID: alertID, Rule: "many-visits-24h", Kind: "visits",
		IdentityID: identity, Window: "24h0m0s", WindowStart: ts.Add(-24 * time.Hour), Count: count, Threshold: 5,
		FirstSeen: ts.Add(-time.Hour), LastSeen: ts, Raised: ts, VisitID: fmt.Sprintf("v%d", seq), TxnID: fmt.Sprintf("T %d", seq)}
	a.Seq, a.MessageID = seq, fmt.Sprintf("%d-a%s", seq, device)
	return storage.Message{Site: site, Device: device, Kind: wire.KindAlert, MessageID: a.MessageID, Seq: seq,
		TS: ts, Received: ts.Add(time.Second), Alert: a}
}

// Listing is the listing a store must give for f, computed from alerts
// read one by one: those f matches, in f's order, offset and limit
// applied; as keys.
func Listing(all []storage.Alert, f storage.AlertFilter) []storage.AlertKey {
	var out []storage.Alert
	for _, a := range all {
		if f.Match(a) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, f.Compare)
	out = out[min(f.Offset, len(out)):]
	return Keys(out[:min(cmp.Or(f.Limit, storage.DefaultAlertLimit), len(out))])
}

// Keys are the alerts' keys, in order.
func Keys(as []storage.Alert) []storage.AlertKey {
	var out []storage.AlertKey
	for _, a := range as {
		out = append(out, a.AlertKey)
	}
	return out
}

// Run runs the suite; open returns a new, empty store.
func Run(t *testing.T, open func(t *testing.T) storage.Store) {
	t.Run("DedupAndGaps", func(t *testing.T) { dedupAndGaps(t, open(t)) })
	t.Run("AlertWorkflow", func(t *testing.T) { alertWorkflow(t, open(t)) })
	t.Run("Series", func(t *testing.T) { series(t, open(t)) })
	t.Run("StatusAndRejects", func(t *testing.T) { statusAndRejects(t, open(t)) })
	t.Run("Retention", func(t *testing.T) { retention(t, open(t)) })
	t.Run("RejectsCreateNoDevice", func(t *testing.T) { rejectsCreateNoDevice(t, open(t)) })
	t.Run("SeqRestart", func(t *testing.T) { seqRestart(t, open(t)) })
	t.Run("TSAhead", func(t *testing.T) { tsAhead(t, open(t)) })
	t.Run("BatchWrites", func(t *testing.T) { batchWrites(t, open(t)) })
	t.Run("SessionRevocations", func(t *testing.T) { sessionRevocations(t, open(t)) })
	t.Run("UserGenerations", func(t *testing.T) { userGenerations(t, open(t)) })
	t.Run("AlertListings", func(t *testing.T) { alertListings(t, open(t)) })
	t.Run("ScopedPaging", func(t *testing.T) { scopedPaging(t, open(t)) })
	t.Run("NotFound", func(t *testing.T) { notFound(t, open(t)) })
	t.Run("RemoveDevice", func(t *testing.T) { removeDevice(t, open(t)) })
	t.Run("PurgeIdentity", func(t *testing.T) { purgeIdentity(t, open(t)) })
	t.Run("Corrections", func(t *testing.T) { corrections(t, open(t)) })
	t.Run("BadRecord", func(t *testing.T) { badRecord(t, open(t)) })
	t.Run("DeviceKeys", func(t *testing.T) { deviceKeys(t, open(t)) })
	t.Run("Authenticated", func(t *testing.T) { authenticated(t, open(t)) })
	t.Run("StatusOrder", func(t *testing.T) { statusOrder(t, open(t)) })
}

// Pinned device keys: set before the device is known, read back, replaced,
// listed by site and device, removed; an unknown one is ErrNotFound, a
// malformed one ErrBadRecord.
// authenticated: whether the last status and the latest summary were
// signed follows each of them (an older summary does not change it), and
// an alert keeps whether the message that raised it was.
func authenticated(t *testing.T, s storage.Store) {
	c := context.Background()
	dev := func() storage.Device {
		t.Helper()
		d, err := s.Device(c, "lyon-07", "atm-1")
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	signed := func(m storage.Message) storage.Message { m.Authenticated = true; return m }
	if _, err := s.Apply(c, []storage.Message{signed(Summary("lyon-07", "atm-1", 2, T0, 3)), Alert("lyon-07", "atm-1", 3, T0, "a-1", "p-1", 7),
		signed(Alert("lyon-07", "atm-1", 4, T0, "a-2", "p-2", 7))}); err != nil {
		t.Fatal(err)
	}
	if d := dev(); !d.SummaryAuthenticated || d.StatusAuthenticated {
		t.Errorf("signed summary, no status: summary %v, status %v", d.SummaryAuthenticated, d.StatusAuthenticated)
	}
	// An older summary, unsigned, is not the latest: the flag stays.
	if _, err := s.Apply(c, []storage.Message{Summary("lyon-07", "atm-1", 1, T0, 3)}); err != nil {
		t.Fatal(err)
	}
	if d := dev(); !d.SummaryAuthenticated {
		t.Error("an older unsigned summary cleared the latest one's flag")
	}
	if _, err := s.Apply(c, []storage.Message{Summary("lyon-07", "atm-1", 5, T0.Add(time.Minute), 3)}); err != nil {
		t.Fatal(err)
	}
	if d := dev(); d.SummaryAuthenticated {
		t.Error("the latest summary is unsigned, the device says authenticated")
	}
	for i, auth := range []bool{true, false, true} {
		st := storage.Status{Site: "lyon-07", Device: "atm-1", Received: T0.Add(time.Duration(i) * time.Second), Authenticated: auth,
			Status: wire.Status{Envelope: wire.NewEnvelope("lyon-07", "atm-1", T0), State: wire.StateOnline}}
		if err := s.PutStatus(c, st); err != nil {
			t.Fatal(err)
		}
		if d := dev(); d.StatusAuthenticated != auth {
			t.Errorf("status %d: authenticated %v, want %v", i, d.StatusAuthenticated, auth)
		}
	}
	for id, want := range map[string]bool{"a-1": false, "a-2": true} {
		a, err := s.Alert(c, storage.AlertKey{Site: "lyon-07", Device: "atm-1", AlertID: id})
		if err != nil {
			t.Fatal(err)
		}
		if a.Authenticated != want {
			t.Errorf("alert %s: authenticated %v, want %v", id, a.Authenticated, want)
		}
		all, err := s.Alerts(c, storage.AlertFilter{Device: "atm-1"})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range all {
			if l.AlertID == id && l.Authenticated != want {
				t.Errorf("alert %s listed: authenticated %v, want %v", id, l.Authenticated, want)
			}
		}
	}
}

func deviceKeys(t *testing.T, s storage.Store) {
	c := ctx(t)
	key := func(b byte) ed25519.PublicKey {
		return ed25519.PublicKey(bytes.Repeat([]byte{b}, ed25519.PublicKeySize))
	}
	if _, err := s.DeviceKey(c, "lyon-07", "atm-1"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("none pinned: %v", err)
	}
	for _, k := range []storage.DeviceKey{
		{Site: "lyon-07", Device: "atm-2", PublicKey: key(2), Pinned: T0, By: "root"},
		{Site: "lyon-07", Device: "atm-1", PublicKey: key(1), Pinned: T0, By: "root"},
		{Site: "brest-01", Device: "atm-1", PublicKey: key(3), Pinned: T0, By: "ops"},
		{Site: "lyon-07", Device: "atm-1", PublicKey: key(4), Pinned: T0.Add(time.Hour), By: "ops"}, // a new key replaces the old
	} {
		if err := s.PutDeviceKey(c, k, storage.KeyChange{User: k.By, Role: "admin", Remote: "192.0.2.1:5000", At: k.Pinned}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.DeviceKey(c, "lyon-07", "atm-1")
	if err != nil || !got.PublicKey.Equal(key(4)) || !got.Pinned.Equal(T0.Add(time.Hour)) || got.By != "ops" {
		t.Errorf("read back %+v, %v", got, err)
	}
	if devs, err := s.Devices(c); err != nil || len(devs) != 0 {
		t.Errorf("pinning a key made devices: %+v", devs)
	}
	all, err := s.DeviceKeys(c)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(all, func(a, b storage.DeviceKey) int { return cmp.Compare(a.Site+"/"+a.Device, b.Site+"/"+b.Device) })
	var names []string
	for _, k := range all {
		names = append(names, k.Site+"/"+k.Device)
	}
	if strings.Join(names, " ") != "brest-01/atm-1 lyon-07/atm-1 lyon-07/atm-2" {
		t.Errorf("listed %v", names)
	}
	unpin := storage.KeyChange{User: "eve", Role: "cli", Remote: "atm-ops-1", At: T0.Add(2 * time.Hour)}
	if err := s.RemoveDeviceKey(c, "lyon-07", "atm-1", unpin); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeviceKey(c, "lyon-07", "atm-1"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("removed: %v", err)
	}
	if err := s.RemoveDeviceKey(c, "lyon-07", "atm-1", unpin); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("removed twice: %v", err)
	}
	// Every pin and the unpin are audited (newest first), with the
	// fingerprints before and after; the refused unpin is not.
	audit, err := s.Audit(c, 10)
	if err != nil {
		t.Fatal(err)
	}
	fp := func(b byte) string { return wire.Fingerprint(key(b)) }
	want := []string{
		"eve cli atm-ops-1 unpin device key lyon-07/atm-1 unpinned; was " + fp(4) + " (pinned 2026-03-14T10:00:00Z by ops)",
		"ops admin 192.0.2.1:5000 pin device key lyon-07/atm-1 pinned " + fp(4) + "; was " + fp(1) + " (pinned 2026-03-14T09:00:00Z by root)",
		"ops admin 192.0.2.1:5000 pin device key brest-01/atm-1 pinned " + fp(3) + "; none pinned before",
		"root admin 192.0.2.1:5000 pin device key lyon-07/atm-1 pinned " + fp(1) + "; none pinned before",
		"root admin 192.0.2.1:5000 pin device key lyon-07/atm-2 pinned " + fp(2) + "; none pinned before",
	}
	var lines []string
	for _, e := range audit {
		lines = append(lines, strings.Join([]string{e.User, e.Role, e.Remote, e.Action, e.Key.Site + "/" + e.Key.Device, e.Note}, " "))
	}
	if !slices.Equal(lines, want) {
		t.Errorf("audit:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	if !audit[0].At.Equal(unpin.At) || !audit[1].At.Equal(T0.Add(time.Hour)) {
		t.Errorf("audited at %s and %s, want the unpin's and the pin's times", audit[0].At, audit[1].At)
	}
	if got, err := s.DeviceKey(c, "lyon-07", "atm-2"); err != nil || !got.PublicKey.Equal(key(2)) {
		t.Errorf("the other device's key: %+v, %v", got, err)
	}
	for name, k := range map[string]storage.DeviceKey{
		"short key": {Site: "s", Device: "d", PublicKey: key(1)[:31]},
		"no site":   {Device: "d", PublicKey: key(1)},
		"wildcard":  {Site: "s", Device: "+", PublicKey: key(1)},
	} {
		if err := s.PutDeviceKey(c, k, storage.KeyChange{User: "root", Role: "admin", At: T0}); !errors.Is(err, storage.ErrBadRecord) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// A record the store cannot hold (an alert id of 40 KB: bbolt's key limit,
// PostgreSQL's index row limit) is refused as storage.ErrBadRecord, which
// ingest makes a reject, and the store takes the next record.
func badRecord(t *testing.T, s storage.Store) {
	c := ctx(t)
	huge := Alert("lyon-07", "atm-1", 1, T0, strings.Repeat("x", 40<<10), "p-1", 6)
	if _, err := s.Apply(c, []storage.Message{huge}); !errors.Is(err, storage.ErrBadRecord) {
		t.Errorf("a 40 KB alert id: %v, want ErrBadRecord", err)
	}
	if fresh, err := s.Apply(c, []storage.Message{Alert("lyon-07", "atm-1", 2, T0, "a-1", "p-1", 6)}); err != nil || !fresh[0] {
		t.Errorf("the next record: %v, %v", fresh, err)
	}
}

// An erasure request: one identity of one device goes from the series,
// the alerts (every state) and the device's last summary; the device's
// other identities and the same id on another device stay.
func purgeIdentity(t *testing.T, s storage.Store) {
	c := ctx(t)
	if _, err := s.Apply(c, []storage.Message{
		Summary("lyon-07", "atm-1", 1, T0, 3, "p-1", "p-2"),
		Summary("lyon-07", "atm-1", 2, T0.Add(time.Minute), 3, "p-1", "p-2"),
		Alert("lyon-07", "atm-1", 3, T0.Add(2*time.Minute), "a-1", "p-1", 6),
		Alert("lyon-07", "atm-1", 4, T0.Add(3*time.Minute), "a-2", "p-1", 7),
		Alert("lyon-07", "atm-1", 5, T0.Add(4*time.Minute), "a-3", "p-2", 6),
		Summary("lyon-07", "atm-10", 1, T0, 3, "p-1"),
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Act(c, storage.Action{Key: storage.AlertKey{Site: "lyon-07", Device: "atm-1", AlertID: "a-1"},
		Action: storage.ActionResolve, User: "ana", At: T0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	// Held rejects: p-1's alert refused for its signature (kept whole),
	// one of p-10 (an id that holds p-1's), one of p-1 on another device,
	// and one of no device (its topic bad) naming p-1.
	rejects := []storage.Reject{
		{Received: T0, Topic: "atm/lyon-07/atm-1/alert", Site: "lyon-07", Device: "atm-1", Error: "alert not authenticated: ...",
			Payload: `{"identity_id":"p-1","txn_id":"RRN-1"}`},
		{Received: T0, Topic: "atm/lyon-07/atm-1/alert", Site: "lyon-07", Device: "atm-1", Error: "alert not authenticated: ...",
			Payload: `{"identity_id":"p-10"}`},
		{Received: T0, Topic: "atm/lyon-07/atm-10/alert", Site: "lyon-07", Device: "atm-10", Error: "alert not authenticated: ...",
			Payload: `{"identity_id":"p-1"}`},
		{Received: T0, Topic: "atm/lyon-07", Error: "topic: ...", Payload: `{"identities":[{"id":"p-1"}]}`},
	}
	for _, r := range rejects {
		if err := s.PutReject(c, r); err != nil {
			t.Fatal(err)
		}
	}
	purge := func(dev, id string) (int, error) {
		return s.PurgeIdentity(c, storage.IdentityPurge{Site: "lyon-07", Device: dev, Identity: id, User: "root", Role: "admin", At: T0.Add(2 * time.Hour)})
	}
	if _, err := purge("atm-404", "p-1"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("purge on an unknown device: %v, want ErrNotFound", err)
	}
	n, err := purge("atm-1", "p-1")
	if err != nil || n != 2 {
		t.Fatalf("purge p-1: %d alerts, %v; want 2", n, err)
	}
	if ip, _ := s.IdentityPoints(c, "lyon-07", "atm-1", "p-1", time.Time{}); len(ip) != 0 {
		t.Errorf("p-1's series: %d points left", len(ip))
	}
	if ip, _ := s.IdentityPoints(c, "lyon-07", "atm-1", "p-2", time.Time{}); len(ip) != 2 {
		t.Errorf("p-2's series: %d points, want 2", len(ip))
	}
	if ip, _ := s.IdentityPoints(c, "lyon-07", "atm-10", "p-1", time.Time{}); len(ip) != 1 {
		t.Errorf("p-1 of another device: %d points, want 1", len(ip))
	}
	d, err := s.Device(c, "lyon-07", "atm-1")
	if err != nil {
		t.Fatal(err)
	}
	if d.OpenAlerts != 1 || d.Summary == nil || len(d.Summary.Identities) != 1 || d.Summary.Identities[0].ID != "p-2" {
		t.Errorf("device after purge: %d open alerts, summary %+v; want 1 and p-2 alone", d.OpenAlerts, d.Summary)
	}
	all, err := s.Alerts(c, storage.AlertFilter{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range all {
		if a.IdentityID == "p-1" {
			t.Errorf("alert %s of the purged identity still listed", a.AlertKey)
		}
	}
	if len(all) != 1 {
		t.Errorf("alerts after purge: %d, want a-3 alone", len(all))
	}
	held, err := s.Rejects(c, 100)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, r := range held {
		left = append(left, r.Device+" "+r.Payload)
	}
	if want := []string{`atm-10 {"identity_id":"p-1"}`, `atm-1 {"identity_id":"p-10"}`}; !slices.Equal(left, want) {
		t.Errorf("rejects after the purge of p-1 on atm-1: %q, want %q", left, want)
	}
	wantNote := storage.PurgeNote(storage.IdentityPurge{Site: "lyon-07", Device: "atm-1", Identity: "p-1"}, 2)
	if audit, _ := s.Audit(c, 1); len(audit) != 1 || audit[0].Action != storage.ActionPurgeIdentity || audit[0].Note != wantNote ||
		strings.Contains(audit[0].Note, "p-1") {
		t.Errorf("audit: %+v, want the note %q (the identity not named)", audit, wantNote)
	}
}

// An analyst's split and merge are audited (who, role, when, device,
// identities, how many visits, the command's id), newest first: the
// request before it is sent, then its outcome (applied, refused with the
// reason, no usable answer, not sent); a request without outcome reads as
// pending; a change is announced so the settings page refreshes; a
// correction without user, action or outcome is refused.
func corrections(t *testing.T, s storage.Store) {
	c := ctx(t)
	ch, cancel := s.Subscribe()
	defer cancel()
	at := T0
	next := func(x storage.Correction) storage.Correction {
		at = at.Add(time.Minute)
		x.At = at
		return x
	}
	split := storage.Correction{Site: "lyon-07", Device: "atm-1", Action: storage.ActionSplitIdentity, Outcome: storage.OutcomeRequested,
		Identity: "p-1", Visits: 2, MessageID: "f-1", User: "ana", Role: "analyst", Remote: "10.0.0.7:5000"}
	splitDone := split
	splitDone.Outcome, splitDone.Other = storage.OutcomeApplied, "p-new"
	merge := storage.Correction{Site: "lyon-07", Device: "atm-1", Action: storage.ActionMergeIdentity, Outcome: storage.OutcomeRequested,
		Identity: "p-2", Other: "p-1", MessageID: "f-2", User: "ana", Role: "analyst"}
	mergeDone := merge
	mergeDone.Outcome, mergeDone.Visits = storage.OutcomeApplied, 5
	unknown := merge
	unknown.Outcome, unknown.Identity, unknown.MessageID = storage.OutcomeUnknown, "p-3", "f-3"
	refused := merge
	refused.Outcome, refused.Identity, refused.MessageID, refused.Reason = storage.OutcomeRefused, "p-4", "f-4", "no identity p-4\n"
	notSent := split
	notSent.Outcome, notSent.MessageID, notSent.Reason = storage.OutcomeNotSent, "f-5", "not connected to the broker"
	pending := split
	pending.MessageID = "f-6"
	unknownReq, refusedReq, notSentReq := unknown, refused, notSent
	unknownReq.Outcome, refusedReq.Outcome, notSentReq.Outcome = storage.OutcomeRequested, storage.OutcomeRequested, storage.OutcomeRequested
	for _, x := range []storage.Correction{split, splitDone, merge, mergeDone, unknownReq, unknown, refusedReq, refused, notSentReq, notSent, pending} {
		if err := s.RecordCorrection(c, next(x)); err != nil {
			t.Fatal(err)
		}
	}
	for _, bad := range []storage.Correction{{Site: "s", Device: "d", Identity: "p", Action: "rename", Outcome: storage.OutcomeApplied, User: "u", At: T0},
		{Site: "s", Device: "d", Identity: "p", Action: storage.ActionSplitIdentity, Outcome: storage.OutcomeApplied, At: T0},
		{Site: "s", Device: "d", Identity: "p", Action: storage.ActionSplitIdentity, User: "u", At: T0},
		{Site: "s", Device: "d", Identity: "p", Action: storage.ActionSplitIdentity, Outcome: storage.OutcomeRequested, User: "u", At: T0}} {
		if err := s.RecordCorrection(c, bad); err == nil {
			t.Errorf("correction %+v accepted", bad)
		}
	}
	audit, err := s.Audit(c, 20)
	if err != nil || len(audit) != 11 {
		t.Fatalf("audit: %d entries, %v; want 11", len(audit), err)
	}
	got := audit[10]
	if got.Action != storage.ActionSplitIdentity || got.User != "ana" || got.Role != "analyst" || got.Remote != "10.0.0.7:5000" ||
		!got.At.Equal(T0.Add(time.Minute)) || got.Key != (storage.AlertKey{Site: "lyon-07", Device: "atm-1"}) ||
		got.Note != "requested: 2 visits of p-1 to split off (command f-1)" {
		t.Errorf("split requested audited as %+v", got)
	}
	want := []string{
		"requested: 2 visits of p-1 to split off (command f-6)",
		"not sent, nothing changed: 2 visits of p-1 to split off: not connected to the broker (command f-5)",
		"requested: 2 visits of p-1 to split off (command f-5)",
		"refused by the device, nothing changed: p-4 into p-1: no identity p-4  (command f-4)",
		"requested: p-4 into p-1 (command f-4)",
		"p-3 into p-1: no usable answer from the device (it may have applied it) (command f-3)",
		"requested: p-3 into p-1 (command f-3)",
		"p-2 merged into p-1: 5 visits moved (command f-2)",
		"requested: p-2 into p-1 (command f-2)",
		"2 visits of p-1 split off into p-new (command f-1)",
	}
	for i, w := range want {
		if audit[i].Note != w {
			t.Errorf("audit[%d] note %q, want %q", i, audit[i].Note, w)
		}
	}
	if p := storage.PendingCorrections(audit); len(p) != 1 || !p[audit[0].ID] {
		t.Errorf("pending corrections %v, want only the request of f-6 (audit id %d)", p, audit[0].ID)
	}
	select {
	case got := <-ch:
		if got.Site != "lyon-07" || got.Device != "atm-1" {
			t.Errorf("change %+v", got)
		}
	case <-time.After(5 * time.Second):
		t.Error("no change announced for a correction")
	}
}

// An administrator removes a decommissioned device: refused while it is
// online or has active alerts; then its record, dedup records and series
// go, its alerts stay, and the audit log says who removed it.
func removeDevice(t *testing.T, s storage.Store) {
	c := ctx(t)
	if _, err := s.Apply(c, []storage.Message{
		Summary("lyon-07", "atm-1", 1, T0, 3, "p-1", "p-2"),
		Summary("lyon-07", "atm-1", 2, T0.Add(time.Minute), 3, "p-1"),
		Alert("lyon-07", "atm-1", 3, T0.Add(2*time.Minute), "a-1", "p-1", 6),
		Summary("lyon-07", "atm-10", 1, T0, 3, "p-1"), // shares atm-1's prefix
	}); err != nil {
		t.Fatal(err)
	}
	online := wire.Status{Envelope: wire.NewEnvelope("lyon-07", "atm-10", T0), State: wire.StateOnline}
	if err := s.PutStatus(c, storage.Status{Site: "lyon-07", Device: "atm-10", Received: T0, Status: online}); err != nil {
		t.Fatal(err)
	}
	rm := func(dev string) error {
		return s.RemoveDevice(c, storage.Removal{Site: "lyon-07", Device: dev, User: "root", Role: "admin", Remote: "10.0.0.9", At: T0.Add(time.Hour)})
	}
	if err := rm("atm-404"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("remove an unknown device: %v, want ErrNotFound", err)
	}
	if err := rm("atm-10"); !errors.Is(err, storage.ErrDeviceOnline) || !errors.Is(err, storage.ErrState) {
		t.Errorf("remove an online device: %v, want ErrDeviceOnline (ErrState)", err)
	}
	if err := rm("atm-1"); !errors.Is(err, storage.ErrActiveAlerts) || !errors.Is(err, storage.ErrState) {
		t.Errorf("remove a device with an active alert: %v, want ErrActiveAlerts (ErrState)", err)
	}
	k := storage.AlertKey{Site: "lyon-07", Device: "atm-1", AlertID: "a-1"}
	if _, err := s.Act(c, storage.Action{Key: k, Action: storage.ActionResolve, User: "ana", At: T0.Add(30 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if err := rm("atm-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Device(c, "lyon-07", "atm-1"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("removed device still there: %v", err)
	}
	if sp, _ := s.Summaries(c, "lyon-07", "atm-1", time.Time{}); len(sp) != 0 {
		t.Errorf("removed device's series: %d points left", len(sp))
	}
	if ip, _ := s.IdentityPoints(c, "lyon-07", "atm-1", "p-1", time.Time{}); len(ip) != 0 {
		t.Errorf("removed device's identity series: %d points left", len(ip))
	}
	if a, err := s.Alert(c, k); err != nil || a.State != storage.AlertResolved {
		t.Errorf("removed device's resolved alert: %+v, %v; want kept", a, err)
	}
	if d, err := s.Device(c, "lyon-07", "atm-10"); err != nil || d.Unique != 1 {
		t.Errorf("the other device: %+v, %v; want untouched", d, err)
	}
	if sp, _ := s.Summaries(c, "lyon-07", "atm-10", time.Time{}); len(sp) != 1 {
		t.Errorf("the other device's series: %d points, want 1", len(sp))
	}
	audit, err := s.Audit(c, 1)
	if err != nil || len(audit) != 1 || audit[0].Action != storage.ActionRemoveDevice || audit[0].User != "root" ||
		audit[0].Key.Device != "atm-1" || audit[0].Remote != "10.0.0.9" {
		t.Errorf("audit after removal: %+v, %v", audit, err)
	}
	// An erasure reaches the alerts a removed device left.
	if n, err := s.PurgeIdentity(c, storage.IdentityPurge{Site: "lyon-07", Device: "atm-1", Identity: "p-1", User: "root", At: T0.Add(2 * time.Hour)}); err != nil || n != 1 {
		t.Errorf("erasure on a removed device: %d alerts, %v; want its 1 alert", n, err)
	}
	if _, err := s.Alert(c, k); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("the erased identity's alert on the removed device: %v, want gone", err)
	}
	// The device sends again (its agent was not stopped for good): it is
	// a device from scratch, its old message ids no longer known.
	if fresh, err := s.Apply(c, []storage.Message{Summary("lyon-07", "atm-1", 2, T0.Add(time.Minute), 3, "p-1")}); err != nil || !fresh[0] {
		t.Errorf("a message of the removed device: fresh %v, %v", fresh, err)
	}
	// An online device not heard from for longer than StaleAfter (the
	// pages' stale) is removed as an offline one is; one heard from
	// within it is not. The audit log says it was removed stale.
	rmStale := func(after time.Duration) error {
		return s.RemoveDevice(c, storage.Removal{Site: "lyon-07", Device: "atm-10", User: "root", Role: "admin", At: T0.Add(time.Hour), StaleAfter: after})
	}
	if err := rmStale(2 * time.Hour); !errors.Is(err, storage.ErrDeviceOnline) || !strings.Contains(err.Error(), "last heard from 59m59s ago") {
		t.Errorf("remove an online device heard from 59m59s ago, stale after 2h: %v, want ErrState saying when it was heard from", err)
	}
	if err := rmStale(30 * time.Minute); err != nil {
		t.Fatalf("remove an online device heard from 59m59s ago, stale after 30m: %v", err)
	}
	if _, err := s.Device(c, "lyon-07", "atm-10"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("the stale device removed is still there: %v", err)
	}
	if audit, err := s.Audit(c, 1); err != nil || len(audit) != 1 || audit[0].Key.Device != "atm-10" ||
		audit[0].Note != "stale: its last status said online, last heard from "+T0.Add(time.Second).Format(time.RFC3339) {
		t.Errorf("audit of the stale removal: %+v, %v", audit, err)
	}
}

// alertListings checks every kind of alert listing, and the open counts,
// against the same computed from each alert read on its own, through
// raises, acknowledgements, resolutions and a prune; and pages through
// the alerts by cursor while more are raised, newer and older.
func alertListings(t *testing.T, s storage.Store) {
	c := ctx(t)
	rng := rand.New(rand.NewPCG(1, 2))
	var keys []storage.AlertKey
	devs := [][2]string{{"paris-01", "atm-1"}, {"paris-01", "atm-10"}, {"paris-01x", "atm-1"}, {"lyon-07", "atm-2"}}
	seqs := map[[2]string]uint64{}
	raise := func(n int, from time.Time) {
		var msgs []storage.Message
		for range n {
			d := devs[rng.IntN(len(devs))]
			seqs[d]++
			// Whole minutes: many alerts share a raised time.
			ts := from.Add(time.Duration(rng.IntN(40)) * time.Minute)
			id := fmt.Sprintf("a-%d-%d", seqs[d], rng.IntN(1000))
			m := Alert(d[0], d[1], seqs[d], ts, id, fmt.Sprintf("p-%d", rng.IntN(5)), 6)
			// Received in another order than raised (outboxes after
			// outages), in whole seconds: many share a time.
			m.Received = from.Add(time.Duration(rng.IntN(40*60)) * time.Second)
			msgs = append(msgs, m)
			keys = append(keys, storage.AlertKey{Site: d[0], Device: d[1], AlertID: id})
		}
		if _, err := s.Apply(c, msgs); err != nil {
			t.Fatal(err)
		}
	}
	want := func(f storage.AlertFilter) []storage.AlertKey {
		var all []storage.Alert
		for _, k := range keys {
			a, err := s.Alert(c, k)
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, a)
		}
		return Listing(all, f)
	}
	check := func(stage string) {
		t.Helper()
		mid := storage.AlertCursor{Order: storage.ByRaised, At: T0.Add(20 * time.Minute), Key: storage.AlertKey{Site: "paris-01", Device: "atm-1", AlertID: "a-5"}}
		midv := storage.AlertCursor{Order: storage.ByReceived, At: T0.Add(20 * time.Minute), Key: storage.AlertKey{Site: "paris-01", Device: "atm-1", AlertID: "a-5"}}
		v := storage.ByReceived
		// Users' scopes: "paris-01" is not "paris-01x"; a prefix is.
		exact, prefix, mixed := mustSites(t, "paris-01"), mustSites(t, "paris-*"), mustSites(t, "lyon-07", "paris-01x")
		for _, f := range []storage.AlertFilter{
			{}, {Active: true}, {State: storage.AlertOpen}, {State: storage.AlertAcknowledged}, {State: storage.AlertResolved},
			{Site: "paris-01"}, {Site: "paris-01", Active: true}, {Site: "paris-01", Device: "atm-1"},
			{Site: "paris-01", Device: "atm-1", State: storage.AlertResolved}, {IdentityID: "p-2", Limit: 3},
			{Since: T0.Add(25 * time.Minute)}, {Since: T0.Add(25 * time.Minute), Active: true},
			{Limit: 5, Offset: 7}, {After: &mid}, {After: &mid, Limit: 4}, {After: &mid, Active: true, Site: "paris-01"},
			{After: &mid, Site: "paris-01", Device: "atm-10"}, {After: &mid, Since: T0.Add(5 * time.Minute), Offset: 2},
			{Order: v}, {Order: v, Limit: 9}, {Order: v, After: &midv}, {Order: v, After: &midv, Limit: 5, Active: true},
			{Order: v, ReceivedSince: T0.Add(30 * time.Minute)}, {Order: v, ReceivedSince: T0.Add(10 * time.Minute), After: &midv},
			{Order: v, Site: "paris-01", Device: "atm-1", After: &midv}, {ReceivedSince: T0.Add(30 * time.Minute)},
			{Sites: exact}, {Sites: prefix, Limit: 5, Offset: 3}, {Sites: mixed, Active: true}, {Sites: exact, After: &mid, Limit: 4},
			{Sites: mixed, State: storage.AlertOpen, Limit: 3}, {Sites: prefix, Since: T0.Add(25 * time.Minute)},
			{Order: v, Sites: prefix, After: &midv, Limit: 5}, {Order: v, Sites: mixed, Limit: 6, Offset: 2},
			{Sites: exact, Site: "lyon-07"}, {Sites: mixed, Site: "paris-01x", Device: "atm-1"}, {Sites: exact, Site: "paris-01", Device: "atm-10", Active: true},
		} {
			got, err := s.Alerts(c, f)
			if err != nil {
				t.Fatal(err)
			}
			if gk, w := Keys(got), want(f); !slices.Equal(gk, w) {
				t.Errorf("%s: Alerts(%+v) = %d alerts %v, want %d %v", stage, f, len(gk), gk, len(w), w)
			}
		}
		for _, d := range devs {
			n := len(want(storage.AlertFilter{Site: d[0], Device: d[1], Active: true, Limit: 1 << 20}))
			dev, err := s.Device(c, d[0], d[1])
			if err != nil {
				t.Fatal(err)
			}
			if dev.OpenAlerts != n {
				t.Errorf("%s: Device(%s/%s).OpenAlerts = %d, want %d", stage, d[0], d[1], dev.OpenAlerts, n)
			}
		}
		all, err := s.Devices(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, dev := range all {
			if n := len(want(storage.AlertFilter{Site: dev.Site, Device: dev.Device, Active: true, Limit: 1 << 20})); dev.OpenAlerts != n {
				t.Errorf("%s: Devices: %s/%s has %d open alerts, want %d", stage, dev.Site, dev.Device, dev.OpenAlerts, n)
			}
		}
	}
	raise(60, T0)
	check("raised")
	for i, k := range keys {
		switch i % 3 {
		case 0:
			if _, err := s.Act(c, storage.Action{Key: k, Action: storage.ActionAck, User: "ana", At: T0.Add(time.Hour)}); err != nil {
				t.Fatal(err)
			}
		case 1:
			if i%2 == 1 {
				if _, err := s.Act(c, storage.Action{Key: k, Action: storage.ActionResolve, User: "ana", At: T0.Add(time.Duration(i) * time.Hour)}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	check("acted")
	// Resolved alerts resolved more than 30 days before now go.
	now := T0.Add(30*24*time.Hour + 20*time.Hour)
	st, err := s.Prune(c, now, storage.Retention{History: 365 * 24 * time.Hour, Alerts: 30 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if st.Alerts == 0 {
		t.Fatal("prune deleted no alert: the test needs some")
	}
	keys = slices.DeleteFunc(keys, func(k storage.AlertKey) bool {
		_, err := s.Alert(c, k)
		return errors.Is(err, storage.ErrNotFound)
	})
	check("pruned")

	// Paging by cursor while alerts are raised: every alert listed at the
	// start comes exactly once, in order.
	first := want(storage.AlertFilter{Limit: 1 << 20})
	seen := map[storage.AlertKey]int{}
	var order []storage.AlertKey
	var after *storage.AlertCursor
	for page := 0; ; page++ {
		got, err := s.Alerts(c, storage.AlertFilter{Limit: 7, After: after})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range got {
			seen[a.AlertKey]++
			order = append(order, a.AlertKey)
		}
		if len(got) < 7 {
			break
		}
		cur := storage.AlertFilter{}.CursorOf(got[len(got)-1])
		after = &cur
		if page < 4 {
			raise(3, T0.Add(-time.Hour)) // older than every listed alert: comes in later pages
			raise(3, T0.Add(time.Hour))  // newer: not in this paging
		}
	}
	for _, k := range first {
		if seen[k] != 1 {
			t.Errorf("cursor paging: %s listed %d times, want once", k, seen[k])
		}
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("cursor paging: %s listed %d times", k, n)
		}
	}
	if w := want(storage.AlertFilter{Limit: 1 << 20, Since: T0.Add(-2 * time.Hour)}); len(order) != len(w)-12 {
		t.Errorf("cursor paging listed %d alerts, want the %d before and the 12 older raised while paging: %d", len(order), len(first), len(w)-12)
	}
	check("paged")

	// Polling in receipt order: each poll lists what came after the last
	// alert of the one before; alerts that arrive between polls, with any
	// raised time, are each listed once.
	polled := map[storage.AlertKey]int{}
	var last *storage.AlertCursor
	for poll := range 12 {
		f := storage.AlertFilter{Order: storage.ByReceived, Limit: 10, After: last}
		got, err := s.Alerts(c, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range got {
			polled[a.AlertKey]++
		}
		if len(got) > 0 {
			cur := f.CursorOf(got[len(got)-1])
			last = &cur
		}
		if poll < 3 {
			// Received after everything so far, raised long before.
			var msgs []storage.Message
			for i := range 4 {
				m := Alert("lyon-07", "atm-2", uint64(5000+10*poll+i), T0.Add(-48*time.Hour), fmt.Sprintf("late-%d-%d", poll, i), "p-1", 6)
				m.Received = T0.Add(50*time.Hour + time.Duration(poll)*time.Minute)
				msgs = append(msgs, m)
				keys = append(keys, storage.AlertKey{Site: "lyon-07", Device: "atm-2", AlertID: m.Alert.AlertID})
			}
			if _, err := s.Apply(c, msgs); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, k := range keys {
		if polled[k] != 1 {
			t.Errorf("polling in receipt order listed %s %d times, want once", k, polled[k])
		}
	}
	check("polled")
}

// A device or alert the store does not hold is a *storage.NotFoundError
// naming only it, whatever the store wraps around it: the web answers that
// message, and the same one for what lies outside a user's sites.
func notFound(t *testing.T, s storage.Store) {
	c := ctx(t)
	if _, err := s.Apply(c, []storage.Message{Alert("lyon-07", "atm-1", 1, T0, "a-1", "p-1", 6)}); err != nil {
		t.Fatal(err)
	}
	k := storage.AlertKey{Site: "lyon-07", Device: "atm-1", AlertID: "a-404"}
	_, derr := s.Device(c, "lyon-07", "atm-404")
	_, aerr := s.Alert(c, k)
	_, xerr := s.Act(c, storage.Action{Key: k, Action: storage.ActionAck, User: "ana", At: T0})
	for _, tc := range []struct {
		err  error
		want string
	}{{derr, "device lyon-07/atm-404: not found"}, {aerr, "alert lyon-07/atm-1/a-404: not found"}, {xerr, "alert lyon-07/atm-1/a-404: not found"}} {
		var nf *storage.NotFoundError
		if !errors.As(tc.err, &nf) || nf.Error() != tc.want || !errors.Is(tc.err, storage.ErrNotFound) {
			t.Errorf("%v: want a NotFoundError %q", tc.err, tc.want)
		}
	}
}

func mustSites(t *testing.T, patterns ...string) *storage.Sites {
	t.Helper()
	s, err := storage.ParseSites(patterns)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A scoped listing (a user's sites) is filtered by the store's query, not
// after its limit: with most alerts, and the newest, of sites outside the
// scope, every page but the last is full, by offset and by cursor, in both
// orders and for active listings, and the pages together hold exactly the
// scope's alerts.
func scopedPaging(t *testing.T, s storage.Store) {
	c := ctx(t)
	var msgs []storage.Message
	in := map[storage.AlertKey]bool{}
	for i := range 120 {
		site, dev := "porto-9", "atm-1" // outside: newer, and more of them
		ts := T0.Add(time.Duration(i) * time.Minute)
		if i%6 == 0 {
			site, dev, ts = []string{"lisbon-01", "lisbon-airport", "faro"}[i/6%3], "atm-2", T0.Add(-time.Duration(i)*time.Minute)
		}
		m := Alert(site, dev, uint64(i+1), ts, fmt.Sprintf("a-%03d", i), "p-1", 6)
		msgs = append(msgs, m)
		if site != "porto-9" {
			in[storage.AlertKey{Site: site, Device: dev, AlertID: m.Alert.AlertID}] = true
		}
	}
	if _, err := s.Apply(c, msgs); err != nil {
		t.Fatal(err)
	}
	scope := mustSites(t, "lisbon-*", "faro")
	const per = 3
	for _, base := range []storage.AlertFilter{{}, {Active: true}, {Order: storage.ByReceived}} {
		base.Sites, base.Limit = scope, per
		seen := map[storage.AlertKey]bool{}
		var after *storage.AlertCursor
		for page := 0; ; page++ {
			byOffset, byCursor := base, base
			byOffset.Offset, byCursor.After = page*per, after
			got, err := s.Alerts(c, byOffset)
			if err != nil {
				t.Fatal(err)
			}
			cur, err := s.Alerts(c, byCursor)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(Keys(got), Keys(cur)) {
				t.Fatalf("%+v page %d: by offset %v, by cursor %v", base, page, Keys(got), Keys(cur))
			}
			for _, a := range got {
				if !in[a.AlertKey] || seen[a.AlertKey] {
					t.Fatalf("%+v page %d: %s listed (outside the scope, or twice)", base, page, a.AlertKey)
				}
				seen[a.AlertKey] = true
			}
			if len(got) < per {
				if len(seen) != len(in) {
					t.Errorf("%+v: page %d has %d alerts after %d listed, of the scope's %d: a short page before the end", base, page, len(got), len(seen), len(in))
				}
				break
			}
			last := base.CursorOf(got[len(got)-1])
			after = &last
		}
	}
}

// A revoked session stays revoked until its expiry; Prune then removes the
// revocation (and only expired ones). Another session id is not revoked.
func sessionRevocations(t *testing.T, s storage.Store) {
	c := ctx(t)
	if r, err := s.SessionRevoked(c, "nonce-a"); err != nil || r {
		t.Fatalf("before any sign-out: revoked=%v err=%v", r, err)
	}
	for _, r := range []struct {
		id      string
		expires time.Time
	}{{"nonce-a", T0.Add(12 * time.Hour)}, {"nonce-a", T0.Add(time.Hour)}, {"nonce-old", T0.Add(-time.Second)}, {"nonce-now", T0}} {
		if err := s.RevokeSession(c, r.id, r.expires); err != nil {
			t.Fatalf("revoke %s: %v", r.id, err)
		}
	}
	for id, want := range map[string]bool{"nonce-a": true, "nonce-old": true, "nonce-now": true, "nonce-b": false, "": false} {
		if got, err := s.SessionRevoked(c, id); err != nil || got != want {
			t.Errorf("%q revoked = %v (%v), want %v", id, got, err, want)
		}
	}
	st, err := s.Prune(c, T0, storage.Retention{History: 30 * 24 * time.Hour, Alerts: 30 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if st != (storage.PruneStats{Sessions: 1}) {
		t.Errorf("prune = %+v, want only the expired revocation", st)
	}
	for id, want := range map[string]bool{"nonce-a": true, "nonce-old": false, "nonce-now": true} {
		if got, err := s.SessionRevoked(c, id); err != nil || got != want {
			t.Errorf("after prune: %q revoked = %v (%v), want %v", id, got, err, want)
		}
	}
	// The later of two expiries is kept: at T0+2h nonce-a is still revoked.
	if st, err := s.Prune(c, T0.Add(2*time.Hour), storage.Retention{History: 30 * 24 * time.Hour, Alerts: 30 * 24 * time.Hour}); err != nil || st.Sessions != 1 {
		t.Errorf("prune at T0+2h = %+v %v, want 1 session (nonce-now)", st, err)
	}
	if got, _ := s.SessionRevoked(c, "nonce-a"); !got {
		t.Error("nonce-a revoked until T0+12h is no longer revoked at T0+2h")
	}
}

// A web user keeps their generation from sync to sync while named; one
// no longer named is forgotten, and named again gets a new generation.
func userGenerations(t *testing.T, s storage.Store) {
	c := ctx(t)
	sync := func(names ...string) map[string]string {
		t.Helper()
		g, err := s.SyncUsers(c, names)
		if err != nil {
			t.Fatalf("sync %v: %v", names, err)
		}
		if len(g) != len(names) {
			t.Fatalf("sync %v = %v, want a generation for each", names, g)
		}
		for _, n := range names {
			if len(g[n]) < 16 {
				t.Fatalf("sync %v: %q's generation %q", names, n, g[n])
			}
		}
		return g
	}
	first := sync("ana", "vic", "lou")
	if first["ana"] == first["vic"] || first["vic"] == first["lou"] {
		t.Errorf("two users share a generation: %v", first)
	}
	if again := sync("lou", "vic", "ana"); !maps.Equal(again, first) {
		t.Errorf("the same users again: %v, want %v", again, first)
	}
	sync("ana", "lou") // vic removed
	back := sync("ana", "vic", "lou", "moe")
	if back["vic"] == first["vic"] || back["ana"] != first["ana"] || back["lou"] != first["lou"] {
		t.Errorf("vic removed then added again: %v, first %v: want a new generation for vic only", back, first)
	}
	sync() // everyone removed
	if g := sync("ana"); g["ana"] == first["ana"] {
		t.Error("ana removed with everyone then added again keeps her generation")
	}
}

// Rejected payloads of a device that never sent a valid message are kept
// but create no device; a device that exists counts them.
func rejectsCreateNoDevice(t *testing.T, s storage.Store) {
	c := ctx(t)
	if _, err := s.Apply(c, []storage.Message{Summary("s", "real", 1, T0, 1)}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 30; i++ {
		r := storage.Reject{Received: T0, Topic: fmt.Sprintf("atm/rej/r%05d/summary", i), Site: "rej", Device: fmt.Sprintf("r%05d", i),
			Error: "not json", Payload: "not json"}
		if err := s.PutReject(c, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutReject(c, storage.Reject{Received: T0, Topic: "atm/s/real/summary", Site: "s", Device: "real", Error: "not json"}); err != nil {
		t.Fatal(err)
	}
	devs, err := s.Devices(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 1 || devs[0].Device != "real" || devs[0].Rejected != 1 {
		t.Fatalf("devices after rejects = %d (want only s/real with 1 reject): %+v", len(devs), devs[:min(len(devs), 2)])
	}
	if _, err := s.Device(c, "rej", "r00001"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("rejected-only device: %v, want not found", err)
	}
	rj, err := s.Rejects(c, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(rj) != 31 {
		t.Errorf("rejects kept = %d, want 31", len(rj))
	}
}

// A sequence restarted by the agent (seq back near 1, newer ts) replaces
// the latest summary and restarts the gap accounting; a late message of the
// old sequence (older ts) changes neither.
func seqRestart(t *testing.T, s storage.Store) {
	c := ctx(t)
	if _, err := s.Apply(c, []storage.Message{Summary("s", "d", 1000, T0, 7)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(c, []storage.Message{Summary("s", "d", 1, T0.Add(time.Hour), 3)}); err != nil {
		t.Fatal(err)
	}
	d, err := s.Device(c, "s", "d")
	if err != nil {
		t.Fatal(err)
	}
	if d.Summary == nil || d.Summary.Seq != 1 || d.Gaps() != 0 || d.FirstSeq != 1 || d.MaxSeq != 1 {
		t.Fatalf("after restart: summary seq %v, first %d max %d gaps %d; want seq 1, 1..1, 0 gaps", seqOf(d), d.FirstSeq, d.MaxSeq, d.Gaps())
	}
	if !d.SeqRestart.Equal(T0.Add(time.Hour)) {
		t.Errorf("seq restart = %v", d.SeqRestart)
	}
	// The old sequence's late message (seq 999, before the restart).
	if _, err := s.Apply(c, []storage.Message{Summary("s", "d", 999, T0.Add(-time.Minute), 9)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(c, []storage.Message{Summary("s", "d", 3, T0.Add(2*time.Hour), 4)}); err != nil {
		t.Fatal(err)
	}
	d, _ = s.Device(c, "s", "d")
	if d.Summary == nil || d.Summary.Seq != 3 || d.FirstSeq != 1 || d.MaxSeq != 3 || d.Gaps() != 1 {
		t.Fatalf("after restart: summary seq %v, first %d max %d gaps %d; want seq 3, 1..3, 1 gap", seqOf(d), d.FirstSeq, d.MaxSeq, d.Gaps())
	}
	// An ordinary late message (lower seq, older ts) is no restart.
	if _, err := s.Apply(c, []storage.Message{Summary("s", "d", 2, T0.Add(90*time.Minute), 4)}); err != nil {
		t.Fatal(err)
	}
	d, _ = s.Device(c, "s", "d")
	if d.Summary.Seq != 3 || d.FirstSeq != 1 || d.MaxSeq != 3 || d.Gaps() != 0 {
		t.Fatalf("late seq 2: summary seq %v, first %d max %d gaps %d", seqOf(d), d.FirstSeq, d.MaxSeq, d.Gaps())
	}
}

// One summary dated far past its receipt (a forged message, or an agent
// clock gone wrong) with a low seq: stored, but no restart, and the genuine
// messages after it still count and become the latest summary.
func tsAhead(t *testing.T, s storage.Store) {
	c := ctx(t)
	for seq := uint64(1); seq <= 3; seq++ {
		if _, err := s.Apply(c, []storage.Message{Summary("s", "d", seq, T0.Add(time.Duration(seq)*time.Minute), 10+int(seq))}); err != nil {
			t.Fatal(err)
		}
	}
	forged := Summary("s", "d", 0, time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC), 999)
	forged.Received = T0.Add(4 * time.Minute)
	if fresh, err := s.Apply(c, []storage.Message{forged}); err != nil || !fresh[0] {
		t.Fatalf("forged summary: fresh %v, %v; want stored", fresh, err)
	}
	for seq := uint64(4); seq <= 5; seq++ {
		if _, err := s.Apply(c, []storage.Message{Summary("s", "d", seq, T0.Add(time.Duration(seq)*time.Minute), 10+int(seq))}); err != nil {
			t.Fatal(err)
		}
	}
	d, err := s.Device(c, "s", "d")
	if err != nil {
		t.Fatal(err)
	}
	if d.Summary == nil || d.Summary.Seq != 5 || d.Summary.Totals.Visits.H1 != 15 || d.MaxSeq != 5 || !d.SeqRestart.IsZero() {
		t.Fatalf("after a summary dated 2099: latest seq %v, max seq %d, restart %v; want seq 5 (15 visits), max 5, no restart", seqOf(d), d.MaxSeq, d.SeqRestart)
	}
	if !d.LastTS.Equal(T0.Add(5 * time.Minute)) {
		t.Errorf("last ts = %v, want the genuine %v", d.LastTS, T0.Add(5*time.Minute))
	}
	// An honest restart (a new message id, seq from 1 again) still restarts.
	restart := Summary("s", "d", 1, T0.Add(time.Hour), 3)
	restart.MessageID, restart.Summary.MessageID = "after-reinstall", "after-reinstall"
	if _, err := s.Apply(c, []storage.Message{restart}); err != nil {
		t.Fatal(err)
	}
	if d, _ = s.Device(c, "s", "d"); d.Summary == nil || d.Summary.Seq != 1 || !d.SeqRestart.Equal(T0.Add(time.Hour)) {
		t.Fatalf("honest restart after it: latest seq %v, restart %v", seqOf(d), d.SeqRestart)
	}
}

func seqOf(d storage.Device) any {
	if d.Summary == nil {
		return nil
	}
	return d.Summary.Seq
}

// A store that writes statuses and rejects in batches gives the same
// result as one at a time.
func batchWrites(t *testing.T, s storage.Store) {
	bw, ok := s.(storage.BatchWriter)
	if !ok {
		t.Skip("store writes statuses one at a time")
	}
	c := ctx(t)
	var sts []storage.Status
	for i := 0; i < 50; i++ {
		st := wire.Status{Envelope: wire.NewEnvelope("s", fmt.Sprintf("d%02d", i%25), T0), State: wire.StateOnline}
		if i >= 25 {
			st.State = wire.StateOffline
		}
		sts = append(sts, storage.Status{Site: "s", Device: st.Device, Received: T0.Add(time.Duration(i) * time.Second), Status: st})
	}
	if err := bw.PutStatuses(c, sts); err != nil {
		t.Fatal(err)
	}
	rs := []storage.Reject{{Received: T0, Topic: "atm/s/d00/summary", Site: "s", Device: "d00", Error: "bad"},
		{Received: T0, Topic: "atm/s/d00/alert", Site: "s", Device: "d00", Error: "bad"},
		{Received: T0, Topic: "atm/x/ghost/alert", Site: "x", Device: "ghost", Error: "bad"}}
	if err := bw.PutRejects(c, rs); err != nil {
		t.Fatal(err)
	}
	devs, err := s.Devices(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 25 {
		t.Fatalf("devices = %d, want 25", len(devs))
	}
	for _, d := range devs {
		if d.State() != "offline" {
			t.Errorf("%s: state %s, want the last status (offline)", d.Device, d.State())
		}
		if want := map[bool]uint64{true: 2}[d.Device == "d00"]; d.Rejected != want {
			t.Errorf("%s: rejected %d, want %d", d.Device, d.Rejected, want)
		}
	}
	if rj, _ := s.Rejects(c, 10); len(rj) != 3 {
		t.Errorf("rejects = %d, want 3", len(rj))
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func dedupAndGaps(t *testing.T, s storage.Store) {
	c := ctx(t)
	changes, cancel := s.Subscribe()
	defer cancel()
	// seqs 1..10 with 4 and 7 missing, 5 delivered twice, in two batches.
	var batch1, batch2 []storage.Message
	for seq := uint64(1); seq <= 10; seq++ {
		if seq == 4 || seq == 7 {
			continue
		}
		m := Summary("lyon-07", "atm-1", seq, T0.Add(time.Duration(seq)*time.Minute), int(seq))
		if seq%3 == 0 {
			m = Alert("lyon-07", "atm-1", seq, T0.Add(time.Duration(seq)*time.Minute), fmt.Sprintf("a-%d", seq), "p-1", 6)
		}
		if seq <= 5 {
			batch1 = append(batch1, m)
		} else {
			batch2 = append(batch2, m)
		}
	}
	batch2 = append(batch2, batch1[3]) // seq 5 again
	// The broker's retained copy of a stored summary, given again at a
	// subscribe: not a fresh message, and not the device's duplicate.
	again := batch1[0]
	again.Retained = true
	batch2 = append(batch2, again)
	fresh, err := s.Apply(c, batch1)
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range fresh {
		if !f {
			t.Errorf("batch1[%d] reported duplicate", i)
		}
	}
	fresh, err = s.Apply(c, batch2)
	if err != nil {
		t.Fatal(err)
	}
	if fresh[len(fresh)-2] || fresh[len(fresh)-1] || !fresh[0] {
		t.Errorf("batch2 fresh = %v, want the last two (a redelivery, a retained copy) false", fresh)
	}
	d, err := s.Device(c, "lyon-07", "atm-1")
	if err != nil {
		t.Fatal(err)
	}
	if d.FirstSeq != 1 || d.MaxSeq != 10 || d.Unique != 8 || d.Duplicates != 1 || d.Gaps() != 2 {
		t.Errorf("device seq accounting: first=%d max=%d unique=%d dup=%d gaps=%d, want 1 10 8 1 2",
			d.FirstSeq, d.MaxSeq, d.Unique, d.Duplicates, d.Gaps())
	}
	if d.Summary == nil || d.Summary.Seq != 10 {
		t.Errorf("latest summary = %+v, want seq 10", d.Summary)
	}
	// A late message fills one hole; an older summary does not replace the latest.
	if _, err := s.Apply(c, []storage.Message{Summary("lyon-07", "atm-1", 7, T0, 99)}); err != nil {
		t.Fatal(err)
	}
	d, _ = s.Device(c, "lyon-07", "atm-1")
	if d.Gaps() != 1 || d.Summary.Seq != 10 {
		t.Errorf("after late seq 7: gaps=%d latest=%d, want 1 and 10", d.Gaps(), d.Summary.Seq)
	}
	if d.OpenAlerts != 3 {
		t.Errorf("open alerts = %d, want 3 (seqs 3, 6, 9)", d.OpenAlerts)
	}
	select {
	case ch := <-changes:
		if ch.Site != "lyon-07" || ch.Device != "atm-1" {
			t.Errorf("change = %+v", ch)
		}
	case <-time.After(5 * time.Second):
		t.Error("no change notification within 5s")
	}
	devs, err := s.Devices(c)
	if err != nil || len(devs) != 1 {
		t.Fatalf("devices = %v, %v", devs, err)
	}
	// A neighbour whose name extends this one's: its alerts are its own.
	if _, err := s.Apply(c, []storage.Message{Alert("lyon-07", "atm-10", 1, T0, "a-n", "p-n", 6)}); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Device(c, "lyon-07", "atm-10"); n.OpenAlerts != 1 {
		t.Errorf("atm-10 open alerts = %d, want 1", n.OpenAlerts)
	}
	if d, _ := s.Device(c, "lyon-07", "atm-1"); d.OpenAlerts != 3 {
		t.Errorf("atm-1 open alerts after atm-10's = %d, want 3", d.OpenAlerts)
	}
}

func alertWorkflow(t *testing.T, s storage.Store) {
	c := ctx(t)
	m := Alert("paris-01", "atm-9", 3, T0, "a-visits24h-p-2", "p-2", 6)
	if _, err := s.Apply(c, []storage.Message{m}); err != nil {
		t.Fatal(err)
	}
	// The same alert id raised again by a later message: one alert, count updated.
	m2 := Alert("paris-01", "atm-9", 4, T0.Add(time.Minute), "a-visits24h-p-2", "p-2", 8)
	if _, err := s.Apply(c, []storage.Message{m2, Alert("paris-01", "atm-9", 5, T0.Add(2*time.Minute), "a-other", "p-3", 5)}); err != nil {
		t.Fatal(err)
	}
	k := storage.AlertKey{Site: "paris-01", Device: "atm-9", AlertID: "a-visits24h-p-2"}
	a, err := s.Alert(c, k)
	if err != nil {
		t.Fatal(err)
	}
	if a.Count != 8 || a.Raises != 2 || a.State != storage.AlertOpen || a.MessageID != m.MessageID || a.IdentityID != "p-2" ||
		a.VisitID != "v3" || a.TxnID != "T 3" {
		t.Errorf("alert = %+v", a)
	}
	if _, err := s.Alert(c, storage.AlertKey{Site: "x", Device: "y", AlertID: "z"}); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("missing alert: err = %v, want ErrNotFound", err)
	}
	at := T0.Add(time.Hour)
	a, err = s.Act(c, storage.Action{Key: k, Action: storage.ActionAck, User: "ana", Role: "analyst", Note: "calling branch", Remote: "127.0.0.1", At: at})
	if err != nil {
		t.Fatal(err)
	}
	if a.State != storage.AlertAcknowledged || a.AckBy != "ana" || a.AckNote != "calling branch" || !a.AckAt.Equal(at) {
		t.Errorf("after ack: %+v", a)
	}
	if _, err := s.Act(c, storage.Action{Key: k, Action: storage.ActionAck, User: "bob", At: at}); !errors.Is(err, storage.ErrAcknowledged) || !errors.Is(err, storage.ErrState) {
		t.Errorf("second ack: err = %v, want ErrAcknowledged (ErrState)", err)
	}
	// ana's client retries her acknowledgement (its answer was lost): the
	// alert as it is, nothing recorded (the audit below holds 2 entries).
	if r, err := s.Act(c, storage.Action{Key: k, Action: storage.ActionAck, User: "ana", Note: "calling branch", At: at.Add(time.Second)}); err != nil ||
		r.State != storage.AlertAcknowledged || !r.AckAt.Equal(at) {
		t.Errorf("ana's repeated ack: %+v, %v; want the alert as acknowledged at %v", r, err, at)
	}
	if _, err := s.Act(c, storage.Action{Key: k, Action: storage.ActionResolve, User: "bob", Note: "known customer", At: at.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Act(c, storage.Action{Key: k, Action: storage.ActionResolve, User: "cyd", At: at}); !errors.Is(err, storage.ErrResolved) || !errors.Is(err, storage.ErrState) {
		t.Errorf("second resolve: err = %v, want ErrResolved (ErrState)", err)
	}
	if _, err := s.Act(c, storage.Action{Key: k, Action: storage.ActionAck, User: "cyd", At: at}); !errors.Is(err, storage.ErrResolved) {
		t.Errorf("ack of a resolved alert: err = %v, want ErrResolved", err)
	}
	if r, err := s.Act(c, storage.Action{Key: k, Action: storage.ActionResolve, User: "bob", At: at.Add(time.Hour)}); err != nil || r.ResolvedBy != "bob" ||
		!r.ResolvedAt.Equal(at.Add(time.Minute)) {
		t.Errorf("bob's repeated resolve: %+v, %v; want the alert as resolved", r, err)
	}
	if _, err := s.Act(c, storage.Action{Key: k, Action: "delete", User: "bob", At: at}); err == nil {
		t.Error("unknown action accepted")
	}
	// A redelivered raise does not reopen a resolved alert.
	if _, err := s.Apply(c, []storage.Message{Alert("paris-01", "atm-9", 6, T0.Add(3*time.Minute), "a-visits24h-p-2", "p-2", 9)}); err != nil {
		t.Fatal(err)
	}
	a, _ = s.Alert(c, k)
	if a.State != storage.AlertResolved || a.ResolvedBy != "bob" || a.ResolvedNote != "known customer" || a.AckBy != "ana" {
		t.Errorf("after resolve: %+v", a)
	}
	for _, tc := range []struct {
		f    storage.AlertFilter
		want int
	}{
		{storage.AlertFilter{}, 2},
		{storage.AlertFilter{Active: true}, 1},
		{storage.AlertFilter{State: storage.AlertResolved}, 1},
		{storage.AlertFilter{IdentityID: "p-3"}, 1},
		{storage.AlertFilter{Site: "lyon-07"}, 0},
		{storage.AlertFilter{Since: T0.Add(90 * time.Second)}, 1},
		{storage.AlertFilter{Limit: 1}, 1},
		{storage.AlertFilter{Limit: 1, Offset: 1}, 1},
		{storage.AlertFilter{Offset: 1}, 1},
		{storage.AlertFilter{Offset: 2}, 0},
		{storage.AlertFilter{Offset: 5}, 0},
	} {
		got, err := s.Alerts(c, tc.f)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != tc.want {
			t.Errorf("Alerts(%+v) = %d alerts, want %d", tc.f, len(got), tc.want)
		}
	}
	all, _ := s.Alerts(c, storage.AlertFilter{})
	if len(all) == 2 && all[0].AlertID != "a-other" {
		t.Errorf("alerts not newest first: %s, %s", all[0].AlertID, all[1].AlertID)
	}
	// Offset pages in the same order: the second alert is the one after the first.
	if second, _ := s.Alerts(c, storage.AlertFilter{Limit: 1, Offset: 1}); len(all) == 2 && (len(second) != 1 || second[0].AlertKey != all[1].AlertKey) {
		t.Errorf("Alerts(Limit 1, Offset 1) = %+v, want %s", second, all[1].AlertKey)
	}
	audit, err := s.Audit(c, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(audit) != 2 || audit[0].Action != storage.ActionResolve || audit[1].User != "ana" || audit[1].Note != "calling branch" ||
		audit[1].Remote != "127.0.0.1" || audit[1].Key != k {
		t.Errorf("audit = %+v", audit)
	}
}

func series(t *testing.T, s storage.Store) {
	c := ctx(t)
	var msgs []storage.Message
	for i := 0; i < 6; i++ {
		msgs = append(msgs, Summary("s", "d", uint64(i+1), T0.Add(time.Duration(i)*30*time.Minute), i, "p-a", "p-b"))
	}
	if _, err := s.Apply(c, msgs); err != nil {
		t.Fatal(err)
	}
	pts, err := s.Summaries(c, "s", "d", T0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(pts) != 4 || pts[0].Visits1h != 2 || pts[3].Visits1h != 5 || pts[3].Visits24h != 25 {
		t.Errorf("summary points = %+v", pts)
	}
	ip, err := s.IdentityPoints(c, "s", "d", "p-b", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ip) != 6 || ip[0].Visits.H24 != 3 || ip[0].DistinctCards.D7 != 3 {
		t.Errorf("identity points = %+v", ip)
	}
	if ip, _ := s.IdentityPoints(c, "s", "d", "p-", time.Time{}); len(ip) != 0 {
		t.Errorf("identity prefix p- matched %d points", len(ip))
	}
}

func statusAndRejects(t *testing.T, s storage.Store) {
	c := ctx(t)
	st := wire.Status{Envelope: wire.NewEnvelope("s", "d", T0), State: wire.StateOnline,
		Cameras: []wire.CameraHealth{{Name: "front", OK: false, Error: "no frames"}}, Outbox: &wire.OutboxStats{Depth: 7}}
	st.Seq = 12
	if err := s.PutStatus(c, storage.Status{Site: "s", Device: "d", Received: T0, Status: st}); err != nil {
		t.Fatal(err)
	}
	// The Last Will carries an older ts; arrival order wins.
	will := wire.Status{Envelope: wire.NewEnvelope("s", "d", T0.Add(-time.Hour)), State: wire.StateOffline}
	if err := s.PutStatus(c, storage.Status{Site: "s", Device: "d", Received: T0.Add(time.Minute), Status: will}); err != nil {
		t.Fatal(err)
	}
	d, err := s.Device(c, "s", "d")
	if err != nil {
		t.Fatal(err)
	}
	if d.State() != "offline" || d.CameraOK() != true || d.Backlog() != -1 {
		t.Errorf("after will: state=%s camOK=%v backlog=%d", d.State(), d.CameraOK(), d.Backlog())
	}
	if err := s.PutStatus(c, storage.Status{Site: "s", Device: "d", Received: T0.Add(2 * time.Minute), Status: st}); err != nil {
		t.Fatal(err)
	}
	d, _ = s.Device(c, "s", "d")
	if d.State() != "online" || d.CameraOK() || d.Backlog() != 7 || d.Behind() != 12 {
		t.Errorf("online: state=%s camOK=%v backlog=%d behind=%d", d.State(), d.CameraOK(), d.Backlog(), d.Behind())
	}
	big := make([]byte, 3*storage.MaxRejectPayload)
	for i := range big {
		big[i] = 'x'
	}
	if err := s.PutReject(c, storage.Reject{Received: T0, Topic: "atm/s/d/alert", Site: "s", Device: "d", Error: "bad", Payload: string(big)}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutReject(c, storage.Reject{Received: T0, Topic: "atm/bad", Error: "topic"}); err != nil {
		t.Fatal(err)
	}
	rj, err := s.Rejects(c, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(rj) != 2 || rj[0].Error != "topic" || len(rj[1].Payload) != storage.MaxRejectPayload {
		t.Errorf("rejects = %d, first %+v", len(rj), rj[0])
	}
	d, _ = s.Device(c, "s", "d")
	if d.Rejected != 1 {
		t.Errorf("device rejected = %d, want 1", d.Rejected)
	}
	if _, err := s.Device(c, "s", "nope"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("missing device: %v", err)
	}
}

func retention(t *testing.T, s storage.Store) {
	c := ctx(t)
	old := T0.Add(-40 * 24 * time.Hour)
	msgs := []storage.Message{
		Summary("s", "d", 1, old, 1, "p-a"),
		Alert("s", "d", 2, old, "a-old-resolved", "p-a", 6),
		Alert("s", "d", 3, old, "a-old-open", "p-a", 6),
		Summary("s", "d", 4, T0, 1, "p-a"),
	}
	if _, err := s.Apply(c, msgs); err != nil {
		t.Fatal(err)
	}
	k := storage.AlertKey{Site: "s", Device: "d", AlertID: "a-old-resolved"}
	if _, err := s.Act(c, storage.Action{Key: k, Action: storage.ActionResolve, User: "u", At: old.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutReject(c, storage.Reject{Received: old, Topic: "t", Error: "e"}); err != nil {
		t.Fatal(err)
	}
	st, err := s.Prune(c, T0, storage.Retention{History: 30 * 24 * time.Hour, Alerts: 30 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	want := storage.PruneStats{Messages: 3, Summaries: 1, IdentityPoints: 1, Alerts: 1, Rejects: 1, Audit: 1}
	if st != want {
		t.Errorf("prune = %+v, want %+v", st, want)
	}
	if _, err := s.Alert(c, storage.AlertKey{Site: "s", Device: "d", AlertID: "a-old-open"}); err != nil {
		t.Errorf("open alert pruned: %v", err)
	}
	d, _ := s.Device(c, "s", "d")
	if d.MaxSeq != 4 || d.Summary == nil {
		t.Errorf("device state lost by prune: %+v", d)
	}
	if st, _ := s.Prune(c, T0, storage.Retention{History: 30 * 24 * time.Hour, Alerts: 30 * 24 * time.Hour}); st != (storage.PruneStats{}) {
		t.Errorf("second prune deleted %+v", st)
	}
}

// SeedRealDevices writes the three real devices of the phantom-cleanup
// tests: lyon-07/atm-1 with a summary and a reject, atm-2 with only a
// status, atm-3 with only an alert.
func SeedRealDevices(t *testing.T, s storage.Store) {
	t.Helper()
	ctx := ctx(t)
	if _, err := s.Apply(ctx, []storage.Message{
		Summary("lyon-07", "atm-1", 1, T0, 3, "p-1"),
		Alert("lyon-07", "atm-3", 1, T0, "a-1", "p-1", 6),
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutReject(ctx, storage.Reject{Received: T0, Topic: "atm/lyon-07/atm-1/summary", Site: "lyon-07", Device: "atm-1", Error: "not json"}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutStatus(ctx, storage.Status{Site: "lyon-07", Device: "atm-2", Received: T0,
		Status: wire.Status{Envelope: wire.NewEnvelope("lyon-07", "atm-2", T0), State: wire.StateOnline}}); err != nil {
		t.Fatal(err)
	}
}

// CheckRealDevicesKept checks that after the cleanup the store holds the
// three devices of SeedRealDevices, unchanged, and not the phantom rej/r00001.
func CheckRealDevicesKept(t *testing.T, s storage.Store) {
	t.Helper()
	ctx := ctx(t)
	devs, err := s.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range devs {
		names = append(names, d.Site+"/"+d.Device)
	}
	if len(devs) != 3 || names[0] != "lyon-07/atm-1" || names[1] != "lyon-07/atm-2" || names[2] != "lyon-07/atm-3" {
		t.Fatalf("devices after open = %v, want the three real ones", names)
	}
	if devs[0].Rejected != 1 || devs[0].Summary == nil || devs[1].Status == nil || devs[2].OpenAlerts != 1 {
		t.Errorf("real devices changed: %+v", devs)
	}
	if _, err := s.Device(ctx, "rej", "r00001"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("phantom device after open: %v, want not found", err)
	}
}

// statusOrder: statuses are ordered by the agent's run (started_at), then
// by ts (storage.NextStatus): a replayed status of the run, or of an
// earlier run, and a replayed will, never replace the present one; a
// genuine will still makes the device offline; liveness is dated by the
// status's ts when it is earlier than its arrival.
func statusOrder(t *testing.T, s storage.Store) {
	c := ctx(t)
	status := func(run, ts time.Duration, state wire.State) wire.Status {
		st := wire.Status{Envelope: wire.NewEnvelope("s", "d", T0.Add(ts)), State: state, StartedAt: T0.Add(run)}
		st.MessageID = fmt.Sprintf("m-%v-%v-%s", run, ts, state)
		return st
	}
	steps := []struct {
		what string
		st   wire.Status
		recv time.Duration
		want wire.State
		ts   time.Duration // the ts of the status held after the step
	}{
		{"run 1: online", status(0, 10*time.Second, wire.StateOnline), 10 * time.Second, wire.StateOnline, 10 * time.Second},
		{"run 1: online again", status(0, 20*time.Second, wire.StateOnline), 20 * time.Second, wire.StateOnline, 20 * time.Second},
		{"run 1: its will (connection made at 5 s)", status(0, 5*time.Second, wire.StateOffline), 30 * time.Second, wire.StateOffline, 5 * time.Second},
		{"run 1: online of 20 s replayed", status(0, 20*time.Second, wire.StateOnline), time.Minute, wire.StateOffline, 5 * time.Second},
		{"run 1: online of 10 s replayed", status(0, 10*time.Second, wire.StateOnline), 2 * time.Minute, wire.StateOffline, 5 * time.Second},
		{"run 1: reconnected (its will made at 40 s)", status(0, 41*time.Second, wire.StateOnline), 41 * time.Second, wire.StateOnline, 41 * time.Second},
		{"run 1: first will replayed", status(0, 5*time.Second, wire.StateOffline), 3 * time.Minute, wire.StateOnline, 41 * time.Second},
		{"run 1: second will", status(0, 40*time.Second, wire.StateOffline), 4 * time.Minute, wire.StateOffline, 40 * time.Second},
		{"run 2: online", status(5*time.Minute, 5*time.Minute+time.Second, wire.StateOnline), 5*time.Minute + time.Second, wire.StateOnline, 5*time.Minute + time.Second},
		{"run 1: second will replayed", status(0, 40*time.Second, wire.StateOffline), 6 * time.Minute, wire.StateOnline, 5*time.Minute + time.Second},
		{"run 1: online replayed", status(0, 41*time.Second, wire.StateOnline), 6 * time.Minute, wire.StateOnline, 5*time.Minute + time.Second},
		{"run 2: stopped", status(5*time.Minute, 7*time.Minute, wire.StateStopped), 7 * time.Minute, wire.StateStopped, 7 * time.Minute},
		{"run 2: a will after its stop", status(5*time.Minute, 5*time.Minute, wire.StateOffline), 8 * time.Minute, wire.StateStopped, 7 * time.Minute},
		{"run 2: online replayed after its stop", status(5*time.Minute, 5*time.Minute+time.Second, wire.StateOnline), 8 * time.Minute, wire.StateStopped, 7 * time.Minute},
		{"run 3, started with its clock behind (before run 2), online since put right", status(time.Minute, 9*time.Minute, wire.StateOnline), 9 * time.Minute, wire.StateOnline, 9 * time.Minute},
		{"run 3: online again", status(time.Minute, 10*time.Minute, wire.StateOnline), 10 * time.Minute, wire.StateOnline, 10 * time.Minute},
		{"run 2: stopped replayed", status(5*time.Minute, 7*time.Minute, wire.StateStopped), 11 * time.Minute, wire.StateOnline, 10 * time.Minute},
	}
	for _, step := range steps {
		if err := s.PutStatus(c, storage.Status{Site: "s", Device: "d", Received: T0.Add(step.recv), Status: step.st, Authenticated: true}); err != nil {
			t.Fatal(err)
		}
		d, err := s.Device(c, "s", "d")
		if err != nil {
			t.Fatal(err)
		}
		if d.State() != string(step.want) || !d.Status.TS.Equal(T0.Add(step.ts)) {
			t.Errorf("%s: %s of %v, want %s of %v", step.what, d.State(), d.Status.TS.Sub(T0), step.want, step.ts)
		}
	}

	// Liveness: a live status is heard from at its arrival, even a minute
	// after its ts (an ATM whose clock runs behind); the broker's retained
	// copy received a minute after its ts at its ts; one dated ahead of
	// its arrival at its arrival, retained or not.
	for i, tc := range []struct {
		ts, recv, heard time.Duration
		retained        bool
	}{
		{10 * time.Minute, 11 * time.Minute, 11 * time.Minute, false},
		{10 * time.Minute, 11 * time.Minute, 10 * time.Minute, true},
		{12*time.Minute + time.Hour, 12 * time.Minute, 12 * time.Minute, false},
		{12*time.Minute + time.Hour, 12 * time.Minute, 12 * time.Minute, true},
	} {
		st := status(9*time.Minute, tc.ts, wire.StateOnline)
		if err := s.PutStatus(c, storage.Status{Site: "s", Device: fmt.Sprint("h", i), Received: T0.Add(tc.recv), Status: st, Retained: tc.retained}); err != nil {
			t.Fatal(err)
		}
		d, _ := s.Device(c, "s", fmt.Sprint("h", i))
		if !d.LastHeard().Equal(T0.Add(tc.heard)) {
			t.Errorf("status of %v received at %v (retained %v): last heard %v, want %v", tc.ts, tc.recv, tc.retained, d.LastHeard().Sub(T0), tc.heard)
		}
		if stale := d.Stale(T0.Add(tc.recv+30*time.Second), time.Minute); stale != (tc.heard < tc.recv) {
			t.Errorf("status of %v received at %v (retained %v): stale 30 s later (after 1m) = %v", tc.ts, tc.recv, tc.retained, stale)
		}
	}

	// In one batch (every agent reconnecting): the order holds within it.
	bw, ok := s.(storage.BatchWriter)
	if !ok {
		return
	}
	if err := bw.PutStatuses(c, []storage.Status{
		{Site: "s", Device: "b", Received: T0, Status: status(0, 10*time.Second, wire.StateOnline)},
		{Site: "s", Device: "b", Received: T0, Status: status(0, 5*time.Second, wire.StateOffline)},
		{Site: "s", Device: "b", Received: T0, Status: status(0, 10*time.Second, wire.StateOnline)},
	}); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.Device(c, "s", "b"); d.State() != "offline" {
		t.Errorf("batch: online, will, online replayed: %s, want offline", d.State())
	}
}
