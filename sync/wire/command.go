package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// CommandName names a remote command.
type CommandName string

const (
	CmdPing           CommandName = "ping"
	CmdPublishSummary CommandName = "publish_summary"
	CmdPurgeIdentity  CommandName = "purge_identity"
	// CmdIdentityVisits asks for the visits of one identity, the evidence an
	// analyst reviews (IdentityVisitsResult).
	CmdIdentityVisits CommandName = "identity_visits"
	// CmdSplitVisits moves visits an analyst judged to be someone else off an
	// identity into a new one, and keeps the two apart from then on
	// (SplitResult).
	CmdSplitVisits CommandName = "split_visits"
	// CmdMergeIdentities moves every visit of identity ID into identity Into,
	// and keeps them together from then on (MergeResult).
	CmdMergeIdentities CommandName = "merge_identities"
)

// MaxSplitVisits bounds args.visits of split_visits.
const MaxSplitVisits = 50

// MaxReviewVisits bounds the visits an identity_visits reply lists (the
// newest ones; Total says how many the identity has).
const MaxReviewVisits = 100

// MaxCommandSize bounds an accepted command payload.
const MaxCommandSize = 4096

// ErrCommand is wrapped by every DecodeCommand error.
var ErrCommand = errors.New("invalid command")

// errUnknownCommand: a command name this release does not know.
var errUnknownCommand = errors.New("unknown command")

// CommandArgs are the arguments of a command.
type CommandArgs struct {
	// ID is the identity the command is about (purge_identity,
	// identity_visits, split_visits, merge_identities).
	ID string `json:"id,omitempty"`
	// Into is the identity that keeps the visits (merge_identities).
	Into string `json:"into,omitempty"`
	// Visits are the visit ids to move off ID (split_visits):
	// 1..MaxSplitVisits distinct ids.
	Visits []string `json:"visits,omitempty"`
	// ReplyKey, on any command, asks for the result sealed to this
	// one-time X25519 public key (base64url, no padding; see SealResult):
	// the reply carries Sealed instead of Result.
	ReplyKey string `json:"reply_key,omitempty"`
}

// empty: no argument but reply_key (which every command takes).
func (a CommandArgs) empty() bool { return a.ID == "" && a.Into == "" && len(a.Visits) == 0 }

// IdentityVisitsResult is the result of identity_visits: what an analyst
// needs to judge whether an identity's visits are one person, with no
// biometric data and no card data (cards are numbered within the reply).
type IdentityVisitsResult struct {
	Identity string `json:"identity"`
	// Total is how many visits the identity has; Visits lists at most
	// MaxReviewVisits of them, newest first.
	Total  int           `json:"total"`
	Visits []ReviewVisit `json:"visits"`
	// Apart names the identities an analyst's split keeps apart from
	// this one.
	Apart []string `json:"apart,omitempty"`
	// Truncated says Visits was cut, its oldest visits left out, for the
	// reply to fit the agent's mqtt.max_message_size (Total is unchanged).
	Truncated bool `json:"truncated,omitempty"`
}

// ReviewVisit is one visit as an analyst reviews it.
type ReviewVisit struct {
	VisitID string    `json:"visit_id"`
	TxnID   string    `json:"txn_id,omitempty"`
	TS      time.Time `json:"ts"`
	Masked  bool      `json:"masked"`
	// Card numbers the distinct cards of this reply from 1 in order of
	// first appearance (0: no card was read); the card data stays on the
	// device, the transaction id finds it in the bank's own records.
	Card int `json:"card,omitempty"`
	// CoalescedTxnIDs are the transaction ids of later card inserts folded
	// into this visit (a second insert while it was queued), so that every
	// transaction the visit stands for can be looked up; CoalescedCards
	// numbers their cards as Card does, the cards that differ from the
	// first only.
	CoalescedTxnIDs []string `json:"coalesced_txn_ids,omitempty"`
	CoalescedCards  []int    `json:"coalesced_cards,omitempty"`
	// Similarity is the visit's best cosine similarity to the identity's
	// other visits as the engine scores them (-1..1); absent when it has
	// no other visit with a template.
	Similarity *float64 `json:"similarity,omitempty"`
	// Corrected says an analyst's correction moved the visit: a split
	// moved it off, or a merge brought it in (not the visits that stayed).
	Corrected bool `json:"corrected,omitempty"`
}

// SplitResult is the result of split_visits.
type SplitResult struct {
	Identity    string `json:"identity"`
	NewIdentity string `json:"new_identity"`
	VisitsMoved int    `json:"visits_moved"`
}

// MergeResult is the result of merge_identities.
type MergeResult struct {
	Identity    string `json:"identity"`
	Merged      string `json:"merged"`
	VisitsMoved int    `json:"visits_moved"`
}

// Command is a request from the central side, schema_version 2, carried
// signed (see SignCommand). MessageID is the correlation id echoed in the
// reply and the replay-protection id; Device and Site must name this
// device; TS must be within the configured skew of the device's clock.
type Command struct {
	Envelope
	Command CommandName `json:"command"`
	Args    CommandArgs `json:"args,omitzero"`
}

