package daemon

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/store/record"
	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/mqttsync"
	"github.com/periocular/atm-agent/sync/wire"
)

// central is the central side of the review commands in a test: it signs
// commands with its own key, publishes them and collects the replies.
type central struct {
	t       *testing.T
	priv    ed25519.PrivateKey
	c       mqtt.Client
	mu      sync.Mutex
	replies map[string][]byte
	n       int
}

func newCentral(t *testing.T, broker string) *central {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cl := &central{t: t, priv: priv, replies: map[string][]byte{}}
	o := mqtt.NewClientOptions().AddBroker(broker).SetClientID("central-" + time.Now().Format("150405.000000"))
	cl.c = mqtt.NewClient(o)
	if tok := cl.c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("central connect: %v", tok.Error())
	}
	t.Cleanup(func() { cl.c.Disconnect(50) })
	tok := cl.c.Subscribe("atm/s9/atm-9/reply", 1, func(_ mqtt.Client, m mqtt.Message) {
		var r wire.Reply
		if json.Unmarshal(m.Payload(), &r) == nil {
			cl.mu.Lock()
			cl.replies[r.CorrelationID] = append([]byte(nil), m.Payload()...)
			cl.mu.Unlock()
		}
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	return cl
}

func (cl *central) key() mqttsync.CommandKey {
	return mqttsync.CommandKey{Name: "central", Key: base64.StdEncoding.EncodeToString(cl.priv.Public().(ed25519.PublicKey))}
}

// send signs and publishes one command and waits for its reply: the raw
// bytes and the decoded reply.
func (cl *central) send(name wire.CommandName, args wire.CommandArgs) (wire.Reply, []byte) {
	cl.t.Helper()
	cl.n++
	id := fmt.Sprintf("c-%d-%d", time.Now().UnixNano(), cl.n)
	cmd := wire.Command{Envelope: wire.Envelope{SchemaVersion: wire.CommandSchemaVersion, MessageID: id,
		Device: "atm-9", Site: "s9", TS: time.Now().UTC()}, Command: name, Args: args}
	payload, err := json.Marshal(cmd)
	if err != nil {
		cl.t.Fatal(err)
	}
	signed, err := wire.SignCommand(cl.priv, payload)
	if err != nil {
		cl.t.Fatal(err)
	}
	if tok := cl.c.Publish("atm/s9/atm-9/cmd", 1, false, signed); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		cl.t.Fatalf("publish: %v", tok.Error())
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		cl.mu.Lock()
		b := cl.replies[id]
		cl.mu.Unlock()
		if b != nil {
			var r wire.Reply
			if err := json.Unmarshal(b, &r); err != nil {
				cl.t.Fatal(err)
			}
			return r, b
		}
		time.Sleep(20 * time.Millisecond)
	}
	cl.t.Fatalf("no reply to %s %s", name, id)
	return wire.Reply{}, nil
}

// axisVec is a unit vector near axis k of dim dimensions (cosine ~0.995
// to the axis), j varying it a little.
func axisVec(dim, k, j int) []float32 {
	v := make([]float32, dim)
	v[k] = 1
	v[(k+1+j)%dim] = 0.1
	n := float32(math.Sqrt(1.01))
	for i := range v {
		v[i] /= n
	}
	return v
}

