package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// CommandName names a remote command.
type CommandName string

const (
	CmdPing           CommandName = "ping"
	CmdPublishSummary CommandName = "publish_summary"
	CmdPurgeIdentity  CommandName = "purge_identity"
)

// MaxCommandSize bounds an accepted command payload.
const MaxCommandSize = 4096

// ErrCommand is wrapped by every DecodeCommand error.
var ErrCommand = errors.New("invalid command")

// CommandArgs are the arguments of a command; only purge_identity has one.
type CommandArgs struct {
	ID string `json:"id,omitempty"` // identity id for purge_identity
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
	CorrelationID string          `json:"correlation_id"`
	Command       CommandName     `json:"command"`
	OK            bool            `json:"ok"`
	Error         string          `json:"error,omitempty"`
	Result        json.RawMessage `json:"result,omitempty"`
}

// DecodeCommand strictly decodes a command payload (the signed bytes, see
// OpenSignedCommand): one JSON object, no unknown fields, at most
// MaxCommandSize bytes, schema_version CommandSchemaVersion, a known
// command, valid ids, and the arguments the command needs (and no others).
func DecodeCommand(b []byte) (Command, error) {
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
		return Command{}, fmt.Errorf("%w: %v", ErrCommand, err)
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
	switch c.Command {
	case CmdPing, CmdPublishSummary:
		if c.Args != (CommandArgs{}) {
			return Command{}, fmt.Errorf("%w: %s takes no args", ErrCommand, c.Command)
		}
	case CmdPurgeIdentity:
		if err := ValidateID(c.Args.ID, 64); err != nil {
			return Command{}, fmt.Errorf("%w: purge_identity args.id: %v", ErrCommand, err)
		}
	default:
		return Command{}, fmt.Errorf("%w: unknown command %q", ErrCommand, c.Command)
	}
	return c, nil
}
