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
	"time"

	"github.com/periocular/atm-agent/agent/visit"
)

// SchemaVersion is the major version of every payload defined here. Additive,
// optional fields keep it; anything a v1 consumer could misread bumps it.
const SchemaVersion = 1

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
}

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
	// DroppedOther counts any other kind dropped while full.
	DroppedOther uint64 `json:"dropped_other,omitempty"`
}

// WindowCounts holds one count per summary window.
type WindowCounts struct {
	H1  int `json:"1h"`
	H24 int `json:"24h"`
	D7  int `json:"7d"`
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

// NewAlert converts a raised alert into its payload.
func NewAlert(env Envelope, a visit.Alert) Alert {
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
