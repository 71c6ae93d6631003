package mqttsync

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/periocular/atm-agent/sync/wire"
)

// sentSeqOutbox is a memOutbox whose previous run delivered seq sent.
type sentSeqOutbox struct {
	*memOutbox
	sent uint64
}

func (o sentSeqOutbox) OutboxSentSeq(context.Context) (uint64, error) { return o.sent, nil }

// TestMosquittoWillRefreshedEachConnect: every connection registers a Last
// Will of its own. Another client takes the agent's client id twice (the
// broker sends the will each time, paho reconnects): the two offline
// statuses, and the two offline states of the will connection, carry
// different message_ids, ts of their own connection (not of the process
// start) and the seq acknowledged by then (not 0). Before, every will was
// the one built at start: one message_id (a consumer deduplicating on it
// dropped the second offline), the start's ts and seq 0.
func TestMosquittoWillRefreshedEachConnect(t *testing.T) {
	skipShort(t)
	m := newMosquitto(t, "")
	col := newCollector(t, m.url("tcp"), "dash-will", "atm/test/s1/atm-1/+", false, nil)
	ob := sentSeqOutbox{memOutbox: &memOutbox{next: 7}, sent: 7} // a previous run delivered 1..7
	now := time.Now()
	ob.Add(wire.KindAlert, now, payload(t, wire.KindAlert, 8, now))
	ob.Add(wire.KindAlert, now, payload(t, wire.KindAlert, 9, now))
	cfg := testConfig(m.url("tcp"))
	cfg.StateWill = true
	p, _, _ := runPublisher(t, cfg, Deps{Outbox: ob})
	waitFor(t, 5*time.Second, "seq 9 acknowledged", func() bool { return p.Stats().LastAckedSeq == 9 })

	offline := func(kind string) []wire.Envelope {
		var out []wire.Envelope
		for _, r := range col.byKind(kind) {
			var s struct {
				wire.Envelope
				State wire.State `json:"state"`
			}
			if err := json.Unmarshal(r.Payload, &s); err == nil && s.State == wire.StateOffline {
				out = append(out, s.Envelope)
			}
		}
		return out
	}
	takeOver := func(clientID string) {
		t.Helper()
		rogue := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(m.url("tcp")).SetClientID(clientID).SetAutoReconnect(false))
		if !rogue.Connect().WaitTimeout(5 * time.Second) {
			t.Fatal("rogue connect timed out")
		}
		rogue.Disconnect(50)
	}
	var took [2]time.Time
	for i := range took {
		took[i] = time.Now()
		takeOver("atm-agent-atm-1")
		takeOver("atm-agent-atm-1-will")
		waitFor(t, 10*time.Second, "the wills", func() bool { return len(offline("status")) > i && len(offline("state")) > i })
		// paho is connected again (and its new will registered) once it
		// has published online again.
		waitFor(t, 10*time.Second, "reconnected", func() bool { return p.Stats().Connects >= uint64(i+2) })
		time.Sleep(300 * time.Millisecond)
	}
	for _, kind := range []string{"status", "state"} {
		w := offline(kind)
		if len(w) != 2 {
			t.Fatalf("%s: %d offline wills, want 2: %+v", kind, len(w), w)
		}
		if w[0].MessageID == w[1].MessageID {
			t.Errorf("%s: both wills carry message_id %s", kind, w[0].MessageID)
		}
		if w[0].Seq != 7 && w[0].Seq != 9 || w[1].Seq != 9 {
			t.Errorf("%s: will seqs %d, %d: want the acknowledged 7 or 9, then 9", kind, w[0].Seq, w[1].Seq)
		}
		if !w[1].TS.After(took[0]) {
			t.Errorf("%s: the second will's ts %v is not of its connection (after %v)", kind, w[1].TS, took[0])
		}
		t.Logf("%s wills: %s seq %d ts %s; %s seq %d ts %s", kind, w[0].MessageID, w[0].Seq, w[0].TS.Format(time.RFC3339Nano),
			w[1].MessageID, w[1].Seq, w[1].TS.Format(time.RFC3339Nano))
	}
}
