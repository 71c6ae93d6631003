package mqttsync

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/wire"
)

// reviewCommands answers identity_visits with n visits whose transaction
// ids are long, and publish_summary with a result of big bytes.
type reviewCommands struct {
	n   map[string]int
	big int
}

func (f reviewCommands) HandleCommand(_ context.Context, c wire.Command) (any, error) {
	switch c.Command {
	case wire.CmdIdentityVisits:
		n := f.n[c.Args.ID]
		res := wire.IdentityVisitsResult{Identity: c.Args.ID, Total: n + 7, Visits: []wire.ReviewVisit{}, Apart: []string{"p-apart"}}
		t0 := time.Date(2026, 12, 7, 19, 0, 0, 0, time.UTC)
		for i := range n {
			s := 0.5
			res.Visits = append(res.Visits, wire.ReviewVisit{VisitID: fmt.Sprintf("%016x", 1<<40+i),
				TxnID: fmt.Sprintf("BANK-TXN-2026120719-%s-%05d", strings.Repeat("ABCDEFGHIJKLMNOP", 6), i),
				TS:    t0.Add(-time.Duration(i) * time.Minute), Card: i%3 + 1, Similarity: &s, Corrected: i%2 == 0})
		}
		return res, nil
	case wire.CmdPublishSummary:
		return map[string]string{"x": strings.Repeat("x", f.big)}, nil
	}
	return nil, fmt.Errorf("unsupported %s", c.Command)
}

