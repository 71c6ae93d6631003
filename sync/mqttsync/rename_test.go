package mqttsync

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/sync/wire"
)

// TestMosquittoRenamedDeviceOutbox: messages queued while the device was
// s1/atm-1 (the broker unreachable), published after device.site and
// device.id were changed to s2/atm-2, name s2/atm-2 as the topic they are
// published on does, keep their seq, validate against the schemas, and the
// retained summary a new subscriber gets names the device of its topic.
// Before, they named s1/atm-1 on s2/atm-2's topics: the fleet refused them
// ("payload names s1/atm-1, topic s2/atm-2") after the broker had
// acknowledged them, so they were lost.
func TestMosquittoRenamedDeviceOutbox(t *testing.T) {
	skipShort(t)
	m := newMosquitto(t, "")
	col := newCollector(t, m.url("tcp"), "dash-rename", "atm/test/#", false, nil)
	ob := &memOutbox{}
	queued := time.Now().Add(-time.Hour)
	msgs := []visit.OutboxMessage{ // both name s1/atm-1
		ob.Add(wire.KindAlert, queued, payload(t, wire.KindAlert, 1, queued)),
		ob.Add(wire.KindSummary, queued, payload(t, wire.KindSummary, 2, queued)),
	}
	cfg := testConfig(m.url("tcp"))
	cfg.Topic.Site, cfg.Topic.Device = "s2", "atm-2"
	runPublisher(t, cfg, Deps{Outbox: ob})
	waitFor(t, 5*time.Second, "outbox drained", func() bool { return ob.Len() == 0 })
	waitFor(t, 5*time.Second, "the alert and the summary", func() bool {
		return len(col.byKind(wire.KindAlert)) == 1 && len(col.byKind(wire.KindSummary)) == 1
	})
	for i, k := range []string{wire.KindAlert, wire.KindSummary} {
		r := col.byKind(k)[0]
		if r.Topic != "atm/test/s2/atm-2/"+k {
			t.Fatalf("%s published on %s", k, r.Topic)
		}
		e := envelopeOf(t, r.Payload)
		if e.Site != "s2" || e.Device != "atm-2" || e.Seq != msgs[i].Seq || !e.Historical ||
			e.MessageID != MessageID("atm-2", msgs[i]) {
			t.Fatalf("%s on %s: %s", k, r.Topic, r.Payload)
		}
		validateAgainst(t, compileSchema(t, k), r.Payload)
	}
	// A dashboard subscribing now gets the retained summary: it names the
	// device of its topic.
	fresh := newCollector(t, m.url("tcp"), "dash-fresh", "atm/test/s2/atm-2/summary", false, nil)
	waitFor(t, 3*time.Second, "retained summary", func() bool { return len(fresh.snapshot()) == 1 })
	var s wire.Summary
	if err := json.Unmarshal(fresh.snapshot()[0].Payload, &s); err != nil || s.Device != "atm-2" || s.Site != "s2" {
		t.Fatalf("retained summary %s (%v)", fresh.snapshot()[0].Payload, err)
	}
}
