package mqttsync

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/periocular/atm-agent/sync/wire"
)

// withDeviceKey gives cfg a device key made in a temporary folder and
// returns its public key.
func withDeviceKey(t testing.TB, cfg *Config) ed25519.PublicKey {
	t.Helper()
	cfg.Commands.DeviceKeyFile = filepath.Join(t.TempDir(), "device.key")
	k, err := InitDeviceKey(cfg.Commands.DeviceKeyFile, false)
	if err != nil {
		t.Fatal(err)
	}
	return k.Public().(ed25519.PublicKey)
}

// verifyAll checks that every message of col on the device's status,
// state, summary and alert topics carries a valid signature of pub, and
// returns how many of each kind it checked.
func verifyAll(t testing.TB, col *collector, pub ed25519.PublicKey, site, device string) map[string]int {
	t.Helper()
	n := map[string]int{}
	for _, kind := range []string{wire.KindStatus, wire.KindState, wire.KindSummary, wire.KindAlert} {
		for _, r := range col.byKind(kind) {
			if err := wire.VerifyMessage(pub, kind, site, device, r.Payload); err != nil {
				t.Errorf("%s %s: %v\n%s", r.Topic, kind, err, r.Payload)
			}
			n[kind]++
		}
	}
	return n
}

// TestMosquittoSignedMessages: with commands off, the agent makes its
// device key at the first start (the default path), and every status,
// state, summary and alert it publishes through mosquitto, the Last Wills
// of both connections included, verifies with that key, on its own
// topic's kind, site and device only; the signed messages are valid
// against docs/schemas.
func TestMosquittoSignedMessages(t *testing.T) {
	skipShort(t)
	m := newMosquitto(t, "")
	col := newCollector(t, m.url("tcp"), "dash-sig", "atm/test/s1/atm-1/+", false, nil)
	ob := &memOutbox{}
	now := time.Now()
	ob.Add(wire.KindSummary, now, payload(t, wire.KindSummary, 1, now))
	ob.Add(wire.KindAlert, now, payload(t, wire.KindAlert, 2, now))
	cfg := testConfig(m.url("tcp"))
	cfg.StateWill = true
	cfg.Commands.DeviceKeyFile, cfg.Commands.CreateDeviceKey = filepath.Join(t.TempDir(), "device.key"), true
	p, _, _ := runPublisher(t, cfg, Deps{Outbox: ob, Status: func() wire.Status { return wire.Status{Health: wire.HealthOK} }})
	fi, err := os.Stat(cfg.Commands.DeviceKeyFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("device key not made with commands off: %v %v", fi, err)
	}
	key, err := LoadDeviceKey(cfg.Commands.DeviceKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	pub := key.Public().(ed25519.PublicKey)
	waitFor(t, 5*time.Second, "seq 2 acknowledged", func() bool { return p.Stats().LastAckedSeq == 2 })
	// The wills: another client takes each connection's client id.
	for _, id := range []string{"atm-agent-atm-1", "atm-agent-atm-1-will"} {
		rogue := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(m.url("tcp")).SetClientID(id).SetAutoReconnect(false))
		if !rogue.Connect().WaitTimeout(5 * time.Second) {
			t.Fatal("rogue connect timed out")
		}
		rogue.Disconnect(50)
	}
	offline := func(kind string) int {
		n := 0
		for _, r := range col.byKind(kind) {
			var s wire.Status
			if json.Unmarshal(r.Payload, &s) == nil && s.State == wire.StateOffline {
				n++
			}
		}
		return n
	}
	waitFor(t, 10*time.Second, "both wills", func() bool { return offline(wire.KindStatus) > 0 && offline(wire.KindState) > 0 })
	n := verifyAll(t, col, pub, "s1", "atm-1")
	t.Logf("verified: %v", n)
	if n[wire.KindSummary] != 1 || n[wire.KindAlert] != 1 || n[wire.KindStatus] < 2 || n[wire.KindState] < 2 {
		t.Errorf("checked %v: want every kind, the wills among them", n)
	}
	for _, kind := range []string{wire.KindStatus, wire.KindState, wire.KindSummary, wire.KindAlert} {
		s := compileDocsSchema(t, kind)
		for _, r := range col.byKind(kind) {
			validateAgainst(t, s, r.Payload)
		}
	}
	a := col.byKind(wire.KindAlert)[0].Payload
	if err := wire.VerifyMessage(pub, wire.KindAlert, "s1", "atm-2", a); !errors.Is(err, wire.ErrMsgSignature) {
		t.Errorf("the alert verified as another device's: %v", err)
	}
	if err := wire.VerifyMessage(pub, wire.KindSummary, "s1", "atm-1", a); !errors.Is(err, wire.ErrMsgSignature) {
		t.Errorf("the alert verified as a summary: %v", err)
	}
}

// TestUnsignedWithoutDeviceKey: an agent with commands off whose
// configured key file is missing, or is readable by others, starts and
// publishes unsigned (a warning says why); one without a key file
// configured too. With commands on, a missing key stops it, as before.
func TestUnsignedWithoutDeviceKey(t *testing.T) {
	skipShort(t)
	m := newMosquitto(t, "")
	dir := t.TempDir()
	loose := filepath.Join(dir, "loose.key")
	if _, err := InitDeviceKey(loose, false); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(loose, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, file := range map[string]string{"missing": filepath.Join(dir, "none.key"), "mode 0644": loose, "none configured": ""} {
		t.Run(name, func(t *testing.T) {
			col := newCollector(t, m.url("tcp"), "dash-"+filepath.Base(t.Name()), "atm/test/s1/atm-1/+", false, nil)
			ob := &memOutbox{}
			now := time.Now()
			ob.Add(wire.KindAlert, now, payload(t, wire.KindAlert, 1, now))
			cfg := testConfig(m.url("tcp"))
			cfg.Commands.DeviceKeyFile = file
			var logs syncBuffer
			p, _, _ := runPublisher(t, cfg, Deps{Outbox: ob, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			waitFor(t, 5*time.Second, "alert", func() bool { return len(col.byKind(wire.KindAlert)) == 1 && len(col.byKind(wire.KindStatus)) > 0 })
			for _, kind := range []string{wire.KindStatus, wire.KindAlert} {
				if err := wire.VerifyMessage(nil, kind, "s1", "atm-1", col.byKind(kind)[0].Payload); !errors.Is(err, wire.ErrMsgUnsigned) {
					t.Errorf("%s: %v, want unsigned", kind, err)
				}
			}
			if p.deviceKey != nil {
				t.Error("a device key was loaded")
			}
			if file != "" && !strings.Contains(logs.String(), "no usable device key") {
				t.Errorf("no warning: %s", logs.String())
			}
		})
	}
	cfg := testConfig(m.url("tcp"))
	newSigner(t).enable(t, &cfg)
	if err := os.Remove(cfg.Commands.DeviceKeyFile); err != nil {
		t.Fatal(err)
	}
	if _, err := New(cfg, Deps{Outbox: &memOutbox{}, Commands: &fakeCommands{}}); !errors.Is(err, ErrNoDeviceKey) {
		t.Errorf("commands on without a device key: %v", err)
	}
}
