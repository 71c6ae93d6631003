// Package command sends the agents signed commands from the fleet service
// (docs/mqtt.md "Commands"): an analyst's review of an identity
// (identity_visits) and its corrections (split_visits, merge_identities).
//
// A command is signed once (Ed25519, wire.SignCommand) and published at
// QoS 1 on <prefix>/<site>/<device>/cmd over the ingest's broker
// connection; the same signed bytes are published again every
// ResendInterval until the reply comes or ReplyTimeout passes. The agent
// runs a message id at most once (a copy is refused as replayed, without a
// reply), so resending never runs a command twice. Replies are taken from
// <prefix>/+/+/reply and matched by correlation_id; one is used only when
// it passes the reply schema and the JSON rules the ingest applies, names
// the device of its topic, and that device and the command's name are
// those of the command it answers. Anything else is counted and dropped.
//
// Every command asks for its reply sealed (docs/mqtt.md "Sealed
// replies"): it carries a fresh X25519 public key in args.reply_key whose
// private half stays in memory with the waiting command, and the agent
// seals the result to it, so a broker client reading the reply topics
// learns nothing of it. A reply that carries its result in clear, or a
// sealed one that does not open in the command's context, is dropped as a
// forged one is. An agent of a release before sealing refuses the unknown
// argument: that is told as ErrUnsupported (upgrade it).
//
// A refusal (ok false) is a *RefusedError with the reply's code
// (docs/mqtt.md "Refusal codes"), which decides; the error text is read
// only in a reply without a code, from an agent before codes.
package command

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/periocular/atm-agent/internal/carddata"
	"github.com/periocular/atm-agent/sync/fleet/ingest"
	"github.com/periocular/atm-agent/sync/fleet/secretfile"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/wire"
)

// Config is the commands section of the fleet's configuration. Off by
// default.
type Config struct {
	Enabled bool `yaml:"enabled"`
	// PrivateKeyFile is the Ed25519 signing key, PKCS#8 PEM as written by
	// `atm-tools command keygen` (its .key file). It must be owned by root
	// or the service's user and carry no group or other permission bit.
	PrivateKeyFile string `yaml:"private_key_file"`
	// ReplyTimeout bounds the wait for one command's reply.
	ReplyTimeout time.Duration `yaml:"reply_timeout"`
	// ResendInterval: the same signed message is published again this
	// often until the reply comes.
	ResendInterval time.Duration `yaml:"resend_interval"`
	// MaxInFlight bounds the commands waiting for a reply at once; one
	// more is refused at once (ErrBusy).
	MaxInFlight int `yaml:"max_in_flight"`
	// DeviceBudget bounds the commands signed for one device in any
	// BudgetWindow (one more is refused at once: ErrBudget). Each command
	// id is held by the agent's replay set (mqtt.commands.max_seen, 1024
	// by default) for its max_clock_skew (5 min by default): past it the
	// agent refuses every command, purge_identity too. Reviews
	// (identity_visits) may use 3/4 of it, so corrections still go
	// through when the reviews have used theirs.
	DeviceBudget int `yaml:"device_budget"`
	// ReviewCache keeps a device's identity_visits answer this long, per
	// identity: a reload of the review page within it asks the device
	// nothing. A correction sent to the device drops its answers. 0: off.
	ReviewCache time.Duration `yaml:"review_cache"`
	// RequireSignedReplies: no command is sent to a device without a
	// pinned key (atm-fleet devices key set), so every reply acted on is
	// signed by its device. Off: a device without a pin is answered as
	// before signed replies (unauthenticated, and shown so).
	RequireSignedReplies bool `yaml:"require_signed_replies"`
}

// BudgetWindow is the window of Config.DeviceBudget: the agents' default
// max_clock_skew, for which they hold each command id.
const BudgetWindow = 5 * time.Minute

// MaxDeviceBudget keeps the budget well under the agents' default
// max_seen (1024 ids per max_clock_skew).
const MaxDeviceBudget = 512

// DefaultConfig returns the defaults (off).
func DefaultConfig() Config {
	return Config{ReplyTimeout: 15 * time.Second, ResendInterval: 2 * time.Second, MaxInFlight: 32, DeviceBudget: 240,
		ReviewCache: 10 * time.Second}
}

// MaxReplyTimeout keeps a command's wait well inside the agents' default
// max_clock_skew (5 min): a copy resent later than the skew is stale.
const MaxReplyTimeout = 2 * time.Minute

