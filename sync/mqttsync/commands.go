package mqttsync

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/periocular/atm-agent/sync/wire"
)

// Reasons a command is refused (the "reason" of the rejection log line and
// the keys of Stats.CommandsRejected).
const (
	rejTopic       = "topic"
	rejRetained    = "retained"
	rejOversize    = "oversize"
	rejUnsigned    = "unsigned"
	rejSignature   = "bad_signature"
	rejInvalid     = "invalid"
	rejWrongDevice = "wrong_device"
	rejStale       = "stale"
	rejReplayed    = "replayed"
	rejUnavailable = "unavailable" // seen set full, locked or not writable
	// rejThrottled: dropped unchecked while forged commands exceed the
	// budget of failed signature checks (verifyBudget).
	rejThrottled = "throttled"
)

// errThrottled is the reason logged for commands dropped unchecked.
var errThrottled = errors.New("dropped without a signature check: more forged commands than the budget of failed checks allows (see bad_signature)")

// commandGuard holds what authenticates commands.
type commandGuard struct {
	keys  []ed25519.PublicKey
	names []string
	seen  *seenSet
	// budget bounds the signature checks that fail.
	budget *verifyBudget
}

func newCommandGuard(cfg CommandsConfig, now time.Time, warn func(string, ...any)) (*commandGuard, error) {
	keys, err := cfg.LoadKeys()
	if err != nil {
		return nil, err
	}
	g := &commandGuard{keys: keys, budget: newVerifyBudget(forgedRate, forgedBurst)}
	for _, k := range cfg.PublicKeys {
		g.names = append(g.names, k.Name)
	}
	if g.seen, err = openSeen(cfg.SeenFile, cfg.MaxClockSkew, cfg.MaxSeen, now, warn); err != nil {
		return nil, err
	}
	return g, nil
}

// onCommand handles one message on the command topic. It runs on a paho
// goroutine (order does not matter). commands.timeout bounds the wait for
// the agent's worker to take it (CommandHandler): a command it has taken is
// answered with its result, however long it ran.
//
// Checks, in order, before anything runs: topic, not retained, size (before
// any decoding), a signed envelope, a token of the budget of failed
// signature checks (verifyBudget; dropped unchecked as throttled without
// one), an Ed25519 signature that verifies with a configured key, a valid command payload, this device and site, ts within
// max_clock_skew, a message_id not accepted before (recorded durably before
// the command runs). A message failing any check up to the signature gets
// no reply (nothing is said to whoever may publish on the broker); a signed
// one that fails later is answered ok:false, except a replay (its original
// was answered).
func (p *Publisher) onCommand(c mqtt.Client, m mqtt.Message) {
	if m.Topic() != p.topics.Command() {
		p.reject(rejTopic, fmt.Errorf("command on unexpected topic %q", m.Topic()))
		return
	}
	if m.Retained() {
		// A retained command would run again on every reconnect.
		p.reject(rejRetained, errors.New("retained command ignored"))
		return
	}
	b := m.Payload()
	if len(b) > wire.MaxSignedCommandSize {
		p.reject(rejOversize, fmt.Errorf("%d bytes, limit %d", len(b), wire.MaxSignedCommandSize))
		return
	}
	env, err := wire.ParseSignedCommand(b)
	switch {
	case errors.Is(err, wire.ErrBadSignature):
		p.reject(rejSignature, err)
		return
	case errors.Is(err, wire.ErrOversize):
		p.reject(rejOversize, err)
		return
	case err != nil:
		p.reject(rejUnsigned, err)
		return
	}
	// The signature check is what a forged command costs (an Ed25519
	// verification per key, some 85 µs): bounded by the budget of checks
	// that fail. A signed command gives its token back.
	if !p.guard.budget.take(p.now()) {
		p.reject(rejThrottled, errThrottled)
		return
	}
	key, err := env.Verify(p.guard.keys)
	if err != nil {
		p.reject(rejSignature, err)
		return
	}
	p.guard.budget.refund()
	payload := env.Payload()
	keyName := p.guard.names[key]
	cmd, err := wire.DecodeCommand(payload)
	if err != nil {
		p.reject(rejInvalid, err, "key", keyName)
		p.replyLoose(c, payload, err)
		return
	}
	if cmd.Device != p.cfg.Topic.Device || cmd.Site != p.cfg.Topic.Site {
		err := wire.WithCode(wire.CodeBadCommand, fmt.Errorf("command for %s/%s sent to %s/%s", cmd.Site, cmd.Device, p.cfg.Topic.Site, p.cfg.Topic.Device))
		p.reject(rejWrongDevice, err, "key", keyName, "id", cmd.MessageID)
		p.reply(c, cmd.MessageID, cmd.Command, cmd.Args.ReplyKey, nil, err)
		return
	}
	if err := p.guard.seen.admit(cmd.MessageID, cmd.TS, p.now()); err != nil {
		switch {
		case errors.Is(err, errReplayed):
			p.reject(rejReplayed, err, "key", keyName)
			return
		case errors.Is(err, errStale):
			p.reject(rejStale, err, "key", keyName, "id", cmd.MessageID)
			if cmd.TS.Before(p.now()) {
				// Older than the window: a captured command replayed once
				// its id has left the seen set looks exactly like this,
				// and answering it published a fresh ok:false under the
				// id of a command that had run. The log and the stale
				// counter say it; a ts ahead (a signer's clock) is
				// answered.
				return
			}
			err = wire.WithCode(wire.CodeBadCommand, err)
		case errors.Is(err, errSeenFull), errors.Is(err, errLocked):
			// Not run; taken once ids have left the skew window.
			p.reject(rejUnavailable, err, "key", keyName, "id", cmd.MessageID)
			err = wire.WithCode(wire.CodeBusy, err)
		default:
			p.reject(rejUnavailable, err, "key", keyName, "id", cmd.MessageID)
		}
		p.reply(c, cmd.MessageID, cmd.Command, cmd.Args.ReplyKey, nil, err)
		return
	}
	p.cmdAccepted.Add(1)
	p.mu.Lock()
	parent := p.runCtx
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(parent, p.cfg.Commands.Timeout)
	defer cancel()
	var result any
	switch cmd.Command {
	case wire.CmdPing:
		result = map[string]any{"pong": true, "last_acked_seq": p.lastSeq.Load()}
	default:
		result, err = p.d.Commands.HandleCommand(ctx, cmd)
		if cmd.Command == wire.CmdPublishSummary && err == nil {
			p.Notify()
		}
	}
	p.log.Info("mqtt command", "command", cmd.Command, "id", cmd.MessageID, "key", keyName, "ok", err == nil)
	p.reply(c, cmd.MessageID, cmd.Command, cmd.Args.ReplyKey, result, err)
}

