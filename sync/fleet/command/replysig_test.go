package command

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/wire"
)

// signed is r as the agent publishes it, signed with key.
func signed(t *testing.T, key ed25519.PrivateKey, r wire.Reply) []byte {
	t.Helper()
	b, err := wire.SignReply(key, r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Signed replies through a real broker. With a key pinned for
// lyon-07/atm-1, a reply sealed correctly to the command's reply key (as
// any client that read the command can make one) is ignored without a
// signature, with a malformed or a wrong one, with one by another device's key, and
// with the device's genuine signature of another command's reply; the
// device's own signed reply is taken, authenticated. atm-2 has no pin: its
// unsigned reply is taken as before signed replies, counted as
// unauthenticated. With require_signed_replies, nothing is sent to atm-2.
func TestSignedReplies(t *testing.T) {
	m := fleettest.StartMosquitto(t, "")
	cfg := DefaultConfig()
	cfg.Enabled, cfg.PrivateKeyFile, cfg.ReplyTimeout, cfg.ResendInterval = true, "unused", 10*time.Second, 5*time.Second
	c, pub, st := fleetWithStore(t, m.URL(), cfg)
	dev1, dev2 := newRawDevice(t, m.URL(), "lyon-07", "atm-1"), newRawDevice(t, m.URL(), "lyon-07", "atm-2")
	devKey := ed25519.NewKeyFromSeed(make([]byte, 32))
	_, otherKey, _ := ed25519.GenerateKey(nil)
	ctx := context.Background()
	if err := st.PutDeviceKey(ctx, storage.DeviceKey{Site: "lyon-07", Device: "atm-1", PublicKey: devKey.Public().(ed25519.PublicKey),
		Pinned: time.Now(), By: "test"}, storage.KeyChange{User: "test", Role: "cli"}); err != nil {
		t.Fatal(err)
	}

	result := visitsResult
	ask := func(dev *rawDevice, device, id string) (wire.Command, chan visitsAnswer) {
		return askVisits(t, c, dev, pub, device, id)
	}
	take := func(what string, ans chan visitsAnswer, id string, authenticated bool) {
		t.Helper()
		select {
		case got := <-ans:
			if got.err != nil || len(got.res.Visits) != 1 || got.res.Visits[0].TxnID != "T-"+id || got.sent.Authenticated != authenticated {
				t.Errorf("%s: %+v, %+v, %v; want the genuine answer, authenticated %v", what, got.res, got.sent, got.err, authenticated)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no answer", what)
		}
	}

	a, ansA := ask(dev1, "atm-1", "p-1")
	b, ansB := ask(dev1, "atm-1", "p-2")
	topic1 := prefix + "/lyon-07/atm-1/reply"
	forged := sealedReply(t, a, result("p-1"))
	forged.MessageID = "r-forged"
	noSig, _ := json.Marshal(forged)
	badSig := forged
	badSig.Sig = strings.Repeat("A", 86) + "=="
	// Not even the form of a signature: the schema refuses it.
	malformed := forged
	malformed.Sig = "AAAA"
	// The device's genuine signature of its reply to B, put on a reply to
	// A sealed in A's context.
	var genuineB wire.Reply
	if err := json.Unmarshal(signed(t, devKey, sealedReply(t, b, result("p-2"))), &genuineB); err != nil {
		t.Fatal(err)
	}
	replayedSig := forged
	replayedSig.Sig = genuineB.Sig
	for _, msg := range [][]byte{noSig, mustJSON(t, malformed), mustJSON(t, badSig), signed(t, otherKey, forged), mustJSON(t, replayedSig)} {
		dev1.publish(t, topic1, msg)
	}
	fleettest.WaitFor(t, 5*time.Second, "4 forged replies ignored", func() bool { return c.Stats().BadSignature == 4 })
	if st := c.Stats(); st.Answered != 0 || st.Ignored != 5 || st.InFlight != 2 {
		t.Fatalf("stats %+v: want nothing answered", st)
	}
	dev1.publish(t, topic1, signed(t, devKey, sealedReply(t, a, result("p-1"))))
	dev1.publish(t, topic1, signed(t, devKey, sealedReply(t, b, result("p-2"))))
	take("atm-1 p-1", ansA, "p-1", true)
	take("atm-1 p-2", ansB, "p-2", true)

	// No pin: as before signed replies, shown as unauthenticated.
	d, ansD := ask(dev2, "atm-2", "p-9")
	dev2.publish(t, prefix+"/lyon-07/atm-2/reply", sealedReply(t, d, result("p-9")))
	take("atm-2 p-9", ansD, "p-9", false)
	if st := c.Stats(); st.Answered != 3 || st.Unauthenticated != 1 || st.BadSignature != 4 {
		t.Errorf("stats %+v", st)
	}

	// require_signed_replies: a device without a pin gets nothing.
	cfg.RequireSignedReplies = true
	strict, _, sst := fleetWithStore(t, m.URL(), cfg)
	if err := sst.PutDeviceKey(ctx, storage.DeviceKey{Site: "lyon-07", Device: "atm-1", PublicKey: devKey.Public().(ed25519.PublicKey),
		Pinned: time.Now(), By: "test"}, storage.KeyChange{User: "test", Role: "cli"}); err != nil {
		t.Fatal(err)
	}
	before := len(dev2.copies())
	if _, _, err := strict.IdentityVisits(ctx, "lyon-07", "atm-2", "p-9"); !errors.Is(err, ErrUnpinned) {
		t.Errorf("unpinned device with require_signed_replies: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	if n := len(dev2.copies()); n != before || strict.Stats().Sent != 0 {
		t.Errorf("a command was sent to the unpinned device (%d copies, was %d)", n, before)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
