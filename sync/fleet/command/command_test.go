package command

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/fleet/ingest"
	"github.com/periocular/atm-agent/sync/fleet/storage/boltstore"
	"github.com/periocular/atm-agent/sync/wire"
)

const prefix = "atm/cmdtest"

// fleet starts the ingest (its broker connection) on a real mosquitto
// and a command client on it, as the service wires them.
func fleet(t *testing.T, broker string, cfg Config) (*Client, ed25519.PublicKey) {
	t.Helper()
	c, pub, _ := fleetWithStore(t, broker, cfg)
	return c, pub
}

// fleetWithStore is fleet, with the store whose pinned device keys the
// client checks replies against.
func fleetWithStore(t *testing.T, broker string, cfg Config) (*Client, ed25519.PublicKey, *boltstore.Store) {
	t.Helper()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "fleet.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	icfg := ingest.DefaultConfig()
	icfg.Brokers, icfg.Prefix, icfg.ClientID = []string{broker}, prefix, fmt.Sprintf("fleet-cmd-%d", time.Now().UnixNano())
	icfg.ConnectTimeout, icfg.KeepAlive, icfg.ReconnectBackoffMax = 2*time.Second, 2*time.Second, 500*time.Millisecond
	in, err := ingest.New(icfg, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	pub, priv, _ := wire.GenerateCommandKey()
	c, err := New(cfg, prefix, priv, in, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.UseKeys(st)
	in.Route(c.ReplyFilter(), c.Handle)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = in.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	fleettest.WaitFor(t, 10*time.Second, "ingest connected", func() bool { return in.Stats().Connected })
	return c, pub, st
}

// rawDevice is a hand-driven device on the broker: it records every
// message on its cmd topic and publishes whatever the test says.
type rawDevice struct {
	c    mqtt.Client
	mu   sync.Mutex
	cmds [][]byte
	got  chan []byte
}

func newRawDevice(t *testing.T, broker, site, device string) *rawDevice {
	t.Helper()
	d := &rawDevice{got: make(chan []byte, 100)}
	d.c = mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID(fmt.Sprintf("raw-%s-%d", device, time.Now().UnixNano())))
	if tok := d.c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	t.Cleanup(func() { d.c.Disconnect(100) })
	topic := prefix + "/" + site + "/" + device + "/cmd"
	if tok := d.c.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) {
		d.mu.Lock()
		d.cmds = append(d.cmds, bytes.Clone(m.Payload()))
		d.mu.Unlock()
		d.got <- bytes.Clone(m.Payload())
	}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	return d
}

func (d *rawDevice) publish(t *testing.T, topic string, v any) {
	t.Helper()
	b, ok := v.([]byte)
	if !ok {
		var err error
		if b, err = json.Marshal(v); err != nil {
			t.Fatal(err)
		}
	}
	if tok := d.c.Publish(topic, 1, false, b); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
}

func (d *rawDevice) copies() [][]byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([][]byte(nil), d.cmds...)
}

func reply(site, device, corr string, name wire.CommandName, result any) wire.Reply {
	r := wire.Reply{Envelope: wire.NewEnvelope(site, device, time.Now()), CorrelationID: corr, Command: name, OK: true}
	r.MessageID = "r-" + corr + "-" + device
	r.Result, _ = json.Marshal(result)
	return r
}

// fleetAndDevice is a fleet (reply timeout 10 s, resending every
// resend) and the raw device lyon-07/atm-1 on a new mosquitto.
func fleetAndDevice(t *testing.T, resend time.Duration) (*Client, ed25519.PublicKey, *rawDevice) {
	t.Helper()
	m := fleettest.StartMosquitto(t, "")
	cfg := DefaultConfig()
	cfg.Enabled, cfg.PrivateKeyFile, cfg.ReplyTimeout, cfg.ResendInterval = true, "unused", 10*time.Second, resend
	c, pub := fleet(t, m.URL(), cfg)
	return c, pub, newRawDevice(t, m.URL(), "lyon-07", "atm-1")
}