// TestMosquittoReplyFitsMaxMessageSize: through mosquitto with the
// documented message_size_limit 16384 and max_message_size set to it, an
// identity_visits reply of 100 visits with long transaction ids (some
// 31 KB) arrives cut to its newest visits that fit, truncated, total
// unchanged; one that fits is sent whole; another result too large is
// answered with an error instead of being dropped by the broker. The same
// with args.reply_key: the size measured is the sealed one (the HPKE
// overhead, in base64), the results open with the key, and no transaction
// id is in the bytes the broker carries; a result that cannot be sealed
// is answered by an error.
func TestMosquittoReplyFitsMaxMessageSize(t *testing.T) {
	skipShort(t)
	const limit = 16384
	m := newMosquitto(t, fmt.Sprintf("message_size_limit %d\n", limit))
	broker := m.url("tcp")
	cfg := testConfig(broker)
	cfg.MaxMessageSize = limit
	sg := newSigner(t)
	sg.enable(t, &cfg)
	h := reviewCommands{n: map[string]int{"p-many": 100, "p-few": 10}, big: 20000}
	p, _, _ := runPublisher(t, cfg, Deps{Outbox: &memOutbox{}, Commands: h})
	col := newCollector(t, broker, "dash", "atm/test/s1/atm-1/reply", false, nil)
	waitFor(t, 5*time.Second, "connected", func() bool { return p.Stats().Connects > 0 })
	time.Sleep(200 * time.Millisecond) // the command subscription is in place

	send := func(id, name, args string) {
		t.Helper()
		b := sg.sign(t, sg.payload(id, name, "atm-1", args, time.Now()))
		if tok := col.c.Publish("atm/test/s1/atm-1/cmd", 1, false, b); !tok.WaitTimeout(2*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	send("c-many", "identity_visits", `{"id":"p-many"}`)
	send("c-few", "identity_visits", `{"id":"p-few"}`)
	send("c-big", "publish_summary", "")
	priv, key, err := wire.NewReplyKey()
	if err != nil {
		t.Fatal(err)
	}
	send("c-many-sealed", "identity_visits", `{"id":"p-many","reply_key":"`+key+`"}`)
	send("c-few-sealed", "identity_visits", `{"id":"p-few","reply_key":"`+key+`"}`)
	send("c-big-sealed", "publish_summary", `{"reply_key":"`+key+`"}`)
	// A key nothing can be sealed to (a low-order point, 32 bytes all
	// the same): an error, never the result in clear.
	send("c-zero-key-sealed", "identity_visits", `{"id":"p-few","reply_key":"`+strings.Repeat("A", 43)+`"}`)
	waitFor(t, 5*time.Second, "7 replies", func() bool { return len(col.snapshot()) == 7 })

	schema := compileSchema(t, "reply")
	replies := map[string]wire.Reply{}
	for _, r := range col.snapshot() {
		if len(r.Payload) > limit {
			t.Errorf("a reply of %d bytes, over %d", len(r.Payload), limit)
		}
		validateAgainst(t, schema, r.Payload)
		var rep wire.Reply
		if err := json.Unmarshal(r.Payload, &rep); err != nil {
			t.Fatal(err)
		}
		// Signed as published: sealed, cut to fit or refused as too large.
		if err := wire.VerifyReply(sg.device, rep); err != nil {
			t.Errorf("%s: %v", rep.CorrelationID, err)
		}
		if strings.HasSuffix(rep.CorrelationID, "-sealed") {
			if rep.Result != nil || strings.Contains(string(r.Payload), "BANK-TXN") {
				t.Fatalf("%s: a result in clear: %.300s", rep.CorrelationID, r.Payload)
			}
			if rep.OK {
				if rep.Result, err = wire.OpenResult(priv, rep.SealContext(), rep.Sealed); err != nil {
					t.Fatalf("%s: %v", rep.CorrelationID, err)
				}
			}
		}
		replies[rep.CorrelationID] = rep
		t.Logf("%s: %d bytes", rep.CorrelationID, len(r.Payload))
	}
	want, _ := h.HandleCommand(context.Background(), wire.Command{Command: wire.CmdIdentityVisits, Args: wire.CommandArgs{ID: "p-many"}})
	full, _ := json.Marshal(want)
	if len(full) <= limit {
		t.Fatalf("the full result is %d bytes: not a test of the limit", len(full))
	}
	for id, n := range map[string]int{"c-many": 100, "c-few": 10, "c-many-sealed": 100, "c-few-sealed": 10} {
		rep := replies[id]
		var got wire.IdentityVisitsResult
		if err := json.Unmarshal(rep.Result, &got); err != nil || !rep.OK {
			t.Fatalf("%s: %+v %v", id, rep, err)
		}
		all := want.(wire.IdentityVisitsResult).Visits
		if got.Total != n+7 || len(got.Apart) != 1 || got.Truncated != (n == 100) || len(got.Visits) == 0 ||
			(n == 10 && len(got.Visits) != 10) || (n == 100 && len(got.Visits) >= 100) {
			t.Fatalf("%s: total %d, %d listed, truncated %v, apart %v", id, got.Total, len(got.Visits), got.Truncated, got.Apart)
		}
		for i, v := range got.Visits {
			if v.VisitID != all[i].VisitID || v.TxnID != all[i].TxnID {
				t.Fatalf("%s: visit %d is %s, want the newest first (%s)", id, i, v.VisitID, all[i].VisitID)
			}
		}
		if n == 100 {
			// As many as fit: one more would not.
			more := got
			more.Visits = all[:len(got.Visits)+1]
			rb, _ := json.Marshal(more)
			rep.Result = rb
			if strings.HasSuffix(id, "-sealed") {
				rep.Result, rep.Sealed = nil, strings.Repeat("A", wire.SealedLen(len(rb)))
			}
			if b, _ := json.Marshal(rep); len(b) <= limit {
				t.Errorf("%s: %d visits listed, %d would fit (%d bytes)", id, len(got.Visits), len(more.Visits), len(b))
			}
			t.Logf("100 visits (%d bytes of result): %d listed", len(full), len(got.Visits))
		}
	}
	if rep := replies["c-zero-key-sealed"]; rep.OK || rep.Code != wire.CodeInternal || rep.Sealed != "" || !strings.Contains(rep.Error, "could not be sealed") {
		t.Errorf("a result that cannot be sealed: %+v", rep)
	}
	for _, id := range []string{"c-big", "c-big-sealed"} {
		if rep := replies[id]; rep.OK || rep.Code != wire.CodeTooLarge || rep.Result != nil || rep.Sealed != "" ||
			!strings.Contains(rep.Error, "the command ran, but its reply") {
			t.Errorf("%s: an oversized result: %+v", id, rep)
		}
	}
}
