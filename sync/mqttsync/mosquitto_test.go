package mqttsync

// Integration and fault tests against Debian's real mosquitto broker,
// started by the tests on a free loopback port. Skipped only when
// /usr/sbin/mosquitto is absent, or with -short.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/sync/wire"
)

func skipShort(t *testing.T) {
	if testing.Short() {
		t.Skip("real-broker test skipped with -short")
	}
}

// (a) The broker stops while hundreds of messages are enqueued, and comes
// back: everything arrives, no sequence gap after dedup by message_id.
func TestMosquittoBrokerRestart(t *testing.T) {
	skipShort(t)
	m := newMosquitto(t, "")
	col := newCollector(t, m.url("tcp"), "dash-a", "atm/test/#", true, nil)
	ob := &memOutbox{}
	cfg := testConfig(m.url("tcp"))
	p, _, _ := runPublisher(t, cfg, Deps{Outbox: ob})
	const before, during = 100, 300
	enqueue := func(from, to int) {
		for i := from; i <= to; i++ {
			kind := wire.KindAlert
			if i%10 == 0 {
				kind = wire.KindSummary
			}
			ob.Add(kind, time.Now(), payload(t, kind, i, time.Now()))
			p.Notify()
			time.Sleep(time.Millisecond)
		}
	}
	enqueue(1, before)
	waitFor(t, 10*time.Second, "pre-outage messages", func() bool { return report(t, col.snapshot(), before).Unique == before })

	m.stop()
	enqueue(before+1, before+during) // the broker is down: all of these wait in the outbox
	pendingAtRestart := ob.Len()
	time.Sleep(500 * time.Millisecond)
	restart := time.Now()
	m.start()
	waitFor(t, 30*time.Second, "outbox drained", func() bool { return ob.Len() == 0 })
	drained := time.Since(restart)
	waitFor(t, 10*time.Second, "all messages at the dashboard", func() bool {
		return report(t, col.snapshot(), before+during).Unique == before+during
	})
	r := report(t, col.snapshot(), before+during)
	st := p.Stats()
	t.Logf("broker restart: %d enqueued during outage, %d pending at restart, drained %v after restart; received %d, unique %d, duplicates %d, historical %d, missing %d, connects %d",
		during, pendingAtRestart, drained.Round(time.Millisecond), r.Received, r.Unique, r.Duplicates, r.Historical, len(r.Missing), st.Connects)
	if len(r.Missing) != 0 {
		t.Fatalf("sequence gaps: %v", r.Missing)
	}
	if pendingAtRestart < during-cfg.MaxInflight {
		t.Errorf("only %d of %d outage messages were pending: were they acked without a broker?", pendingAtRestart, during)
	}
	if r.Historical < during-cfg.MaxInflight {
		t.Errorf("historical = %d, want >= %d", r.Historical, during-cfg.MaxInflight)
	}
	if st.Connects < 2 {
		t.Errorf("connects = %d, want a reconnect", st.Connects)
	}
	// The latest summary arrived and online was re-published after the restart.
	sums := col.byKind("summary")
	if e := envelopeOf(t, sums[len(sums)-1].Payload); e.Seq != before+during {
		t.Errorf("last summary seq %d, want %d", e.Seq, before+during)
	}
	online := 0
	for _, s := range col.byKind("status") {
		var st wire.Status
		_ = json.Unmarshal(s.Payload, &st)
		if st.State == wire.StateOnline {
			online++
		}
	}
	if online < 2 {
		t.Errorf("online published %d times, want one per connect", online)
	}
}

// dirOutbox is a crash-safe outbox for the kill test: one file per message,
// removed on ack. It survives a SIGKILL of the process using it.
type dirOutbox struct {
	dir      string
	throttle time.Duration
}

type dirMsg struct {
	Key, Seq    uint64
	Kind, Topic string
	Created     time.Time
	Payload     json.RawMessage
}

