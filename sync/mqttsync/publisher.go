package mqttsync

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/redact"
	"github.com/periocular/atm-agent/sync/wire"
)

// Outbox is the store's outbox as the publisher uses it. OutboxPending
// returns up to max unsent messages in key order; OutboxAck deletes them
// once the broker has acknowledged them.
type Outbox interface {
	OutboxPending(ctx context.Context, max int) ([]visit.OutboxMessage, error)
	OutboxAck(ctx context.Context, keys ...uint64) error
}

// SentSeqOutbox is an optional Outbox capability: the highest seq a
// previous run delivered (store.Store.OutboxSentSeq). Run starts the
// status's seq from it, so a restarted agent does not report 0 until its
// first new acknowledgement.
type SentSeqOutbox interface {
	OutboxSentSeq(ctx context.Context) (uint64, error)
}

// StateKeeper is an optional Outbox capability: it keeps what the
// retained state says of the last summary delivered (wire.StateSummary as
// JSON), so a restarted agent's state carries it before its next summary
// (store.Store).
type StateKeeper interface {
	KeepStateSummary(ctx context.Context, b []byte) error
	StateSummary(ctx context.Context) ([]byte, error)
}

// CommandHandler executes remote commands other than ping. The result, if
// not nil, is marshalled into the reply's "result" object.
type CommandHandler interface {
	HandleCommand(ctx context.Context, cmd wire.Command) (result any, err error)
}

// Deps are the publisher's collaborators.
type Deps struct {
	Outbox Outbox // required
	// Status returns the agent's current health; the publisher fills the
	// envelope, state, uptime and seq. Nil publishes a bare status.
	Status   func() wire.Status
	Commands CommandHandler // used when cfg.Commands.Enabled
	// Ready receives when the outbox has new messages (the store's
	// OutboxReady); the drain then runs at once instead of at the next
	// DrainInterval. Nil: the interval alone.
	Ready <-chan struct{}
	// StatusHold, when not nil, holds back the retained online status
	// and state until it is closed: the daemon passes its camera's first
	// open (camera.FirstOpenDone), so a restart does not publish
	// "degraded, camera: down" for a camera that is only still opening.
	// The outbox drains meanwhile; the stopped status at shutdown is not
	// held. StatusHoldMax, when above 0, bounds the wait from Run's start.
	StatusHold    <-chan struct{}
	StatusHoldMax time.Duration
	Logger        *slog.Logger
	Now           func() time.Time // injected clock; time.Now when nil
	// Version is the agent version shown in Home Assistant's device.
	Version string
}

// Stats is a snapshot of the publisher's counters.
type Stats struct {
	Connected    bool
	Connects     uint64 // successful (re)connections
	Published    uint64 // outbox messages acknowledged by the broker
	Historical   uint64 // of which sent with historical=true
	Failed       uint64 // publishes that failed or timed out (retried later)
	LastAckedSeq uint64
	LastError    string // last connection or publish error
	// CommandsAccepted counts commands that passed every check and ran;
	// CommandsRejected counts refused ones by reason (oversize, unsigned,
	// bad_signature, invalid, wrong_device, stale, replayed, ...).
	CommandsAccepted uint64
	CommandsRejected map[string]uint64
	// CommandsThrottled, of CommandsRejected, counts commands dropped
	// without a signature check while forged ones exceeded the budget of
	// failed checks (reason throttled).
	CommandsThrottled uint64
	// StatusPublished counts retained status messages published (on
	// connect, on change, at StatusInterval, at shutdown).
	StatusPublished uint64
	// Unacked counts outbox publishes of the current connection whose
	// PUBACK did not come within PublishTimeout. Nothing new is published
	// on that connection while any waits (see Publisher.unacked).
	Unacked int
	// Oversize counts outbox messages larger than MaxMessageSize that
	// could not be shrunk and were dropped; Trimmed the summaries shrunk
	// to fit (identities moved to identities_omitted).
	Oversize, Trimmed uint64
}

// ErrTimeout is returned when a token did not complete in time.
var ErrTimeout = errors.New("mqtt: timed out waiting for broker")

