// Package ingest subscribes to the agents' MQTT topics and records what they
// publish in the fleet store: QoS 1 on a persistent session (messages sent
// while the service is down are queued by the broker), payloads validated
// against the agent's JSON Schemas (sync/wire), deduplicated by message id
// and accounted per device by sequence number (gaps). A message is
// acknowledged to the broker only after the store committed it, so a crash
// loses nothing: the broker redelivers and the store drops the duplicate.
//
// Statuses are retained by the agents; a plain subscription to them rebuilds
// every device's availability at once after a restart. Summaries and alerts
// can be shared between instances with an MQTT shared subscription
// ($share/<group>/...), one PostgreSQL store behind them.
package ingest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/periocular/atm-agent/internal/carddata"
	"github.com/periocular/atm-agent/internal/redact"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/wire"
)

// Config configures the broker connection and subscriptions.
type Config struct {
	// Brokers: tcp://, ssl://, mqtts://, ws://, wss:// URLs, tried in order.
	Brokers []string `yaml:"brokers"`
	// Prefix is the agents' topic prefix (their mqtt.topic.prefix).
	Prefix string `yaml:"prefix"`
	// ClientID must be stable across restarts (the broker keeps the
	// persistent session under it) and distinct per instance.
	ClientID string `yaml:"client_id"`
	// SharedGroup, when set, subscribes to summaries and alerts as
	// $share/<group>/...: the broker hands each message to one instance of
	// the group. Statuses are always subscribed plainly (retained).
	SharedGroup string    `yaml:"shared_group"`
	TLS         TLSConfig `yaml:"tls"`
	Username    string    `yaml:"username"`
	// PasswordFile holds the broker password (trailing newline ignored).
	PasswordFile        string        `yaml:"password_file"`
	KeepAlive           time.Duration `yaml:"keep_alive"`
	ConnectTimeout      time.Duration `yaml:"connect_timeout"`
	ReconnectBackoffMax time.Duration `yaml:"reconnect_backoff_max"`
	// Batch messages are committed in one store transaction, waiting at
	// most BatchWait for a batch to fill.
	Batch     int           `yaml:"batch"`
	BatchWait time.Duration `yaml:"batch_wait"`
	// MaxPayload: larger payloads are rejected unread (bytes).
	MaxPayload int `yaml:"max_payload"`
	// RequireSigned refuses every status, summary and alert that does
	// not verify with the key pinned for its device, so everything from
	// a device without one. Off: a device without a pinned key is taken
	// unauthenticated, as agents before signed messages send (a device
	// with a pinned key is held to it either way).
	RequireSigned bool `yaml:"require_signed"`
}

