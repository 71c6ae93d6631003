// Package visit holds the domain types that flow between perception, the
// identity engine, the store and the MQTT sync: one card-insert visit and what
// was decided about it. It has no dependencies beyond the standard library so
// that every other package can share it without cgo.
package visit

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// MaskState says whether the customer's face was covered below the eyes.
type MaskState uint8

const (
	MaskUnknown MaskState = iota
	Unmasked
	Masked
)

func (m MaskState) String() string {
	switch m {
	case Unmasked:
		return "unmasked"
	case Masked:
		return "masked"
	default:
		return "unknown"
	}
}

// MarshalText makes MaskState readable in JSON and YAML.
func (m MaskState) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText parses "masked", "unmasked" or "unknown".
func (m *MaskState) UnmarshalText(b []byte) error {
	switch string(b) {
	case "masked", "true", "1":
		*m = Masked
	case "unmasked", "false", "0":
		*m = Unmasked
	case "unknown", "":
		*m = MaskUnknown
	default:
		return fmt.Errorf("mask state %q: want masked, unmasked or unknown", string(b))
	}
	return nil
}

// Outcome says what perception made of a visit's burst.
type Outcome uint8

const (
	// FaceFound: a usable face was found and embedded.
	FaceFound Outcome = iota
	// NoFace: no face at all in any frame (covered camera, customer turned away).
	NoFace
	// LowQuality: a face was seen but never passed the quality gate.
	LowQuality
	// CameraError: the camera gave no frames.
	CameraError
)

func (o Outcome) String() string {
	switch o {
	case FaceFound:
		return "face"
	case NoFace:
		return "noface"
	case LowQuality:
		return "lowquality"
	case CameraError:
		return "camera_error"
	}
	return fmt.Sprintf("outcome(%d)", uint8(o))
}

// Descriptor is what perception produces for one visit: a single
// L2-normalised template aggregated over the burst's best frames.
type Descriptor struct {
	Outcome   Outcome
	Embedding []float32 // nil unless Outcome == FaceFound
	Model     string    // embedder name in the model manifest
	Mask      MaskState
	MaskScore float32 // probability the face is masked, in [0,1]
	Quality   float32 // in [0,1]; higher is better
	Frames    int     // frames grabbed
	Used      int     // frames that contributed to the embedding
}

// Context is optional transaction context given by the ATM application.
// CardHash is a salted hash computed by the ATM application; the agent never
// sees a card number.
type Context struct {
	CardHash string `json:"card_hash,omitempty"`
	TxnID    string `json:"txn_id,omitempty"`
	// Coalesced are the txn_ids of later triggers folded into this visit
	// (a second card insert while it was queued), at most MaxCoalesced:
	// kept with the visit so that their retries after a restart are still
	// answered with this visit's id.
	Coalesced []string `json:"coalesced_txn_ids,omitempty"`
	// CoalescedCards are the card hashes of later triggers folded into
	// this visit that differ from CardHash (another card inserted while the
	// visit was queued), at most MaxCoalesced. They count for the
	// distinct-cards rules and summaries like CardHash: before, only the
	// first card hash was kept and the others were lost.
	CoalescedCards []string `json:"coalesced_card_hashes,omitempty"`
}