func (o dirOutbox) put(m visit.OutboxMessage) error {
	b, _ := json.Marshal(dirMsg{m.Key, m.Seq, m.Kind, m.Topic, m.Created, m.Payload})
	tmp := filepath.Join(o.dir, fmt.Sprintf("%020d.tmp", m.Key))
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(o.dir, fmt.Sprintf("%020d.json", m.Key)))
}

func (o dirOutbox) keys() []string {
	es, _ := os.ReadDir(o.dir)
	var out []string
	for _, e := range es {
		if strings.HasSuffix(e.Name(), ".json") {
			out = append(out, e.Name())
		}
	}
	slices.Sort(out)
	return out
}

func (o dirOutbox) OutboxPending(ctx context.Context, max int) ([]visit.OutboxMessage, error) {
	time.Sleep(o.throttle)
	var out []visit.OutboxMessage
	for _, name := range o.keys() {
		if len(out) == max {
			break
		}
		b, err := os.ReadFile(filepath.Join(o.dir, name))
		if err != nil {
			return nil, err
		}
		var d dirMsg
		if err := json.Unmarshal(b, &d); err != nil {
			return nil, err
		}
		out = append(out, visit.OutboxMessage{Key: d.Key, Seq: d.Seq, Kind: d.Kind, Topic: d.Topic, Created: d.Created, Payload: d.Payload})
	}
	return out, nil
}

