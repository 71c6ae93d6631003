package fleettest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/periocular/atm-agent/sync/wire"
)

// Reviewer is a simulated agent's identities as the review commands see
// them (identity_visits, split_visits, merge_identities), served the way
// the real agent does (agent/correct.go): visits newest first, cards
// numbered within each answer, a split makes a new identity kept apart
// from the old one, a merge of identities kept apart is accepted and
// replaces that split's constraint (the merge is the newer decision).
// Run by an Agent (StartAgent with Commands), its answers go through the
// agent's own publisher, which seals them to the command's reply key as
// the agent does.
type Reviewer struct {
	mu     sync.Mutex
	visits map[string][]Visit
	apart  map[string][]string
	splits int
	// Older answers every review command as an agent of the release
	// before them does (unknown command), and any command that asks for
	// a sealed reply as one of a release before sealed replies does (its
	// strict decoder refuses args.reply_key), without a reply code, as
	// agents before codes. Otherwise each refusal carries the code the
	// agent answers it with (wire.ReplyCode).
	Older bool
	// Fail, when set, refuses every command with it before anything
	// runs, answered with its code as the agent's publisher does
	// (wire.CodeOf: internal unless it carries one).
	Fail error
	// Delay holds each command this long before it is handled (the
	// fleet resends meanwhile: the agent must refuse the copies).
	Delay time.Duration
	// Handled lists every command that reached the handler: it passed
	// the agent's signature, device, skew and replay checks.
	Handled []wire.Command
}

// Visit is one visit of a simulated identity; Card is the card it used
// (any string, numbered per answer; "" none); Coalesced and
// CoalescedCards are the transaction ids and cards of later card inserts
// folded into it.
type Visit struct {
	ID, TxnID      string
	TS             time.Time
	Masked         bool
	Card           string
	Coalesced      []string
	CoalescedCards []string
	Sim            *float64
	Corrected      bool
}

// NewReviewer returns identities with the given visits.
func NewReviewer(visits map[string][]Visit) *Reviewer {
	r := &Reviewer{visits: map[string][]Visit{}, apart: map[string][]string{}}
	for id, vs := range visits {
		r.visits[id] = slices.Clone(vs)
		r.sort(id)
	}
	return r
}

func (r *Reviewer) sort(id string) {
	slices.SortStableFunc(r.visits[id], func(a, b Visit) int { return b.TS.Compare(a.TS) })
}

// SetOlder makes the agent answer as one older than the review commands.
func (r *Reviewer) SetOlder(older bool) {
	r.mu.Lock()
	r.Older = older
	r.mu.Unlock()
}

// SetDelay sets Delay.
func (r *Reviewer) SetDelay(d time.Duration) {
	r.mu.Lock()
	r.Delay = d
	r.mu.Unlock()
}

// Visits returns the visit ids of identity id, newest first.
func (r *Reviewer) Visits(id string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, v := range r.visits[id] {
		out = append(out, v.ID)
	}
	return out
}

// Commands returns the commands handled so far.
func (r *Reviewer) Commands() []wire.Command {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.Handled)
}