// Publisher drains the outbox to the broker and keeps the retained status.
type Publisher struct {
	cfg    Config
	topics wire.Topics
	d      Deps
	log    *slog.Logger
	now    func() time.Time
	opts   *mqtt.ClientOptions
	// willOpts configure the connection that only holds the state's Last
	// Will (nil when Config.StateWill is off).
	willOpts *mqtt.ClientOptions
	start    time.Time
	notify   chan struct{}

	runCtx context.Context // set by Run before connecting

	mu          sync.Mutex
	client      mqtt.Client
	willClient  mqtt.Client // nil when Config.StateWill is off
	connectedAt time.Time
	// downSeen: the connection was seen closed and onConnect has not run
	// since. paho reports the connection open before it runs onConnect, so
	// without this a batch in that gap would stamp outage messages live
	// against the previous connection's time.
	downSeen  bool
	lastErr   string
	errLogged map[string]time.Time // message -> when it was last logged
	ran       bool

	connects, published, historical, failed, lastSeq atomic.Uint64
	unackedN                                         atomic.Int64
	holdOver                                         atomic.Bool // Deps.StatusHoldMax has passed
	oversize, trimmed                                atomic.Uint64

	// The retained status and state, serialised by statusMu: the
	// fingerprint and time of the last one published, and what the state
	// keeps of the last summary and alert sent (stateDirty: one was sent
	// since the state was last published).
	statusMu      sync.Mutex
	lastFP        string
	lastStatusAt  time.Time
	lastSummary   *wire.StateSummary
	lastAlert     *wire.StateAlert
	stateDirty    bool
	statusPublish atomic.Uint64

	// unacked are outbox publishes of connection unackedConn (the value
	// of connects) whose PUBACK did not come within PublishTimeout. paho
	// keeps each one in memory until the broker acknowledges it, so
	// nothing new is published on that connection while any waits: a
	// broker that takes publishes but stops acknowledging them would
	// otherwise collect one more copy of the head of the outbox every
	// drain round, without bound. A late PUBACK still acks the message in
	// the outbox. Only the Run goroutine touches them.
	unacked     []inflight
	unackedConn uint64
	// statusWait is a status or state publish of connection
	// statusWaitConn that timed out: no other is published on that
	// connection until it completes (same reason). Under statusMu.
	statusWait     mqtt.Token
	statusWaitConn uint64

	// deviceKey signs replies, status, state, summaries and alerts (nil:
	// published unsigned; see loadDeviceKey).
	deviceKey ed25519.PrivateKey

	guard        *commandGuard // nil unless commands are enabled
	cmdAccepted  atomic.Uint64
	cmdRejected  map[string]uint64 // by reason; under mu
	rejectLogged map[string]rejectLog
}

