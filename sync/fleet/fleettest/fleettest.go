// Package fleettest starts the real components the fleet service's tests
// need: Debian's mosquitto and PostgreSQL on loopback, each with a private
// data directory, and simulated agents that publish through the agent's own
// publisher (mqttsync.Publisher), so the payloads are the agent's contract.
// It is imported by tests only.
package fleettest

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/jackc/pgx/v5"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/sync/mqttsync"
	"github.com/periocular/atm-agent/sync/wire"
)

// FreePort returns a loopback port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// WaitFor polls cond every 20ms until it holds or d passes.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// proc is a child process with a bounded stop.
type proc struct {
	cmd     *exec.Cmd
	out     *bytes.Buffer
	waitErr chan error
}

func startProc(t testing.TB, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{cmd: cmd, out: new(bytes.Buffer), waitErr: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	go func() { p.waitErr <- cmd.Wait() }()
	return p
}

func (p *proc) stop(sig syscall.Signal) {
	if p == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.waitErr:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.waitErr
	}
}

func waitListen(t testing.TB, port int, p *proc, what string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 100*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		select {
		case err := <-p.waitErr:
			t.Fatalf("%s exited: %v\n%s", what, err, p.out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not listen on %d: %s", what, port, p.out)
		}
		time.Sleep(30 * time.Millisecond)
	}
}

// MosquittoBin is Debian's broker.
const MosquittoBin = "/usr/sbin/mosquitto"

// Mosquitto is a running broker on a loopback port.
type Mosquitto struct {
	t    testing.TB
	Dir  string
	Port int
	conf string
	p    *proc
}