// visitsResult is an identity_visits result of one visit of id.
func visitsResult(id string) wire.IdentityVisitsResult {
	return wire.IdentityVisitsResult{Identity: id, Total: 1, Visits: []wire.ReviewVisit{
		{VisitID: "v-" + id, TxnID: "T-" + id, TS: time.Now().UTC().Truncate(time.Second)}}}
}

// visitsAnswer is what IdentityVisits returned.
type visitsAnswer struct {
	res  wire.IdentityVisitsResult
	sent Sent
	err  error
}

// askVisits asks lyon-07/device for identity id's visits in the
// background and returns the command as dev received it (verified with
// the fleet's key pub) and where the answer comes.
func askVisits(t *testing.T, c *Client, dev *rawDevice, pub ed25519.PublicKey, device, id string) (wire.Command, chan visitsAnswer) {
	t.Helper()
	ans := make(chan visitsAnswer, 1)
	go func() {
		res, sent, err := c.IdentityVisits(context.Background(), "lyon-07", device, id)
		ans <- visitsAnswer{res, sent, err}
	}()
	payload, _, err := wire.OpenSignedCommand(<-dev.got, []ed25519.PublicKey{pub})
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := wire.DecodeCommand(payload)
	if err != nil {
		t.Fatal(err)
	}
	return cmd, ans
}

// sealedReply is the agent's ok reply to cmd: result sealed to its
// args.reply_key.
func sealedReply(t *testing.T, cmd wire.Command, result any) wire.Reply {
	t.Helper()
	r := reply(cmd.Site, cmd.Device, cmd.MessageID, cmd.Command, result)
	if err := r.Seal(cmd.Args.ReplyKey); err != nil {
		t.Fatal(err)
	}
	return r
}

// One identity_visits through a real broker: the command is signed with
// the configured key and holds exactly the request; it is resent with the
// same bytes while no reply comes; replies that do not pass are ignored
// (another device's topic, a payload naming another device, a forbidden
// field, a schema violation, another command's name, a signed-command
// envelope, an unknown correlation id), and the device's own answer is
// the one returned.
func TestClientSignsResendsAndIgnoresForgedReplies(t *testing.T) {
	c, pub, dev := fleetAndDevice(t, 300*time.Millisecond)

	sim := 0.91
	genuine := wire.IdentityVisitsResult{Identity: "p-1", Total: 2, Visits: []wire.ReviewVisit{
		{VisitID: "v-2", TxnID: "T-2", TS: time.Now().UTC().Truncate(time.Second), Card: 1, Similarity: &sim},
		{VisitID: "v-1", TxnID: "T-1", TS: time.Now().UTC().Add(-time.Hour).Truncate(time.Second), Masked: true}}}
	type answer struct {
		res wire.IdentityVisitsResult
		err error
	}
	ans := make(chan answer, 1)
	go func() {
		res, _, err := c.IdentityVisits(context.Background(), "lyon-07", "atm-1", "p-1")
		ans <- answer{res, err}
	}()
	first := <-dev.got
	payload, _, err := wire.OpenSignedCommand(first, []ed25519.PublicKey{pub})
	if err != nil {
		t.Fatalf("the command does not verify with the fleet's key: %v", err)
	}
	cmd, err := wire.DecodeCommand(payload)
	if err != nil {
		t.Fatal(err)
	}
	if cmd.Command != wire.CmdIdentityVisits || cmd.Args.ID != "p-1" || cmd.Site != "lyon-07" || cmd.Device != "atm-1" || cmd.Args.Visits != nil {
		t.Fatalf("command %+v", cmd)
	}
	again := <-dev.got // no reply yet: the same message again
	if !bytes.Equal(first, again) {
		t.Errorf("the resent copy differs:\n%s\n%s", first, again)
	}
	base := prefix + "/lyon-07/atm-1/reply"
	dev.publish(t, prefix+"/lyon-07/atm-9/reply", reply("lyon-07", "atm-9", cmd.MessageID, cmd.Command, genuine))
	dev.publish(t, base, reply("lyon-07", "atm-9", cmd.MessageID, cmd.Command, genuine))
	dev.publish(t, base, reply("lyon-07", "atm-1", cmd.MessageID, cmd.Command, map[string]any{"identity": "p-1", "embedding": []float64{0.1}}))
	noSeq := map[string]any{}
	b, _ := json.Marshal(reply("lyon-07", "atm-1", cmd.MessageID, cmd.Command, genuine))
	_ = json.Unmarshal(b, &noSeq)
	delete(noSeq, "seq")
	dev.publish(t, base, noSeq)
	dev.publish(t, base, reply("lyon-07", "atm-1", cmd.MessageID, wire.CmdPing, genuine))
	dev.publish(t, base, first) // a signed command is no reply
	dev.publish(t, base, reply("lyon-07", "atm-1", cmd.MessageID[:len(cmd.MessageID)-4]+"0000", cmd.Command, genuine))
	dev.publish(t, base, reply("lyon-07", "atm-1", "c-of-atm-tools", cmd.Command, genuine)) // another sender's: not counted as ignored
	// The broker's connection may hand messages over concurrently: the
	// bad ones are all seen before the genuine answer is sent.
	fleettest.WaitFor(t, 5*time.Second, "7 replies ignored, 1 another sender's", func() bool { st := c.Stats(); return st.Ignored == 7 && st.Others == 1 })
	forged := genuine
	forged.Visits = nil
	forged.Total = 0
	dev.publish(t, base, sealedReply(t, cmd, genuine))
	dev.publish(t, base, sealedReply(t, cmd, forged)) // too late: answered
	var a answer
	select {
	case a = <-ans:
	case <-time.After(15 * time.Second):
		t.Fatal("no answer")
	}
	if a.err != nil || len(a.res.Visits) != 2 || a.res.Visits[0].TxnID != "T-2" || a.res.Visits[0].Card != 1 || *a.res.Visits[0].Similarity != sim || !a.res.Visits[1].Masked {
		t.Fatalf("answer %+v, %v; want the device's own", a.res, a.err)
	}
	fleettest.WaitFor(t, 5*time.Second, "8 replies ignored", func() bool { return c.Stats().Ignored == 8 })
	st := c.Stats()
	if st.Sent != 1 || st.Resent < 1 || st.Answered != 1 || st.InFlight != 0 || st.Others != 1 {
		t.Errorf("stats %+v", st)
	}
	for i, cp := range dev.copies() {
		if !bytes.Equal(cp, first) {
			t.Errorf("copy %d differs from the first", i)
		}
	}
	t.Logf("%d copies sent; stats %+v", len(dev.copies()), st)
}

