package agent

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/sync/wire"
)

// failingStore fails reading visits once fail is set (a damaged store).
type failingStore struct {
	Store
	fail *atomic.Bool
}

func (s failingStore) VisitsSince(ctx context.Context, id string, since time.Time) ([]visit.Visit, error) {
	if s.fail.Load() {
		return nil, errors.New("store: input/output error")
	}
	return s.Store.VisitsSince(ctx, id, since)
}

// Every refusal of the commands the agent handles carries the code its
// reply is answered with (wire.CodeOf): what does not exist is not_found,
// a correction the identities no longer allow is conflict, a failing
// store internal (a command the worker did not take in time is busy:
// TestCommandDeadlineBeforeStartRunsNothing).
func TestCommandRefusalCodes(t *testing.T) {
	var fail atomic.Bool
	h := newHarnessWith(t, "", nil, Config{}, func(d *Deps) { d.Store = failingStore{d.Store, &fail} })
	for i := range 4 {
		h.visit(scene{angle: float64(i)}, time.Minute, visit.Context{})
	}
	h.visit(scene{angle: 90}, time.Minute, visit.Context{}) // someone else
	vs := h.visits()
	x, z := vs[0].IdentityID, vs[4].IdentityID
	if x == z {
		t.Fatalf("one identity for both people: %s", x)
	}
	split := func(id string, visits ...string) wire.Command {
		return wire.Command{Command: wire.CmdSplitVisits, Args: wire.CommandArgs{ID: id, Visits: visits}}
	}
	merge := func(id, into string) wire.Command {
		return wire.Command{Command: wire.CmdMergeIdentities, Args: wire.CommandArgs{ID: id, Into: into}}
	}
	for _, tc := range []struct {
		name string
		cmd  wire.Command
		want wire.ReplyCode
	}{
		{"review of no identity", wire.Command{Command: wire.CmdIdentityVisits, Args: wire.CommandArgs{ID: "p-nobody"}}, wire.CodeNotFound},
		{"purge of no identity", wire.Command{Command: wire.CmdPurgeIdentity, Args: wire.CommandArgs{ID: "p-nobody"}}, wire.CodeNotFound},
		{"split of no identity", split("p-nobody", vs[0].ID), wire.CodeNotFound},
		{"split of no visit", split(x, "v-nobody"), wire.CodeNotFound},
		{"split of another identity's visit", split(x, vs[0].ID, vs[4].ID), wire.CodeConflict},
		{"split of every visit", split(x, vs[0].ID, vs[1].ID, vs[2].ID, vs[3].ID), wire.CodeConflict},
		{"merge of no identity", merge("p-nobody", x), wire.CodeNotFound},
		{"merge into no identity", merge(x, "p-nobody"), wire.CodeNotFound},
		{"merge into itself", merge(x, x), wire.CodeBadCommand},
		{"a command this agent does not know", wire.Command{Command: "reboot"}, wire.CodeUnsupported},
	} {
		_, err := h.ag.HandleCommand(context.Background(), tc.cmd)
		if got := wire.CodeOf(err); got != tc.want {
			t.Errorf("%s: %v, code %q, want %q", tc.name, err, got, tc.want)
		}
	}

	// The store fails: internal.
	fail.Store(true)
	_, err := h.ag.HandleCommand(context.Background(), wire.Command{Command: wire.CmdIdentityVisits, Args: wire.CommandArgs{ID: x}})
	if got := wire.CodeOf(err); err == nil || got != wire.CodeInternal {
		t.Errorf("review with a failing store: %v, code %q, want internal", err, got)
	}
	fail.Store(false)

	if len(h.constraints()) != 0 || h.identities()[vs[4].ID] != z {
		t.Errorf("a refused command changed the store: %v %v", h.identities(), h.constraints())
	}
}