// New validates cfg, loads the TLS material and password, and returns a
// publisher ready to Run.
func New(cfg Config, d Deps) (*Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if d.Outbox == nil {
		return nil, errors.New("mqttsync: Deps.Outbox is required")
	}
	if cfg.Commands.Enabled && d.Commands == nil {
		return nil, errors.New("mqttsync: commands enabled but Deps.Commands is nil")
	}
	p := &Publisher{cfg: cfg, d: d, log: d.Logger, now: d.Now, notify: make(chan struct{}, 1),
		cmdRejected: map[string]uint64{}, rejectLogged: map[string]rejectLog{}}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	if p.now == nil {
		p.now = time.Now
	}
	var err error
	if p.deviceKey, err = loadDeviceKey(cfg.Commands, p.log); err != nil {
		return nil, err
	}
	if cfg.Commands.Enabled {
		g, err := newCommandGuard(cfg.Commands, p.now(), p.log.Warn)
		if err != nil {
			return nil, err
		}
		p.guard = g
	}
	p.topics, _ = cfg.Topics()
	p.start = p.now()
	opts, err := clientOptions(cfg, cfg.clientID())
	if err != nil {
		return nil, err
	}
	if err := p.setStatusWill(opts); err != nil {
		return nil, err
	}
	// The will is made again before every reconnect (paho builds each
	// CONNECT from the options this handler is given), so each connection
	// registers an offline status of its own: a fresh message_id, its ts
	// and the seq acknowledged by then. Run makes it again before the
	// first connect.
	opts.SetReconnectingHandler(func(_ mqtt.Client, o *mqtt.ClientOptions) { p.refreshWill(o, p.setStatusWill) })
	opts.SetOnConnectHandler(p.onConnect)
	opts.SetConnectionLostHandler(func(c mqtt.Client, err error) {
		if !c.IsConnectionOpen() { // not already reconnected
			p.mu.Lock()
			p.downSeen = true
			p.mu.Unlock()
		}
		p.setErr(fmt.Errorf("connection lost: %w", err))
	})
	// paho reports a failed dial per broker (BrokerFailed), then the
	// attempt's failure (Failed). A handshake that fails (credentials or a
	// client certificate refused, no CONNACK in time) reports only the
	// latter: it is logged with the broker it was made to.
	var attempt struct {
		sync.Mutex
		broker   string
		dialFail bool
	}
	opts.SetConnectionNotificationHandler(func(_ mqtt.Client, n mqtt.ConnectionNotification) {
		attempt.Lock()
		defer attempt.Unlock()
		switch n := n.(type) {
		case mqtt.ConnectionNotificationBroker:
			attempt.broker, attempt.dialFail = redact.URL(n.Broker.String()), false
		case mqtt.ConnectionNotificationBrokerFailed:
			attempt.dialFail = true
			p.setErr(fmt.Errorf("connect %s: %w", redact.URL(n.Broker.String()), n.Reason))
		case mqtt.ConnectionNotificationFailed:
			if !attempt.dialFail {
				p.setErr(fmt.Errorf("connect %s: %w", attempt.broker, n.Reason))
				break
			}
			// Follows the BrokerFailed just logged with the broker's
			// name: record, do not log it again.
			p.mu.Lock()
			p.lastErr = redact.String(fmt.Sprintf("connect: %v", n.Reason), p.cfg.Brokers...)
			p.mu.Unlock()
		}
	})
	p.opts = opts
	if cfg.StateWill {
		if p.willOpts, err = p.stateWillOptions(); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// stateWillOptions configures the second connection, which publishes
// nothing itself: its Last Will is an offline state, so a crash or a lost
// network turns the retained state offline as the status's own will does.
// Each time it (re)connects, the broker may just have published that will
// (the previous connection died, or was taken over by this one), so the
// publisher republishes the current state.
func (p *Publisher) stateWillOptions() (*mqtt.ClientOptions, error) {
	o, err := clientOptions(p.cfg, p.cfg.clientID()+"-will")
	if err != nil {
		return nil, err
	}
	if err := p.setStateWill(o); err != nil {
		return nil, err
	}
	o.SetReconnectingHandler(func(_ mqtt.Client, o *mqtt.ClientOptions) { p.refreshWill(o, p.setStateWill) })
	o.SetOnConnectHandler(func(mqtt.Client) {
		p.statusMu.Lock()
		p.stateDirty = true
		p.statusMu.Unlock()
		p.Notify()
	})
	// Its failures are worth a warning only while the publisher's own
	// connection works (the broker refuses this client id, say): with
	// the broker down, that connection's warning says it all.
	o.SetConnectionLostHandler(func(_ mqtt.Client, err error) {
		if p.mainOpen() {
			p.setErr(fmt.Errorf("state will connection lost: %w", err))
		}
	})
	o.SetConnectionNotificationHandler(func(_ mqtt.Client, n mqtt.ConnectionNotification) {
		if n, ok := n.(mqtt.ConnectionNotificationBrokerFailed); ok && p.mainOpen() {
			p.setErr(fmt.Errorf("state will connect %s: %w", redact.URL(n.Broker.String()), n.Reason))
		}
	})
	return o, nil
}

// setStatusWill sets o's Last Will: a retained offline status built now
// (a message_id of its own, ts now, seq the last acknowledged).
func (p *Publisher) setStatusWill(o *mqtt.ClientOptions) error {
	will, err := p.marshalSigned(wire.KindStatus, p.status(wire.StateOffline))
	if err != nil {
		return fmt.Errorf("mqttsync: build last will: %w", err)
	}
	o.SetBinaryWill(p.topics.Status(), will, 1, true)
	return nil
}

// setStateWill sets o's Last Will: a retained offline state built now.
func (p *Publisher) setStateWill(o *mqtt.ClientOptions) error {
	ds := wire.DeviceState{Status: p.status(wire.StateOffline)}
	ds.SchemaVersion, ds.MessageID = wire.StateSchemaVersion, randomID("sd")
	will, err := p.marshalSigned(wire.KindState, ds)
	if err != nil {
		return fmt.Errorf("mqttsync: build state last will: %w", err)
	}
	o.SetBinaryWill(p.topics.State(), will, 1, true)
	return nil
}

// refreshWill makes a will again with set; on failure (never expected: the
// payload is plain data) the previous will stays. It takes no lock of the
// publisher's (Run calls it under mu).
func (p *Publisher) refreshWill(o *mqtt.ClientOptions, set func(*mqtt.ClientOptions) error) {
	if err := set(o); err != nil {
		p.log.Warn("mqtt: the previous Last Will is kept", "err", err)
	}
}

// mainOpen says whether the publisher's own connection is open.
func (p *Publisher) mainOpen() bool {
	p.mu.Lock()
	c := p.client
	p.mu.Unlock()
	return c != nil && c.IsConnectionOpen()
}

// clientOptions builds paho options shared by the publisher, Probe and Watch.
func clientOptions(cfg Config, clientID string) (*mqtt.ClientOptions, error) {
	tc, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	pw, err := cfg.password()
	if err != nil {
		return nil, err
	}
	o := mqtt.NewClientOptions()
	for _, b := range cfg.Brokers {
		o.AddBroker(b)
	}
	o.SetClientID(clientID)
	if tc != nil {
		o.SetTLSConfig(tc)
	}
	if cfg.Username != "" {
		o.SetUsername(cfg.Username)
		o.SetPassword(pw)
	}
	o.SetKeepAlive(cfg.KeepAlive)
	o.SetPingTimeout(min(cfg.KeepAlive, 10*time.Second))
	o.SetConnectTimeout(cfg.ConnectTimeout)
	o.SetWriteTimeout(cfg.PublishTimeout)
	o.SetAutoReconnect(true)
	o.SetMaxReconnectInterval(cfg.ReconnectBackoffMax)
	o.SetConnectRetry(true)
	o.SetConnectRetryInterval(min(cfg.ReconnectBackoffMax, 5*time.Second))
	// The outbox is ours: nothing needs a broker-side session, and paho's
	// in-memory store only covers what is in flight on one connection.
	o.SetCleanSession(true)
	o.SetOrderMatters(false)
	o.SetStore(mqtt.NewMemoryStore())
	return o, nil
}

// Notify wakes the drain loop, e.g. right after a commit that added outbox
// messages. It never blocks.
func (p *Publisher) Notify() {
	select {
	case p.notify <- struct{}{}:
	default:
	}
}

// Stats returns the current counters.
func (p *Publisher) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := Stats{Connects: p.connects.Load(), Published: p.published.Load(), Historical: p.historical.Load(),
		Failed: p.failed.Load(), LastAckedSeq: p.lastSeq.Load(), LastError: p.lastErr,
		CommandsAccepted: p.cmdAccepted.Load(), CommandsRejected: maps.Clone(p.cmdRejected), CommandsThrottled: p.cmdRejected[rejThrottled],
		StatusPublished: p.statusPublish.Load(), Unacked: int(p.unackedN.Load()),
		Oversize: p.oversize.Load(), Trimmed: p.trimmed.Load()}
	s.Connected = p.client != nil && p.client.IsConnectionOpen()
	return s
}

// redactAll masks the credentials in broker URLs.
func redactAll(urls []string) []string {
	out := make([]string, len(urls))
	for i, u := range urls {
		out[i] = redact.URL(u)
	}
	return out
}

func (p *Publisher) setErr(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	msg := redact.String(err.Error(), p.cfg.Brokers...)
	// Retrying connects fail every few seconds, and each retry reports
	// twice (the broker's failure, then the attempt's), so comparing with
	// the previous message alone logged every retry twice. Each distinct
	// message is logged once, then at most once a minute, until a
	// connection succeeds (onConnect forgets them: the next failure is a
	// change of state and logged again).
	if p.errLogged == nil {
		p.errLogged = map[string]time.Time{}
	}
	if at, ok := p.errLogged[msg]; !ok || p.now().Sub(at) > time.Minute {
		p.log.Warn("mqtt", "err", msg)
		p.errLogged[msg] = p.now()
	}
	p.lastErr = msg
}

// Run connects (retrying until ctx ends), drains the outbox until ctx is
// cancelled, then publishes the retained "stopped" status and disconnects.
// Cancellation is not an error. Run may be called once.
func (p *Publisher) Run(ctx context.Context) error {
	p.mu.Lock()
	if p.ran {
		p.mu.Unlock()
		return errors.New("mqttsync: Run called twice")
	}
	p.ran = true
	p.runCtx = ctx
	if o, ok := p.d.Outbox.(SentSeqOutbox); ok {
		if seq, err := o.OutboxSentSeq(ctx); err != nil {
			p.log.Warn("mqtt: the last delivered seq could not be read; status seq starts at 0", "err", err)
		} else if seq > p.lastSeq.Load() {
			p.lastSeq.Store(seq)
		}
	}
	if k, ok := p.d.Outbox.(StateKeeper); ok {
		var ss wire.StateSummary
		if b, err := k.StateSummary(ctx); err != nil {
			p.log.Warn("mqtt: the last summary delivered could not be read; the state carries none until the next", "err", err)
		} else if b != nil && json.Unmarshal(b, &ss) == nil {
			p.statusMu.Lock()
			if p.lastSummary == nil {
				p.lastSummary = &ss
			}
			p.statusMu.Unlock()
		}
	}
	// The wills made in New carry seq 0 and New's time: made again now,
	// with the seq delivered by the previous run.
	p.refreshWill(p.opts, p.setStatusWill)
	p.client = mqtt.NewClient(p.opts)
	if p.willOpts != nil {
		p.refreshWill(p.willOpts, p.setStateWill)
		p.willClient = mqtt.NewClient(p.willOpts)
	}
	p.mu.Unlock()

	// With ConnectRetry the token completes only once connected; failures
	// are reported through the notification handler.
	p.client.Connect()
	if p.willClient != nil {
		p.willClient.Connect()
	}
	p.log.Info("mqtt publisher started", "brokers", redactAll(p.cfg.Brokers), "status_topic", p.topics.Status())

	tick := time.NewTicker(p.cfg.DrainInterval)
	defer tick.Stop()
	statusTick := time.NewTicker(min(statusCheck, p.cfg.StatusInterval))
	defer statusTick.Stop()
	hold := p.d.StatusHold
	var holdMax <-chan time.Time
	if hold != nil && p.d.StatusHoldMax > 0 {
		t := time.NewTimer(p.d.StatusHoldMax)
		defer t.Stop()
		holdMax = t.C
	}
	for {
		select {
		case <-ctx.Done():
			p.shutdown()
			return nil
		case <-hold:
			hold, holdMax = nil, nil // released: the status below goes out now
		case <-holdMax:
			p.holdOver.Store(true)
			hold, holdMax = nil, nil
		case <-p.notify:
		case <-p.d.Ready:
		case <-tick.C:
		case <-statusTick.C:
		}
		p.drain(ctx)
		if _, ok := p.connectionReady(); ok {
			p.publishStatus(ctx, p.client, wire.StateOnline, false)
		}
	}
}

// publishDiscovery sends the retained Home Assistant discovery configs.
func (p *Publisher) publishDiscovery(ctx context.Context, c mqtt.Client) {
	msgs, err := p.cfg.Discovery(p.d.Version)
	for _, m := range msgs {
		if err != nil {
			break
		}
		err = waitToken(ctx, c.Publish(m.Topic, 1, true, m.Payload), p.cfg.PublishTimeout)
	}
	if err != nil && ctx.Err() == nil {
		p.setErr(fmt.Errorf("publish home assistant discovery: %w", err))
	}
}

// StatusCheck is how often the publisher compares the agent's status with
// the one last published (a change is republished at once).
const StatusCheck = time.Second

// statusCheck is StatusCheck, longer in a test that must see drains
// wake only by the outbox's own signals (each check drains too).
var statusCheck = StatusCheck

// statusFingerprint is what a status change means: everything but the
// envelope, the uptime and the cameras' frame times; the outbox depth
// counts by its order of magnitude (0, 1-9, 10-99, ...), so a backlog that
// builds up or drains is a change and every single message is not.
func statusFingerprint(s wire.Status) string {
	s.Envelope, s.UptimeS = wire.Envelope{}, 0
	s.Cameras = slices.Clone(s.Cameras)
	for i := range s.Cameras {
		s.Cameras[i].LastFrame = time.Time{}
	}
	if s.Outbox != nil {
		o := *s.Outbox
		mag := 0
		for n := o.Depth; n > 0; n /= 10 {
			mag++
		}
		o.Depth = mag
		s.Outbox = &o
	}
	b, _ := json.Marshal(s)
	return string(b)
}

// publishStatus publishes the retained status and state when the status
// changed, a summary or alert was sent since, StatusInterval has passed,
// or force is set; a failure is retried at the next check.
func (p *Publisher) publishStatus(ctx context.Context, c mqtt.Client, state wire.State, force bool) {
	if p.statusHeld(state) {
		return
	}
	st := p.status(state)
	fp := statusFingerprint(st)
	p.statusMu.Lock()
	defer p.statusMu.Unlock()
	now := p.now()
	changed := force || fp != p.lastFP || now.Sub(p.lastStatusAt) >= p.cfg.StatusInterval
	if !changed && !p.stateDirty {
		return
	}
	if w := p.statusWait; w != nil {
		select {
		case <-w.Done():
			p.statusWait = nil
		default:
			if p.statusWaitConn == p.connects.Load() && c == p.client {
				return // the broker has not acknowledged the last one yet
			}
			p.statusWait = nil // a new connection: paho resent it under a new token
		}
	}
	publish := func(topic string, b []byte) error {
		tok := c.Publish(topic, 1, true, b)
		err := waitToken(ctx, tok, p.cfg.PublishTimeout)
		if errors.Is(err, ErrTimeout) && c == p.client {
			p.statusWait, p.statusWaitConn = tok, p.connects.Load()
		}
		return err
	}
	var err error
	if changed {
		var sb []byte
		if sb, err = p.marshalSigned(wire.KindStatus, st); err == nil {
			err = publish(p.topics.Status(), sb)
		}
	}
	if err == nil {
		ds := wire.DeviceState{Status: st, Summary: p.lastSummary, LastAlert: p.lastAlert}
		ds.SchemaVersion, ds.MessageID = wire.StateSchemaVersion, randomID("sd")
		var b []byte
		if b, err = p.marshalSigned(wire.KindState, ds); err == nil {
			err = publish(p.topics.State(), b)
		}
	}
	if err != nil {
		if ctx.Err() == nil {
			p.setErr(fmt.Errorf("publish %s status: %w", state, err))
		}
		return
	}
	if changed {
		p.lastFP, p.lastStatusAt = fp, now
		p.statusPublish.Add(1)
	}
	p.stateDirty = false
}

// sign signs a message of kind as published on this device's topic,
// over the exact bytes sent (wire.SignMessage); without a device key it
// is sent unsigned.
func (p *Publisher) sign(kind string, b []byte) ([]byte, error) {
	if p.deviceKey == nil {
		return b, nil
	}
	return wire.SignMessage(p.deviceKey, kind, p.topics.Site, p.topics.Device, b)
}

// marshalSigned is v's JSON, signed.
func (p *Publisher) marshalSigned(kind string, v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return p.sign(kind, b)
}

// statusHeld says whether a status of the given state waits for
// Deps.StatusHold (only the online one does).
func (p *Publisher) statusHeld(state wire.State) bool {
	if state != wire.StateOnline || p.d.StatusHold == nil || p.holdOver.Load() {
		return false
	}
	select {
	case <-p.d.StatusHold:
		return false
	default:
		return true
	}
}

// sent records what the state keeps of a summary or alert the broker
// acknowledged.
func (p *Publisher) sent(m visit.OutboxMessage, payload []byte) {
	switch m.Topic {
	case wire.KindSummary:
		var s wire.Summary
		if json.Unmarshal(payload, &s) != nil {
			return
		}
		ss := &wire.StateSummary{TS: s.TS, Seq: s.Seq, Totals: s.Totals, Faceless: s.Faceless,
			IdentitiesOmitted: s.IdentitiesOmitted, IdentitiesListed: len(s.Identities)}
		p.statusMu.Lock()
		p.lastSummary = ss
		p.stateDirty = true
		p.statusMu.Unlock()
		if k, ok := p.d.Outbox.(StateKeeper); ok {
			b, err := json.Marshal(ss)
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), p.cfg.PublishTimeout)
				err = k.KeepStateSummary(ctx, b)
				cancel()
			}
			if err != nil {
				p.log.Warn("mqtt: the last summary delivered could not be kept for the next start", "err", err)
			}
		}
	case wire.KindAlert:
		var a wire.Alert
		if json.Unmarshal(payload, &a) != nil {
			return
		}
		p.setLastAlert(a)
	}
}