func (o dirOutbox) OutboxAck(ctx context.Context, keys ...uint64) error {
	for _, k := range keys {
		if err := os.Remove(filepath.Join(o.dir, fmt.Sprintf("%020d.json", k))); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	return nil
}

// TestHelperPublisher is the agent process of the kill test; it only runs
// when started by TestMosquittoKill9.
func TestHelperPublisher(t *testing.T) {
	dir := os.Getenv("MQTTSYNC_HELPER_DIR")
	if dir == "" {
		t.Skip("helper process for TestMosquittoKill9")
	}
	throttle, _ := time.ParseDuration(os.Getenv("MQTTSYNC_HELPER_THROTTLE"))
	cfg := testConfig(os.Getenv("MQTTSYNC_HELPER_BROKER"))
	cfg.Batch, _ = strconv.Atoi(os.Getenv("MQTTSYNC_HELPER_BATCH"))
	cfg.StateWill = os.Getenv("MQTTSYNC_HELPER_STATE_WILL") != "off"
	p, err := New(cfg, Deps{Outbox: dirOutbox{dir: dir, throttle: throttle}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := p.Run(ctx); err != nil {
		t.Fatal(err)
	}
}

// startHelperPublisher runs TestHelperPublisher in a child process on the
// outbox in dir (batches of 5), with extra environment; the channel gets
// its exit.
func startHelperPublisher(t *testing.T, dir, broker string, env ...string) (*exec.Cmd, chan error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperPublisher$")
	cmd.Env = append(os.Environ(), "MQTTSYNC_HELPER_DIR="+dir, "MQTTSYNC_HELPER_BROKER="+broker, "MQTTSYNC_HELPER_BATCH=5")
	cmd.Env = append(cmd.Env, env...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := make(chan error, 1)
	go func() { ch <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return cmd, ch
}

// termHelperPublisher stops a helper publisher with SIGTERM and waits for a
// clean exit.
func termHelperPublisher(t *testing.T, cmd *exec.Cmd, exited chan error) {
	t.Helper()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("helper exit after SIGTERM: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("helper did not stop on SIGTERM")
	}
}

// (b) The agent is killed with SIGKILL while its outbox is non-empty, then
// restarted: at-least-once, nothing lost, duplicates carry the same id.
func TestMosquittoKill9(t *testing.T) {
	skipShort(t)
	m := newMosquitto(t, "")
	col := newCollector(t, m.url("tcp"), "dash-b", "atm/test/#", true, nil)
	ob := dirOutbox{dir: t.TempDir()}
	const n = 300
	created := time.Now()
	for i := 1; i <= n; i++ {
		kind := wire.KindAlert
		if i%10 == 0 {
			kind = wire.KindSummary
		}
		if err := ob.put(visit.OutboxMessage{Key: uint64(i), Seq: uint64(i), Kind: kind, Topic: kind, Created: created, Payload: payload(t, kind, i, created)}); err != nil {
			t.Fatal(err)
		}
	}
	start := func(throttle string) (*exec.Cmd, chan error) {
		return startHelperPublisher(t, ob.dir, m.url("tcp"), "MQTTSYNC_HELPER_THROTTLE="+throttle)
	}
	cmd, exited := start("20ms")
	waitFor(t, 15*time.Second, "some deliveries", func() bool { return report(t, col.snapshot(), n).Unique >= 60 })
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited
	left := len(ob.keys())
	gotBefore := report(t, col.snapshot(), n).Unique
	if left == 0 {
		t.Fatal("outbox empty at kill: test did not exercise a kill mid-drain")
	}
	waitFor(t, 10*time.Second, "Last Will offline", func() bool { return lastState(col) == wire.StateOffline })

	cmd, exited = start("0s")
	restart := time.Now()
	waitFor(t, 20*time.Second, "outbox drained after restart", func() bool { return len(ob.keys()) == 0 })
	drained := time.Since(restart)
	waitFor(t, 10*time.Second, "all at dashboard", func() bool { return report(t, col.snapshot(), n).Unique == n })
	termHelperPublisher(t, cmd, exited)
	waitFor(t, 5*time.Second, "stopped status", func() bool { return lastState(col) == wire.StateStopped })
	r := report(t, col.snapshot(), n)
	t.Logf("kill -9: %d messages, %d delivered before the kill, %d left in outbox at kill, drained %v after restart; received %d, unique %d, duplicates %d, missing %d",
		n, gotBefore, left, drained.Round(time.Millisecond), r.Received, r.Unique, r.Duplicates, len(r.Missing))
	if len(r.Missing) != 0 {
		t.Fatalf("sequence gaps after kill -9: %v", r.Missing)
	}
}

func lastState(col *collector) wire.State {
	st := col.byKind("status")
	if len(st) == 0 {
		return ""
	}
	var s wire.Status
	_ = json.Unmarshal(st[len(st)-1].Payload, &s)
	return s.State
}

// (d) Mutual TLS with a CA and certificates made by the test; a wrong CA
// is refused with a clear error and nothing is acked.
func TestMosquittoTLS(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	ca, caKey := makeCert(t, dir, "ca", nil, nil, true, x509.ExtKeyUsageAny)
	makeCert(t, dir, "server", ca, caKey, false, x509.ExtKeyUsageServerAuth)
	makeCert(t, dir, "client", ca, caKey, false, x509.ExtKeyUsageClientAuth)
	makeCert(t, dir, "otherca", nil, nil, true, x509.ExtKeyUsageAny)
	tlsPort := freePort(t)
	m := newMosquitto(t, fmt.Sprintf("listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\nrequire_certificate true\n",
		tlsPort, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")))
	_ = m
	cfg := testConfig(fmt.Sprintf("ssl://127.0.0.1:%d", tlsPort))
	cfg.TLS = TLSConfig{CAFile: filepath.Join(dir, "ca.pem"), CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client.key")}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := Probe(ctx, cfg); err != nil {
		t.Fatalf("probe with the right CA and client cert: %v", err)
	}

	wrongCA := cfg
	wrongCA.TLS.CAFile = filepath.Join(dir, "otherca.pem")
	err := Probe(ctx, wrongCA)
	if err == nil || !strings.Contains(err.Error(), "x509: certificate signed by unknown authority") {
		t.Fatalf("wrong CA: got %v, want a clear x509 unknown-authority error", err)
	}
	t.Logf("wrong CA refused: %v", err)
	noCert := cfg
	noCert.TLS.CertFile, noCert.TLS.KeyFile = "", ""
	if err := Probe(ctx, noCert); err == nil {
		t.Fatal("broker requiring a client certificate accepted a client without one")
	}

	// Real traffic over mutual TLS.
	col := newCollector(t, cfg.Brokers[0], "dash-tls", "atm/test/#", false, &cfg)
	ob := &memOutbox{}
	for i := 1; i <= 20; i++ {
		ob.Add(wire.KindAlert, time.Now(), payload(t, wire.KindAlert, i, time.Now()))
	}
	runPublisher(t, cfg, Deps{Outbox: ob})
	waitFor(t, 10*time.Second, "20 alerts over TLS", func() bool { return report(t, col.snapshot(), 20).Unique == 20 })

	// A publisher with the wrong CA keeps everything and says why.
	ob2 := &memOutbox{}
	ob2.Add(wire.KindAlert, time.Now(), payload(t, wire.KindAlert, 1, time.Now()))
	wrongCA.ClientID = "atm-agent-wrong"
	p2, cancel2, done2 := runPublisher(t, wrongCA, Deps{Outbox: ob2})
	waitFor(t, 10*time.Second, "TLS error surfaced", func() bool { return strings.Contains(p2.Stats().LastError, "unknown authority") })
	cancel2()
	<-done2
	done2 <- nil
	if ob2.Len() != 1 {
		t.Fatal("message acked without a verified broker")
	}
}

// makeCert writes name.pem and name.key in dir, signed by parent (self-signed
// when parent is nil).
func makeCert(t *testing.T, dir, name string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, isCA bool, usage x509.ExtKeyUsage) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "atm-agent test " + name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
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

// TestMosquittoRetainedState: a dashboard that subscribes late gets the
// present at once from retained messages (status, state, the last
// summary), and a change of health reaches a fresh subscriber within
// StatusCheck although StatusInterval is an hour.
func TestMosquittoRetainedState(t *testing.T) {
	skipShort(t)
	m := newMosquitto(t, "")
	cfg := testConfig(m.url("tcp"))
	cfg.StatusInterval = time.Hour
	ob := &memOutbox{}
	now := time.Now()
	ob.Add(wire.KindSummary, now, payload(t, wire.KindSummary, 4, now))
	ob.Add(wire.KindAlert, now, payload(t, wire.KindAlert, 2, now))
	last := ob.Add(wire.KindSummary, now, payload(t, wire.KindSummary, 9, now))
	var camErr atomic.Value
	camErr.Store("")
	p, _, _ := runPublisher(t, cfg, Deps{Outbox: ob, Status: func() wire.Status {
		e := camErr.Load().(string)
		s := wire.Status{AgentVersion: "test", Cameras: []wire.CameraHealth{{Name: "/dev/video0", OK: e == "", Error: e, LastFrame: time.Now()}},
			Outbox: &wire.OutboxStats{Depth: ob.Len()}, Health: wire.HealthOK}
		if e != "" {
			s.Health, s.Reasons = wire.HealthDegraded, []string{"camera: down"}
		}
		return s
	}})
	waitFor(t, 5*time.Second, "outbox drained", func() bool { return ob.Len() == 0 })

	schemas := map[string]*jsonschema.Schema{}
	for _, k := range []string{"status", "state", "summary"} {
		schemas[k] = compileSchema(t, k)
	}
	// fresh subscribes like a restarted dashboard and returns the retained
	// message of each kind.
	n := 0
	fresh := func() map[string]recv {
		n++
		col := newCollector(t, m.url("tcp"), fmt.Sprintf("dash-%d", n), "atm/test/s1/atm-1/#", false, nil)
		got := map[string]recv{}
		waitFor(t, 3*time.Second, "retained status, state and summary", func() bool {
			for _, r := range col.snapshot() {
				if r.Retained {
					got[r.Topic[strings.LastIndex(r.Topic, "/")+1:]] = r
				}
			}
			return len(got) == 3
		})
		for k, r := range got {
			validateAgainst(t, schemas[k], r.Payload)
		}
		col.c.Disconnect(50)
		return got
	}
	got := fresh()
	var sum wire.Summary
	var st wire.DeviceState
	if err := json.Unmarshal(got["summary"].Payload, &sum); err != nil || sum.Seq != last.Seq || sum.SchemaVersion != wire.SummarySchemaVersion {
		t.Fatalf("retained summary seq %d v%d (want the last, seq %d, v2): %s", sum.Seq, sum.SchemaVersion, last.Seq, got["summary"].Payload)
	}
	if !strings.Contains(string(got["summary"].Payload), `"h24":9`) {
		t.Errorf("summary lacks the dot-notation keys: %s", got["summary"].Payload)
	}
	if err := json.Unmarshal(got["state"].Payload, &st); err != nil || st.Summary == nil || st.Summary.Seq != last.Seq ||
		st.Summary.Totals.Visits.H24 != 9 || st.LastAlert == nil || st.LastAlert.AlertID != "a-2" || st.State != wire.StateOnline {
		t.Fatalf("state %s", got["state"].Payload)
	}
	t.Logf("state after connect: %s", got["state"].Payload)

	// The camera fails: the next fresh subscriber sees it.
	before := p.Stats().StatusPublished
	failedAt := time.Now()
	camErr.Store("read /dev/video0: device gone")
	waitFor(t, StatusCheck+2*time.Second, "status republished", func() bool { return p.Stats().StatusPublished > before })
	got = fresh()
	for _, k := range []string{"status", "state"} {
		var s wire.Status
		if err := json.Unmarshal(got[k].Payload, &s); err != nil || s.Cameras[0].OK || s.Health != wire.HealthDegraded {
			t.Fatalf("%s after the failure: %s", k, got[k].Payload)
		}
	}
	t.Logf("camera failure retained after %s (StatusCheck %s, StatusInterval %s)", time.Since(failedAt).Round(time.Millisecond), StatusCheck, cfg.StatusInterval)
	// Nothing changes: nothing is republished before the interval.
	before = p.Stats().StatusPublished
	time.Sleep(2500 * time.Millisecond)
	if d := p.Stats().StatusPublished - before; d != 0 {
		t.Errorf("%d statuses republished without a change", d)
	}
}

// TestStatusInterval: an unchanged status is still republished every
// StatusInterval, so its age tells a dashboard the agent is alive.
func TestStatusInterval(t *testing.T) {
	broker := startMochi(t)
	cfg := testConfig(broker)
	cfg.StatusInterval = 500 * time.Millisecond
	col := newCollector(t, broker, "col", "atm/test/s1/atm-1/status", false, nil)
	runPublisher(t, cfg, Deps{Outbox: &memOutbox{}, Status: func() wire.Status { return wire.Status{AgentVersion: "test"} }})
	time.Sleep(2600 * time.Millisecond)
	// One at connect, then one per check after the interval (checks run
	// every min(StatusCheck, StatusInterval)).
	if n := len(col.snapshot()); n < 4 || n > 7 {
		t.Errorf("%d statuses in 2.6 s with status_interval 500ms, want 4..7", n)
	}
}

// TestMosquittoStateWill: the retained state goes offline when the agent
// dies, as the status does, although MQTT gives a connection one will; it
// is online again after a restart and after the will connection alone was
// taken over, and stopped after SIGTERM. Without the will connection
// (state_will: false) a killed agent's state keeps saying online, which is
// what the test first shows.
func TestMosquittoStateWill(t *testing.T) {
	skipShort(t)
	m := newMosquitto(t, "")
	schema := compileSchema(t, "state")
	n := 0
	// retained reads the device's retained state as a dashboard that
	// subscribes now would.
	retained := func() wire.DeviceState {
		t.Helper()
		n++
		col := newCollector(t, m.url("tcp"), fmt.Sprintf("dash-w%d", n), "atm/test/s1/atm-1/state", false, nil)
		defer col.c.Disconnect(50)
		var r *recv
		deadline := time.Now().Add(2 * time.Second)
		for r == nil && time.Now().Before(deadline) {
			for _, m := range col.byKind("state") {
				if m.Retained {
					r = &m
					break
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		if r == nil {
			return wire.DeviceState{} // none retained yet
		}
		validateAgainst(t, schema, r.Payload)
		var ds wire.DeviceState
		if err := json.Unmarshal(r.Payload, &ds); err != nil {
			t.Fatal(err)
		}
		return ds
	}
	waitState := func(what string, want wire.State) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got := retained().State
			if got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: retained state %q, want %q", what, got, want)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	dir := t.TempDir()
	start := func(will string) (*exec.Cmd, chan error) {
		return startHelperPublisher(t, dir, m.url("tcp"), "MQTTSYNC_HELPER_STATE_WILL="+will)
	}
	kill := func(cmd *exec.Cmd, exited chan error) {
		t.Helper()
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-exited
	}
	status := newCollector(t, m.url("tcp"), "dash-status", "atm/test/s1/atm-1/status", false, nil)

	// Without the will connection: the status says offline, the state not.
	cmd, exited := start("off")
	waitState("started without state_will", wire.StateOnline)
	kill(cmd, exited)
	waitFor(t, 10*time.Second, "status Last Will", func() bool { return lastState(status) == wire.StateOffline })
	if got := retained().State; got != wire.StateOnline {
		t.Fatalf("without state_will the killed agent's state is %q: the test no longer shows the gap", got)
	}

	// With it: offline within the broker's keep-alive handling of a closed
	// socket (at once: the kernel closes it).
	cmd, exited = start("")
	waitState("started", wire.StateOnline)
	kill(cmd, exited)
	killed := time.Now()
	waitState("killed", wire.StateOffline)
	ds := retained()
	t.Logf("state offline %v after SIGKILL: %+v", time.Since(killed).Round(time.Millisecond), ds.Status.Envelope)
	if ds.Summary != nil || ds.LastAlert != nil {
		t.Errorf("the will carries a summary or alert: %+v", ds)
	}

	// Restarted: online, and no late will turns it offline again.
	cmd, exited = start("")
	waitState("restarted", wire.StateOnline)
	time.Sleep(time.Second)
	if got := retained().State; got != wire.StateOnline {
		t.Fatalf("a second after the restart the state is %q", got)
	}

	// The will connection alone is taken over (its will fires): the
	// publisher republishes the state when the connection is back (paho
	// reconnects at once and takes the id back, so the offline state is
	// seen live, not retained).
	live := newCollector(t, m.url("tcp"), "dash-live", "atm/test/s1/atm-1/state", false, nil)
	liveStates := func(from int) (states []wire.State) {
		for _, r := range live.byKind("state")[from:] {
			var ds wire.DeviceState
			_ = json.Unmarshal(r.Payload, &ds)
			states = append(states, ds.State)
		}
		return states
	}
	mark := len(live.byKind("state"))
	rogue := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(m.url("tcp")).SetClientID("atm-agent-atm-1-will").SetAutoReconnect(false))
	if !rogue.Connect().WaitTimeout(5 * time.Second) {
		t.Fatal("rogue connect timed out")
	}
	took := time.Now()
	waitFor(t, 10*time.Second, "the will's offline state, then online", func() bool {
		st := liveStates(mark)
		i := slices.Index(st, wire.StateOffline)
		return i >= 0 && slices.Contains(st[i:], wire.StateOnline)
	})
	rogue.Disconnect(50)
	t.Logf("will connection taken over: states %v, online again within %v", liveStates(mark), time.Since(took).Round(time.Millisecond))
	waitState("will connection back", wire.StateOnline)

	termHelperPublisher(t, cmd, exited)
	waitState("SIGTERM", wire.StateStopped)
	time.Sleep(500 * time.Millisecond)
	if got := retained().State; got != wire.StateStopped {
		t.Fatalf("after a clean stop the state is %q (a will fired?)", got)
	}
}
