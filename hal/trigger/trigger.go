// Package trigger produces visit-start events: a card-insert GPIO line
// (periph.io), a local HTTP endpoint for the ATM application (Unix socket
// and/or loopback TCP), and a replay source for tests and the demo.
//
// Every source has Run(ctx, out chan<- visit.Trigger) error: it sends events on out
// until ctx is done, then returns nil once its goroutines have ended
// (cancellation is not an error). The GPIO and HTTP sources never block on
// out: when it is full the event is dropped and counted (Stats), so the
// consumer decides how to queue or coalesce. The replay source blocks (with
// ctx) so a simulation never loses a scheduled visit.
package trigger

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/carddata"
)

// Source names used in visit.Trigger.Source.
const (
	SourceGPIO   = "gpio"
	SourceSocket = "socket"
	SourceReplay = "replay"
)

// Stats counts a source's events.
type Stats struct {
	Accepted uint64 `json:"accepted"`
	Dropped  uint64 `json:"dropped"` // output channel full
}

type counters struct{ accepted, dropped atomic.Uint64 }

func (c *counters) stats() Stats {
	return Stats{Accepted: c.accepted.Load(), Dropped: c.dropped.Load()}
}

// offer sends ev without blocking; it reports whether out took it.
func (c *counters) offer(out chan<- visit.Trigger, ev visit.Trigger) bool {
	select {
	case out <- ev:
		c.accepted.Add(1)
		return true
	default:
		c.dropped.Add(1)
		return false
	}
}

// NewID returns a random 16-hex-digit event id.
func NewID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b[:])
}

// Context validation errors. None of them quotes the value, nor names
// the field: ValidateContext puts it before ("txn_id: must be ...").
var (
	ErrLooksLikePAN = errors.New("looks like a card number (PAN): send a salted hash of it, never the number")
	ErrTrackData    = errors.New("looks like magnetic-stripe track data: send a salted hash of the card number, never card data")
	ErrBadCardHash  = errors.New("must be a hex or base64 hash of 32 to 128 characters")
	ErrBadTxnID     = errors.New("must be 1 to 64 printable ASCII characters")
)

// ValidateContext checks transaction context from the ATM application.
// card_hash must look like a hash (hex or base64, 32..128 characters, that
// decodes: visit.CanonicalCardHash); a
// string of 12..19 digits (spaces and dashes ignored) is refused as a raw
// card number. txn_id must be short printable ASCII and is refused if it is
// 13..19 digits passing the Luhn check (a PAN in the wrong field). Both are
// refused when cardData finds card data in them (track data, or a card
// number padded or inside a longer string).
func ValidateContext(c visit.Context) error {
	var errs []error
	if c.CardHash != "" {
		switch {
		case looksLikePAN(c.CardHash, false):
			errs = append(errs, fmt.Errorf("card_hash: %w", ErrLooksLikePAN))
		default:
			if err := cardData(c.CardHash); err != nil {
				errs = append(errs, fmt.Errorf("card_hash: %w", err))
			} else if !isHashLike(c.CardHash) {
				errs = append(errs, fmt.Errorf("card_hash: %w", ErrBadCardHash))
			} else if _, err := visit.CanonicalCardHash(c.CardHash); err != nil {
				errs = append(errs, fmt.Errorf("card_hash: %w", err))
			}
		}
	}
	if c.TxnID != "" {
		switch {
		case len(c.TxnID) > 64 || !printableASCII(c.TxnID):
			errs = append(errs, fmt.Errorf("txn_id: %w", ErrBadTxnID))
		case looksLikePAN(c.TxnID, true):
			errs = append(errs, fmt.Errorf("txn_id: %w", ErrLooksLikePAN))
		default:
			if err := cardData(c.TxnID); err != nil {
				errs = append(errs, fmt.Errorf("txn_id: %w", err))
			} else if n := carddata.PANInText(c.TxnID); n > 0 {
				errs = append(errs, fmt.Errorf("txn_id: %w (a Luhn-valid run of %d digits in %d characters)", ErrLooksLikePAN, n, len(c.TxnID)))
			}
		}
	}
	return errors.Join(errs...)
}

// CanonicalContext validates c (ValidateContext) and returns it with its
// card hash in canonical form (visit.CanonicalCardHash: the lowercase hex
// of the hash's bytes), so that one card sent as hex in either letter case
// or as base64 is stored, deduplicated and counted as one. Every trigger
// source that carries context (the HTTP endpoint, replay schedules) passes
// it through here; the GPIO line carries none.
func CanonicalContext(c visit.Context) (visit.Context, error) {
	if err := ValidateContext(c); err != nil {
		return visit.Context{}, err
	}
	h, err := visit.CanonicalCardHash(c.CardHash)
	if err != nil { // ValidateContext has checked it; kept for safety
		return visit.Context{}, fmt.Errorf("card_hash: %w", err)
	}
	c.CardHash = h
	return c, nil
}