// TestMosquittoReviewCommands runs the daemon (real models, bbolt store,
// MQTT to a real mosquitto, commands signed with a key of the test's own):
// identity_visits, split_visits and merge_identities sent as the central
// side sends them; the split holds through consolidation and a restart of
// the daemon, the reply carries no card hash, and bad input is answered
// ok:false with nothing changed.
func TestMosquittoReviewCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("starts mosquitto and loads the models")
	}
	m := fleettest.StartMosquitto(t, "")
	cl := newCentral(t, m.URL())
	cfg := mqttTestConfig(t, m.URL(), DeviceConfig{ID: "atm-9", Site: "s9"})
	cfg.MQTT.Commands.Enabled = true
	cfg.MQTT.Commands.PublicKeys = []mqttsync.CommandKey{cl.key()}
	cfg.fill()
	start := func() (*Daemon, func()) {
		t.Helper()
		d, err := New(cfg, Options{Version: "test", Logger: testLog(t), Camera: stillCamera{}})
		if err != nil {
			t.Fatal(err)
		}
		stop := runDaemon(t, d)
		deadline := time.Now().Add(10 * time.Second)
		for d.Publisher().Stats().Connects == 0 {
			if time.Now().After(deadline) {
				t.Fatal("the daemon did not connect")
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond) // the command subscription is in place
		return d, stop
	}

	// Seed the store: one face (X) of four visits, with cards, and
	// another (Z) of two, as the engine would have grouped them.
	d, err := New(cfg, Options{Version: "test", Logger: testLog(t), Camera: stillCamera{}})
	if err != nil {
		t.Fatal(err)
	}
	dim, model := d.eng.Snapshot().Dim, d.pipe.TemplateModel
	card := strings.Repeat("c0ffee", 10) + "abcd"
	ctx := context.Background()
	now := time.Now().Add(-time.Hour)
	var ids []string
	for i, who := range []string{"X", "X", "X", "X", "Z", "Z"} {
		axis := 0
		if who == "Z" {
			axis = dim / 2
		}
		v := &visit.Visit{Time: now.Add(time.Duration(i) * time.Minute), Trigger: "test",
			Context: visit.Context{CardHash: card, TxnID: fmt.Sprintf("T%d", i)},
			Descriptor: visit.Descriptor{Outcome: visit.FaceFound, Embedding: axisVec(dim, axis, i), Model: model,
				Mask: visit.Unmasked, Quality: 0.9, Frames: 1, Used: 1},
			IdentityID: "p-" + strings.ToLower(who) + "0000000"}
		res, err := d.Store().CommitVisit(ctx, record.Commit{Visit: v,
			Identities: []record.Identity{{ID: v.IdentityID, Status: "confirmed", Model: model}}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.VisitID)
	}
	d.Close()
	x, z := "p-x0000000", "p-z0000000"

	d, stop := start()
	// The review: newest first, one card numbered 1, no card hash.
	r, raw := cl.send(wire.CmdIdentityVisits, wire.CommandArgs{ID: x})
	var rv wire.IdentityVisitsResult
	if !r.OK || json.Unmarshal(r.Result, &rv) != nil || rv.Total != 4 || len(rv.Visits) != 4 || rv.Visits[0].VisitID != ids[3] || rv.Visits[0].Card != 1 || rv.Visits[3].Card != 1 || rv.Visits[0].Similarity == nil {
		t.Fatalf("identity_visits reply %s", raw)
	}
	if strings.Contains(string(raw), card) {
		t.Fatalf("the reply holds the card hash: %s", raw)
	}

	// Refused, with the code of each refusal: nothing changes.
	for _, tc := range []struct {
		args wire.CommandArgs
		code wire.ReplyCode
	}{
		{wire.CommandArgs{ID: x, Visits: []string{ids[0], "v-unknown"}}, wire.CodeNotFound},
		{wire.CommandArgs{ID: x, Visits: []string{ids[0], ids[4]}}, wire.CodeConflict},
		{wire.CommandArgs{ID: x, Visits: ids[:4]}, wire.CodeConflict},
		{wire.CommandArgs{ID: "p-unknown", Visits: []string{ids[0]}}, wire.CodeNotFound},
	} {
		if r, raw := cl.send(wire.CmdSplitVisits, tc.args); r.OK || r.Code != tc.code || r.Error == "" || len(r.Result) != 0 {
			t.Errorf("split %v: %s, want ok:false code %s with an error", tc.args, raw, tc.code)
		}
	}
	if r, raw := cl.send(wire.CmdMergeIdentities, wire.CommandArgs{ID: "p-unknown", Into: x}); r.OK || r.Code != wire.CodeNotFound ||
		!strings.Contains(r.Error, "unknown identity") {
		t.Errorf("merge of an unknown identity: %s", raw)
	}
	if cs, _ := d.Store().Constraints(ctx); len(cs) != 0 {
		t.Fatalf("refused commands stored constraints %v", cs)
	}

	// The split: two of X's visits to a new identity.
	r, raw = cl.send(wire.CmdSplitVisits, wire.CommandArgs{ID: x, Visits: []string{ids[2], ids[3]}})
	var sr wire.SplitResult
	if !r.OK || json.Unmarshal(r.Result, &sr) != nil || sr.Identity != x || sr.VisitsMoved != 2 || sr.NewIdentity == "" {
		t.Fatalf("split reply %s", raw)
	}
	y := sr.NewIdentity
	owner := func(d *Daemon) map[string]string {
		out := map[string]string{}
		for _, id := range ids {
			v, err := d.Store().Visit(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			out[id] = v.IdentityID
		}
		return out
	}
	want := map[string]string{ids[0]: x, ids[1]: x, ids[2]: y, ids[3]: y, ids[4]: z, ids[5]: z}
	if got := owner(d); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after the split: %v, want %v", got, want)
	}
	if err := d.Agent().Consolidate(ctx); err != nil {
		t.Fatal(err)
	}
	if got := owner(d); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("consolidation undid the split: %v", got)
	}
	stop()

	// After a restart: still apart, and the review says so.
	d, stop = start()
	defer stop()
	if err := d.Agent().Consolidate(ctx); err != nil {
		t.Fatal(err)
	}
	if got := owner(d); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("consolidation after a restart undid the split: %v", got)
	}
	r, raw = cl.send(wire.CmdIdentityVisits, wire.CommandArgs{ID: y})
	if !r.OK || json.Unmarshal(r.Result, &rv) != nil || rv.Total != 2 || fmt.Sprint(rv.Apart) != "["+x+"]" || !rv.Visits[0].Corrected {
		t.Fatalf("review of %s after the restart: %s", y, raw)
	}

	// The merge: Z into X.
	r, raw = cl.send(wire.CmdMergeIdentities, wire.CommandArgs{ID: z, Into: x})
	var mr wire.MergeResult
	if !r.OK || json.Unmarshal(r.Result, &mr) != nil || mr != (wire.MergeResult{Identity: x, Merged: z, VisitsMoved: 2}) {
		t.Fatalf("merge reply %s", raw)
	}
	want[ids[4]], want[ids[5]] = x, x
	if err := d.Agent().Consolidate(ctx); err != nil {
		t.Fatal(err)
	}
	if got := owner(d); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after the merge and a consolidation: %v, want %v", got, want)
	}
}