// HandleCommand implements mqttsync.CommandHandler.
func (r *Reviewer) HandleCommand(_ context.Context, cmd wire.Command) (any, error) {
	r.mu.Lock()
	delay := r.Delay
	r.mu.Unlock()
	time.Sleep(delay)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Handled = append(r.Handled, cmd)
	if r.Older && cmd.Args.ReplyKey != "" {
		return nil, wire.WithCode("", fmt.Errorf(`%w: json: unknown field "reply_key"`, wire.ErrCommand))
	}
	if r.Older && (cmd.Command == wire.CmdIdentityVisits || cmd.Command == wire.CmdSplitVisits || cmd.Command == wire.CmdMergeIdentities) {
		return nil, wire.WithCode("", fmt.Errorf("%w: unknown command %q", wire.ErrCommand, cmd.Command))
	}
	if r.Fail != nil {
		return nil, r.Fail
	}
	id := cmd.Args.ID
	vs, ok := r.visits[id]
	if !ok {
		return nil, r.noIdentity(id)
	}
	switch cmd.Command {
	case wire.CmdIdentityVisits:
		out := wire.IdentityVisitsResult{Identity: id, Total: len(vs), Visits: []wire.ReviewVisit{}, Apart: slices.Clone(r.apart[id])}
		cards := map[string]int{}
		for _, v := range vs[:min(len(vs), wire.MaxReviewVisits)] {
			rv := wire.ReviewVisit{VisitID: v.ID, TxnID: v.TxnID, TS: v.TS.UTC(), Masked: v.Masked, Similarity: v.Sim, Corrected: v.Corrected,
				CoalescedTxnIDs: slices.Clone(v.Coalesced)}
			var seen []string
			for _, c := range append([]string{v.Card}, v.CoalescedCards...) { // as the agent numbers them
				if c == "" || slices.Contains(seen, c) {
					continue
				}
				if cards[c] == 0 {
					cards[c] = len(cards) + 1
				}
				if seen = append(seen, c); len(seen) == 1 {
					rv.Card = cards[c]
				} else {
					rv.CoalescedCards = append(rv.CoalescedCards, cards[c])
				}
			}
			out.Visits = append(out.Visits, rv)
		}
		return out, nil
	case wire.CmdSplitVisits:
		var moved, kept []Visit
		for _, v := range vs {
			if slices.Contains(cmd.Args.Visits, v.ID) {
				v.Corrected = true
				moved = append(moved, v)
			} else {
				kept = append(kept, v)
			}
		}
		if len(moved) != len(cmd.Args.Visits) {
			// Another identity's visits: moved since the review.
			code := wire.CodeNotFound
			for _, v := range cmd.Args.Visits {
				if r.identityOf(v) != "" && r.identityOf(v) != id {
					code = wire.CodeConflict
				}
			}
			return nil, wire.WithCode(code, fmt.Errorf("split_visits: %d of the %d visits are not visits of %s",
				len(cmd.Args.Visits)-len(moved), len(cmd.Args.Visits), id))
		}
		if len(kept) == 0 {
			return nil, wire.WithCode(wire.CodeConflict, fmt.Errorf("split_visits: every visit of %s chosen: nothing would be left", id))
		}
		r.splits++
		nid := fmt.Sprintf("p-split-%d", r.splits)
		r.visits[id], r.visits[nid] = kept, moved
		r.apart[id], r.apart[nid] = append(r.apart[id], nid), []string{id}
		return wire.SplitResult{Identity: id, NewIdentity: nid, VisitsMoved: len(moved)}, nil
	case wire.CmdMergeIdentities:
		into := cmd.Args.Into
		if _, ok := r.visits[into]; !ok {
			return nil, r.noIdentity(into)
		}
		// Kept apart by an earlier split: the merge replaces it.
		r.apart[id] = slices.DeleteFunc(r.apart[id], func(a string) bool { return a == into })
		r.apart[into] = slices.DeleteFunc(r.apart[into], func(a string) bool { return a == id })
		for i := range vs {
			vs[i].Corrected = true
		}
		r.visits[into] = append(r.visits[into], vs...)
		r.sort(into)
		delete(r.visits, id)
		for _, a := range r.apart[id] { // what id was kept apart from now names into
			if !slices.Contains(r.apart[into], a) {
				r.apart[into] = append(r.apart[into], a)
			}
			r.apart[a] = slices.DeleteFunc(r.apart[a], func(x string) bool { return x == id || x == into })
			r.apart[a] = append(r.apart[a], into)
		}
		delete(r.apart, id)
		return wire.MergeResult{Identity: into, Merged: id, VisitsMoved: len(vs)}, nil
	}
	return nil, wire.WithCode(wire.CodeUnsupported, fmt.Errorf("%s is not simulated", cmd.Command))
}

// noIdentity is the refusal of a command about an identity it does not
// hold.
func (r *Reviewer) noIdentity(id string) error {
	return wire.WithCode(wire.CodeNotFound, fmt.Errorf("no identity %s", id))
}

// identityOf is the identity holding visit v ("" none).
func (r *Reviewer) identityOf(v string) string {
	for id, vs := range r.visits {
		if slices.ContainsFunc(vs, func(x Visit) bool { return x.ID == v }) {
			return id
		}
	}
	return ""
}

// SetFail sets Fail.
func (r *Reviewer) SetFail(err error) {
	r.mu.Lock()
	r.Fail = err
	r.mu.Unlock()
}

// Sniff subscribes to topic (QoS 1) and returns what arrived so far at
// each call: a third party watching the broker, as a test's witness of
// what the fleet really published.
func Sniff(t testing.TB, broker, topic string) func() [][]byte {
	t.Helper()
	var mu sync.Mutex
	var got [][]byte
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID(fmt.Sprintf("fleettest-sniff-%d", time.Now().UnixNano())))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect sniffer: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	if tok := c.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) {
		mu.Lock()
		got = append(got, slices.Clone(m.Payload()))
		mu.Unlock()
	}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe sniffer: %v", tok.Error())
	}
	return func() [][]byte {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
}
