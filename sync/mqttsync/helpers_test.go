package mqttsync

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/sync/wire"
)

// memOutbox is an in-memory Outbox: keys and seqs assigned on Add, like the
// store does inside its transaction.
type memOutbox struct {
	mu      sync.Mutex
	msgs    []visit.OutboxMessage
	next    uint64
	acks    int
	pending int
}

func (o *memOutbox) Add(kind string, created time.Time, payload []byte) visit.OutboxMessage {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.next++
	m := visit.OutboxMessage{Key: o.next, Seq: o.next, Kind: kind, Topic: kind, Created: created, Payload: payload}
	o.msgs = append(o.msgs, m)
	return m
}

func (o *memOutbox) OutboxPending(ctx context.Context, max int) ([]visit.OutboxMessage, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.pending++
	n := min(max, len(o.msgs))
	return slices.Clone(o.msgs[:n]), nil
}

func (o *memOutbox) OutboxAck(ctx context.Context, keys ...uint64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.acks += len(keys)
	o.msgs = slices.DeleteFunc(o.msgs, func(m visit.OutboxMessage) bool { return slices.Contains(keys, m.Key) })
	return nil
}

func (o *memOutbox) Len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.msgs)
}

// payload builds a real agent payload of kind for seq-like index i.
func payload(t testing.TB, kind string, i int, ts time.Time) []byte {
	env := wire.NewEnvelope("s1", "atm-1", ts)
	var v any
	switch kind {
	case wire.KindAlert:
		v = wire.NewAlert(env, visit.Alert{ID: fmt.Sprintf("a-%d", i), Rule: "many-visits", Kind: "visits",
			IdentityID: fmt.Sprintf("p-%04d", i%17), Window: "24h0m0s", WindowStart: ts.Add(-24 * time.Hour),
			Count: 5 + i%3, Threshold: 5, FirstSeen: ts.Add(-time.Hour), LastSeen: ts, Raised: ts})
	case wire.KindSummary:
		env.SchemaVersion = wire.SummarySchemaVersion
		v = wire.Summary{Envelope: env, Identities: []wire.IdentityCounts{{ID: "p-0001", Visits: wire.WindowCounts{H1: 1, H24: i, D7: i},
			FirstSeen: ts.Add(-time.Hour), LastSeen: ts}}, Totals: wire.Totals{Visits: wire.WindowCounts{H1: 1, H24: i, D7: i}}}
	default:
		t.Fatalf("kind %q", kind)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func testConfig(broker string) Config {
	c := DefaultConfig()
	c.Brokers = []string{broker}
	c.Topic = TopicConfig{Prefix: "atm/test", Site: "s1", Device: "atm-1"}
	c.ConnectTimeout = 2 * time.Second
	c.ReconnectBackoffMax = 500 * time.Millisecond
	c.PublishTimeout = 2 * time.Second
	c.DrainInterval = 100 * time.Millisecond
	c.KeepAlive = 2 * time.Second
	return c
}

// startMochi runs an embedded broker on a free loopback port.
func startMochi(t testing.TB) string {
	t.Helper()
	s := mochi.New(&mochi.Options{Logger: slog.New(slog.DiscardHandler), InlineClient: false})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0"})
	if err := s.AddListener(l); err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve() }()
	t.Cleanup(func() { _ = s.Close() })
	return "tcp://" + l.Address()
}

// recv is one received message.
type recv struct {
	Topic    string
	Payload  []byte
	Retained bool
}

// collector subscribes to a filter and records everything it receives.
type collector struct {
	mu   sync.Mutex
	msgs []recv
	c    mqtt.Client
}

func newCollector(t testing.TB, broker, clientID, filter string, persistent bool, tc *Config) *collector {
	t.Helper()
	col := &collector{}
	o := mqtt.NewClientOptions().AddBroker(broker).SetClientID(clientID).SetCleanSession(!persistent).
		SetAutoReconnect(true).SetMaxReconnectInterval(200 * time.Millisecond).SetConnectRetry(true).
		SetConnectRetryInterval(200 * time.Millisecond).SetOrderMatters(true).SetKeepAlive(2 * time.Second)
	if tc != nil {
		tls, err := tc.tlsConfig()
		if err != nil {
			t.Fatal(err)
		}
		o.SetTLSConfig(tls)
	}
	h := func(_ mqtt.Client, m mqtt.Message) {
		col.mu.Lock()
		col.msgs = append(col.msgs, recv{m.Topic(), slices.Clone(m.Payload()), m.Retained()})
		col.mu.Unlock()
	}
	o.SetDefaultPublishHandler(h)
	o.SetOnConnectHandler(func(c mqtt.Client) { c.Subscribe(filter, 1, h) })
	col.c = mqtt.NewClient(o)
	if !col.c.Connect().WaitTimeout(5 * time.Second) {
		t.Fatal("collector: connect timed out")
	}
	// Wait until the subscription is in place.
	deadline := time.Now().Add(5 * time.Second)
	for !col.c.IsConnectionOpen() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	t.Cleanup(func() { col.c.Disconnect(50) })
	return col
}

func (c *collector) snapshot() []recv {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.msgs)
}