// Validate checks the configuration (the key file is read by LoadKey).
func (c Config) Validate() error {
	if !c.Enabled {
		return nil
	}
	if c.PrivateKeyFile == "" {
		return errors.New("commands: private_key_file is required when enabled (atm-tools command keygen writes it)")
	}
	if c.ReplyTimeout < time.Second || c.ReplyTimeout > MaxReplyTimeout {
		return fmt.Errorf("commands: reply_timeout %v: want 1s..%v", c.ReplyTimeout, MaxReplyTimeout)
	}
	if c.ResendInterval < 100*time.Millisecond || c.ResendInterval > c.ReplyTimeout {
		return fmt.Errorf("commands: resend_interval %v: want 100ms..reply_timeout", c.ResendInterval)
	}
	if c.MaxInFlight < 1 || c.MaxInFlight > 10000 {
		return fmt.Errorf("commands: max_in_flight %d: want 1..10000", c.MaxInFlight)
	}
	if c.DeviceBudget < 4 || c.DeviceBudget > MaxDeviceBudget {
		return fmt.Errorf("commands: device_budget %d: want 4..%d commands per device per %v (the agents hold 1024 ids by default)",
			c.DeviceBudget, MaxDeviceBudget, BudgetWindow)
	}
	if c.ReviewCache < 0 || c.ReviewCache > time.Minute {
		return fmt.Errorf("commands: review_cache %v: want 0 (off)..1m", c.ReviewCache)
	}
	return nil
}

// LoadKey reads the signing key: refused when owned by another user than
// root or the service's, or with any group or other permission bit
// (whoever reads it can command every ATM).
func LoadKey(path string) (ed25519.PrivateKey, error) {
	b, err := secretfile.Read(path, "command key", 0o077)
	if errors.Is(err, fs.ErrPermission) && secretfile.CredentialID(path) == "" {
		return nil, fmt.Errorf("%w: %s", err, loadCredentialHint)
	}
	if err != nil {
		return nil, err
	}
	k, err := wire.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("command key %s: %w", path, err)
	}
	return k, nil
}

// loadCredentialHint says how the packaged unit's service reads the key.
const loadCredentialHint = "the packaged unit's service runs as a dynamic user, which cannot read root's 0600 key: " +
	"hand it over with LoadCredential=command.key:/etc/atm-fleet/command.key in a drop-in (systemctl edit atm-fleet) " +
	"and set commands.private_key_file: /run/credentials/atm-fleet.service/command.key (docs/fleet.md, \"Setting it up\" under commands)"

// WarnRootOnly is a warning when root checks a command key that only root
// may read and that is not a credential copy (LoadCredential=): the
// packaged unit's service, a dynamic user, will be refused it at start.
// Else "".
func WarnRootOnly(path string) string {
	fi, err := os.Stat(path)
	if err != nil || os.Geteuid() != 0 || secretfile.CredentialID(path) != "" {
		return ""
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Uid != 0 || fi.Mode().Perm()&0o077 != 0 {
		return ""
	}
	return fmt.Sprintf("commands.private_key_file %s: only root can read it; %s", path, loadCredentialHint)
}

// Errors of Client.Do, for errors.Is.
var (
	// ErrNotConfigured: commands are off in this service's config.
	ErrNotConfigured = errors.New("commands are not configured on this fleet service (commands.enabled in its config)")
	// ErrBusy: MaxInFlight commands are waiting for their replies.
	ErrBusy = errors.New("too many commands waiting for a reply: try again in a moment")
	// ErrTimeout: no reply within ReplyTimeout.
	ErrTimeout = errors.New("no reply from the device")
	// ErrRefused: the agent answered ok:false.
	ErrRefused = errors.New("the device refused the command")
	// ErrUnsupported: the agent does not know the command (an older
	// release).
	ErrUnsupported = errors.New("the device's agent does not know this command (an older release): upgrade it")
	// ErrBroker: the command could not be handed to the broker: the
	// fleet is not connected to it, so nothing was sent.
	ErrBroker = errors.New("the command could not be sent")
	// ErrBudget: the device's command budget (Config.DeviceBudget) is
	// spent for now; nothing was sent (a *BudgetError says when to retry).
	ErrBudget = errors.New("too many commands sent to this device lately")
	// ErrUnpinned: require_signed_replies is on and the device has no
	// pinned key; nothing was sent.
	ErrUnpinned = errors.New("no key pinned for the device, and commands.require_signed_replies is on: pin it (atm-agent device-key show on the ATM; atm-fleet devices key set)")
)

// Keys is where the client finds the key pinned for a device (the
// fleet's store).
type Keys interface {
	DeviceKey(ctx context.Context, site, device string) (storage.DeviceKey, error)
}

// BudgetError is ErrBudget with the wait until a command fits again.
type BudgetError struct {
	Device     string
	Review     bool // the reviews' share is spent (corrections still fit)
	RetryAfter time.Duration
}

func (e *BudgetError) Error() string {
	what := "commands"
	if e.Review {
		what = "reviews"
	}
	return fmt.Sprintf("%v: %s has had its %s' share of the commands its agent accepts in %v; try again in %v",
		ErrBudget, e.Device, what, BudgetWindow, e.RetryAfter.Round(time.Second))
}

// Is makes errors.Is(err, ErrBudget) hold.
func (e *BudgetError) Is(target error) bool { return target == ErrBudget }

// Publisher is the broker connection (the ingest's).
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte) error
}

