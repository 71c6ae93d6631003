package wire

import (
	"errors"
	"slices"
	"unicode/utf8"
)

// ReplyCode says in a machine-readable way why a command was refused: a
// Reply carries one exactly when OK is false (agents before codes sent
// none; the Error text is for people and may change). The set is closed:
// ReplyCodes.
type ReplyCode string

const (
	// CodeBadCommand: the command is malformed, for another device or
	// site, its ts outside the device's clock skew, or its arguments
	// invalid. It did not run; the same command is refused again.
	CodeBadCommand ReplyCode = "bad_command"
	// CodeUnsupported: the agent does not know the command or one of its
	// arguments (an older release). It did not run; upgrade the agent.
	CodeUnsupported ReplyCode = "unsupported"
	// CodeNotFound: no such identity or visit on the device. It did not
	// run; the same command is refused again.
	CodeNotFound ReplyCode = "not_found"
	// CodeConflict: the device's identities do not allow it as asked (a
	// visit now belongs to another identity, a split would move every
	// visit, the engine does not hold the visits). Nothing changed;
	// review again before another correction.
	CodeConflict ReplyCode = "conflict"
	// CodeBusy: the agent did not take the command in time (its worker
	// busy for commands.timeout, too many command ids held against
	// replays). It did not run; a new command later may succeed.
	CodeBusy ReplyCode = "busy"
	// CodeTooLarge: the command ran, but its result does not fit the
	// agent's mqtt.max_message_size and was not sent. Repeating it gives
	// the same result.
	CodeTooLarge ReplyCode = "too_large"
	// CodeInternal: anything else (the device's store failed, its result
	// could not be sealed...). The command may have run, in part or not
	// at all: check its effect (identity_visits) before repeating a
	// change.
	CodeInternal ReplyCode = "internal"
)

// ReplyCodes lists every code this build sends (reply.schema.json's
// examples). The set is open: a reader takes a code it does not know as
// CodeInternal.
var ReplyCodes = []ReplyCode{CodeBadCommand, CodeUnsupported, CodeNotFound, CodeConflict, CodeBusy, CodeTooLarge, CodeInternal}

// Known reports whether c is one of ReplyCodes.
func (c ReplyCode) Known() bool { return slices.Contains(ReplyCodes, c) }

// Retry reports whether sending the command again later may succeed
// where this refusal did (as a new command: the agent runs a message_id
// once).
func (c ReplyCode) Retry() bool { return c == CodeBusy }

// MayHaveRun reports whether the command may have run despite the
// refusal: too_large (it ran), internal (it may have, in part), and a code
// this build does not know (a newer agent's: the set is open, and an
// unknown code is read as internal).
func (c ReplyCode) MayHaveRun() bool {
	return c == CodeTooLarge || c == CodeInternal || c != "" && !c.Known()
}

// MaxReplyError bounds a reply's error text (reply.schema.json).
const MaxReplyError = 512

// Refuse makes r the refusal of err: ok false, err's code (CodeOf) and
// text (cut to at most MaxReplyError bytes, never inside a character), no
// result.
func (r *Reply) Refuse(err error) {
	r.OK, r.Code, r.Error = false, CodeOf(err), err.Error()
	if len(r.Error) > MaxReplyError {
		n := MaxReplyError
		for n > 0 && !utf8.RuneStart(r.Error[n]) {
			n--
		}
		r.Error = r.Error[:n]
	}
	r.Result, r.Sealed = nil, ""
}

// CodeError is an error with the code a refusal is answered with.
type CodeError struct {
	Code ReplyCode
	Err  error
}

func (e *CodeError) Error() string { return e.Err.Error() }
func (e *CodeError) Unwrap() error { return e.Err }

// WithCode returns err with the code its refusal is answered with (nil
// for nil). The outermost code in a chain is the one answered.
func WithCode(code ReplyCode, err error) error {
	if err == nil {
		return nil
	}
	return &CodeError{Code: code, Err: err}
}

// CodeOf is the code a refusal with err is answered with: the outermost
// CodeError's, CodeInternal when err has none, "" for nil. A CodeError
// with an empty Code is answered without a code, as agents before codes
// did (a test's simulated older agent).
func CodeOf(err error) ReplyCode {
	if err == nil {
		return ""
	}
	var ce *CodeError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return CodeInternal
}