func (p *Publisher) shutdown() {
	c, w := p.client, p.willClient
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.PublishTimeout)
	defer cancel()
	switch {
	case c.IsConnectionOpen():
		p.publishStatus(ctx, c, wire.StateStopped, true)
	case w != nil && w.IsConnectionOpen():
		// The status's will has fired (offline); the clean disconnect
		// below sends no state will, so say stopped through this one.
		p.publishStatus(ctx, w, wire.StateStopped, true)
	}
	if w != nil {
		w.Disconnect(250)
	}
	c.Disconnect(250)
	p.log.Info("mqtt publisher stopped", "published", p.published.Load())
}

func (p *Publisher) onConnect(c mqtt.Client) {
	p.mu.Lock()
	p.connectedAt = p.now()
	p.downSeen = false
	clear(p.errLogged)
	ctx := p.runCtx
	p.mu.Unlock()
	p.connects.Add(1)
	p.log.Info("mqtt connected", "connects", p.connects.Load())

	p.publishStatus(ctx, c, wire.StateOnline, true)
	if p.cfg.HomeAssistant.Enabled {
		p.publishDiscovery(ctx, c)
	}
	if p.cfg.Commands.Enabled {
		tok := c.Subscribe(p.topics.Command(), 1, p.onCommand)
		if err := waitToken(ctx, tok, p.cfg.PublishTimeout); err != nil {
			p.setErr(fmt.Errorf("subscribe %s: %w", p.topics.Command(), err))
		}
	}
	p.Notify()
}