// replyLoose answers a signed payload that did not decode as a command,
// when its correlation id is usable.
func (p *Publisher) replyLoose(c mqtt.Client, payload []byte, err error) {
	var loose struct {
		MessageID string           `json:"message_id"`
		Command   wire.CommandName `json:"command"`
	}
	if json.Unmarshal(payload, &loose) != nil || wire.ValidateID(loose.MessageID, 128) != nil {
		return
	}
	if len(loose.Command) > 64 {
		loose.Command = ""
	}
	p.reply(c, loose.MessageID, loose.Command, "", nil, err)
}

// reject counts a refused command and logs it: the first of each reason
// at once, repeats of the same reason at most once a minute with the number
// refused meanwhile, so a flood cannot flood the log.
func (p *Publisher) reject(reason string, err error, args ...any) {
	p.mu.Lock()
	p.cmdRejected[reason]++
	total := p.cmdRejected[reason]
	last, logged := p.rejectLogged[reason]
	now := p.now()
	doLog := !logged || now.Sub(last.at) >= time.Minute
	var suppressed uint64
	if doLog {
		suppressed = total - last.total - 1
		if !logged {
			suppressed = 0
		}
		p.rejectLogged[reason] = rejectLog{at: now, total: total}
	}
	p.mu.Unlock()
	if doLog {
		p.log.Warn("mqtt: command refused, not executed", append([]any{"reason", reason, "err", err.Error(),
			"refused_since_last_log", suppressed}, args...)...)
	}
}

type rejectLog struct {
	at    time.Time
	total uint64
}

// reply publishes the answer to one command. With a replyKey (the
// command's args.reply_key) the result goes sealed to it (wire.SealResult),
// never in clear: a result that cannot be sealed is answered by an error.
// The error of a refusal stays in clear (it names no visit data: the
// command's own arguments at most, which the signed command carries in
// clear too), with its code (wire.CodeOf: internal unless the error says
// otherwise).
func (p *Publisher) reply(c mqtt.Client, corr string, name wire.CommandName, replyKey string, result any, cmdErr error) {
	r := wire.Reply{Envelope: wire.NewEnvelope(p.cfg.Topic.Site, p.cfg.Topic.Device, p.now()),
		CorrelationID: corr, Command: name, OK: true}
	r.MessageID = randomID("r")
	r.Seq = p.lastSeq.Load()
	var err error
	if cmdErr != nil {
		r.Refuse(cmdErr)
	} else if r.Result, err = resultJSON(result); err != nil {
		r.Refuse(fmt.Errorf("marshal result: %w", err))
	}
	b, err := p.encodeReply(r, replyKey)
	if err == nil && len(b) > p.cfg.MaxMessageSize {
		b, err = p.fitReply(r, replyKey, result, len(b))
	}
	if err == nil {
		p.mu.Lock()
		ctx := p.runCtx
		p.mu.Unlock()
		err = waitToken(context.WithoutCancel(ctx), c.Publish(p.topics.Reply(), 1, false, b), p.cfg.PublishTimeout)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		p.setErr(fmt.Errorf("publish reply: %w", err))
	}
}