// Stats are the client's counters since start.
type Stats struct {
	Sent     uint64 `json:"sent"`     // commands signed and published
	Resent   uint64 `json:"resent"`   // further copies of them
	Answered uint64 `json:"answered"` // replies matched to a waiting command
	TimedOut uint64 `json:"timed_out"`
	// Ignored counts replies dropped: invalid, for no waiting command,
	// or naming another device or command than the one they answer.
	Ignored uint64 `json:"ignored"`
	// Others counts valid replies to commands another sender sent
	// (another fleet instance sharing the broker, atm-tools).
	Others uint64 `json:"others"`
	// Cached counts reviews answered from the review cache; OverBudget
	// commands refused by a device's budget; Withheld transaction ids
	// that looked like a card number.
	Cached     uint64 `json:"cached"`
	OverBudget uint64 `json:"over_budget"`
	Withheld   uint64 `json:"withheld_txn_ids"`
	// BadSignature counts the replies ignored (among Ignored) because
	// they did not carry a valid signature of the device's pinned key;
	// Unauthenticated the replies taken from devices without a pin.
	BadSignature    uint64 `json:"bad_signature"`
	Unauthenticated uint64 `json:"unauthenticated"`
	InFlight        int    `json:"in_flight"`
	LastError       string `json:"last_error,omitempty"`
}

// Client signs and sends commands and matches their replies.
type Client struct {
	cfg    Config
	prefix string
	key    ed25519.PrivateKey
	pub    Publisher
	log    *slog.Logger
	now    func() time.Time
	schema *jsonschema.Schema
	sem    chan struct{}
	// idPrefix starts the message id of every command of this client:
	// replies to other senders' commands (another fleet instance,
	// atm-tools) are told from stray ones.
	idPrefix string

	mu      sync.Mutex
	waiting map[string]*call
	lastErr string
	// loggedAt, quiet: when an ignored reply was last logged, and how
	// many were ignored since without a line.
	loggedAt time.Time
	quiet    uint64

	// budget: per device ("site/device"), when each command counted in
	// BudgetWindow was signed, oldest first.
	budget map[string][]time.Time
	// reviews: cached identity_visits answers; gen: per device, bumped by
	// each correction (an answer asked before it is not cached).
	reviews map[reviewKey]cachedReview
	gen     map[string]uint64

	// keys: the pinned device keys (UseKeys); nil: none pinned.
	keys Keys

	sent, resent, answered, timedOut, ignored, others, cached, overBudget, withheld, badSig, unauth atomic.Uint64
}

type reviewKey struct{ site, device, id string }

type cachedReview struct {
	res  wire.IdentityVisitsResult
	sent Sent
	at   time.Time
}

// maxCachedReviews bounds the review cache; beyond it answers are not
// cached until entries expire.
const maxCachedReviews = 4096

// call is one command waiting for its reply.
type call struct {
	site, device string
	name         wire.CommandName
	// key opens the sealed result (the private half of args.reply_key):
	// kept in memory only, for this command alone.
	key *ecdh.PrivateKey
	// pin is the device's pinned key, looked up when the command was
	// signed: nil when none (the reply is taken unauthenticated).
	pin      ed25519.PublicKey
	reply    chan wire.Reply // buffered 1: the first valid reply
	answered bool            // a reply was taken (under Client.mu)
}

// New builds a client for commands below prefix (the agents' topic
// prefix) signed with key, published through pub. log may be nil.
func New(cfg Config, prefix string, key ed25519.PrivateKey, pub Publisher, log *slog.Logger) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := wire.ValidatePrefix(prefix); err != nil {
		return nil, fmt.Errorf("commands: prefix: %w", err)
	}
	if len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("commands: not an Ed25519 private key")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	schema, err := ingest.CompileReaderSchema(wire.KindReply)
	if err != nil {
		return nil, err
	}
	return &Client{cfg: cfg, prefix: prefix, key: key, pub: pub, log: log, now: time.Now, schema: schema,
		sem: make(chan struct{}, cfg.MaxInFlight), waiting: map[string]*call{}, idPrefix: "fleet-" + randomHex(4) + "-",
		budget: map[string][]time.Time{}, reviews: map[reviewKey]cachedReview{}, gen: map[string]uint64{}}, nil
}

// UseKeys makes the client check each reply against the key pinned for
// its device in k (the fleet's store). Call it before the first command.
func (c *Client) UseKeys(k Keys) { c.keys = k }

// pinned is the key pinned for the device: nil when none (unless
// RequireSignedReplies: ErrUnpinned). A store error sends nothing.
func (c *Client) pinned(ctx context.Context, site, device string) (ed25519.PublicKey, error) {
	var pin ed25519.PublicKey
	if c.keys != nil {
		k, err := c.keys.DeviceKey(ctx, site, device)
		switch {
		case err == nil:
			pin = k.PublicKey
		case !errors.Is(err, storage.ErrNotFound):
			return nil, fmt.Errorf("commands: the device's pinned key: %w", err)
		}
	}
	if pin == nil && c.cfg.RequireSignedReplies {
		return nil, fmt.Errorf("%w (%s/%s)", ErrUnpinned, site, device)
	}
	return pin, nil
}