// status builds a status message of the given state.
func (p *Publisher) status(state wire.State) wire.Status {
	var s wire.Status
	if p.d.Status != nil && state != wire.StateOffline {
		s = p.d.Status()
		s.Fit() // a long camera source or error must not make readers refuse it
	}
	now := p.now()
	s.Envelope = wire.NewEnvelope(p.cfg.Topic.Site, p.cfg.Topic.Device, now)
	s.SchemaVersion = wire.StatusSchemaVersion
	s.MessageID = randomID("st")
	s.Seq = p.lastSeq.Load()
	s.State = state
	if s.StartedAt.IsZero() {
		s.StartedAt = p.start.UTC()
	}
	if up := now.Sub(s.StartedAt); up > 0 {
		s.UptimeS = int64(up / time.Second)
	}
	return s
}

// MessageID returns the stable message id of an outbox message: the same
// for every redelivery of it, different for messages of a recreated store
// that reuse a sequence number.
func MessageID(device string, m visit.OutboxMessage) string {
	h := sha256.New()
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], m.Seq)
	binary.BigEndian.PutUint64(b[8:], uint64(m.Created.UnixNano()))
	h.Write([]byte(device))
	h.Write([]byte{0})
	h.Write(b[:])
	h.Write([]byte(m.Topic))
	return fmt.Sprintf("%d-%s", m.Seq, hex.EncodeToString(h.Sum(nil)[:8]))
}

