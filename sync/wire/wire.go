// Package wire defines the versioned MQTT payloads the agent publishes
// (status, summary, alert, command reply) and accepts (command), the topic
// layout, and the helpers that finalise an outbox payload before sending.
//
// The JSON Schemas in schemas/ are the contract with the dashboards; they are
// embedded (see Schemas) and copied to docs/schemas by `go generate`.
package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/clip"
)

// SchemaVersion is the major version of the payloads that have not changed
// since the first contract (alert, reply) and the one NewEnvelope sets.
// Additive, optional fields keep a version; anything a consumer validating
// with the previous schema could reject or misread bumps it.
const SchemaVersion = 1

// Versions of the payloads that moved on. Status 2 adds health, reasons and
// identities; summary 2 adds the h1/h24/d7 count keys beside 1h/24h/7d (both
// rejected by the strict version 1 schemas, kept as *.v1.schema.json).
const (
	StatusSchemaVersion  = 2
	SummarySchemaVersion = 2
	StateSchemaVersion   = 1
)

// Versions lists the schema versions of one payload kind a reader of this
// build accepts (the current one last).
func Versions(kind string) []int {
	switch kind {
	case KindStatus, KindSummary:
		return []int{1, 2}
	case KindCommand:
		return []int{CommandSchemaVersion}
	}
	return []int{1}
}

// Envelope is carried by every message. The agent fills SchemaVersion, Device,
// Site and TS; the publisher fills Seq, MessageID and Historical (Finalize).
type Envelope struct {
	SchemaVersion int       `json:"schema_version"`
	MessageID     string    `json:"message_id"`
	Seq           uint64    `json:"seq"`
	Device        string    `json:"device"`
	Site          string    `json:"site"`
	TS            time.Time `json:"ts"`
	Historical    bool      `json:"historical"`
}

// NewEnvelope returns an envelope of the current schema version. Seq,
// MessageID and Historical are left for the publisher.
func NewEnvelope(site, device string, ts time.Time) Envelope {
	return Envelope{SchemaVersion: SchemaVersion, Device: device, Site: site, TS: ts.UTC()}
}

// State is the device availability published retained on the status topic.
type State string

const (
	StateOnline  State = "online"  // published on every (re)connect
	StateOffline State = "offline" // Last Will: the connection died
	StateStopped State = "stopped" // clean shutdown
)

// Status is the retained availability and health message. Status messages do
// not consume sequence numbers: Seq repeats the highest outbox sequence the
// broker has acknowledged so far (0 if none), so a dashboard can tell it
// missed messages up to that point.
type Status struct {
	Envelope
	State        State          `json:"state"`
	AgentVersion string         `json:"agent_version,omitempty"`
	Models       []string       `json:"models,omitempty"`
	StartedAt    time.Time      `json:"started_at,omitzero"`
	UptimeS      int64          `json:"uptime_s"`
	Cameras      []CameraHealth `json:"cameras,omitempty"`
	Outbox       *OutboxStats   `json:"outbox,omitempty"`
	// Health is "ok" or "degraded" (version 2); Reasons say why it is
	// degraded; Identities counts the identities the agent holds.
	Health     string   `json:"health,omitempty"`
	Reasons    []string `json:"reasons,omitempty"`
	Identities *int     `json:"identities,omitempty"`
}

// Limits of the strings and lists a status (and the state, which holds
// it) carries: the schemas' maxLength (counted in characters) and
// maxItems. Status.Fit holds a status to them.
const (
	MaxAgentVersion = 64
	MaxModelID      = 128
	MaxModels       = 16
	MaxCameras      = 16
	MaxCameraName   = 64
	MaxCameraError  = 256
	MaxReason       = 256
	MaxReasons      = 32
)

