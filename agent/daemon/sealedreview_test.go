package daemon

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/store/record"
	"github.com/periocular/atm-agent/sync/fleet/command"
	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/mqttsync"
	"github.com/periocular/atm-agent/sync/wire"
)

// pahoPublisher is the fleet's broker connection in a test: a plain
// client that publishes the fleet's commands and hands the replies of
// the client's filter to it, as the fleet's ingest routes them.
type pahoPublisher struct{ c mqtt.Client }

func (p pahoPublisher) Publish(ctx context.Context, topic string, payload []byte) error {
	tok := p.c.Publish(topic, 1, false, payload)
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// pinnedKeys is the fleet's store of pinned device keys, in memory.
type pinnedKeys map[string]ed25519.PublicKey

func (p pinnedKeys) DeviceKey(_ context.Context, site, device string) (storage.DeviceKey, error) {
	if k, ok := p[site+"/"+device]; ok {
		return storage.DeviceKey{Site: site, Device: device, PublicKey: k}, nil
	}
	return storage.DeviceKey{}, storage.DeviceKeyNotFound(site, device)
}

// TestMosquittoSealedReview: the daemon (real models, store and
// publisher) answers the fleet's command client (sync/fleet/command)
// through a real mosquitto. The client gets the identity's visits; a
// client of the broker subscribed to +/+/+/reply gets the reply too, and
// none of the visits' ids, transaction ids or times is in its bytes: the
// result is sealed to the command's one-time key. The daemon made its
// device key at start (device.key beside the store, 0600), and its reply
// carries a signature that verifies with that key's public half (what
// atm-agent device-key show prints): the fleet, with it pinned, takes the
// reply as authenticated.
func TestMosquittoSealedReview(t *testing.T) {
	if testing.Short() {
		t.Skip("starts mosquitto and loads the models")
	}
	m := fleettest.StartMosquitto(t, "")
	cfg := mqttTestConfig(t, m.URL(), DeviceConfig{ID: "atm-9", Site: "s9"})
	pub, priv, err := wire.GenerateCommandKey()
	if err != nil {
		t.Fatal(err)
	}
	cfg.MQTT.Commands.Enabled = true
	cfg.MQTT.Commands.PublicKeys = []mqttsync.CommandKey{{Name: "fleet", Key: base64.StdEncoding.EncodeToString(pub)}}
	cfg.fill()

	// Seed the store: identity X of three visits with transaction ids.
	d, err := New(cfg, Options{Version: "test", Logger: testLog(t), Camera: stillCamera{}})
	if err != nil {
		t.Fatal(err)
	}
	dim, model := d.eng.Snapshot().Dim, d.pipe.TemplateModel
	const x = "p-x0000000"
	now := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	var secrets []string
	for i := range 3 {
		ts := now.Add(time.Duration(i) * time.Minute)
		txn := fmt.Sprintf("TXN-SEALED-%d", i)
		v := &visit.Visit{Time: ts, Trigger: "test", Context: visit.Context{CardHash: strings.Repeat("ab", 32), TxnID: txn},
			Descriptor: visit.Descriptor{Outcome: visit.FaceFound, Embedding: axisVec(dim, 0, i), Model: model,
				Mask: visit.Unmasked, Quality: 0.9, Frames: 1, Used: 1},
			IdentityID: x}
		res, err := d.Store().CommitVisit(context.Background(), record.Commit{Visit: v,
			Identities: []record.Identity{{ID: x, Status: "confirmed", Model: model}}})
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, txn, res.VisitID, ts.Format("2006-01-02T15:04:05"))
	}
	d.Close()

	d, err = New(cfg, Options{Version: "test", Logger: testLog(t), Camera: stillCamera{}})
	if err != nil {
		t.Fatal(err)
	}
	stop := runDaemon(t, d)
	defer stop()
	fleettest.WaitFor(t, 10*time.Second, "the daemon connected", func() bool { return d.Publisher().Stats().Connects > 0 })
	time.Sleep(300 * time.Millisecond) // the command subscription is in place
	keyFile := filepath.Join(filepath.Dir(cfg.Store.Path), "device.key")
	if cfg.MQTT.Commands.DeviceKeyFile != keyFile {
		t.Errorf("device_key_file defaults to %s, want %s", cfg.MQTT.Commands.DeviceKeyFile, keyFile)
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the device key made at start: %v, %v", fi, err)
	}
	devKey, err := mqttsync.LoadDeviceKey(keyFile) // what device-key show prints
	if err != nil {
		t.Fatal(err)
	}
	devPub := devKey.Public().(ed25519.PublicKey)

	// The fleet's command client, and a stranger on the broker.
	ccfg := command.DefaultConfig()
	ccfg.Enabled, ccfg.PrivateKeyFile = true, "unused"
	pc := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(m.URL()).SetClientID(fmt.Sprintf("fleet-%d", time.Now().UnixNano())))
	if tok := pc.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("fleet connect: %v", tok.Error())
	}
	t.Cleanup(func() { pc.Disconnect(50) })
	cl, err := command.New(ccfg, "atm", priv, pahoPublisher{pc}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	cl.UseKeys(pinnedKeys{"s9/atm-9": devPub})
	if tok := pc.Subscribe(cl.ReplyFilter(), 1, func(_ mqtt.Client, msg mqtt.Message) { cl.Handle(msg.Topic(), msg.Payload()) }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	sniffed := fleettest.Sniff(t, m.URL(), "+/+/+/reply")

	res, sent, err := cl.IdentityVisits(context.Background(), "s9", "atm-9", x)
	if err != nil {
		t.Fatal(err)
	}
	if res.Total != 3 || len(res.Visits) != 3 || res.Visits[0].TxnID != "TXN-SEALED-2" || !res.Visits[2].TS.Equal(now) {
		t.Fatalf("the fleet got %+v", res)
	}
	fleettest.WaitFor(t, 5*time.Second, "the reply sniffed", func() bool { return len(sniffed()) > 0 })
	var n int
	for _, b := range sniffed() {
		if !strings.Contains(string(b), sent.MessageID) {
			continue
		}
		n++
		if !strings.Contains(string(b), `"sealed":"`) || strings.Contains(string(b), `"result"`) {
			t.Errorf("the reply on the broker is not sealed: %s", b)
		}
		var r wire.Reply
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatal(err)
		}
		if err := wire.VerifyReply(devPub, r); err != nil {
			t.Errorf("the reply's signature with the device key: %v", err)
		}
		for _, s := range secrets {
			if strings.Contains(string(b), s) {
				t.Errorf("the reply on the broker holds %q: %s", s, b)
			}
		}
	}
	if n != 1 {
		t.Fatalf("%d replies to %s sniffed, want 1", n, sent.MessageID)
	}
	if !sent.Authenticated {
		t.Error("the fleet took the reply as unauthenticated, with the device key pinned")
	}
	if st := cl.Stats(); st.Answered != 1 || st.Ignored != 0 || st.BadSignature != 0 || st.Unauthenticated != 0 {
		t.Errorf("fleet stats %+v", st)
	}
}