// drain publishes pending outbox messages until the outbox is empty, the
// connection is down, or a publish fails.
func (p *Publisher) drain(ctx context.Context) {
	for ctx.Err() == nil && p.client.IsConnectionOpen() {
		msgs, err := p.d.Outbox.OutboxPending(ctx, p.cfg.Batch)
		if err != nil {
			if ctx.Err() == nil {
				p.setErr(fmt.Errorf("read outbox: %w", err))
			}
			return
		}
		if len(msgs) == 0 {
			return
		}
		slices.SortFunc(msgs, func(a, b visit.OutboxMessage) int {
			if a.Key < b.Key {
				return -1
			} else if a.Key > b.Key {
				return 1
			}
			return 0
		})
		acked, complete := p.publishBatch(ctx, msgs)
		if len(acked) > 0 {
			// Ack even if ctx just ended: the broker has these.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.PublishTimeout)
			err := p.d.Outbox.OutboxAck(actx, acked...)
			cancel()
			if err != nil {
				p.setErr(fmt.Errorf("ack outbox: %w", err))
				return
			}
		}
		if !complete {
			return
		}
	}
}

type inflight struct {
	msg     visit.OutboxMessage
	tok     mqtt.Token
	hist    bool
	payload []byte
}

// connectionReady says whether a publish may be handed to paho now: the
// connection is open and onConnect has run since it was last seen closed
// (it re-publishes the status and sets connectedAt, which decides what is
// historical; onConnect's Notify starts the next batch).
func (p *Publisher) connectionReady() (connectedAt time.Time, ok bool) {
	open := p.client.IsConnectionOpen()
	p.mu.Lock()
	defer p.mu.Unlock()
	if !open {
		p.downSeen = true
	}
	return p.connectedAt, open && !p.downSeen
}

