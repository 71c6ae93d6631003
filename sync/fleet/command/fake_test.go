package command

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/ingest"
	"github.com/periocular/atm-agent/sync/wire"
)

// fakeAgent is the broker and one agent in memory: each publish of a new
// command is answered by answer (nil: no reply) through the client's
// Handle, as the ingest routes replies.
type fakeAgent struct {
	c      *Client
	mu     sync.Mutex
	cmds   []wire.Command
	seen   map[string]bool
	answer func(wire.Command) (any, string)
	// publish, if set, runs first and may fail the publish.
	publish func(ctx context.Context) error
}

func (f *fakeAgent) Publish(ctx context.Context, topic string, payload []byte) error {
	if f.publish != nil {
		if err := f.publish(ctx); err != nil {
			return err
		}
	}
	p, err := wire.ParseSignedCommand(payload)
	if err != nil {
		return err
	}
	cmd, err := wire.DecodeCommand(p.Payload())
	if err != nil {
		return err
	}
	f.mu.Lock()
	dup := f.seen[cmd.MessageID]
	f.seen[cmd.MessageID] = true
	if !dup {
		f.cmds = append(f.cmds, cmd)
	}
	answer := f.answer
	f.mu.Unlock()
	if dup || answer == nil {
		return nil
	}
	res, refusal := answer(cmd)
	r := wire.Reply{Envelope: wire.NewEnvelope(cmd.Site, cmd.Device, time.Now()), CorrelationID: cmd.MessageID, Command: cmd.Command,
		OK: refusal == "", Error: refusal}
	r.MessageID = "r-" + cmd.MessageID
	if refusal == "" {
		r.Result, _ = json.Marshal(res)
	}
	_ = r.Seal(cmd.Args.ReplyKey) // as the agent answers
	b, _ := json.Marshal(r)
	go f.c.Handle(prefix+"/"+cmd.Site+"/"+cmd.Device+"/reply", b)
	return nil
}

func (f *fakeAgent) commands() []wire.Command {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]wire.Command(nil), f.cmds...)
}

func newFake(t *testing.T, cfg Config) (*Client, *fakeAgent) {
	t.Helper()
	cfg.Enabled, cfg.PrivateKeyFile = true, "unused"
	f := &fakeAgent{seen: map[string]bool{}, answer: answerAll}
	_, priv, _ := wire.GenerateCommandKey()
	c, err := New(cfg, prefix, priv, f, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.c = c
	return c, f
}

// answerAll answers every review command as an agent holding p-1 (three
// visits: the first with two card inserts folded in, one of them a card
// number; the others with card numbers in their transaction ids) and p-2.
func answerAll(cmd wire.Command) (any, string) {
	switch cmd.Command {
	case wire.CmdIdentityVisits:
		ts := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
		return wire.IdentityVisitsResult{Identity: cmd.Args.ID, Total: 3, Visits: []wire.ReviewVisit{
			{VisitID: "v-1", TxnID: "T-1001", TS: ts, CoalescedTxnIDs: []string{"T-1002", "5555-5555-5555-4444"}, CoalescedCards: []int{2}},
			{VisitID: "v-2", TxnID: "BANK-4111111111111111-7", TS: ts},
			{VisitID: "v-3", TxnID: "4111 1111 1111 1111", TS: ts}}}, ""
	case wire.CmdSplitVisits:
		return wire.SplitResult{Identity: cmd.Args.ID, NewIdentity: "p-new", VisitsMoved: len(cmd.Args.Visits)}, ""
	case wire.CmdMergeIdentities:
		return wire.MergeResult{Identity: cmd.Args.Into, Merged: cmd.Args.ID, VisitsMoved: 1}, ""
	}
	return nil, "unknown command"
}

// A first publish the broker does not acknowledge in time may still be
// delivered (the client library keeps it): the command waits for the
// reply as any other and returns the agent's answer, not "could not be
// sent". Only a fleet not connected to the broker sends nothing
// (ErrBroker, not Published). BeforeSend runs before the first publish
// with the command's id; its error keeps the command unsent.
func TestStalledFirstPublish(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ReplyTimeout, cfg.ResendInterval = 2*time.Second, 100*time.Millisecond
	c, f := newFake(t, cfg)
	var calls int
	var mu sync.Mutex
	f.publish = func(ctx context.Context) error {
		mu.Lock()
		calls++
		first := calls == 1
		mu.Unlock()
		if first { // the broker stalls: no PUBACK within resend_interval
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	}
	var before []Sent
	res, sent, err := c.Split(context.Background(), "lyon-07", "atm-1", "p-1", []string{"v-1"}, func(s Sent) error {
		before = append(before, s)
		return nil
	})
	if err != nil || res.NewIdentity != "p-new" || !sent.Published {
		t.Fatalf("split after a stalled first publish: %+v %+v %v, want the agent's answer", res, sent, err)
	}
	if len(before) != 1 || before[0].MessageID != sent.MessageID || before[0].Published {
		t.Errorf("BeforeSend got %+v, want once with the id %s before publishing", before, sent.MessageID)
	}

	f.publish = func(context.Context) error { return ingest.ErrNotConnected }
	_, sent, err = c.Merge(context.Background(), "lyon-07", "atm-1", "p-2", "p-1", nil)
	if !errors.Is(err, ErrBroker) || sent.Published || sent.MessageID == "" {
		t.Errorf("not connected: %+v %v, want ErrBroker, not published", sent, err)
	}
	f.publish = nil
	n := len(f.commands())
	_, _, err = c.Merge(context.Background(), "lyon-07", "atm-1", "p-2", "p-1", func(Sent) error { return errors.New("audit down") })
	if err == nil || !strings.Contains(err.Error(), "audit down") || len(f.commands()) != n {
		t.Errorf("BeforeSend failing: %v, %d commands sent, want none", err, len(f.commands())-n)
	}
}