// Reply answers one command on the reply topic.
type Reply struct {
	Envelope
	CorrelationID string      `json:"correlation_id"`
	Command       CommandName `json:"command"`
	OK            bool        `json:"ok"`
	// Code says why the command was refused: present exactly when OK is
	// false, from agents that send codes (ReplyCodes); none from older
	// ones, whose Error text alone says it.
	Code   ReplyCode       `json:"code,omitempty"`
	Error  string          `json:"error,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	// Sealed replaces Result when the command carried args.reply_key:
	// the result's JSON bytes sealed to that key (SealResult). Error is
	// never sealed: it holds no visit data.
	Sealed string `json:"sealed,omitempty"`
	// Sig is the device's Ed25519 signature of the reply (SignReply,
	// VerifyReply): absent from agents before signed replies.
	Sig string `json:"sig,omitempty"`
}

// DecodeCommand strictly decodes a command payload (the signed bytes, see
// OpenSignedCommand): one JSON object, no unknown fields, at most
// MaxCommandSize bytes, schema_version CommandSchemaVersion, a known
// command, valid ids, and the arguments the command needs (and no others).
// Its errors carry the code of the refusal (CodeOf): CodeUnsupported for an
// unknown command or field (what an older agent cannot read),
// CodeBadCommand for anything else.
func DecodeCommand(b []byte) (Command, error) {
	c, err := decodeCommand(b)
	if err != nil {
		var ce *CodeError
		if !errors.As(err, &ce) {
			err = WithCode(CodeBadCommand, err)
		}
		return Command{}, err
	}
	return c, nil
}

func decodeCommand(b []byte) (Command, error) {
	var c Command
	if len(b) > MaxCommandSize {
		return c, fmt.Errorf("%w: %d bytes, limit %d", ErrCommand, len(b), MaxCommandSize)
	}
	if err := CheckJSON(b, JSONRules{}); err != nil {
		return Command{}, fmt.Errorf("%w: %v", ErrCommand, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		err = fmt.Errorf("%w: %v", ErrCommand, err)
		if strings.Contains(err.Error(), "json: unknown field ") {
			err = WithCode(CodeUnsupported, err)
		}
		return Command{}, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return Command{}, fmt.Errorf("%w: trailing data after object", ErrCommand)
	}
	if bytes.TrimSpace(b)[0] != '{' {
		return Command{}, fmt.Errorf("%w: not a JSON object", ErrCommand)
	}
	if c.SchemaVersion != CommandSchemaVersion {
		return Command{}, fmt.Errorf("%w: schema_version %d, want %d", ErrCommand, c.SchemaVersion, CommandSchemaVersion)
	}
	if err := ValidateID(c.MessageID, 128); err != nil {
		return Command{}, fmt.Errorf("%w: message_id: %v", ErrCommand, err)
	}
	if err := ValidateLevel("device", c.Device); err != nil {
		return Command{}, fmt.Errorf("%w: %v", ErrCommand, err)
	}
	if err := ValidateLevel("site", c.Site); err != nil {
		return Command{}, fmt.Errorf("%w: %v", ErrCommand, err)
	}
	if c.TS.IsZero() {
		return Command{}, fmt.Errorf("%w: ts missing", ErrCommand)
	}
	if err := checkArgs(c.Command, c.Args); err != nil {
		err = fmt.Errorf("%w: %w", ErrCommand, err)
		if errors.Is(err, errUnknownCommand) {
			err = WithCode(CodeUnsupported, err)
		}
		return Command{}, err
	}
	var present struct {
		Args struct {
			ReplyKey *string `json:"reply_key"`
		} `json:"args"`
	}
	if json.Unmarshal(b, &present) == nil && present.Args.ReplyKey != nil || c.Args.ReplyKey != "" {
		if _, err := ParseReplyKey(c.Args.ReplyKey); err != nil {
			return Command{}, fmt.Errorf("%w: args.reply_key: %v", ErrCommand, err)
		}
	}
	return c, nil
}

// checkArgs says whether args are exactly what command needs.
func checkArgs(command CommandName, a CommandArgs) error {
	switch command {
	case CmdPing, CmdPublishSummary:
		if !a.empty() {
			return fmt.Errorf("%s takes no args", command)
		}
		return nil
	case CmdPurgeIdentity, CmdIdentityVisits, CmdSplitVisits, CmdMergeIdentities:
	default:
		return fmt.Errorf("%w %q", errUnknownCommand, command)
	}
	if err := ValidateID(a.ID, 64); err != nil {
		return fmt.Errorf("%s args.id: %v", command, err)
	}
	if command == CmdMergeIdentities {
		if err := ValidateID(a.Into, 64); err != nil {
			return fmt.Errorf("%s args.into: %v", command, err)
		}
		if a.Into == a.ID {
			return fmt.Errorf("%s: args.into is args.id", command)
		}
	} else if a.Into != "" {
		return fmt.Errorf("%s takes no args.into", command)
	}
	if command != CmdSplitVisits {
		if a.Visits != nil {
			return fmt.Errorf("%s takes no args.visits", command)
		}
		return nil
	}
	if len(a.Visits) == 0 || len(a.Visits) > MaxSplitVisits {
		return fmt.Errorf("%s args.visits: %d ids, want 1..%d", command, len(a.Visits), MaxSplitVisits)
	}
	seen := make(map[string]bool, len(a.Visits))
	for i, v := range a.Visits {
		if err := ValidateID(v, 64); err != nil {
			return fmt.Errorf("%s args.visits[%d]: %v", command, i, err)
		}
		if seen[v] {
			return fmt.Errorf("%s args.visits[%d]: %q twice", command, i, v)
		}
		seen[v] = true
	}
	return nil
}