// publishBatch publishes msgs in key order with at most MaxInflight
// outstanding, and returns the keys the broker acknowledged. complete is
// false when any publish failed; later messages are then not sent.
func (p *Publisher) publishBatch(ctx context.Context, msgs []visit.OutboxMessage) (acked []uint64, complete bool) {
	acked, stalled := p.reapUnacked()
	if stalled {
		return acked, false
	}
	// Those were read from the outbox with the rest: not again.
	msgs = slices.DeleteFunc(slices.Clone(msgs), func(m visit.OutboxMessage) bool { return slices.Contains(acked, m.Key) })
	conn := p.connects.Load()
	var q []inflight
	complete = true
	wait := func() {
		f := q[0]
		q = q[1:]
		if err := waitToken(ctx, f.tok, p.cfg.PublishTimeout); err != nil {
			if ctx.Err() == nil {
				p.failed.Add(1)
				p.setErr(fmt.Errorf("publish seq %d: %w", f.msg.Seq, err))
			}
			if errors.Is(err, ErrTimeout) {
				p.unacked = append(p.unacked, f)
				p.unackedConn = conn
				p.unackedN.Store(int64(len(p.unacked)))
			}
			complete = false
			return
		}
		acked = append(acked, f.msg.Key)
		p.delivered(f)
	}
	for _, m := range msgs {
		if !complete || ctx.Err() != nil {
			break
		}
		topic, err := p.topics.For(m.Topic)
		if err != nil {
			// A bad suffix can never be sent; fail loudly rather than
			// block the outbox silently.
			p.setErr(fmt.Errorf("outbox key %d: %w", m.Key, err))
			complete = false
			break
		}
		// While paho reconnects it would keep a publish in its own
		// store and resend that copy later, stamped live: the outbox is
		// the store, so nothing is handed over without a connection.
		connectedAt, ok := p.connectionReady()
		if !ok {
			complete = false
			break
		}
		now := p.now()
		hist := now.Sub(m.Created) > p.cfg.HistoricalAfter || m.Created.Before(connectedAt)
		// Device and site as the topic names them now: a message queued
		// before a rename carries the former ones (docs/operations.md).
		payload, err := wire.FinalizeStamp(m.Payload, wire.Stamp{Seq: m.Seq, MessageID: MessageID(p.cfg.Topic.Device, m),
			Historical: hist, Site: p.cfg.Topic.Site, Device: p.cfg.Topic.Device})
		if err != nil {
			p.setErr(fmt.Errorf("outbox key %d: %w", m.Key, err))
			complete = false
			break
		}
		// The signature comes last, over the bytes sent: the payload
		// must fit with it.
		limit := p.cfg.MaxMessageSize
		if p.deviceKey != nil {
			limit -= wire.MsgSigOverhead
		}
		if len(payload) > limit {
			// The broker would not forward it (mosquitto acknowledges
			// and drops it, others close the connection every try).
			var n int
			if m.Topic == wire.KindSummary {
				if fit, dropped, ferr := wire.FitSummary(payload, limit); ferr == nil {
					p.trimmed.Add(1)
					p.log.Warn("mqtt: summary larger than max_message_size: least active identities omitted",
						"seq", m.Seq, "bytes", len(payload), "max_message_size", p.cfg.MaxMessageSize, "omitted", dropped)
					payload, n = fit, dropped
				}
			}
			if n == 0 {
				p.oversize.Add(1)
				room := ""
				if limit < p.cfg.MaxMessageSize {
					room = fmt.Sprintf(" less the %d bytes of its signature", wire.MsgSigOverhead)
				}
				p.setErr(fmt.Errorf("outbox seq %d (%s, %d bytes) is larger than max_message_size %d%s: dropped",
					m.Seq, m.Kind, len(payload), p.cfg.MaxMessageSize, room))
				acked = append(acked, m.Key)
				continue
			}
		}
		if payload, err = p.sign(m.Topic, payload); err != nil {
			p.setErr(fmt.Errorf("outbox key %d: %w", m.Key, err))
			complete = false
			break
		}
		// The last summary is retained: a dashboard that (re)subscribes
		// gets the present at once. Key order makes the newest one last.
		retain := m.Topic == wire.KindSummary
		q = append(q, inflight{msg: m, tok: p.client.Publish(topic, 1, retain, payload), hist: hist, payload: payload})
		for len(q) >= p.cfg.MaxInflight {
			wait()
		}
	}
	for len(q) > 0 {
		wait()
	}
	return acked, complete
}