// Fit bounds the status's strings and lists to the schema's limits, so
// that no input (a long camera source, a long error from a driver, many
// reasons) makes the agent publish a status its own schema, and thus a
// reader validating with it, refuses. Texts are cut at a character
// boundary and end with "…"; a camera name keeps its end (clip.Tail: the
// distinctive part of a by-id path), everything else its start. Reasons
// past the 32nd are replaced by one saying how many were left out.
func (s *Status) Fit() {
	s.AgentVersion = clip.Head(s.AgentVersion, MaxAgentVersion)
	s.Models = slices.DeleteFunc(slices.Clone(s.Models), func(m string) bool { return m == "" })
	if len(s.Models) > MaxModels {
		s.Models = s.Models[:MaxModels]
	}
	for i, m := range s.Models {
		s.Models[i] = clip.Head(m, MaxModelID)
	}
	if len(s.Cameras) > MaxCameras {
		s.Cameras = s.Cameras[:MaxCameras]
	}
	s.Cameras = slices.Clone(s.Cameras)
	for i := range s.Cameras {
		c := &s.Cameras[i]
		if c.Name == "" {
			c.Name = fmt.Sprintf("camera %d", i+1)
		}
		c.Name = clip.Tail(c.Name, MaxCameraName)
		c.Error = clip.Head(c.Error, MaxCameraError)
	}
	if len(s.Reasons) > MaxReasons {
		more := len(s.Reasons) - (MaxReasons - 1)
		s.Reasons = append(slices.Clone(s.Reasons[:MaxReasons-1]), fmt.Sprintf("and %d more reasons", more))
	} else {
		s.Reasons = slices.Clone(s.Reasons)
	}
	for i, r := range s.Reasons {
		s.Reasons[i] = clip.Head(r, MaxReason)
	}
}

// Health values of Status.Health.
const (
	HealthOK       = "ok"
	HealthDegraded = "degraded"
)

// CameraHealth is one camera's state as seen by the agent.
type CameraHealth struct {
	Name      string    `json:"name"`
	OK        bool      `json:"ok"`
	Error     string    `json:"error,omitempty"`
	LastFrame time.Time `json:"last_frame,omitzero"`
	Reopens   int       `json:"reopens,omitempty"`
}

// OutboxStats reports the outbox depth and its exact drop counters.
type OutboxStats struct {
	Depth int `json:"depth"`
	// DroppedSummaries counts summaries replaced by a newer one (coalesced)
	// or dropped while the outbox was full.
	DroppedSummaries uint64 `json:"dropped_summaries"`
	// DroppedAlerts counts alerts dropped at the hard cap.
	DroppedAlerts uint64 `json:"dropped_alerts"`
	// DroppedOther counts any other kind dropped while full. Always
	// written since 2026-12-07 (omitted when 0 before: readers take a
	// missing one as 0).
	DroppedOther uint64 `json:"dropped_other"`
}

// WindowCounts holds one count per summary window. It is written with both
// key sets: "h1", "h24", "d7" (version 2: readable with dot notation, e.g.
// value_json.totals.visits.h24) and "1h", "24h", "7d" (version 1 readers).
// Reading accepts either; the h* keys win when both are present.
type WindowCounts struct {
	H1  int `json:"1h"`
	H24 int `json:"24h"`
	D7  int `json:"7d"`
}

type windowKeys struct {
	H1   int  `json:"1h"`
	H24  int  `json:"24h"`
	D7   int  `json:"7d"`
	NH1  *int `json:"h1,omitempty"`
	NH24 *int `json:"h24,omitempty"`
	ND7  *int `json:"d7,omitempty"`
}

// MarshalJSON writes both key sets.
func (w WindowCounts) MarshalJSON() ([]byte, error) {
	return json.Marshal(windowKeys{H1: w.H1, H24: w.H24, D7: w.D7, NH1: &w.H1, NH24: &w.H24, ND7: &w.D7})
}

// UnmarshalJSON reads either key set.
func (w *WindowCounts) UnmarshalJSON(b []byte) error {
	if v, ok := parseWindowCounts(b); ok {
		*w = v
		return nil
	}
	var k windowKeys
	if err := json.Unmarshal(b, &k); err != nil {
		return err
	}
	*w = WindowCounts{H1: k.H1, H24: k.H24, D7: k.D7}
	for _, x := range []struct {
		dst *int
		src *int
	}{{&w.H1, k.NH1}, {&w.H24, k.NH24}, {&w.D7, k.ND7}} {
		if x.src != nil {
			*x.dst = *x.src
		}
	}
	return nil
}