// Cards returns the distinct card hashes of the visit in their canonical
// form (CanonicalCard): CardHash, then the coalesced ones. The trigger
// sources store canonical hashes; a visit stored before they did may hold
// the same card in another letter case or in base64, and counts it once.
func (c Context) Cards() []string {
	var out []string
	for _, h := range append([]string{c.CardHash}, c.CoalescedCards...) {
		if h == "" {
			continue
		}
		if h = CanonicalCard(h); !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	return out
}

// MaxCoalesced bounds Context.Coalesced: a flood of triggers cannot grow a
// visit record without end.
const MaxCoalesced = 16

// Thresholds are the cosine-distance cuts under which two templates are the
// same person, by the mask states of the pair. The model manifest records
// them per embedder (calibrated) and the identity engine applies them.
type Thresholds struct {
	UU float64 `yaml:"uu" json:"uu"` // both unmasked (or unknown)
	MM float64 `yaml:"mm" json:"mm"` // both masked
	MU float64 `yaml:"mu" json:"mu"` // mixed; 0 or NaN: never match across mask states
}

// MUEnabled says whether masked and unmasked visits may ever match.
func (t Thresholds) MUEnabled() bool { return t.MU > 0 && !math.IsNaN(t.MU) }

// Member is one stored face visit as the identity engine rebuilds its
// clusters from it: the store reads them (store.Members), the engine takes
// them in a snapshot.
type Member struct {
	VisitID    string    `json:"visit_id"`
	Time       time.Time `json:"time"`
	Embedding  []float32 `json:"embedding"`
	Model      string    `json:"model,omitempty"` // the template's model tag
	Mask       MaskState `json:"mask"`
	Quality    float32   `json:"quality,omitempty"`
	IdentityID string    `json:"identity_id"`
}

// Trigger is one card insert (or the ATM application asking for a visit)
// as a trigger source reports it and the agent queues it.
type Trigger struct {
	// ID, when set, becomes the visit id: a trigger replayed after a crash
	// is then stored once (the store refuses a duplicate visit id). The
	// hardware sources draw a random one.
	ID      string
	Time    time.Time // zero: the agent's clock when it receives the trigger
	Source  string    // "gpio", "socket", "replay", ...
	Context Context
}

// Admission is what the consumer of a trigger made of it, for a source that
// answers a client (the HTTP endpoint).
type Admission struct {
	// ID is the id the visit will be stored under: the trigger's own, or
	// that of the queued visit it was coalesced into.
	ID string
	// Coalesced: the trigger joined an already-queued visit (ID is that
	// visit's) and starts no visit of its own.
	Coalesced bool
	// Refused: the consumer was busy and no visit was started.
	Refused bool
	// Full, with Refused: the trigger would have joined the queued visit,
	// but that visit holds MaxCoalesced txn_ids (or card hashes) already,
	// and this trigger's would not have been stored.
	Full bool
}

// Visit is one card-insert event after perception.
type Visit struct {
	ID      string // random, unique per device
	Seq     uint64 // monotonically increasing per device
	Time    time.Time
	Trigger string // "gpio", "socket", "replay", ...
	Context Context
	Descriptor
	IdentityID string  // assigned identity, "" for faceless visits
	Distance   float32 // distance to the identity's template at assignment
}

// Alert is one raised alert. ID is stable: the same rule, identity and window
// always give the same ID, so re-evaluating never raises it twice.
type Alert struct {
	ID          string    `json:"id"`
	Rule        string    `json:"rule"`
	Kind        string    `json:"kind"` // "visits", "distinct_cards", "faceless"
	IdentityID  string    `json:"identity_id,omitempty"`
	VisitID     string    `json:"visit_id,omitempty"` // the visit whose evaluation raised it
	TxnID       string    `json:"txn_id,omitempty"`   // that visit's transaction id, if the ATM gave one
	Window      string    `json:"window"`             // rule window as a duration, e.g. "24h0m0s"
	WindowStart time.Time `json:"window_start"`
	Count       int       `json:"count"`
	Threshold   int       `json:"threshold"`
	FirstSeen   time.Time `json:"first_seen"`
	LastSeen    time.Time `json:"last_seen"`
	Raised      time.Time `json:"raised"`
}

// OutboxMessage is one MQTT message waiting in the store's outbox. The agent
// builds Payload (a JSON object); the store assigns Key and Seq inside the same
// transaction as the state change that caused it; the publisher adds
// "seq", "message_id" and "historical" to the JSON when it sends it.
type OutboxMessage struct {
	Key     uint64    // position in the outbox, assigned by the store
	Seq     uint64    // per-device sequence number, assigned by the store
	Kind    string    // "summary", "alert", "event"
	Topic   string    // suffix below <prefix>/<site>/<device>/, e.g. "alert"
	Created time.Time // when the state change happened
	Payload []byte
	// Coalesce, when set, lets a newer unsent message with the same key
	// replace this one when the outbox is full (periodic summaries).
	Coalesce string
}

// Frame is one camera image as plain Go memory: interleaved 8-bit BGR,
// stride 3*W. Frames cross package boundaries; OpenCV Mats never do.
type Frame struct {
	W, H int
	BGR  []byte
	Time time.Time
}