// ReplyFilter is the subscription the client's replies come on.
func (c *Client) ReplyFilter() string { return c.prefix + "/+/+/" + wire.KindReply }

// Timeout is the configured reply timeout.
func (c *Client) Timeout() time.Duration { return c.cfg.ReplyTimeout }

// Stats returns the counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{Sent: c.sent.Load(), Resent: c.resent.Load(), Answered: c.answered.Load(), TimedOut: c.timedOut.Load(),
		Ignored: c.ignored.Load(), Others: c.others.Load(), Cached: c.cached.Load(), OverBudget: c.overBudget.Load(),
		Withheld: c.withheld.Load(), BadSignature: c.badSig.Load(), Unauthenticated: c.unauth.Load(), InFlight: len(c.waiting), LastError: c.lastErr}
}

// Sent is a command as it was sent: its message id, whatever came of it.
type Sent struct {
	MessageID string
	// Published: the command may have reached the broker (a publish was
	// tried while connected, whether or not the broker acknowledged it).
	Published bool
	// Cached: the answer came from the review cache (no command sent).
	Cached bool
	// Authenticated: the reply was signed by the device's pinned key
	// (false: the device has no pin, and the reply was taken as agents
	// before signed replies send it).
	Authenticated bool
}

// BeforeSend is called with the signed command's id just before it is
// first published; an error keeps it unsent (Do returns that error). The
// web layer audits a correction's request there, before any copy can
// reach the agent.
type BeforeSend func(Sent) error

// Do signs the command for site/device, publishes it, resends it until the
// reply or the timeout, and returns the reply's result (ok:true). The
// Sent names the command even when err is not nil (an audit of a
// correction whose outcome is unknown names it).
func (c *Client) Do(ctx context.Context, site, device string, name wire.CommandName, args wire.CommandArgs) (json.RawMessage, Sent, error) {
	return c.do(ctx, site, device, name, args, nil)
}

// spend counts one command against the device's budget, or says when
// one fits again. Reviews may use 3/4 of it.
func (c *Client) spend(site, device string, review bool) error {
	key := site + "/" + device
	limit := c.cfg.DeviceBudget
	if review {
		limit = limit * 3 / 4
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if len(c.budget) > 10000 { // forget devices quiet for the window
		for k, ts := range c.budget {
			if len(ts) == 0 || now.Sub(ts[len(ts)-1]) >= BudgetWindow {
				delete(c.budget, k)
			}
		}
	}
	ts := c.budget[key]
	i := 0
	for i < len(ts) && now.Sub(ts[i]) >= BudgetWindow {
		i++
	}
	ts = ts[i:]
	if len(ts) >= limit {
		c.budget[key] = ts
		c.overBudget.Add(1)
		wait := ts[len(ts)-limit].Add(BudgetWindow).Sub(now)
		return &BudgetError{Device: key, Review: review && len(ts) < c.cfg.DeviceBudget, RetryAfter: max(wait, time.Second)}
	}
	c.budget[key] = append(ts, now)
	return nil
}

func (c *Client) do(ctx context.Context, site, device string, name wire.CommandName, args wire.CommandArgs, before BeforeSend) (json.RawMessage, Sent, error) {
	if c == nil {
		return nil, Sent{}, ErrNotConfigured
	}
	select {
	case c.sem <- struct{}{}:
		defer func() { <-c.sem }()
	default:
		return nil, Sent{}, ErrBusy
	}
	pin, err := c.pinned(ctx, site, device)
	if err != nil {
		return nil, Sent{}, err
	}
	if err := c.spend(site, device, name == wire.CmdIdentityVisits); err != nil {
		return nil, Sent{}, err
	}
	// Every reply sealed, to a key of this command alone.
	replyKey, pubKey, err := wire.NewReplyKey()
	if err != nil {
		return nil, Sent{}, err
	}
	args.ReplyKey = pubKey
	cmd := wire.Command{Envelope: wire.Envelope{SchemaVersion: wire.CommandSchemaVersion, MessageID: c.idPrefix + randomHex(12),
		Site: site, Device: device, TS: c.now().UTC()}, Command: name, Args: args}
	sent := Sent{MessageID: cmd.MessageID}
	payload, err := json.Marshal(cmd)
	if err != nil {
		return nil, sent, err
	}
	// Sign only what an agent accepts: a bad argument is the caller's.
	if _, err := wire.DecodeCommand(payload); err != nil {
		return nil, sent, err
	}
	msg, err := wire.SignCommand(c.key, payload)
	if err != nil {
		return nil, sent, err
	}
	topics, err := wire.NewTopics(c.prefix, site, device)
	if err != nil {
		return nil, sent, err
	}
	w := &call{site: site, device: device, name: name, key: replyKey, pin: pin, reply: make(chan wire.Reply, 1)}
	sent.Authenticated = pin != nil
	c.mu.Lock()
	c.waiting[cmd.MessageID] = w
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiting, cmd.MessageID)
		c.mu.Unlock()
	}()
	timeout := time.NewTimer(c.cfg.ReplyTimeout)
	defer timeout.Stop()
	publish := func() error {
		pctx, cancel := context.WithTimeout(ctx, c.cfg.ResendInterval)
		defer cancel()
		return c.pub.Publish(pctx, topics.Command(), msg)
	}
	if before != nil {
		if err := before(sent); err != nil {
			return nil, sent, err
		}
	}
	if err := publish(); errors.Is(err, ingest.ErrNotConnected) {
		c.setErr(err)
		return nil, sent, fmt.Errorf("%w: %w", ErrBroker, err)
	} else if err != nil {
		// Handed to the client library while connected, but not
		// acknowledged in time: it keeps the message and may deliver it
		// yet (a stalled broker). Wait for the reply as for any command:
		// the copies are resent meanwhile.
		c.setErr(err)
		c.log.Warn("fleet command: first publish not acknowledged in time; waiting for the reply", "command", name,
			"site", site, "device", device, "message_id", cmd.MessageID, "err", err)
	}
	sent.Published = true
	c.sent.Add(1)
	c.log.Info("fleet command sent", "command", name, "site", site, "device", device, "message_id", cmd.MessageID)
	resend := time.NewTicker(c.cfg.ResendInterval)
	defer resend.Stop()
	for {
		select {
		case r := <-w.reply:
			if r.OK {
				return r.Result, sent, nil
			}
			return nil, sent, refusal(name, r)
		case <-resend.C:
			// The same signed bytes: the agent runs the id at most once.
			if err := publish(); err != nil {
				c.setErr(err)
			} else {
				c.resent.Add(1)
			}
		case <-timeout.C:
			c.timedOut.Add(1)
			return nil, sent, fmt.Errorf("%w within %v", ErrTimeout, c.cfg.ReplyTimeout)
		case <-ctx.Done():
			return nil, sent, ctx.Err()
		}
	}
}