// byKind returns received payloads whose topic ends with /kind.
func (c *collector) byKind(kind string) []recv {
	var out []recv
	for _, m := range c.snapshot() {
		if strings.HasSuffix(m.Topic, "/"+kind) {
			out = append(out, m)
		}
	}
	return out
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// envelopeOf decodes the envelope of a received payload.
func envelopeOf(t testing.TB, b []byte) wire.Envelope {
	t.Helper()
	var e wire.Envelope
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("bad payload %s: %v", b, err)
	}
	return e
}

// deliveryReport dedups by message_id and reports gaps against 1..n.
type deliveryReport struct {
	Received, Unique, Duplicates, Historical int
	Missing                                  []uint64
	OutOfOrder                               int
}

func report(t testing.TB, msgs []recv, n uint64) deliveryReport {
	var r deliveryReport
	seen := map[string]bool{}
	seqs := map[uint64]bool{}
	var last uint64
	for _, m := range msgs {
		if !strings.HasSuffix(m.Topic, "/alert") && !strings.HasSuffix(m.Topic, "/summary") {
			continue
		}
		r.Received++
		e := envelopeOf(t, m.Payload)
		if seen[e.MessageID] {
			r.Duplicates++
			continue
		}
		seen[e.MessageID] = true
		if seqs[e.Seq] {
			t.Errorf("seq %d delivered under two message ids", e.Seq)
		}
		seqs[e.Seq] = true
		r.Unique++
		if e.Historical {
			r.Historical++
		}
		if e.Seq < last {
			r.OutOfOrder++
		}
		last = e.Seq
	}
	for s := uint64(1); s <= n; s++ {
		if !seqs[s] {
			r.Missing = append(r.Missing, s)
		}
	}
	return r
}

func compileSchema(t testing.TB, name string) *jsonschema.Schema {
	b, err := wire.Schema(name)
	if err != nil {
		t.Fatal(err)
	}
	return compileSchemaJSON(t, name, b)
}

// compileDocsSchema compiles docs/schemas/<name>.schema.json, the file a
// reader of the agent's messages is given.
func compileDocsSchema(t testing.TB, name string) *jsonschema.Schema {
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "schemas", name+".schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	return compileSchemaJSON(t, name, b)
}