// No reply: ErrTimeout after reply_timeout, not a hang; the bound on
// commands in flight refuses one more at once; an agent that does not
// know the command is told apart from one that refuses it.
func TestClientTimeoutBusyAndOlderAgent(t *testing.T) {
	m := fleettest.StartMosquitto(t, "")
	cfg := DefaultConfig()
	cfg.Enabled, cfg.PrivateKeyFile, cfg.ReplyTimeout, cfg.ResendInterval, cfg.MaxInFlight = true, "unused", time.Second, 200*time.Millisecond, 1
	c, _ := fleet(t, m.URL(), cfg)
	dev := newRawDevice(t, m.URL(), "lyon-07", "atm-1")

	start := time.Now()
	errc := make(chan error, 1)
	go func() { _, _, err := c.IdentityVisits(context.Background(), "lyon-07", "atm-1", "p-1"); errc <- err }()
	<-dev.got
	if _, _, err := c.Merge(context.Background(), "lyon-07", "atm-1", "p-1", "p-2", nil); !errors.Is(err, ErrBusy) {
		t.Errorf("a second command with max_in_flight 1: %v, want ErrBusy", err)
	}
	if err := <-errc; !errors.Is(err, ErrTimeout) {
		t.Errorf("no reply: %v, want ErrTimeout", err)
	}
	if d := time.Since(start); d < time.Second || d > 3*time.Second {
		t.Errorf("timed out after %v, want about 1s", d)
	}

	// Replies without a code (agents before codes) are read by their
	// text; a code, when there is one, decides whatever the text says.
	for _, tc := range []struct {
		error string
		code  wire.ReplyCode
		want  error
	}{{`invalid command: unknown command "merge_identities"`, "", ErrUnsupported},
		// The previous release's strict decoder refuses the argument it
		// does not know before it looks at the command's name.
		{`invalid command: json: unknown field "into"`, "", ErrUnsupported},
		// An agent before sealed replies refuses args.reply_key.
		{`invalid command: json: unknown field "reply_key"`, "", ErrUnsupported},
		{"merge_identities: no identity p-2", "", ErrRefused},
		{"merge_identities: no identity p-2", wire.CodeNotFound, ErrRefused},
		{"a new refusal's words", wire.CodeUnsupported, ErrUnsupported},
		{`identity "unknown command": unknown identity`, wire.CodeNotFound, ErrRefused},
		{"merge: not started: context deadline exceeded", wire.CodeBusy, ErrRefused}} {
		go func() { _, _, err := c.Merge(context.Background(), "lyon-07", "atm-1", "p-1", "p-2", nil); errc <- err }()
		var cmd wire.Command
		for cmd.Command != wire.CmdMergeIdentities {
			p, _ := wire.ParseSignedCommand(<-dev.got)
			cmd, _ = wire.DecodeCommand(p.Payload())
		}
		r := wire.Reply{Envelope: wire.NewEnvelope("lyon-07", "atm-1", time.Now()), CorrelationID: cmd.MessageID, Command: cmd.Command,
			Code: tc.code, Error: tc.error}
		r.MessageID = "r-1"
		dev.publish(t, prefix+"/lyon-07/atm-1/reply", r)
		if err := <-errc; !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.error) || RefusalCode(err) != tc.code {
			t.Errorf("reply %q code %q: %v (code %q), want %v", tc.error, tc.code, err, RefusalCode(err), tc.want)
		}
	}
}