// RefusedError is an agent's ok:false answer to a command: ErrUnsupported
// when the agent does not know the command (an older release), ErrRefused
// otherwise (errors.Is), with the reply's code and error text.
type RefusedError struct {
	// Code is the reply's code: "" from an agent before codes.
	Code wire.ReplyCode
	// Answer is the reply's error text.
	Answer string
	err    error
}

func (e *RefusedError) Error() string { return e.err.Error() }
func (e *RefusedError) Unwrap() error { return e.err }

// RefusalCode is the code of the agent's refusal in err's chain: "" when
// err is no refusal, or one from an agent before codes.
func RefusalCode(err error) wire.ReplyCode {
	var re *RefusedError
	if errors.As(err, &re) {
		return re.Code
	}
	return ""
}

// refusal is the error of a reply with ok false. Its code decides; a
// reply without one (an agent before codes) is read by its text, the
// only way such an agent says it is older than the command.
func refusal(name wire.CommandName, r wire.Reply) error {
	e := &RefusedError{Code: r.Code, Answer: r.Error}
	switch {
	case r.Code == wire.CodeUnsupported:
		e.err = fmt.Errorf("%w (it answered: %s)", ErrUnsupported, r.Error)
	case r.Code != "":
		e.err = fmt.Errorf("%w: %s", ErrRefused, r.Error)
	case strings.Contains(r.Error, `unknown field "reply_key"`):
		e.err = fmt.Errorf("%w (it cannot seal its replies; it answered: %s)", ErrUnsupported, r.Error)
	case olderAgent(name, r.Error):
		e.err = fmt.Errorf("%w (it answered: %s)", ErrUnsupported, r.Error)
	default:
		e.err = fmt.Errorf("%w: %s", ErrRefused, r.Error)
	}
	return e
}

// olderAgent reports whether a refusal without a code is how an agent of
// a release before the command answers it: "unknown command", or, for
// split and merge, its strict decoder's refusal of the arguments it did
// not know yet (it reads the arguments before the command's name).
func olderAgent(name wire.CommandName, answer string) bool {
	if strings.Contains(answer, "unknown command") {
		return true
	}
	switch name {
	case wire.CmdSplitVisits:
		return strings.Contains(answer, `unknown field "visits"`)
	case wire.CmdMergeIdentities:
		return strings.Contains(answer, `unknown field "into"`)
	}
	return false
}

func (c *Client) setErr(err error) {
	c.mu.Lock()
	c.lastErr = err.Error()
	c.mu.Unlock()
}

// errNotOurs: a valid reply to a command this client did not send.
var errNotOurs = errors.New("a reply to another sender's command")

