package ingest

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/wire"
)

// unauthenticatedMark is in the error of every reject refused for its
// signature (authenticate): "<kind> not authenticated: <why>".
const unauthenticatedMark = " not authenticated: "

// Unauthenticated reports whether r was refused for its signature (none,
// another key's, or none pinned under require_signed).
func Unauthenticated(r storage.Reject) bool { return strings.Contains(r.Error, unauthenticatedMark) }

// Recovered is what Recover did.
type Recovered struct {
	// Applied: held rejects that verify with the key, given to the store
	// as if just received (a summary or alert already held is a duplicate
	// of its message id; a status takes its place in the order of
	// statuses).
	Applied int `json:"applied"`
	// New: of Applied, the summaries and alerts the store did not hold.
	New int `json:"new"`
	// Unverified: the device's other rejects refused for their signature,
	// that do not verify with the key either (another key, a forgery, a
	// payload kept cut or withheld).
	Unverified int `json:"unverified"`
}

// Recover applies, oldest first, the held rejects of site/device that were
// refused for their signature and verify with pub (the key just pinned):
// an agent reinstalled with a new device key had everything it sent
// refused (acknowledged to the broker, so dropped from its outbox) until
// its new key was pinned. Each is validated as the ingest validates a
// message and applied as received at now; applying again is harmless
// (message id dedup, the order of statuses). The rejects stay in the list.
func Recover(ctx context.Context, cfg Config, st storage.Store, site, device string, pub ed25519.PublicKey, now time.Time) (Recovered, error) {
	var out Recovered
	schemas, err := CompileSchemas()
	if err != nil {
		return out, err
	}
	in := &Ingester{cfg: cfg, store: st, schemas: schemas}
	held, err := st.Rejects(ctx, storage.MaxHeldRejects)
	if err != nil {
		return out, fmt.Errorf("recover %s/%s: %w", site, device, err)
	}
	slices.Reverse(held) // oldest first
	var msgs []storage.Message
	for _, r := range held {
		if r.Site != site || r.Device != device || !Unauthenticated(r) {
			continue
		}
		tp, err := wire.ParseTopic(cfg.Prefix, r.Topic)
		if err != nil || wire.VerifyMessage(pub, tp.Kind, site, device, []byte(r.Payload)) != nil {
			out.Unverified++
			continue
		}
		d, err := in.Decode(r.Topic, []byte(r.Payload), now.UTC())
		var rej *RejectError
		switch {
		case errors.As(err, &rej):
			out.Unverified++ // signed by the key, invalid otherwise: stays a reject
			continue
		case err != nil:
			return out, err
		case d.status != nil:
			d.status.Authenticated = true
			if err := st.PutStatus(ctx, *d.status); err != nil {
				return out, fmt.Errorf("recover %s/%s: %w", site, device, err)
			}
			out.Applied++
		case d.msg != nil:
			d.msg.Authenticated = true
			msgs = append(msgs, *d.msg)
		}
	}
	if len(msgs) == 0 {
		return out, nil
	}
	fresh, err := st.Apply(ctx, msgs)
	if err != nil {
		return out, fmt.Errorf("recover %s/%s: %w", site, device, err)
	}
	out.Applied += len(msgs)
	for _, f := range fresh {
		if f {
			out.New++
		}
	}
	return out, nil
}

// Refusal says why a device's messages are refused for their signature:
// those held that came after the last message taken from it.
type Refusal struct {
	Since time.Time `json:"since"` // the first of them
	Count int       `json:"count"`
	// Reason: "other_key" (signed, but the signature does not verify with
	// the pinned key: a new device key, most likely), "unsigned", or
	// "not_pinned" (mqtt.require_signed, no key pinned).
	Reason string `json:"reason"`
	Text   string `json:"text"` // in words, for people
}

// Refusals is d's Refusal from the held rejects (newest first, as
// Store.Rejects lists them), nil when no message of d was refused for its
// signature after the last one taken.
func Refusals(d storage.Device, held []storage.Reject) *Refusal {
	taken := d.StatusReceived
	if d.LastReceived.After(taken) {
		taken = d.LastReceived
	}
	var out *Refusal
	for _, r := range held {
		if r.Site != d.Site || r.Device != d.Device || !Unauthenticated(r) || !r.Received.After(taken) {
			continue
		}
		if out == nil { // the newest: its reason is the present one
			out = &Refusal{Since: r.Received, Reason: "not_pinned"}
			switch {
			case strings.Contains(r.Error, wire.ErrMsgSignature.Error()):
				out.Reason = "other_key"
			case strings.Contains(r.Error, wire.ErrMsgUnsigned.Error()):
				out.Reason = "unsigned"
			}
		}
		out.Count++
		if r.Received.Before(out.Since) {
			out.Since = r.Received
		}
	}
	if out == nil {
		return nil
	}
	since := out.Since.UTC().Format(time.RFC3339)
	switch out.Reason {
	case "other_key":
		out.Text = fmt.Sprintf("messages signed by another key than the pinned one since %s (%d refused): a new device key? See Device keys", since, out.Count)
	case "unsigned":
		out.Text = fmt.Sprintf("unsigned messages refused since %s (%d): an agent without its device key, or an older release? See Device keys", since, out.Count)
	default:
		out.Text = fmt.Sprintf("messages refused since %s (%d): no device key is pinned and mqtt.require_signed is on. See Device keys", since, out.Count)
	}
	return out
}