// parseWindowCounts reads the form agents write, an object of integers
// under the six exact keys, without reflection: it was three quarters of the
// allocations of decoding a summary (the fleet decodes one per device for
// its fleet page). Anything else (other keys or letter case, escapes,
// non-integers, null, bad JSON) gives ok false, for encoding/json to read
// or refuse. FuzzWindowCounts checks it agrees with encoding/json.
func parseWindowCounts(b []byte) (_ WindowCounts, ok bool) {
	var v1, v2 [3]int
	var has2 [3]bool
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return WindowCounts{}, false
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		i++
	} else {
		for {
			if i >= len(b) || b[i] != '"' {
				return WindowCounts{}, false
			}
			j := i + 1
			for j < len(b) && b[j] != '"' && b[j] != '\\' && b[j] >= 0x20 && b[j] < 0x80 {
				j++
			}
			if j >= len(b) || b[j] != '"' {
				return WindowCounts{}, false
			}
			key := b[i+1 : j]
			i = skipSpace(b, j+1)
			if i >= len(b) || b[i] != ':' {
				return WindowCounts{}, false
			}
			n, next, ok := parseJSONInt(b, skipSpace(b, i+1))
			if !ok {
				return WindowCounts{}, false
			}
			switch string(key) {
			case "1h":
				v1[0] = n
			case "24h":
				v1[1] = n
			case "7d":
				v1[2] = n
			case "h1":
				v2[0], has2[0] = n, true
			case "h24":
				v2[1], has2[1] = n, true
			case "d7":
				v2[2], has2[2] = n, true
			default:
				return WindowCounts{}, false
			}
			i = skipSpace(b, next)
			if i < len(b) && b[i] == ',' {
				i = skipSpace(b, i+1)
				continue
			}
			if i < len(b) && b[i] == '}' {
				i++
				break
			}
			return WindowCounts{}, false
		}
	}
	if skipSpace(b, i) != len(b) {
		return WindowCounts{}, false
	}
	for k := range v1 {
		if has2[k] {
			v1[k] = v2[k]
		}
	}
	return WindowCounts{H1: v1[0], H24: v1[1], D7: v1[2]}, true
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// parseJSONInt reads -?(0|[1-9][0-9]*) of at most 9 digits at b[i:] (an int on every platform), not
// followed by a fraction or exponent; it returns the index after it.
func parseJSONInt(b []byte, i int) (n, next int, ok bool) {
	neg := i < len(b) && b[i] == '-'
	if neg {
		i++
	}
	start := i
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		n = n*10 + int(b[i]-'0')
		i++
	}
	digits := i - start
	if digits == 0 || digits > 9 || (digits > 1 && b[start] == '0') {
		return 0, 0, false
	}
	if i < len(b) && (b[i] == '.' || b[i] == 'e' || b[i] == 'E') {
		return 0, 0, false
	}
	if neg {
		n = -n
	}
	return n, i, true
}

// IdentityCounts is one identity's activity. ID is a random per-device
// pseudonym; nothing biometric is ever put here.
type IdentityCounts struct {
	ID            string       `json:"id"`
	Visits        WindowCounts `json:"visits"`
	Masked        WindowCounts `json:"masked"`
	DistinctCards WindowCounts `json:"distinct_cards"`
	FirstSeen     time.Time    `json:"first_seen"`
	LastSeen      time.Time    `json:"last_seen"`
}

// Totals are device-wide counts per window.
type Totals struct {
	Visits     WindowCounts `json:"visits"`
	Identities WindowCounts `json:"identities"` // distinct identities seen
	Masked     WindowCounts `json:"masked"`
}

// Summary is the periodic counts message. It carries counts only: no
// embeddings, images or card data.
type Summary struct {
	Envelope
	Identities []IdentityCounts `json:"identities"`
	// IdentitiesOmitted counts active identities left out by the size cap
	// (the most active are kept).
	IdentitiesOmitted int          `json:"identities_omitted"`
	Faceless          WindowCounts `json:"faceless"`
	Totals            Totals       `json:"totals"`
}