// The signing key is refused when others may read it or another user
// owns it, and when it is not an Ed25519 PKCS#8 key; the config needs it
// when enabled and bounds the timeouts.
func TestLoadKeyAndConfig(t *testing.T) {
	dir := t.TempDir()
	_, priv, _ := wire.GenerateCommandKey()
	pemb, _ := wire.MarshalPrivateKeyPEM(priv)
	p := filepath.Join(dir, "central.key")
	if err := os.WriteFile(p, pemb, 0o600); err != nil {
		t.Fatal(err)
	}
	if k, err := LoadKey(p); err != nil || !k.Equal(priv) {
		t.Fatalf("0600 key: %v", err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604} {
		os.Chmod(p, mode)
		if _, err := LoadKey(p); err == nil || !strings.Contains(err.Error(), "chmod 0600") {
			t.Errorf("mode %04o: %v, want refused with the chmod", mode, err)
		}
	}
	os.Chmod(p, 0o600)
	if os.Geteuid() == 0 {
		os.Chown(p, 65534, 65534)
		if _, err := LoadKey(p); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
			t.Errorf("key owned by another user: %v", err)
		}
		os.Chown(p, 0, 0)
	}
	pubPEM, _ := wire.MarshalPublicKeyPEM(priv.Public().(ed25519.PublicKey))
	os.WriteFile(p, pubPEM, 0o600)
	if _, err := LoadKey(p); err == nil {
		t.Error("a public key accepted as the signing key")
	}
	ok := DefaultConfig()
	ok.Enabled, ok.PrivateKeyFile = true, p
	if err := ok.Validate(); err != nil {
		t.Error(err)
	}
	for name, mut := range map[string]func(*Config){
		"no key":         func(c *Config) { c.PrivateKeyFile = "" },
		"timeout 0":      func(c *Config) { c.ReplyTimeout = 0 },
		"timeout 10m":    func(c *Config) { c.ReplyTimeout = 10 * time.Minute },
		"resend > reply": func(c *Config) { c.ResendInterval = time.Minute },
		"in flight 0":    func(c *Config) { c.MaxInFlight = 0 },
		"budget 1024":    func(c *Config) { c.DeviceBudget = 1024 },
		"budget 0":       func(c *Config) { c.DeviceBudget = 0 },
		"cache 2m":       func(c *Config) { c.ReviewCache = 2 * time.Minute },
	} {
		c := ok
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Errorf("the default (off) config: %v", err)
	}
}