// looksLikePAN reports whether s is 12..19 digits once spaces and dashes are
// removed (with luhn: 13..19 digits that pass the Luhn check).
func looksLikePAN(s string, luhn bool) bool {
	var digits []byte
	for i := 0; i < len(s); i++ {
		switch ch := s[i]; {
		case ch >= '0' && ch <= '9':
			digits = append(digits, ch)
		case ch == ' ' || ch == '-':
		default:
			return false
		}
	}
	if !luhn {
		return len(digits) >= 12 && len(digits) <= 19
	}
	return len(digits) >= 13 && len(digits) <= 19 && carddata.LuhnValid(digits)
}

// cardData finds card data inside a string, ignoring spaces and dashes:
//   - track data: a '%B' or ';' start sentinel before a digit, a '^' field
//     separator, or '=' between digits (track 2's PAN=YYMM...);
//   - a card number: a run of 13 or more digits that is Luhn-valid (13..19
//     digits), or longer and Luhn-valid in its first or last 13..19 digits (a
//     PAN padded with zeros on either side), in a string that is at least 90%
//     digits. That covers a bare or dashed PAN, a zero-padded one and track
//     2 in its BCD form (PAN 'D' YYMM...).
//
// The 90% rule keeps real hashes: a random SHA-256 in hex holds such a run in
// 0.57% of cases, with the rule in 3 in a million (MD5-sized hex: 9 in
// 100,000; base64 never, it is 16% digits); see TestCardDataFalsePositives.
// The error names the kind of data and its length, never the value.
func cardData(s string) error {
	for i := 0; i+1 < len(s); i++ {
		next := s[i+1]
		digitNext := next >= '0' && next <= '9'
		switch {
		case s[i] == '%' && (next == 'B' || next == 'b') && i+2 < len(s) && s[i+2] >= '0' && s[i+2] <= '9':
			return fmt.Errorf("%w (a %%B start sentinel)", ErrTrackData)
		case s[i] == ';' && digitNext:
			return fmt.Errorf("%w (a ';' start sentinel)", ErrTrackData)
		case s[i] == '=' && digitNext && i > 0 && s[i-1] >= '0' && s[i-1] <= '9':
			return fmt.Errorf("%w (an '=' field separator between digits)", ErrTrackData)
		}
	}
	if strings.Contains(s, "^") && digitRun(s) >= 12 {
		return fmt.Errorf("%w (a '^' field separator)", ErrTrackData)
	}
	compact := strings.NewReplacer(" ", "", "-", "").Replace(s)
	digits := 0
	for i := 0; i < len(compact); i++ {
		if compact[i] >= '0' && compact[i] <= '9' {
			digits++
		}
	}
	if digits*10 < 9*len(compact) {
		return nil
	}
	for i := 0; i < len(compact); {
		j := i
		for j < len(compact) && compact[j] >= '0' && compact[j] <= '9' {
			j++
		}
		if j == i {
			i++
			continue
		}
		if n := panIn([]byte(compact[i:j])); n > 0 {
			if j < len(compact) && compact[j] == 'D' {
				return fmt.Errorf("%w (a card number followed by a 'D' separator)", ErrTrackData)
			}
			return fmt.Errorf("%w (a Luhn-valid run of %d digits in %d characters)", ErrLooksLikePAN, n, len(s))
		}
		i = j
	}
	return nil
}

// panIn returns the length of a Luhn-valid 13..19-digit card number that is
// the whole run, or its start or end once zeros on the other side (padding)
// are set aside, or 0.
func panIn(run []byte) int {
	if len(run) < 13 {
		return 0
	}
	// A card number starts with its major industry identifier, 1..9; a
	// candidate starting with 0 is padding (and zeros alone pass Luhn).
	pan := func(d []byte) bool { return d[0] != '0' && carddata.LuhnValid(d) }
	if len(run) <= 19 && pan(run) {
		return len(run)
	}
	starts := [][]byte{run, bytes.TrimLeft(run, "0")}
	ends := [][]byte{run, bytes.TrimRight(run, "0")}
	for n := 19; n >= 13; n-- {
		for k := range 2 {
			if s := starts[k]; n <= len(s) && pan(s[:n]) {
				return n
			}
			if e := ends[k]; n <= len(e) && pan(e[len(e)-n:]) {
				return n
			}
		}
	}
	return 0
}

// digitRun is the longest run of digits in s.
func digitRun(s string) int {
	best, cur := 0, 0
	for i := 0; i < len(s); i++ {
		if s[i] >= '0' && s[i] <= '9' {
			cur++
			best = max(best, cur)
		} else {
			cur = 0
		}
	}
	return best
}

// isHashLike accepts hex or base64 (standard or URL alphabet, optional
// padding) of 32..128 characters.
func isHashLike(s string) bool {
	if len(s) < 32 || len(s) > 128 {
		return false
	}
	body := strings.TrimRight(s, "=")
	if len(s)-len(body) > 2 {
		return false
	}
	for i := 0; i < len(body); i++ {
		ch := body[i]
		switch {
		case ch >= '0' && ch <= '9', ch >= 'a' && ch <= 'z', ch >= 'A' && ch <= 'Z':
		case ch == '+' || ch == '/' || ch == '-' || ch == '_':
		default:
			return false
		}
	}
	return true
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// Clock is the time source of the replay and GPIO sources.
type Clock interface {
	Now() time.Time
	// After behaves like time.After.
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// RealClock is the wall clock.
var RealClock Clock = realClock{}