// Alert is one raised alert, published once (at least once on the wire).
type Alert struct {
	Envelope
	AlertID    string `json:"alert_id"`
	Rule       string `json:"rule"`
	Kind       string `json:"kind"`
	IdentityID string `json:"identity_id,omitempty"`
	// VisitID and TxnID name the visit that raised the alert and its
	// transaction (optional fields, added within schema version 1).
	VisitID     string    `json:"visit_id,omitempty"`
	TxnID       string    `json:"txn_id,omitempty"`
	Window      string    `json:"window"`
	WindowStart time.Time `json:"window_start"`
	Count       int       `json:"count"`
	Threshold   int       `json:"threshold"`
	FirstSeen   time.Time `json:"first_seen"`
	LastSeen    time.Time `json:"last_seen"`
	Raised      time.Time `json:"raised"`
}

// DeviceState is the retained per-device state (topic "state"): the
// status fields plus the last summary's totals and the last alert sent, so
// a dashboard reads one device in one message. Its schema_version is
// StateSchemaVersion.
type DeviceState struct {
	Status
	Summary   *StateSummary `json:"summary,omitempty"`
	LastAlert *StateAlert   `json:"last_alert,omitempty"`
}

// StateSummary is what the state keeps of the last summary sent.
type StateSummary struct {
	TS                time.Time    `json:"ts"`
	Seq               uint64       `json:"seq"`
	Totals            Totals       `json:"totals"`
	Faceless          WindowCounts `json:"faceless"`
	IdentitiesOmitted int          `json:"identities_omitted"`
	IdentitiesListed  int          `json:"identities_listed"`
}

// StateAlert is what the state keeps of the last alert sent.
type StateAlert struct {
	AlertID    string    `json:"alert_id"`
	Rule       string    `json:"rule"`
	Kind       string    `json:"kind"`
	IdentityID string    `json:"identity_id,omitempty"`
	VisitID    string    `json:"visit_id,omitempty"`
	TxnID      string    `json:"txn_id,omitempty"`
	Window     string    `json:"window,omitempty"`
	Count      int       `json:"count"`
	Threshold  int       `json:"threshold"`
	Raised     time.Time `json:"raised"`
	Seq        uint64    `json:"seq"`
}

// MaxTxnID is the longest txn_id an alert carries (alert.schema.json).
const MaxTxnID = 64

// NewAlert converts a raised alert into its payload. Its texts are held to
// the schema's limits: the rule's name is cut at 128 characters (config
// allows 64), and a txn_id that is not 1 to 64 printable ASCII characters
// (the trigger refuses such ids, so none should arrive) is left out, as
// for a visit without one, rather than published for readers to refuse.
func NewAlert(env Envelope, a visit.Alert) Alert {
	if len(a.TxnID) > MaxTxnID || strings.ContainsFunc(a.TxnID, func(r rune) bool { return r < ' ' || r > '~' }) {
		a.TxnID = ""
	}
	a.Rule = clip.Head(a.Rule, 128)
	return Alert{
		Envelope:    env,
		AlertID:     a.ID,
		Rule:        a.Rule,
		Kind:        a.Kind,
		IdentityID:  a.IdentityID,
		VisitID:     a.VisitID,
		TxnID:       a.TxnID,
		Window:      a.Window,
		WindowStart: a.WindowStart.UTC(),
		Count:       a.Count,
		Threshold:   a.Threshold,
		FirstSeen:   a.FirstSeen.UTC(),
		LastSeen:    a.LastSeen.UTC(),
		Raised:      a.Raised.UTC(),
	}
}

// ErrPayload is wrapped by Finalize errors.
var ErrPayload = errors.New("invalid payload")

// Finalize sets "seq", "message_id" and "historical" in a JSON object
// payload, replacing any value already there. Keys come out sorted.
func Finalize(payload []byte, seq uint64, msgID string, historical bool) ([]byte, error) {
	return FinalizeStamp(payload, Stamp{Seq: seq, MessageID: msgID, Historical: historical})
}