// StartMosquitto runs the broker with persistence in a private directory
// (extra is appended to its config); it is stopped at cleanup. The test is
// skipped when the broker is not installed.
func StartMosquitto(t testing.TB, extra string) *Mosquitto {
	t.Helper()
	if _, err := os.Stat(MosquittoBin); err != nil {
		t.Skipf("mosquitto not installed (%v): apt-get install mosquitto (make test does)", err)
	}
	m := &Mosquitto{t: t, Dir: t.TempDir(), Port: FreePort(t)}
	var conf strings.Builder
	fmt.Fprintf(&conf, "listener %d 127.0.0.1\nallow_anonymous true\n", m.Port)
	fmt.Fprintf(&conf, "persistence true\npersistence_location %s/\nautosave_interval 1\n", m.Dir)
	conf.WriteString("max_queued_messages 100000\nlog_dest stderr\nlog_type error\nlog_type warning\n")
	if os.Geteuid() == 0 {
		// Debian's build drops to user mosquitto as root, which cannot
		// enter the test's private temp dir.
		conf.WriteString("user root\n")
	}
	conf.WriteString(extra)
	m.conf = filepath.Join(m.Dir, "mosquitto.conf")
	if err := os.WriteFile(m.conf, []byte(conf.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	m.Start()
	t.Cleanup(m.Stop)
	return m
}

// URL is the broker's tcp:// URL.
func (m *Mosquitto) URL() string { return fmt.Sprintf("tcp://127.0.0.1:%d", m.Port) }

// Start (re)starts a stopped broker.
func (m *Mosquitto) Start() {
	m.t.Helper()
	m.p = startProc(m.t, exec.Command(MosquittoBin, "-c", m.conf))
	waitListen(m.t, m.Port, m.p, "mosquitto")
}

// Stop terminates the broker cleanly (it saves its persistence).
func (m *Mosquitto) Stop() {
	m.p.stop(syscall.SIGTERM)
	m.p = nil
}

// Postgres is a throwaway PostgreSQL cluster on a loopback port.
type Postgres struct {
	Dir  string
	Port int
	p    *proc
	mu   sync.Mutex
	n    int
}

// pgBin finds a PostgreSQL server binary: Debian's versioned directory,
// then PATH.
func pgBin(name string) (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.Sort(dirs)
	for i := len(dirs) - 1; i >= 0; i-- {
		p := filepath.Join(dirs[i], name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return exec.LookPath(name)
}

// StartPostgres creates a cluster with initdb in a private directory and
// runs postgres on a free loopback port with trust authentication for the
// user "fleet" (nothing listens beyond 127.0.0.1). As root, both run as
// user nobody (PostgreSQL refuses root). Skipped when the server is not
// installed (apt-get install postgresql; make test does).
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	initdb, err1 := pgBin("initdb")
	postgres, err2 := pgBin("postgres")
	if err1 != nil || err2 != nil {
		t.Skipf("PostgreSQL server not installed (initdb: %v, postgres: %v): apt-get install postgresql (make test does)", err1, err2)
	}
	dir, err := os.MkdirTemp("", "atm-fleet-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("nobody")
		if err != nil {
			t.Skipf("running as root and no user nobody to run PostgreSQL as: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	data := filepath.Join(dir, "data")
	cmd := exec.Command(initdb, "-D", data, "-U", "fleet", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	pg := &Postgres{Dir: dir, Port: FreePort(t)}
	cmd = exec.Command(postgres, "-D", data, "-k", dir, "-p", strconv.Itoa(pg.Port),
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
		"-c", "full_page_writes=off", "-c", "max_connections=60", "-c", "shared_buffers=16MB")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	pg.p = startProc(t, cmd)
	waitListen(t, pg.Port, pg.p, "postgres")
	t.Cleanup(func() { pg.p.stop(syscall.SIGINT) }) // fast shutdown
	return pg
}

// DSN is the URL of database db.
func (pg *Postgres) DSN(db string) string {
	return fmt.Sprintf("postgres://fleet@127.0.0.1:%d/%s?sslmode=disable", pg.Port, db)
}

// NewDatabase creates an empty database and returns its DSN.
func (pg *Postgres) NewDatabase(t testing.TB) string {
	t.Helper()
	pg.mu.Lock()
	pg.n++
	name := fmt.Sprintf("fleet_%d", pg.n)
	pg.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var conn *pgx.Conn
	var err error
	// The server accepts TCP a moment before it accepts sessions.
	for i := 0; i < 100; i++ {
		if conn, err = pgx.Connect(ctx, pg.DSN("postgres")); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("connect to test postgres: %v\n%s", err, pg.p.out)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	return pg.DSN(name)
}

// memOutbox is an in-memory outbox with the store's seq assignment.
type memOutbox struct {
	mu   sync.Mutex
	msgs []visit.OutboxMessage
	next uint64
}

func (o *memOutbox) OutboxPending(_ context.Context, n int) ([]visit.OutboxMessage, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.msgs[:min(n, len(o.msgs))]), nil
}

func (o *memOutbox) OutboxAck(_ context.Context, keys ...uint64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.msgs = slices.DeleteFunc(o.msgs, func(m visit.OutboxMessage) bool { return slices.Contains(keys, m.Key) })
	return nil
}

// Agent is a simulated ATM publishing through the agent's own publisher.
type Agent struct {
	Site, Device string
	pub          *mqttsync.Publisher
	out          *memOutbox
	cancel       context.CancelFunc
	done         chan error
	mu           sync.Mutex
	camOK        bool
	// reviewer serves the review commands when set (Commands).
	reviewer *Reviewer
	cmdKey   ed25519.PublicKey
	// devKey signs what the agent publishes (Signed).
	devKey ed25519.PrivateKey
}

// StartAgent connects a simulated agent to broker under prefix. It publishes
// its retained online status at once; Stop publishes stopped, Kill leaves
// the Last Will (offline) to the broker.
func StartAgent(t testing.TB, broker, prefix, site, device string, opts ...AgentOption) *Agent {
	t.Helper()
	cfg := mqttsync.DefaultConfig()
	cfg.Brokers = []string{broker}
	cfg.Topic = mqttsync.TopicConfig{Prefix: prefix, Site: site, Device: device}
	cfg.ConnectTimeout = 2 * time.Second
	cfg.ReconnectBackoffMax = 500 * time.Millisecond
	cfg.PublishTimeout = 2 * time.Second
	cfg.DrainInterval = 50 * time.Millisecond
	cfg.KeepAlive = 2 * time.Second
	a := &Agent{Site: site, Device: device, out: &memOutbox{}, done: make(chan error, 1), camOK: true}
	for _, o := range opts {
		o(a)
	}
	deps := mqttsync.Deps{Outbox: a.out, Status: a.status}
	if a.devKey != nil {
		cfg.Commands.DeviceKeyFile = filepath.Join(t.TempDir(), "device.key")
		pem, err := wire.MarshalPrivateKeyPEM(a.devKey)
		if err == nil {
			err = os.WriteFile(cfg.Commands.DeviceKeyFile, pem, 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if a.reviewer != nil {
		// The agent's own command path: size, signed envelope, the
		// signature against the configured key, the payload decoded
		// strictly, this device, the clock skew, a message id never
		// accepted before (a replay is refused without a reply), then
		// the handler, and a wire.Reply on the reply topic.
		cfg.Commands = mqttsync.CommandsConfig{Enabled: true, Timeout: 10 * time.Second, MaxClockSkew: 5 * time.Minute, MaxSeen: 1024,
			SeenFile:   filepath.Join(t.TempDir(), "commands-seen.json"),
			PublicKeys: []mqttsync.CommandKey{{Name: "fleet", Key: base64.StdEncoding.EncodeToString(a.cmdKey)}},
			// Its replies signed with its device key (Signed), or one
			// made at start.
			DeviceKeyFile: cmp.Or(cfg.Commands.DeviceKeyFile, filepath.Join(t.TempDir(), "device.key")), CreateDeviceKey: true}
		deps.Commands = a.reviewer
	}
	pub, err := mqttsync.New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	a.pub = pub
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	go func() { a.done <- pub.Run(ctx) }()
	t.Cleanup(a.Stop)
	WaitFor(t, 10*time.Second, device+" connected", func() bool { return pub.Stats().Connected })
	return a
}

func (a *Agent) status() wire.Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	cam := wire.CameraHealth{Name: "front", OK: a.camOK}
	if !a.camOK {
		cam.Error = "no frames for 30s"
	}
	a.out.mu.Lock()
	depth := len(a.out.msgs)
	a.out.mu.Unlock()
	return wire.Status{AgentVersion: "test", Models: []string{"yunet-2023mar"}, Cameras: []wire.CameraHealth{cam},
		Outbox: &wire.OutboxStats{Depth: depth}}
}

// AgentOption changes a simulated agent before it connects.
type AgentOption func(*Agent)

// Commands has the agent accept commands signed by key (as an agent
// configured with mqtt.commands does) and serve the identity review's
// with r.
func Commands(key ed25519.PublicKey, r *Reviewer) AgentOption {
	return func(a *Agent) { a.cmdKey, a.reviewer = key, r }
}

// Signed has the agent sign its status, summaries and alerts with key,
// its device key (without it, the agent publishes them unsigned, as one
// of a release before signed messages).
func Signed(key ed25519.PrivateKey) AgentOption {
	return func(a *Agent) { a.devKey = key }
}

// CommandStats are the agent's counts of commands accepted and refused
// (by reason: bad_signature, replayed...).
func (a *Agent) CommandStats() (accepted uint64, rejected map[string]uint64) {
	st := a.pub.Stats()
	return st.CommandsAccepted, st.CommandsRejected
}

// CameraFault makes the agent report its camera as failing in its status.
func CameraFault(a *Agent) { a.camOK = false }

// Enqueue adds an agent payload to the outbox (seq assigned here) and wakes
// the publisher. It returns the seq.
func (a *Agent) Enqueue(t testing.TB, kind string, v any) uint64 {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	a.out.mu.Lock()
	a.out.next++
	seq := a.out.next
	a.out.msgs = append(a.out.msgs, visit.OutboxMessage{Key: seq, Seq: seq, Kind: kind, Topic: kind, Created: time.Now(), Payload: b})
	a.out.mu.Unlock()
	a.pub.Notify()
	return seq
}

// Skip consumes a seq without sending it (an injected gap, as a coalesced
// summary makes).
func (a *Agent) Skip() {
	a.out.mu.Lock()
	a.out.next++
	a.out.mu.Unlock()
}

// Summary enqueues a summary with visits in the last hour and the given
// identities (each with visits1h visits).
func (a *Agent) Summary(t testing.TB, visits1h int, ids ...string) uint64 {
	now := time.Now().UTC()
	s := wire.Summary{Envelope: wire.NewEnvelope(a.Site, a.Device, now), Identities: []wire.IdentityCounts{}}
	for _, id := range ids {
		s.Identities = append(s.Identities, wire.IdentityCounts{ID: id, Visits: wire.WindowCounts{H1: visits1h, H24: visits1h * 3, D7: visits1h * 9},
			DistinctCards: wire.WindowCounts{H1: 1, H24: 2, D7: 4}, FirstSeen: now.Add(-2 * time.Hour), LastSeen: now})
	}
	s.Totals = wire.Totals{Visits: wire.WindowCounts{H1: visits1h, H24: visits1h * 10, D7: visits1h * 50},
		Identities: wire.WindowCounts{H1: len(ids), H24: len(ids), D7: len(ids)}}
	return a.Enqueue(t, wire.KindSummary, s)
}

// Alert enqueues an alert for identity and returns its alert id.
func (a *Agent) Alert(t testing.TB, rule, identity string, count int) string {
	now := time.Now().UTC()
	id := fmt.Sprintf("a-%s-%s-%x", rule, identity, now.UnixNano()) // hex: a long run of digits may look like a card number, and be withheld
	al := wire.NewAlert(wire.NewEnvelope(a.Site, a.Device, now), visit.Alert{ID: id, Rule: rule, Kind: "visits",
		IdentityID: identity, Window: "24h0m0s", WindowStart: now.Add(-24 * time.Hour), Count: count, Threshold: 5,
		FirstSeen: now.Add(-time.Hour), LastSeen: now, Raised: now,
		VisitID: fmt.Sprintf("%x", now.UnixNano()), TxnID: fmt.Sprintf("T-%d", now.UnixNano()%1000000)})
	a.Enqueue(t, wire.KindAlert, al)
	return id
}

// AlertPayload is an alert for identity of site/device raised now (count
// visits in 24h, threshold 5), with seq and message id "<seq>-<alertID>",
// as the agent publishes it: unsigned, and signed by key.
func AlertPayload(t testing.TB, key ed25519.PrivateKey, site, device, alertID, identity string, count int, seq uint64) (unsigned, signed []byte) {
	t.Helper()
	now := time.Now().UTC()
	al := wire.NewAlert(wire.NewEnvelope(site, device, now), visit.Alert{ID: alertID, Rule: "many-visits-24h", Kind: "visits",
		IdentityID: identity, Window: "24h0m0s", WindowStart: now.Add(-24 * time.Hour), Count: count, Threshold: 5,
		FirstSeen: now.Add(-time.Hour), LastSeen: now, Raised: now})
	al.Seq, al.MessageID = seq, fmt.Sprintf("%d-%s", seq, alertID)
	unsigned, err := json.Marshal(al)
	if err == nil {
		signed, err = wire.SignMessage(key, wire.KindAlert, site, device, unsigned)
	}
	if err != nil {
		t.Fatal(err)
	}
	return unsigned, signed
}

// Pending is the number of outbox messages not yet acknowledged by the broker.
func (a *Agent) Pending() int {
	a.out.mu.Lock()
	defer a.out.mu.Unlock()
	return len(a.out.msgs)
}

// Stop shuts the agent down cleanly (status "stopped").
func (a *Agent) Stop() {
	if a.cancel == nil {
		return
	}
	a.cancel()
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
	}
	a.cancel = nil
}

// Publish sends a raw payload on topic at QoS 1, for malformed-input tests.
func Publish(t testing.TB, broker, topic string, payload []byte, retained bool) {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID(fmt.Sprintf("fleettest-pub-%d", time.Now().UnixNano())))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect raw publisher: %v", tok.Error())
	}
	defer c.Disconnect(100)
	if tok := c.Publish(topic, 1, retained, payload); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// DieWithWill connects as a device whose Last Will is the agent's offline
// status (as mqttsync builds it), then drops the TCP connection without a
// DISCONNECT, as a crashed or unplugged agent does: the broker publishes the
// will, retained.
func DieWithWill(t testing.TB, broker, prefix, site, device string) {
	t.Helper()
	topics, err := wire.NewTopics(prefix, site, device)
	if err != nil {
		t.Fatal(err)
	}
	will := wire.Status{Envelope: wire.NewEnvelope(site, device, time.Now()), State: wire.StateOffline}
	will.MessageID = fmt.Sprintf("st-will-%d", time.Now().UnixNano())
	payload, _ := json.Marshal(will)
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(broker, "tcp://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cp := packets.NewControlPacket(packets.Connect).(*packets.ConnectPacket)
	cp.ProtocolName, cp.ProtocolVersion = "MQTT", 4
	cp.CleanSession, cp.Keepalive = true, 30
	cp.ClientIdentifier = "atm-agent-" + device + "-crashed"
	cp.WillFlag, cp.WillQos, cp.WillRetain = true, 1, true
	cp.WillTopic, cp.WillMessage = topics.Status(), payload
	if err := cp.Write(conn); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	ack, err := packets.ReadPacket(conn)
	if err != nil {
		t.Fatalf("read CONNACK: %v", err)
	}
	if ca, ok := ack.(*packets.ConnackPacket); !ok || ca.ReturnCode != 0 {
		t.Fatalf("connect refused: %v", ack)
	}
}

// MakeCert writes name.pem and name.key (ECDSA P-256) in dir, signed by
// parent (self-signed when parent is nil); leaf certificates are valid for
// 127.0.0.1 and localhost.
func MakeCert(t testing.TB, dir, name string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, isCA bool, usage x509.ExtKeyUsage) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "atm-fleet test " + name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	if isCA {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{usage}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		tmpl.DNSNames = []string{"localhost"}
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent, parentKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key
}