func compileSchemaJSON(t testing.TB, name string, b []byte) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource("mem://"+name, doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("mem://" + name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func validateAgainst(t testing.TB, s *jsonschema.Schema, b []byte) {
	t.Helper()
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(inst); err != nil {
		t.Errorf("payload violates schema: %v\n%s", err, b)
	}
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// mosquitto runs Debian's broker on a loopback port with a config and data
// directory of its own.
type mosquitto struct {
	t       testing.TB
	dir     string
	port    int
	conf    string
	cmd     *exec.Cmd
	stderr  *bytes.Buffer
	waitErr chan error
}

const mosquittoBin = "/usr/sbin/mosquitto"

func newMosquitto(t testing.TB, extra string) *mosquitto {
	t.Helper()
	if _, err := os.Stat(mosquittoBin); err != nil {
		t.Skipf("mosquitto broker not installed (%v): apt-get install mosquitto", err)
	}
	m := &mosquitto{t: t, dir: t.TempDir(), port: freePort(t)}
	var conf strings.Builder
	fmt.Fprintf(&conf, "listener %d 127.0.0.1\nallow_anonymous true\n", m.port)
	fmt.Fprintf(&conf, "persistence true\npersistence_location %s/\nautosave_interval 1\n", m.dir)
	fmt.Fprintf(&conf, "max_queued_messages 100000\nlog_dest stderr\nlog_type error\nlog_type warning\n")
	if os.Geteuid() == 0 {
		// Debian's mosquitto drops to user "mosquitto" when started as root
		// and then cannot enter the test's private temp dir; stay root.
		conf.WriteString("user root\n")
	}
	conf.WriteString(extra)
	m.conf = filepath.Join(m.dir, "mosquitto.conf")
	if err := os.WriteFile(m.conf, []byte(conf.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	m.start()
	t.Cleanup(func() { m.stop() })
	return m
}

func (m *mosquitto) url(scheme string) string {
	return fmt.Sprintf("%s://127.0.0.1:%d", scheme, m.port)
}

func (m *mosquitto) start() {
	m.t.Helper()
	m.stderr = new(bytes.Buffer)
	m.cmd = exec.Command(mosquittoBin, "-c", m.conf)
	m.cmd.Stderr = m.stderr
	if err := m.cmd.Start(); err != nil {
		m.t.Fatalf("start mosquitto: %v", err)
	}
	m.waitErr = make(chan error, 1)
	go func(c *exec.Cmd, ch chan error) { ch <- c.Wait() }(m.cmd, m.waitErr)
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", m.port), 100*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		select {
		case err := <-m.waitErr:
			m.t.Fatalf("mosquitto exited: %v\n%s", err, m.stderr)
		default:
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("mosquitto did not listen: %s", m.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop terminates the broker cleanly (it saves its persistence file).
func (m *mosquitto) stop() {
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.waitErr:
	case <-time.After(5 * time.Second):
		_ = m.cmd.Process.Kill()
		<-m.waitErr
	}
	m.cmd = nil
}

var _ = io.Discard

// signer signs test commands like an integrator would.
type signer struct {
	priv ed25519.PrivateKey
	pub  ed25519.PublicKey
	dir  string
	// device is the device key that signs the replies (made by the
	// first enable).
	device ed25519.PublicKey
}

func newSigner(t testing.TB) *signer {
	pub, priv, err := wire.GenerateCommandKey()
	if err != nil {
		t.Fatal(err)
	}
	return &signer{priv: priv, pub: pub, dir: t.TempDir()}
}

// enable turns commands on in cfg with this signer's key and a seen file
// in a temp dir of its own.
func (s *signer) enable(t testing.TB, cfg *Config) {
	cfg.Commands.Enabled = true
	cfg.Commands.SeenFile = filepath.Join(s.dir, "commands-seen.json")
	cfg.Commands.PublicKeys = []CommandKey{{Name: "test", Key: base64.StdEncoding.EncodeToString(s.pub)}}
	cfg.Commands.DeviceKeyFile = filepath.Join(s.dir, "device.key")
	if s.device == nil {
		k, err := InitDeviceKey(cfg.Commands.DeviceKeyFile, false)
		if err != nil {
			t.Fatal(err)
		}
		s.device = k.Public().(ed25519.PublicKey)
	}
}

// payload builds a command payload for site s1.
func (s *signer) payload(id, name, device, args string, ts time.Time) []byte {
	p := fmt.Sprintf(`{"schema_version":2,"message_id":%q,"device":%q,"site":"s1","ts":%q,"command":%q`, id, device, ts.UTC().Format(time.RFC3339Nano), name)
	if args != "" {
		p += `,"args":` + args
	}
	return []byte(p + "}")
}

func (s *signer) sign(t testing.TB, payload []byte) []byte {
	b, err := wire.SignCommand(s.priv, payload)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