// delivered records a publish the broker acknowledged.
func (p *Publisher) delivered(f inflight) {
	p.published.Add(1)
	if f.hist {
		p.historical.Add(1)
	}
	if f.msg.Seq > p.lastSeq.Load() {
		p.lastSeq.Store(f.msg.Seq)
	}
	p.sent(f.msg, f.payload)
}

// reapUnacked returns the keys of unacked publishes whose PUBACK has come
// since, and whether others still wait on the current connection (then
// nothing new is published). After a reconnect paho resends what it held
// under new tokens, so the old ones never complete: they are forgotten and
// the outbox sends those messages again.
func (p *Publisher) reapUnacked() (acked []uint64, stalled bool) {
	defer func() { p.unackedN.Store(int64(len(p.unacked))) }()
	if len(p.unacked) == 0 {
		return nil, false
	}
	if _, ok := p.connectionReady(); !ok || p.connects.Load() != p.unackedConn {
		p.unacked = nil
		return nil, false
	}
	keep := p.unacked[:0]
	for _, f := range p.unacked {
		select {
		case <-f.tok.Done():
			if f.tok.Error() == nil {
				acked = append(acked, f.msg.Key)
				p.delivered(f)
			}
		default:
			keep = append(keep, f)
		}
	}
	p.unacked = keep
	return acked, len(keep) > 0
}

// waitToken waits for a paho token, bounded by ctx and d.
func waitToken(ctx context.Context, tok mqtt.Token, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return ErrTimeout
	}
}

func randomID(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

// Probe connects once with cfg and disconnects: a clear error for a wrong
// CA, certificate, password or address, for `atm-agent check`.
func Probe(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	opts, err := clientOptions(cfg, cfg.clientID()+"-probe")
	if err != nil {
		return err
	}
	opts.SetConnectRetry(false)
	opts.SetAutoReconnect(false)
	c := mqtt.NewClient(opts)
	if err := waitToken(ctx, c.Connect(), cfg.ConnectTimeout+time.Second); err != nil {
		return redact.Error(fmt.Errorf("mqtt connect %v: %w", redactAll(cfg.Brokers), err), cfg.Brokers...)
	}
	c.Disconnect(100)
	return nil
}