// TLSConfig is the broker TLS material (as the agent's mqtt.tls).
type TLSConfig struct {
	CAFile             string `yaml:"ca_file"`
	CertFile           string `yaml:"cert_file"`
	KeyFile            string `yaml:"key_file"`
	ServerName         string `yaml:"server_name"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// DefaultConfig returns the defaults; Brokers and ClientID must be set.
func DefaultConfig() Config {
	return Config{Prefix: "atm", KeepAlive: 30 * time.Second, ConnectTimeout: 10 * time.Second,
		ReconnectBackoffMax: 30 * time.Second, Batch: 128, BatchWait: 20 * time.Millisecond, MaxPayload: 256 << 10}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if len(c.Brokers) == 0 {
		return errors.New("ingest: no brokers")
	}
	if err := wire.ValidatePrefix(c.Prefix); err != nil {
		return fmt.Errorf("ingest: prefix: %w", err)
	}
	if c.ClientID == "" {
		return errors.New("ingest: client_id is required (stable per instance: the broker keeps the session under it)")
	}
	if c.SharedGroup != "" {
		if err := wire.ValidateLevel("shared_group", c.SharedGroup); err != nil {
			return fmt.Errorf("ingest: %w", err)
		}
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		return errors.New("ingest: tls cert_file and key_file go together")
	}
	if c.Batch < 1 || c.BatchWait <= 0 || c.MaxPayload < 1024 {
		return fmt.Errorf("ingest: batch (%d) >= 1, batch_wait (%v) > 0 and max_payload (%d) >= 1024 required", c.Batch, c.BatchWait, c.MaxPayload)
	}
	if c.KeepAlive < time.Second || c.ConnectTimeout <= 0 || c.ReconnectBackoffMax <= 0 {
		return errors.New("ingest: keep_alive >= 1s, connect_timeout and reconnect_backoff_max > 0 required")
	}
	return nil
}

// CheckFiles reads the files the config names (the TLS CA, client
// certificate and key, the password file) as New would: an error here is
// for the operator to fix, not a reason to retry.
func (c Config) CheckFiles() error {
	if _, err := c.tlsConfig(); err != nil {
		return err
	}
	if c.Username != "" && c.PasswordFile != "" {
		if _, err := os.ReadFile(c.PasswordFile); err != nil {
			return fmt.Errorf("ingest: read password_file: %w", err)
		}
	}
	return nil
}

// Filters returns the subscriptions: topic filter -> QoS.
func (c Config) Filters() map[string]byte {
	data := func(kind string) string {
		f := c.Prefix + "/+/+/" + kind
		if c.SharedGroup != "" {
			f = "$share/" + c.SharedGroup + "/" + f
		}
		return f
	}
	return map[string]byte{c.Prefix + "/+/+/" + wire.KindStatus: 1, data(wire.KindSummary): 1, data(wire.KindAlert): 1}
}

func (c Config) tlsConfig() (*tls.Config, error) {
	t := c.TLS
	if t == (TLSConfig{}) {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ingest tls: read ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ingest tls: ca_file %q holds no PEM certificate", t.CAFile)
		}
		cfg.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("ingest tls: load client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Stats are the ingest counters since start.
type Stats struct {
	Connected  bool   `json:"connected"`
	Connects   uint64 `json:"connects"`
	Received   uint64 `json:"received"`   // every message handed over by the broker
	Applied    uint64 `json:"applied"`    // new summaries and alerts committed
	Duplicates uint64 `json:"duplicates"` // summaries and alerts already stored (same message id)
	// Retained: retained summaries already stored, given again by the
	// broker at each subscribe (not duplicates of the device's).
	Retained uint64 `json:"retained"`
	Statuses uint64 `json:"statuses"`
	Rejected uint64 `json:"rejected"` // failed validation (kept in the store's rejects)
	// Unauthenticated, of Rejected: statuses, summaries and alerts
	// refused for their signature (none or a bad one where a device key
	// is pinned; any without one under require_signed).
	Unauthenticated uint64 `json:"unauthenticated"`
	StoreErrs       uint64 `json:"store_errs"` // failed commits (retried; not acknowledged meanwhile)
	LastError       string `json:"last_error"`
	// LastErrorAt: when LastError last happened (absent before any). The
	// error stays after a recovery: StuckSince and Connected say whether
	// it still holds, this says how long ago it did.
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// StuckSince: when the batch being written first failed, while it is
	// not committed (absent otherwise). The messages of that batch and
	// all after it wait, unacknowledged: the store is down or full. A
	// message the store refuses for what it holds is made a reject at its
	// first write alone (isolate); a store failing for its own state stays
	// stuck.
	StuckSince time.Time `json:"stuck_since,omitzero"`
}

// Stuck is when the batch being written first failed (zero: not stuck).
func (s Stats) Stuck() time.Time { return s.StuckSince }

// HiddenError stands in for LastError where its text is not shown (a
// store's error can name a site and a device).
const HiddenError = "hidden: sign in as an admin, or read the service's log"

// Redacted is s for a reader who may not see error texts: LastError, when
// set, says only that there was one.
func (s Stats) Redacted() any {
	if s.LastError != "" {
		s.LastError = HiddenError
	}
	return s
}

// Ingester owns one broker connection and the store writes.
type Ingester struct {
	cfg     Config
	store   storage.Store
	log     *slog.Logger
	now     func() time.Time
	schemas map[string]*jsonschema.Schema
	opts    *mqtt.ClientOptions
	in      chan mqtt.Message
	stop    chan struct{}

	connected                                                                     atomic.Bool
	connects, received, applied, dups, retained, statuses, rejected, unauth, serr atomic.Uint64
	mu                                                                            sync.Mutex
	lastErr                                                                       string
	lastErrAt                                                                     time.Time
	stuckSince                                                                    time.Time
	// extra are subscriptions of other users of the connection (Route);
	// client is the connection while Run runs.
	extra  map[string]func(topic string, payload []byte)
	client atomic.Pointer[mqtt.Client]
	// rejectLog, unauthLog: when a rejected payload, and one refused for
	// its signature, was last logged, and how many since without a line
	// (logReject).
	rejectLog, unauthLog rateLog
}

// rateLog is when a kind of line was last logged and how many were left
// unsaid since.
type rateLog struct {
	at    time.Time
	quiet uint64
}

// rejectLogEvery bounds the log lines of rejected payloads: a publisher
// sending bad payloads in a loop wrote one WARN line each (8 MB of log in
// 2 s for 20,000). The rejects themselves are all stored (bounded) and
// counted in the stats.
const rejectLogEvery = 10 * time.Second

// logReject logs a rejected payload, at most one line per rejectLogEvery
// for rejects and one for those refused for their signature (a forger
// sending in a loop must not hide the other rejects, nor they it).
func (in *Ingester) logReject(r storage.Reject, unauthenticated bool) {
	l, msg := &in.rejectLog, "fleet ingest: payload rejected"
	if unauthenticated {
		l, msg = &in.unauthLog, "fleet ingest: message refused: not signed by its device's pinned key"
	}
	in.mu.Lock()
	now := in.now()
	if !l.at.IsZero() && now.Sub(l.at) < rejectLogEvery {
		l.quiet++
		in.mu.Unlock()
		return
	}
	quiet := l.quiet
	l.at, l.quiet = now, 0
	in.mu.Unlock()
	in.log.Warn(msg, "topic", r.Topic, "err", r.Error, "rejected_without_a_line_since_the_last", quiet)
}

// New validates cfg, loads TLS material and compiles the schemas.
func New(cfg Config, st storage.Store, log *slog.Logger) (*Ingester, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if st == nil {
		return nil, errors.New("ingest: nil store")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	schemas, err := CompileSchemas()
	if err != nil {
		return nil, err
	}
	tc, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	in := &Ingester{cfg: cfg, store: st, log: log, now: time.Now, schemas: schemas, in: make(chan mqtt.Message, 4*cfg.Batch),
		stop: make(chan struct{})}
	o := mqtt.NewClientOptions()
	for _, b := range cfg.Brokers {
		o.AddBroker(b)
	}
	o.SetClientID(cfg.ClientID)
	if tc != nil {
		o.SetTLSConfig(tc)
	}
	if cfg.Username != "" {
		pw := ""
		if cfg.PasswordFile != "" {
			b, err := os.ReadFile(cfg.PasswordFile)
			if err != nil {
				return nil, fmt.Errorf("ingest: read password_file: %w", err)
			}
			pw = strings.TrimRight(string(b), "\r\n")
		}
		o.SetUsername(cfg.Username)
		o.SetPassword(pw)
	}
	o.SetCleanSession(false) // the broker queues QoS 1 messages while we are away
	o.SetResumeSubs(true)
	o.SetAutoAckDisabled(true) // acknowledged after the store commit
	o.SetOrderMatters(true)
	o.SetKeepAlive(cfg.KeepAlive)
	o.SetPingTimeout(min(cfg.KeepAlive, 10*time.Second))
	o.SetConnectTimeout(cfg.ConnectTimeout)
	o.SetAutoReconnect(true)
	o.SetConnectRetry(true)
	o.SetConnectRetryInterval(min(cfg.ReconnectBackoffMax, 2*time.Second))
	o.SetMaxReconnectInterval(cfg.ReconnectBackoffMax)
	// Queued messages can arrive before the subscribe call returns: the
	// default handler takes them too.
	o.SetDefaultPublishHandler(in.handle)
	o.SetOnConnectHandler(in.onConnect)
	o.SetConnectionNotificationHandler(func(_ mqtt.Client, n mqtt.ConnectionNotification) {
		// With ConnectRetry the connect token completes only once
		// connected: failures (TLS, refused, auth) arrive here.
		if f, ok := n.(mqtt.ConnectionNotificationBrokerFailed); ok {
			in.setErr(fmt.Errorf("connect %s: %w", redact.URL(f.Broker.String()), f.Reason))
		}
	})
	o.SetConnectionLostHandler(func(_ mqtt.Client, err error) {
		in.connected.Store(false)
		in.setErr(fmt.Errorf("connection lost: %w", err))
	})
	in.opts = o
	return in, nil
}

// CompileSchemas compiles the agent's status, summary and alert schemas
// (the versions this build's sync/wire publishes) as a reader takes them:
// tolerant of fields it does not know (readerSchema).
func CompileSchemas() (map[string]*jsonschema.Schema, error) {
	out := map[string]*jsonschema.Schema{}
	for _, name := range []string{wire.KindStatus, wire.KindSummary, wire.KindAlert} {
		s, err := CompileReaderSchema(name)
		if err != nil {
			return nil, err
		}
		out[name] = s
	}
	return out, nil
}

// CompileReaderSchema compiles one of the wire's schemas (status, summary,
// alert, reply) as a reader takes it (readerSchema), formats asserted.
func CompileReaderSchema(name string) (*jsonschema.Schema, error) {
	b, err := wire.Schema(name)
	if err != nil {
		return nil, err
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("schema %s: %w", name, err)
	}
	doc = readerSchema(doc)
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	url := "mem://" + name + ".schema.json"
	if err := c.AddResource(url, doc); err != nil {
		return nil, fmt.Errorf("schema %s: %w", name, err)
	}
	s, err := c.Compile(url)
	if err != nil {
		return nil, fmt.Errorf("schema %s: %w", name, err)
	}
	return s, nil
}

// Forbidden are field names no agent payload may carry, at any depth
// (inside unknown fields too): biometric data and card data never leave
// the device. Decode refuses them with the rest of ReaderRules.
var Forbidden = []string{"embedding", "embeddings", "template", "templates", "image", "images",
	"card_hash", "card_hashes", "card_number", "pan", "track2"}

// ReaderRules are what Decode refuses in any payload before its schema
// (wire.CheckJSON): a name that is not lower-case snake_case or given
// twice in one object, a Forbidden name at any depth, nesting deeper than
// 16, a NUL in any string. With the tolerant schemas, a name in another
// case ("ALERT_ID") was read past by the schema as unknown but filled
// alert_id through encoding/json, which matches names ignoring case: no
// length or pattern of the schema held, and a 40 KB alert id stopped all
// ingest (bbolt: "key too large", the batch retried for ever).
var ReaderRules = wire.JSONRules{Forbidden: Forbidden, MaxDepth: 16}

// readerSchema turns a published schema into the one the fleet reads
// with: every "additionalProperties": false is dropped. The versioning
// policy (docs/mqtt.md) adds optional fields within a schema_version, and
// readers must ignore fields they do not know: the strict schemas made
// this service reject, after the broker had acknowledged it, every alert
// of an agent one release newer (visit_id and txn_id were added so), and
// nothing resent it. What must never pass, known names in another case
// and the Forbidden names, ReaderRules refuses first.
func readerSchema(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = readerSchema(e)
		}
		if ap, ok := x["additionalProperties"].(bool); ok && !ap {
			delete(x, "additionalProperties")
		}
	case []any:
		for i, e := range x {
			x[i] = readerSchema(e)
		}
	}
	return v
}

func (in *Ingester) handle(_ mqtt.Client, m mqtt.Message) {
	in.received.Add(1)
	// Bounded: when full, paho stops reading and the broker holds the rest.
	select {
	case in.in <- m:
	case <-in.stop: // shutting down: left unacknowledged, redelivered later
	}
}

func (in *Ingester) onConnect(c mqtt.Client) {
	in.connects.Add(1)
	for f, h := range in.extra {
		tok := c.Subscribe(f, 1, func(_ mqtt.Client, m mqtt.Message) {
			h(m.Topic(), m.Payload())
			m.Ack() // auto-acknowledgement is off
		})
		go func() {
			if tok.WaitTimeout(in.cfg.ConnectTimeout) && tok.Error() != nil {
				in.setErr(fmt.Errorf("subscribe %s: %w", f, tok.Error()))
			}
		}()
	}
	tok := c.SubscribeMultiple(in.cfg.Filters(), nil)
	go func() {
		if !tok.WaitTimeout(in.cfg.ConnectTimeout) {
			// A persistent session's backlog is delivered before the
			// SUBACK can be read while the ingest queue is full: said,
			// then waited for. Giving up here left the service
			// "not connected" in /healthz for as long as it ingested.
			in.setErr(fmt.Errorf("subscribe: no answer within %v (a backlog being delivered?); still waiting", in.cfg.ConnectTimeout))
			tok.Wait() // ends with the subscription or with the connection
		}
		if err := tok.Error(); err != nil {
			in.setErr(fmt.Errorf("subscribe: %w", err))
			return
		}
		in.connected.Store(true)
		in.log.Info("fleet ingest subscribed", "filters", in.cfg.Filters())
	}()
}

func (in *Ingester) setErr(err error) {
	in.mu.Lock()
	changed := in.lastErr != err.Error()
	in.lastErr, in.lastErrAt = err.Error(), in.now().UTC()
	in.mu.Unlock()
	if changed {
		in.log.Warn("fleet ingest", "err", err)
	}
}

// Stats returns the counters.
func (in *Ingester) Stats() Stats {
	in.mu.Lock()
	defer in.mu.Unlock()
	return Stats{Connected: in.connected.Load(), Connects: in.connects.Load(), Received: in.received.Load(),
		Applied: in.applied.Load(), Duplicates: in.dups.Load(), Retained: in.retained.Load(), Statuses: in.statuses.Load(), Rejected: in.rejected.Load(),
		Unauthenticated: in.unauth.Load(), StoreErrs: in.serr.Load(), LastError: in.lastErr, LastErrorAt: in.lastErrAt, StuckSince: in.stuckSince}
}

// Route has the messages on filter (QoS 1, subscribed at every connect
// beside the ingest's own) handed to h instead of the store: the command
// client's replies. h runs on the connection's delivery goroutine, in
// order with everything else: it must not block. The message is
// acknowledged when h returns. Call it before Run.
func (in *Ingester) Route(filter string, h func(topic string, payload []byte)) {
	if in.extra == nil {
		in.extra = map[string]func(string, []byte){}
	}
	in.extra[filter] = h
}

// ErrNotConnected: Publish was called while the connection is down (or
// before Run, or after it returned).
var ErrNotConnected = errors.New("the fleet service is not connected to the broker")

// Publish sends payload on topic at QoS 1, not retained, over the ingest's
// connection, and waits for the broker's acknowledgement or ctx.
func (in *Ingester) Publish(ctx context.Context, topic string, payload []byte) error {
	cp := in.client.Load()
	if cp == nil || !(*cp).IsConnectionOpen() {
		return ErrNotConnected
	}
	tok := (*cp).Publish(topic, 1, false, payload)
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run connects and ingests until ctx ends; it returns nil on cancellation
// after the last batch was committed and acknowledged. Call it once.
func (in *Ingester) Run(ctx context.Context) error {
	c := mqtt.NewClient(in.opts)
	in.client.Store(&c)
	defer in.client.Store(nil)
	tok := c.Connect() // retries in the background (ConnectRetry)
	go func() {
		tok.Wait()
		if err := tok.Error(); err != nil {
			in.setErr(fmt.Errorf("connect: %w", err))
		}
	}()
	in.log.Info("fleet ingest started", "client_id", in.cfg.ClientID, "shared_group", in.cfg.SharedGroup)
	err := in.loop(ctx)
	in.connected.Store(false)
	close(in.stop)
	c.Disconnect(250)
	return err
}

func (in *Ingester) loop(ctx context.Context) error {
	batch := make([]mqtt.Message, 0, in.cfg.Batch)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-in.in:
			batch = append(batch[:0], m)
			timer.Reset(in.cfg.BatchWait)
		fill:
			for len(batch) < in.cfg.Batch {
				select {
				case m := <-in.in:
					batch = append(batch, m)
				case <-timer.C:
					break fill
				case <-ctx.Done():
					break fill
				}
			}
			timer.Stop()
			if !in.commit(ctx, batch) {
				return nil // cancelled while retrying: unacknowledged, the broker redelivers
			}
			for _, m := range batch {
				m.Ack()
			}
		}
	}
}

// item is one received message as the store takes it: one of status, msg
// and reject set (none: nothing to store), with what a reject of it keeps.
type item struct {
	topic   string
	payload []byte
	status  *storage.Status
	msg     *storage.Message
	reject  *storage.Reject
	done    bool // committed (or stored as a reject): not written again
	// checked: its signature was checked (authenticate); unauth: it is
	// a reject for its signature.
	checked, unauth bool
}

// commit writes one batch, retrying store failures with a capped backoff
// until it succeeds or ctx ends (false). After a failed batch it writes
// the messages one by one (isolate): a message the store refuses on its
// own while it takes other writes is stored as a reject, so one poison
// message does not stop all ingest.
func (in *Ingester) commit(ctx context.Context, batch []mqtt.Message) bool {
	now := in.now().UTC()
	items := make([]item, 0, len(batch))
	for _, m := range batch {
		it := item{topic: m.Topic(), payload: m.Payload()}
		d, err := in.Decode(m.Topic(), m.Payload(), now)
		switch {
		case err != nil:
			var r *RejectError
			if errors.As(err, &r) {
				it.reject = &r.Reject
			}
		case d.status != nil:
			d.status.Retained = m.Retained()
			it.status = d.status
		case d.msg != nil:
			d.msg.Retained = m.Retained()
			it.msg = d.msg
		}
		items = append(items, it)
	}
	backoff := 100 * time.Millisecond
	for {
		err := in.authenticate(ctx, items)
		if err != nil {
			in.storeFailed(err)
		} else if err = in.write(ctx, items); err == nil || in.isolate(ctx, items, err) {
			in.setStuck(time.Time{})
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// authenticate checks each status, summary and alert not yet checked
// against the key pinned for its device (read once per device and
// round: a key pinned or removed applies from the next batch on). One
// that verifies is marked Authenticated; without a pinned key it is taken
// unauthenticated, or refused with RequireSigned; with one, anything that
// does not verify (unsigned, another key's, another topic's) is made a
// reject: it neither counts in the sequence nor replaces the device's
// status or summary. A store error ends the round (retried, nothing
// refused).
func (in *Ingester) authenticate(ctx context.Context, items []item) error {
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	type dev struct{ site, device string }
	pins := map[dev]*storage.DeviceKey{}
	for i := range items {
		it := &items[i]
		if it.checked || it.done || (it.status == nil && it.msg == nil) {
			continue
		}
		var d dev
		kind := wire.KindStatus
		if it.status != nil {
			d = dev{it.status.Site, it.status.Device}
		} else {
			d, kind = dev{it.msg.Site, it.msg.Device}, it.msg.Kind
		}
		pin, ok := pins[d]
		if !ok {
			k, err := in.store.DeviceKey(rctx, d.site, d.device)
			switch {
			case errors.Is(err, storage.ErrNotFound):
			case err != nil:
				return fmt.Errorf("read the device key of %s/%s: %w", d.site, d.device, err)
			default:
				pin = &k
			}
			pins[d] = pin
		}
		var why string
		switch {
		case pin == nil && in.cfg.RequireSigned:
			why = "no device key is pinned for " + d.site + "/" + d.device + " and mqtt.require_signed is on (atm-fleet devices key set)"
		case pin == nil:
		default:
			if err := wire.VerifyMessage(pin.PublicKey, kind, d.site, d.device, it.payload); err != nil {
				why = fmt.Sprintf("%v (device key %s is pinned for %s/%s)", err, wire.Fingerprint(pin.PublicKey), d.site, d.device)
			} else if it.status != nil {
				it.status.Authenticated = true
			} else {
				it.msg.Authenticated = true
			}
		}
		if why != "" {
			it.status, it.msg, it.unauth = nil, nil, true
			it.reject = &storage.Reject{Received: in.now().UTC(), Topic: it.topic, Site: d.site, Device: d.device,
				Error: kind + unauthenticatedMark + why, Payload: keptPayload(it.payload, false)}
		}
		it.checked = true
	}
	return nil
}

// storeFailed records a failed store write; the first since the last
// commit starts stuck_since.
func (in *Ingester) storeFailed(err error) {
	in.serr.Add(1)
	in.setErr(err)
	in.mu.Lock()
	if in.stuckSince.IsZero() {
		in.stuckSince = in.now().UTC()
	}
	in.mu.Unlock()
}

func (in *Ingester) setStuck(t time.Time) {
	in.mu.Lock()
	in.stuckSince = t
	in.mu.Unlock()
}

// isolate is called after the batch failed with err: it writes the items
// not yet done one at a time. An item the store refuses for what it holds
// (storage.ErrBadRecord: bbolt's key or value too large, PostgreSQL's data
// exceptions and integrity violations) is stored as a reject with the
// store's error as the reason (acknowledged, counted in rejected): one
// poison message no longer stops all ingest. Any other failure is taken
// for the store's own (down, full, its permissions revoked): the round ends
// (false: retried later, nothing rejected, nothing lost). A hostile review
// showed the opposite rule, rejecting what did not look like the store's
// fault, turn every good alert into a reject once PostgreSQL's INSERT
// right on one table was revoked. true when every item is done.
func (in *Ingester) isolate(ctx context.Context, items []item, err error) bool {
	in.storeFailed(err)
	for i := range items {
		it := &items[i]
		if it.done {
			continue
		}
		err := in.write(ctx, items[i:i+1])
		if err == nil {
			continue
		}
		in.storeFailed(err)
		if !errors.Is(err, storage.ErrBadRecord) || !in.poison(ctx, it, err) {
			return false
		}
	}
	return true
}

// poison stores it as a reject: the store refused it for what it holds
// (err).
func (in *Ingester) poison(ctx context.Context, it *item, err error) bool {
	site, device := "", ""
	if it.status != nil {
		site, device = it.status.Site, it.status.Device
	}
	if it.msg != nil {
		site, device = it.msg.Site, it.msg.Device
	}
	if it.reject != nil {
		site, device = it.reject.Site, it.reject.Device
	}
	p := keptPayload(it.payload, false)
	if it.reject != nil {
		p = "" // already a reject: what the store refused may be its payload
	}
	reason := strings.ToValidUTF8(strings.ReplaceAll(oneLine(err), "\x00", ""), "\uFFFD")
	r := storage.Reject{Received: in.now().UTC(), Topic: it.topic, Site: site, Device: device, Payload: p,
		Error: "refused by the store: " + reason}
	in.log.Error("fleet ingest: a message the store refuses is kept as a reject, ingest goes on",
		"topic", it.topic, "err", err)
	q := item{reject: &r}
	if werr := in.write(ctx, []item{q}); werr != nil {
		in.storeFailed(werr)
		return false
	}
	it.done = true
	return true
}

// write commits the items not yet done: statuses, then summaries and
// alerts, then rejects, each kind in one transaction; the items of each
// kind committed are marked done, so a retry does not write them again.
func (in *Ingester) write(ctx context.Context, items []item) error {
	// Each write is bounded; a hung database is retried, not waited on forever.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var msgs []storage.Message
	var statuses []storage.Status
	var rejects []storage.Reject
	var mi, si, ri []int
	for i, it := range items {
		switch {
		case it.done:
		case it.status != nil:
			statuses, si = append(statuses, *it.status), append(si, i)
		case it.msg != nil:
			msgs, mi = append(msgs, *it.msg), append(mi, i)
		case it.reject != nil:
			rejects, ri = append(rejects, *it.reject), append(ri, i)
		default:
			items[i].done = true
		}
	}
	markDone := func(idx []int) {
		for _, i := range idx {
			items[i].done = true
		}
	}
	// Statuses and rejects are written like summaries: one transaction
	// for the batch (a commit each could not keep up with a burst of
	// statuses, and the broker drops QoS 1 messages past its queue limit).
	bw, batched := in.store.(storage.BatchWriter)
	if batched && len(statuses) > 0 {
		if err := bw.PutStatuses(wctx, statuses); err != nil {
			return err
		}
		in.statuses.Add(uint64(len(statuses)))
		markDone(si)
		statuses = nil
	}
	for j := range statuses {
		if err := in.store.PutStatus(wctx, statuses[j]); err != nil {
			return err
		}
		in.statuses.Add(1)
		markDone(si[j : j+1])
	}
	if len(msgs) > 0 {
		fresh, err := in.store.Apply(wctx, msgs)
		if err != nil {
			return err
		}
		for i, f := range fresh {
			switch {
			case f:
				in.applied.Add(1)
			case msgs[i].Retained:
				in.retained.Add(1)
			default:
				in.dups.Add(1)
			}
		}
		markDone(mi)
	}
	rejected := func(j int) {
		in.rejected.Add(1)
		unauth := items[ri[j]].unauth
		if unauth {
			in.unauth.Add(1)
		}
		in.logReject(rejects[j], unauth)
	}
	if batched && len(rejects) > 0 {
		if err := bw.PutRejects(wctx, rejects); err != nil {
			return err
		}
		for j := range rejects {
			rejected(j)
		}
		markDone(ri)
		rejects = nil
	}
	for j, r := range rejects {
		if err := in.store.PutReject(wctx, r); err != nil {
			return err
		}
		rejected(j)
		markDone(ri[j : j+1])
	}
	return nil
}

// RejectError is a payload that failed validation.
type RejectError struct{ storage.Reject }

func (e *RejectError) Error() string { return fmt.Sprintf("reject %s: %s", e.Topic, e.Reject.Error) }

// decoded is one message ready for the store; both nil: ignore.
type decoded struct {
	status *storage.Status
	msg    *storage.Message
}

// Decode validates one received message. Bad input gives a *RejectError
// carrying what to keep; a cleared retained topic (empty payload) and
// kinds the fleet does not use (reply, cmd) give neither error nor data.
func (in *Ingester) Decode(topic string, payload []byte, now time.Time) (decoded, error) {
	withheld := false // the payload names card or biometric data: not kept
	reject := func(site, device, format string, a ...any) (decoded, error) {
		return decoded{}, &RejectError{storage.Reject{Received: now, Topic: topic, Site: site, Device: device,
			Error: fmt.Sprintf(format, a...), Payload: keptPayload(payload, withheld)}}
	}
	tp, err := wire.ParseTopic(in.cfg.Prefix, topic)
	if err != nil {
		return reject("", "", "topic: %v", err)
	}
	schema := in.schemas[tp.Kind]
	if schema == nil {
		return decoded{}, nil
	}
	if len(payload) == 0 {
		// A retained topic cleared (mosquitto_pub -r -n: what an operator
		// does for a decommissioned or renamed device), not a bad payload.
		return decoded{}, nil
	}
	if len(payload) > in.cfg.MaxPayload {
		return reject(tp.Site, tp.Device, "payload of %d bytes exceeds max_payload %d", len(payload), in.cfg.MaxPayload)
	}
	if !utf8.Valid(payload) {
		// JSON is UTF-8 (RFC 8259). Go's decoder would read each bad byte
		// as U+FFFD, and two ids that differ only there as one.
		return reject(tp.Site, tp.Device, "not UTF-8 (an invalid byte at %d): JSON is UTF-8 text (RFC 8259)", invalidUTF8At(payload))
	}
	var head struct {
		SchemaVersion json.RawMessage `json:"schema_version"`
	}
	if err := json.Unmarshal(payload, &head); err != nil {
		return reject(tp.Site, tp.Device, "not a JSON object: %v", err)
	}
	if vs := wire.Versions(tp.Kind); !slices.ContainsFunc(vs, func(v int) bool { return string(head.SchemaVersion) == fmt.Sprint(v) }) {
		return reject(tp.Site, tp.Device, "schema_version %s not supported (this fleet service reads %s versions %v)",
			orNone(head.SchemaVersion), tp.Kind, vs)
	}
	if err := wire.CheckJSON(payload, ReaderRules); err != nil {
		withheld = errors.Is(err, wire.ErrForbiddenField)
		return reject(tp.Site, tp.Device, "%s: %v", tp.Kind, err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(payload))
	if err != nil {
		return reject(tp.Site, tp.Device, "not JSON: %v", err)
	}
	if err := schema.Validate(inst); err != nil {
		return reject(tp.Site, tp.Device, "%s violates %s.schema.json: %s", tp.Kind, tp.Kind, oneLine(err))
	}
	var env wire.Envelope
	if err := json.Unmarshal(payload, &env); err != nil {
		return reject(tp.Site, tp.Device, "envelope: %v", err)
	}
	if env.Site != tp.Site || env.Device != tp.Device {
		return reject(tp.Site, tp.Device, "payload names %s/%s, topic %s/%s", env.Site, env.Device, tp.Site, tp.Device)
	}
	if env.Seq > math.MaxInt64 {
		return reject(tp.Site, tp.Device, "%s seq %d above %d (2^63-1, what the stores keep)", tp.Kind, env.Seq, int64(math.MaxInt64))
	}
	var d decoded
	times := []namedTime{{"ts", env.TS}}
	var counts []namedInt   // what the stores keep in 32-bit columns
	var names []namedString // identifiers shown on the pages and in exports
	switch tp.Kind {
	case wire.KindStatus:
		var s wire.Status
		if err := json.Unmarshal(payload, &s); err != nil {
			return reject(tp.Site, tp.Device, "status: %v", err)
		}
		d.status = &storage.Status{Site: tp.Site, Device: tp.Device, Received: now, Status: s}
		times = append(times, namedTime{"started_at", s.StartedAt})
		for _, c := range s.Cameras {
			times = append(times, namedTime{"cameras.last_frame", c.LastFrame})
		}
	case wire.KindSummary:
		var s wire.Summary
		if err := json.Unmarshal(payload, &s); err != nil {
			return reject(tp.Site, tp.Device, "summary: %v", err)
		}
		d.msg = &storage.Message{Site: tp.Site, Device: tp.Device, Kind: tp.Kind, MessageID: s.MessageID,
			Seq: s.Seq, TS: s.TS, Historical: s.Historical, Received: now, Summary: &s}
		for _, id := range s.Identities {
			times = append(times, namedTime{"identities.first_seen", id.FirstSeen}, namedTime{"identities.last_seen", id.LastSeen})
			names = append(names, namedString{"identities.id", id.ID})
			counts = append(counts, windows("identities.visits", id.Visits)...)
			counts = append(counts, windows("identities.masked", id.Masked)...)
			counts = append(counts, windows("identities.distinct_cards", id.DistinctCards)...)
		}
		counts = append(counts, namedInt{"identities_omitted", s.IdentitiesOmitted})
		counts = append(counts, windows("faceless", s.Faceless)...)
		counts = append(counts, windows("totals.visits", s.Totals.Visits)...)
		counts = append(counts, windows("totals.identities", s.Totals.Identities)...)
		counts = append(counts, windows("totals.masked", s.Totals.Masked)...)
	default:
		var a wire.Alert
		if err := json.Unmarshal(payload, &a); err != nil {
			return reject(tp.Site, tp.Device, "alert: %v", err)
		}
		d.msg = &storage.Message{Site: tp.Site, Device: tp.Device, Kind: tp.Kind, MessageID: a.MessageID,
			Seq: a.Seq, TS: a.TS, Historical: a.Historical, Received: now, Alert: &a}
		times = append(times, namedTime{"raised", a.Raised}, namedTime{"window_start", a.WindowStart},
			namedTime{"first_seen", a.FirstSeen}, namedTime{"last_seen", a.LastSeen})
		counts = append(counts, namedInt{"count", a.Count}, namedInt{"threshold", a.Threshold})
		names = append(names, namedString{"alert_id", a.AlertID}, namedString{"rule", a.Rule}, namedString{"kind", a.Kind},
			namedString{"identity_id", a.IdentityID}, namedString{"visit_id", a.VisitID}, namedString{"txn_id", a.TxnID},
			namedString{"window", a.Window})
	}
	for _, c := range counts {
		if c.n < 0 || c.n > math.MaxInt32 {
			return reject(tp.Site, tp.Device, "%s %s %d outside 0..%d", tp.Kind, c.name, c.n, math.MaxInt32)
		}
	}
	names = append(names, namedString{"message_id", env.MessageID})
	for _, n := range names {
		if i := strings.IndexFunc(n.s, invisible); i >= 0 {
			return reject(tp.Site, tp.Device, "%s %s holds a control or formatting character (%U at byte %d)", tp.Kind, n.name, []rune(n.s[i:])[0], i)
		}
	}
	for _, t := range times {
		optional := t.name == "started_at" || t.name == "cameras.last_frame" // omitted when zero
		if (t.t.IsZero() && optional) || (!t.t.Before(MinTime) && t.t.Before(MaxTime)) {
			continue
		}
		return reject(tp.Site, tp.Device, "%s %s %s outside %s..%s (the agent's clock?)", tp.Kind, t.name,
			t.t.UTC().Format(time.RFC3339Nano), MinTime.Format(time.DateOnly), MaxTime.Format(time.DateOnly))
	}
	return d, nil
}

// MinTime and MaxTime bound every time a payload carries (ts, raised,
// window_start, first_seen, last_seen, started_at, last_frame): the
// embedded store orders alerts by time in int64 nanoseconds (1678..2262),
// and an alert raised in 9999 fell outside its indexes' order, skipped by
// the pages that follow them.
var (
	MinTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	MaxTime = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)
)

type namedTime struct {
	name string
	t    time.Time
}

type namedInt struct {
	name string
	n    int
}

type namedString struct {
	name, s string
}

func windows(name string, w wire.WindowCounts) []namedInt {
	return []namedInt{{name + ".h1", w.H1}, {name + ".h24", w.H24}, {name + ".d7", w.D7}}
}

// invisible: control characters and Unicode formatting ones (bidi
// overrides, zero-width joiners), which an identifier shown to an analyst
// must not hold: they reorder or hide what the page shows.
func invisible(r rune) bool { return unicode.IsControl(r) || unicode.Is(unicode.Cf, r) }

// WithheldPayload stands for a rejected payload that is not kept: it named
// biometric or card data, or held what looks like a card number.
const WithheldPayload = "(not kept: it names or holds card or biometric data)"

// keptPayload is what a reject keeps of a payload (the start, for
// diagnosis): nothing of one that named a forbidden field (withheld) or
// holds a Luhn-valid card number anywhere (carddata.PANInText): a hostile
// review found the card number of a refused payload in the store file and
// on the settings page, out of reach of any erasure.
func keptPayload(payload []byte, withheld bool) string {
	if withheld || carddata.PANInText(string(payload)) > 0 {
		return WithheldPayload
	}
	p := payload
	if len(p) > storage.MaxRejectPayload {
		p = p[:storage.MaxRejectPayload]
	}
	return string(p)
}

// invalidUTF8At is the offset of b's first byte that is not UTF-8.
func invalidUTF8At(b []byte) int {
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size == 1 {
			return i
		}
		i += size
	}
	return len(b)
}

func orNone(b json.RawMessage) string {
	if len(b) == 0 {
		return "(none)"
	}
	return string(b)
}

func oneLine(err error) string {
	s := strings.Join(strings.Fields(err.Error()), " ")
	if len(s) > 500 {
		s = s[:500] + "..."
	}
	return s
}