// encodeReply is the reply's payload: with a replyKey, its result (an ok
// reply's, {} when it has none) sealed to it in the reply's context
// instead of in clear. A sealing error turns the reply into one that says
// so, with no result at all. Every reply is signed with the device key
// (wire.SignReply).
func (p *Publisher) encodeReply(r wire.Reply, replyKey string) ([]byte, error) {
	if err := r.Seal(replyKey); err != nil {
		r.Refuse(fmt.Errorf("the command ran, but its result could not be sealed to args.reply_key: %w", err))
	}
	return p.signReply(r)
}

// signReply is the reply's payload signed with the device key. A NUL in
// the error (which no field before the result may hold, so the signed
// fields cannot run into each other) is dropped first.
func (p *Publisher) signReply(r wire.Reply) ([]byte, error) {
	r.Error = strings.ReplaceAll(r.Error, "\x00", "")
	return wire.SignReply(p.deviceKey, r)
}

// resultJSON is a command's result as a reply carries it: an object, or
// {"value": ...} for anything else; none for nil.
func resultJSON(result any) (json.RawMessage, error) {
	if result == nil {
		return nil, nil
	}
	b, err := json.Marshal(result)
	if err != nil {
		return nil, err
	}
	if len(b) > 0 && b[0] == '{' {
		return b, nil
	}
	return json.Marshal(map[string]json.RawMessage{"value": b})
}

// fitReply makes a reply larger than max_message_size (n bytes) fit it: a
// broker acknowledges a larger publish and drops it, so nobody would hear
// of it. An identity_visits result lists its newest visits that fit, with
// truncated set; any other result (none of a change is ever this large) is
// replaced by an error that says the command ran and its result was too
// large.
//
// The size measured is that of the reply as published: with a replyKey,
// the sealed result (wire.SealedLen: the HPKE overhead, in base64).
func (p *Publisher) fitReply(r wire.Reply, replyKey string, result any, n int) ([]byte, error) {
	limit := p.cfg.MaxMessageSize
	var iv wire.IdentityVisitsResult
	switch v := result.(type) {
	case wire.IdentityVisitsResult:
		iv = v
	case *wire.IdentityVisitsResult:
		iv = *v
	default:
		return p.oversizeReply(r, n)
	}
	all := iv.Visits
	build := func(k int) ([]byte, error) {
		iv.Visits, iv.Truncated = all[:k], true
		var err error
		if r.Result, err = json.Marshal(iv); err != nil {
			return nil, err
		}
		return p.encodeReply(r, replyKey)
	}
	// The largest k of the newest visits whose reply fits.
	lo, hi := 0, len(all)-1 // all of them did not fit
	if b, err := build(0); err != nil || len(b) > limit {
		return p.oversizeReply(r, n)
	}
	for lo < hi {
		mid := (lo + hi + 1) / 2
		b, err := build(mid)
		if err != nil {
			return nil, err
		}
		if len(b) <= limit {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	p.log.Warn("mqtt: identity_visits reply larger than max_message_size: its oldest visits not listed",
		"id", r.CorrelationID, "bytes", n, "max_message_size", limit, "listed", lo, "total", iv.Total)
	return build(lo)
}

// oversizeReply replaces a result too large to publish with an error.
func (p *Publisher) oversizeReply(r wire.Reply, n int) ([]byte, error) {
	p.log.Warn("mqtt: command reply larger than max_message_size: its result is not sent",
		"id", r.CorrelationID, "command", r.Command, "bytes", n, "max_message_size", p.cfg.MaxMessageSize)
	r.Result, r.Sealed = nil, ""
	if r.OK {
		r.Refuse(wire.WithCode(wire.CodeTooLarge, fmt.Errorf("the command ran, but its reply (%d bytes) is larger than the agent's mqtt.max_message_size %d: its result is not sent",
			n, p.cfg.MaxMessageSize)))
	}
	return p.signReply(r)
}
