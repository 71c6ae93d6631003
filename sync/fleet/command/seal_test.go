package command

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/wire"
)

// Sealed replies through a real broker: each command carries its own
// reply key; the sealed result of the device is opened and returned. A
// reply that carries the result in clear, none at all, one sealed in
// another command's context or to another command's key (a sealed reply
// replayed under this correlation id), or altered, is ignored as a forged
// one is, and the command still takes the genuine answer.
func TestSealedReplies(t *testing.T) {
	c, pub, dev := fleetAndDevice(t, 5*time.Second)

	result := visitsResult
	ask := func(id string) (wire.Command, chan visitsAnswer) {
		cmd, ans := askVisits(t, c, dev, pub, "atm-1", id)
		if cmd.Args.ID != id || cmd.Args.ReplyKey == "" {
			t.Fatalf("command %+v: want identity %s and a reply key", cmd, id)
		}
		return cmd, ans
	}
	a, ansA := ask("p-1")
	b, ansB := ask("p-2")
	if a.Args.ReplyKey == b.Args.ReplyKey {
		t.Fatal("two commands with the same reply key")
	}

	base := prefix + "/lyon-07/atm-1/reply"
	bad := []wire.Reply{reply("lyon-07", "atm-1", a.MessageID, a.Command, result("p-1"))} // in clear
	none := reply("lyon-07", "atm-1", a.MessageID, a.Command, nil)
	none.Result = nil
	bad = append(bad, none)
	// B's genuine sealed answer replayed under A's id.
	replayed := sealedReply(t, b, result("p-1"))
	replayed.CorrelationID, replayed.MessageID = a.MessageID, "r-replayed"
	bad = append(bad, replayed)
	// Sealed to A's key, but in B's context.
	crossed := sealedReply(t, wire.Command{Envelope: b.Envelope, Command: b.Command, Args: wire.CommandArgs{ReplyKey: a.Args.ReplyKey}}, result("p-1"))
	crossed.CorrelationID, crossed.MessageID = a.MessageID, "r-crossed"
	bad = append(bad, crossed)
	// Altered: one bit of the ciphertext.
	altered := sealedReply(t, a, result("p-1"))
	ct, _ := base64.RawURLEncoding.DecodeString(altered.Sealed)
	ct[len(ct)/2] ^= 1
	altered.Sealed = base64.RawURLEncoding.EncodeToString(ct)
	bad = append(bad, altered)
	// Both a sealed result and one in clear.
	both := sealedReply(t, a, result("p-1"))
	both.Result = []byte(`{"identity":"p-1","total":0,"visits":[]}`)
	bad = append(bad, both)
	for _, r := range bad {
		dev.publish(t, base, r)
	}
	fleettest.WaitFor(t, 5*time.Second, "6 replies ignored", func() bool { return c.Stats().Ignored == 6 })
	if st := c.Stats(); st.Answered != 0 || st.InFlight != 2 {
		t.Fatalf("stats %+v: want nothing answered", st)
	}

	dev.publish(t, base, sealedReply(t, a, result("p-1")))
	dev.publish(t, base, sealedReply(t, b, result("p-2")))
	for id, ans := range map[string]chan visitsAnswer{"p-1": ansA, "p-2": ansB} {
		select {
		case got := <-ans:
			if got.err != nil || len(got.res.Visits) != 1 || got.res.Visits[0].TxnID != "T-"+id {
				t.Errorf("%s: %+v, %v; want the sealed answer opened", id, got.res, got.err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no answer", id)
		}
	}
	if st := c.Stats(); st.Answered != 2 || st.Ignored != 6 {
		t.Errorf("stats %+v", st)
	}

	// A refusal stays in clear (no visit data): taken as it is; one that
	// carries a sealed result is not.
	d, ansD := ask("p-3")
	refusal := wire.Reply{Envelope: wire.NewEnvelope("lyon-07", "atm-1", time.Now()), CorrelationID: d.MessageID, Command: d.Command,
		Error: "identity_visits: no identity p-3"}
	refusal.MessageID = "r-refused"
	withSealed := refusal
	withSealed.Sealed = sealedReply(t, d, result("p-3")).Sealed
	dev.publish(t, base, withSealed)
	fleettest.WaitFor(t, 5*time.Second, "7 replies ignored", func() bool { return c.Stats().Ignored == 7 })
	dev.publish(t, base, refusal)
	if got := <-ansD; got.err == nil || !strings.Contains(got.err.Error(), "no identity p-3") {
		t.Errorf("refusal: %v", got.err)
	}
}
