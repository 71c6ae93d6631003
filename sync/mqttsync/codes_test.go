package mqttsync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/wire"
)

// codedCommands refuses purge_identity of each id in errs with its error.
type codedCommands struct{ errs map[string]error }

func (f codedCommands) HandleCommand(_ context.Context, c wire.Command) (any, error) {
	if err, ok := f.errs[c.Args.ID]; ok {
		return nil, err
	}
	return map[string]any{"identity": c.Args.ID}, nil
}

// TestMosquittoReplyCodes: every refusal the publisher answers carries
// its code, and no ok reply has one: a command that does not decode
// (bad_command, or unsupported when it names a command or an argument
// this release does not know), one for another device, a ts ahead of the
// device's clock, the handler's own codes (an error without one is
// internal), and a command refused while max_seen ids are held (busy).
func TestMosquittoReplyCodes(t *testing.T) {
	skipShort(t)
	m := newMosquitto(t, "")
	broker := m.url("tcp")
	cfg := testConfig(broker)
	sg := newSigner(t)
	sg.enable(t, &cfg)
	cfg.Commands.MaxSeen = 16
	h := codedCommands{errs: map[string]error{
		"p-gone":     wire.WithCode(wire.CodeNotFound, errors.New("unknown identity")),
		"p-moved":    fmt.Errorf("split: %w", wire.WithCode(wire.CodeConflict, errors.New("visit belongs to p-9"))),
		"p-disk":     errors.New("store: i/o error"),
		"p-not-soon": wire.WithCode(wire.CodeBusy, errors.New("purge identity: not started: context deadline exceeded")),
	}}
	p, _, _ := runPublisher(t, cfg, Deps{Outbox: &memOutbox{}, Commands: h})
	col := newCollector(t, broker, "dash", "atm/test/s1/atm-1/reply", false, nil)
	waitFor(t, 5*time.Second, "connected", func() bool { return p.Stats().Connects > 0 })
	time.Sleep(200 * time.Millisecond)

	now := time.Now()
	send := func(payload []byte) {
		t.Helper()
		if tok := col.c.Publish("atm/test/s1/atm-1/cmd", 1, false, sg.sign(t, payload)); !tok.WaitTimeout(2*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	purge := func(id, target string) []byte {
		return sg.payload(id, "purge_identity", "atm-1", fmt.Sprintf(`{"id":%q}`, target), now)
	}
	tests := []struct {
		id      string
		payload []byte
		want    wire.ReplyCode // "" : ok
	}{
		{"c-ok", purge("c-ok", "p-1"), ""},
		{"c-ping", sg.payload("c-ping", "ping", "atm-1", "", now), ""},
		{"c-bad-args", sg.payload("c-bad-args", "purge_identity", "atm-1", `{"id":"../x"}`, now), wire.CodeBadCommand},
		{"c-v9", []byte(`{"schema_version":9,"message_id":"c-v9","device":"atm-1","site":"s1","ts":"2026-12-07T10:00:00Z","command":"ping"}`), wire.CodeBadCommand},
		{"c-reboot", sg.payload("c-reboot", "reboot", "atm-1", "", now), wire.CodeUnsupported},
		{"c-new-arg", sg.payload("c-new-arg", "purge_identity", "atm-1", `{"id":"p-1","everywhere":true}`, now), wire.CodeUnsupported},
		{"c-other-device", sg.payload("c-other-device", "purge_identity", "atm-9", `{"id":"p-1"}`, now), wire.CodeBadCommand},
		{"c-future", sg.payload("c-future", "purge_identity", "atm-1", `{"id":"p-1"}`, now.Add(time.Hour)), wire.CodeBadCommand},
		{"c-gone", purge("c-gone", "p-gone"), wire.CodeNotFound},
		{"c-moved", purge("c-moved", "p-moved"), wire.CodeConflict},
		{"c-disk", purge("c-disk", "p-disk"), wire.CodeInternal},
		{"c-not-soon", purge("c-not-soon", "p-not-soon"), wire.CodeBusy},
	}
	for _, tc := range tests {
		send(tc.payload)
	}
	// Fill the ids held against replays (6 are: the accepted commands
	// above), then one more is refused busy.
	for i := range 10 {
		send(sg.payload(fmt.Sprintf("c-fill-%d", i), "ping", "atm-1", "", now))
	}
	waitFor(t, 5*time.Second, "replies", func() bool { return len(col.snapshot()) == len(tests)+10 })
	send(purge("c-full", "p-1"))
	tests = append(tests, struct {
		id      string
		payload []byte
		want    wire.ReplyCode
	}{"c-full", nil, wire.CodeBusy})
	waitFor(t, 5*time.Second, "replies", func() bool { return len(col.snapshot()) == len(tests)+10 })

	replies := map[string]wire.Reply{}
	for _, r := range col.snapshot() {
		var rep wire.Reply
		if err := json.Unmarshal(r.Payload, &rep); err != nil {
			t.Fatal(err)
		}
		// Every refusal is signed with the device key too.
		if err := wire.VerifyReply(sg.device, rep); err != nil {
			t.Errorf("%s: %v", rep.CorrelationID, err)
		}
		replies[rep.CorrelationID] = rep
	}
	for _, tc := range tests {
		rep, ok := replies[tc.id]
		if !ok {
			t.Errorf("%s: no reply", tc.id)
			continue
		}
		if rep.OK != (tc.want == "") || rep.Code != tc.want {
			t.Errorf("%s: ok %v code %q (%s), want code %q", tc.id, rep.OK, rep.Code, rep.Error, tc.want)
		}
	}
}