// MaxReplySize bounds a reply that is decoded (an identity_visits result
// of wire.MaxReviewVisits visits is about 20 KB).
const MaxReplySize = 256 << 10

// Handle takes one message of the reply filter (ingest.Ingester.Route):
// a valid reply to a waiting command wakes it; anything else is counted
// and dropped. It never blocks.
func (c *Client) Handle(topic string, payload []byte) {
	if err := c.accept(topic, payload); errors.Is(err, errNotOurs) {
		c.others.Add(1)
	} else if err != nil {
		c.ignored.Add(1)
		c.mu.Lock()
		now := c.now()
		quiet := c.quiet
		doLog := c.loggedAt.IsZero() || now.Sub(c.loggedAt) >= ignoredLogEvery
		if doLog {
			c.loggedAt, c.quiet = now, 0
		} else {
			c.quiet++
		}
		c.mu.Unlock()
		if doLog {
			c.log.Warn("fleet command: reply ignored", "topic", topic, "err", err, "ignored_without_a_line_since_the_last", quiet)
		}
	}
}

// ignoredLogEvery bounds the log lines of ignored replies: whoever may
// publish on the reply topics could otherwise fill the log.
const ignoredLogEvery = 10 * time.Second

func (c *Client) accept(topic string, payload []byte) error {
	if len(payload) == 0 {
		return errors.New("empty payload")
	}
	tp, err := wire.ParseTopic(c.prefix, topic)
	if err != nil {
		return err
	}
	if tp.Kind != wire.KindReply {
		return fmt.Errorf("kind %q is not a reply", tp.Kind)
	}
	r, err := c.decodeReply(payload)
	if err != nil {
		return err
	}
	if r.Site != tp.Site || r.Device != tp.Device {
		return fmt.Errorf("reply names %s/%s on the topic of %s/%s", r.Site, r.Device, tp.Site, tp.Device)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.waiting[r.CorrelationID]
	switch {
	case w == nil && !strings.HasPrefix(r.CorrelationID, c.idPrefix):
		return errNotOurs
	case w == nil:
		return fmt.Errorf("correlation_id %q: no command waiting for it (answered already, timed out, or never sent here)", r.CorrelationID)
	case w.site != tp.Site || w.device != tp.Device:
		return fmt.Errorf("correlation_id %q answered by %s/%s: the command went to %s/%s", r.CorrelationID, tp.Site, tp.Device, w.site, w.device)
	case r.Command != w.name:
		return fmt.Errorf("correlation_id %q answered as %q: the command was %q", r.CorrelationID, r.Command, w.name)
	}
	if w.answered { // a second reply to the same command: the first one stands
		return fmt.Errorf("correlation_id %q answered again", r.CorrelationID)
	}
	// With a pinned key, only the device's own signature over this
	// reply's device, command, correlation id, outcome and result counts.
	if w.pin != nil {
		if err := wire.VerifyReply(w.pin, r); err != nil {
			c.badSig.Add(1)
			return fmt.Errorf("correlation_id %q: %w", r.CorrelationID, err)
		}
	}
	if w.key != nil {
		res, err := openResult(w.key, r)
		if err != nil {
			return fmt.Errorf("correlation_id %q: %w", r.CorrelationID, err)
		}
		r.Result, r.Sealed = res, ""
	}
	// Taken once, under c.mu: the reply channel's room alone let a second
	// reply in once the waiter had read the first.
	w.answered = true
	w.reply <- r // room for one: never blocks
	c.answered.Add(1)
	if w.pin == nil {
		c.unauth.Add(1)
	}
	return nil
}

// decodeReply applies the ingest's JSON rules (names in lower-case
// snake_case and once, no biometric or card field names at any depth, no
// NUL), the reply schema as a reader takes it (fields it does not know
// ignored, as the versioning policy asks), then decodes.
func (c *Client) decodeReply(payload []byte) (wire.Reply, error) {
	if len(payload) > MaxReplySize {
		return wire.Reply{}, fmt.Errorf("reply of %d bytes, limit %d", len(payload), MaxReplySize)
	}
	if err := wire.CheckJSON(payload, ingest.ReaderRules); err != nil {
		return wire.Reply{}, fmt.Errorf("reply: %w", err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(payload))
	if err != nil {
		return wire.Reply{}, fmt.Errorf("reply: not JSON: %w", err)
	}
	if err := c.schema.Validate(inst); err != nil {
		return wire.Reply{}, fmt.Errorf("reply violates reply.schema.json: %s", strings.Join(strings.Fields(err.Error()), " "))
	}
	var r wire.Reply
	if err := json.Unmarshal(payload, &r); err != nil {
		return wire.Reply{}, fmt.Errorf("reply: %w", err)
	}
	return r, nil
}

// openResult is the result of a reply to a command that asked for it
// sealed: opened with the command's key in the context of the command it
// answers (its site, device, name and id, which the reply was checked to
// name), and held to the reply's rules (a JSON object, the ingest's JSON
// rules). A result in clear, or none on an ok reply, is refused: whoever
// may publish on the reply topic could have sent it; a refusal carries no
// result, sealed or not.
func openResult(key *ecdh.PrivateKey, r wire.Reply) (json.RawMessage, error) {
	switch {
	case r.Result != nil:
		return nil, errors.New("a result in clear to a command that asked for it sealed")
	case !r.OK && r.Sealed != "":
		return nil, errors.New("a sealed result on a refusal")
	case !r.OK:
		return nil, nil
	case r.Sealed == "":
		return nil, errors.New("no sealed result to a command that asked for it sealed")
	}
	plain, err := wire.OpenResult(key, r.SealContext(), r.Sealed)
	if err != nil {
		return nil, err
	}
	if err := wire.CheckJSON(plain, ingest.ReaderRules); err != nil {
		return nil, fmt.Errorf("sealed result: %w", err)
	}
	if b := bytes.TrimSpace(plain); len(b) == 0 || b[0] != '{' || !json.Valid(b) {
		return nil, errors.New("sealed result: not a JSON object")
	}
	return plain, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// TxnWithheld replaces a transaction id of a review that holds what looks
// like a card number (carddata.PANInText): it is not shown.
const TxnWithheld = "withheld: looks like a card number"

// IdentityVisits asks the device for one identity's visits (identity_visits)
// and checks the answer (CheckVisits); a transaction id that holds a card
// number is replaced by TxnWithheld. An answer is kept ReviewCache for the
// same identity of the same device, unless a correction is sent to the
// device meanwhile.
func (c *Client) IdentityVisits(ctx context.Context, site, device, id string) (wire.IdentityVisitsResult, Sent, error) {
	if c == nil {
		return wire.IdentityVisitsResult{}, Sent{}, ErrNotConfigured
	}
	key := reviewKey{site, device, id}
	c.mu.Lock()
	gen := c.gen[site+"/"+device]
	cr, ok := c.reviews[key]
	if ok && c.now().Sub(cr.at) >= c.cfg.ReviewCache {
		delete(c.reviews, key)
		ok = false
	}
	c.mu.Unlock()
	if ok {
		c.cached.Add(1)
		cr.sent.Cached = true
		return cloneVisits(cr.res), cr.sent, nil
	}
	var out wire.IdentityVisitsResult
	raw, sent, err := c.Do(ctx, site, device, wire.CmdIdentityVisits, wire.CommandArgs{ID: id})
	if err == nil {
		err = decodeResult(raw, &out)
	}
	if err == nil {
		err = CheckVisits(out, id)
	}
	if err != nil {
		return out, sent, err
	}
	for i, v := range out.Visits {
		txns := append([]*string{&out.Visits[i].TxnID}, pointers(out.Visits[i].CoalescedTxnIDs)...)
		for _, t := range txns {
			if carddata.PANInText(*t) > 0 {
				*t = TxnWithheld
				c.withheld.Add(1)
				c.log.Warn("fleet command: a transaction id of a review looks like a card number: withheld", "site", site, "device", device,
					"identity", id, "visit_id", v.VisitID)
			}
		}
	}
	if c.cfg.ReviewCache > 0 {
		c.mu.Lock()
		now := c.now()
		if len(c.reviews) >= maxCachedReviews {
			for k, e := range c.reviews {
				if now.Sub(e.at) >= c.cfg.ReviewCache {
					delete(c.reviews, k)
				}
			}
		}
		if c.gen[site+"/"+device] == gen && len(c.reviews) < maxCachedReviews {
			c.reviews[key] = cachedReview{res: cloneVisits(out), sent: sent, at: now}
		}
		c.mu.Unlock()
	}
	return out, sent, nil
}

func cloneVisits(r wire.IdentityVisitsResult) wire.IdentityVisitsResult {
	r.Visits, r.Apart = slices.Clone(r.Visits), slices.Clone(r.Apart)
	for i := range r.Visits {
		r.Visits[i].CoalescedTxnIDs = slices.Clone(r.Visits[i].CoalescedTxnIDs)
		r.Visits[i].CoalescedCards = slices.Clone(r.Visits[i].CoalescedCards)
	}
	return r
}

// corrected drops the device's cached reviews: a correction is being
// sent to it, or was.
func (c *Client) corrected(site, device string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen[site+"/"+device]++
	for k := range c.reviews {
		if k.site == site && k.device == device {
			delete(c.reviews, k)
		}
	}
}

// Split moves visits off identity id into a new one (split_visits).
// before, if not nil, is called just before the command is first
// published (BeforeSend).
func (c *Client) Split(ctx context.Context, site, device, id string, visits []string, before BeforeSend) (wire.SplitResult, Sent, error) {
	return correct(ctx, c, site, device, wire.CmdSplitVisits, wire.CommandArgs{ID: id, Visits: visits}, before, func(out wire.SplitResult) bool {
		return out.Identity == id && wire.ValidateID(out.NewIdentity, 64) == nil && out.NewIdentity != id &&
			out.VisitsMoved >= 0 && out.VisitsMoved <= len(visits)
	})
}

// Merge moves every visit of id into identity into (merge_identities).
// before: as for Split.
func (c *Client) Merge(ctx context.Context, site, device, id, into string, before BeforeSend) (wire.MergeResult, Sent, error) {
	return correct(ctx, c, site, device, wire.CmdMergeIdentities, wire.CommandArgs{ID: id, Into: into}, before, func(out wire.MergeResult) bool {
		return out.Identity == into && out.Merged == id && out.VisitsMoved >= 0
	})
}

// correct sends a correction (Split, Merge) with the device's cached
// reviews dropped before and after, and decodes its result, which fits
// must accept.
func correct[T any](ctx context.Context, c *Client, site, device string, name wire.CommandName, args wire.CommandArgs, before BeforeSend,
	fits func(T) bool) (T, Sent, error) {
	var out T
	if c == nil {
		return out, Sent{}, ErrNotConfigured
	}
	c.corrected(site, device)
	defer c.corrected(site, device)
	raw, sent, err := c.do(ctx, site, device, name, args, before)
	if err == nil {
		err = decodeResult(raw, &out)
	}
	if err == nil && !fits(out) {
		err = fmt.Errorf("%w: the result %+v does not answer %s %+v", ErrBadResult, out, name, args)
	}
	return out, sent, err
}

// ErrBadResult: the reply's result is not what the command asks for.
var ErrBadResult = errors.New("the device's answer does not fit the command")

func decodeResult(raw json.RawMessage, v any) error {
	if len(raw) == 0 {
		return fmt.Errorf("%w: no result", ErrBadResult)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("%w: %w", ErrBadResult, err)
	}
	return nil
}

// CheckVisits checks an identity_visits result for identity id: the
// identity it names, at most wire.MaxReviewVisits visits, no more than
// total, valid and distinct visit ids, transaction ids without control or
// formatting characters (shown to an analyst), card numbers >= 0,
// similarities in -1..1, valid identities apart.
func CheckVisits(r wire.IdentityVisitsResult, id string) error {
	bad := func(f string, a ...any) error {
		return fmt.Errorf("%w: identity_visits: %s", ErrBadResult, fmt.Sprintf(f, a...))
	}
	if r.Identity != id {
		return bad("answers for identity %q, asked %q", r.Identity, id)
	}
	if len(r.Visits) > wire.MaxReviewVisits || r.Total < len(r.Visits) {
		return bad("%d visits listed of total %d (at most %d listed)", len(r.Visits), r.Total, wire.MaxReviewVisits)
	}
	seen := map[string]bool{}
	for i, v := range r.Visits {
		switch {
		case wire.ValidateID(v.VisitID, 64) != nil || seen[v.VisitID]:
			return bad("visits[%d]: visit_id %q invalid or twice", i, v.VisitID)
		case len(v.TxnID) > 128 || strings.IndexFunc(v.TxnID, invisible) >= 0:
			return bad("visits[%d]: txn_id too long or holding control characters", i)
		case len(v.CoalescedTxnIDs) > maxCoalesced || len(v.CoalescedCards) > maxCoalesced:
			return bad("visits[%d]: %d coalesced txn_ids, %d cards (at most %d)", i, len(v.CoalescedTxnIDs), len(v.CoalescedCards), maxCoalesced)
		case slices.ContainsFunc(v.CoalescedTxnIDs, func(t string) bool { return t == "" || len(t) > 128 || strings.IndexFunc(t, invisible) >= 0 }):
			return bad("visits[%d]: a coalesced txn_id empty, too long or holding control characters", i)
		case v.Card < 0 || slices.ContainsFunc(v.CoalescedCards, func(n int) bool { return n < 1 }):
			return bad("visits[%d]: card %d, coalesced cards %v", i, v.Card, v.CoalescedCards)
		case v.Similarity != nil && (*v.Similarity < -1 || *v.Similarity > 1):
			return bad("visits[%d]: similarity %v outside -1..1", i, *v.Similarity)
		case v.TS.IsZero():
			return bad("visits[%d]: no ts", i)
		}
		seen[v.VisitID] = true
	}
	for i, a := range r.Apart {
		if wire.ValidateID(a, 64) != nil {
			return bad("apart[%d]: %q", i, a)
		}
	}
	return nil
}

// maxCoalesced bounds a reviewed visit's folded card inserts (the agent
// keeps at most visit.MaxCoalesced).
const maxCoalesced = 16

// pointers points at each element of s.
func pointers(s []string) []*string {
	out := make([]*string, len(s))
	for i := range s {
		out[i] = &s[i]
	}
	return out
}

// invisible: control and Unicode formatting characters (as the ingest
// refuses in identifiers).
func invisible(r rune) bool { return unicode.IsControl(r) || unicode.Is(unicode.Cf, r) }