// Stamp is what the publisher sets in an outbox payload when it publishes
// it. Site and Device, when not empty, replace the payload's "site" and
// "device": a payload queued before the device was renamed (device.id or
// device.site changed while messages waited in the outbox) names the
// device as the topic it is published on does, so a consumer that checks
// one against the other does not refuse it after the broker has
// acknowledged it (it would be lost).
type Stamp struct {
	Seq          uint64
	MessageID    string
	Historical   bool
	Site, Device string
}

// FinalizeStamp is Finalize with the device and site of st as well.
func FinalizeStamp(payload []byte, st Stamp) ([]byte, error) {
	seq, msgID, historical := st.Seq, st.MessageID, st.Historical
	if err := ValidateID(msgID, 128); err != nil {
		return nil, fmt.Errorf("finalize: message id: %w", err)
	}
	var obj map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	if err := dec.Decode(&obj); err != nil {
		return nil, fmt.Errorf("finalize: %w: %v", ErrPayload, err)
	}
	if obj == nil {
		return nil, fmt.Errorf("finalize: %w: not a JSON object", ErrPayload)
	}
	if dec.More() {
		return nil, fmt.Errorf("finalize: %w: trailing data", ErrPayload)
	}
	s, _ := json.Marshal(seq)
	id, _ := json.Marshal(msgID)
	h, _ := json.Marshal(historical)
	obj["seq"], obj["message_id"], obj["historical"] = s, id, h
	if st.Site != "" {
		obj["site"], _ = json.Marshal(st.Site)
	}
	if st.Device != "" {
		obj["device"], _ = json.Marshal(st.Device)
	}
	out, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("finalize: %w", err)
	}
	return out, nil
}

// ValidateID checks an identifier used in payloads (message ids, identity
// ids): 1..max characters of [A-Za-z0-9._:-].
func ValidateID(s string, max int) error {
	if s == "" {
		return errors.New("empty")
	}
	if len(s) > max {
		return fmt.Errorf("longer than %d bytes", max)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == ':', c == '-':
		default:
			return fmt.Errorf("invalid character %q at %d", c, i)
		}
	}
	return nil
}

// FitSummary returns a finalised summary payload of at most max bytes:
// when it is larger, the least active identities (the list is ordered most
// active first) are moved from "identities" to "identities_omitted" until
// it fits. dropped is how many were moved; ErrPayload when even an empty
// list does not fit or the payload is not a summary object.
func FitSummary(payload []byte, max int) (out []byte, dropped int, err error) {
	if len(payload) <= max {
		return payload, 0, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(payload, &obj); err != nil || obj == nil {
		return nil, 0, fmt.Errorf("fit summary: %w: %v", ErrPayload, err)
	}
	var ids []json.RawMessage
	var omitted int
	if err := json.Unmarshal(obj["identities"], &ids); err != nil {
		return nil, 0, fmt.Errorf("fit summary: %w: identities: %v", ErrPayload, err)
	}
	if raw, ok := obj["identities_omitted"]; ok {
		if err := json.Unmarshal(raw, &omitted); err != nil {
			return nil, 0, fmt.Errorf("fit summary: %w: identities_omitted: %v", ErrPayload, err)
		}
	}
	build := func(keep int) ([]byte, error) {
		list := ids[:keep]
		if list == nil {
			list = []json.RawMessage{}
		}
		obj["identities"], _ = json.Marshal(list)
		obj["identities_omitted"], _ = json.Marshal(omitted + len(ids) - keep)
		return json.Marshal(obj)
	}
	// The largest keep that fits: sizes grow with keep.
	lo, hi := -1, len(ids) // b(lo) fits (or lo == -1), b(hi) does not
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		b, err := build(mid)
		if err != nil {
			return nil, 0, fmt.Errorf("fit summary: %w", err)
		}
		if len(b) <= max {
			lo, out = mid, b
		} else {
			hi = mid
		}
	}
	if lo < 0 {
		return nil, 0, fmt.Errorf("fit summary: %w: %d bytes without any identity, limit %d", ErrPayload, len(payload), max)
	}
	return out, len(ids) - lo, nil
}
