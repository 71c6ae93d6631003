package agent

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/store/record"
	"github.com/periocular/atm-agent/sync/wire"
)

// slowStore makes the commits of corrections and identity purges slow (a
// slow flash card's fsync), past a command's deadline.
type slowStore struct {
	Store
	delay time.Duration
}

func (s slowStore) CommitVisit(ctx context.Context, c record.Commit) (record.CommitResult, error) {
	if len(c.Constraints) > 0 {
		time.Sleep(s.delay)
	}
	return s.Store.CommitVisit(ctx, c)
}

func (s slowStore) PurgeIdentity(ctx context.Context, id string) (int, error) {
	time.Sleep(s.delay)
	return s.Store.PurgeIdentity(ctx, id)
}

// A command whose deadline passes while the worker runs it is answered
// with what the task did, not with the deadline: a correction that was
// committed must not be answered ok:false.
func TestCommandDeadlineAfterStartAnswersTheResult(t *testing.T) {
	h := newHarnessWith(t, "", nil, Config{}, func(d *Deps) { d.Store = slowStore{d.Store, 300 * time.Millisecond} })
	for i := range 4 {
		h.visit(scene{angle: float64(i)}, time.Minute, visit.Context{})
	}
	vs := h.visits()
	x := vs[0].IdentityID
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	res, err := h.ag.HandleCommand(ctx, wire.Command{Command: wire.CmdSplitVisits, Args: wire.CommandArgs{ID: x, Visits: []string{vs[3].ID}}})
	if err != nil {
		t.Fatalf("split answered %v, yet it ran (corrections %d)", err, h.ag.Stats().Corrections)
	}
	sr := res.(wire.SplitResult)
	if sr.VisitsMoved != 1 || h.identities()[vs[3].ID] != sr.NewIdentity || len(h.constraints()) != 1 {
		t.Fatalf("split answered %+v, store %v %v", sr, h.identities(), h.constraints())
	}

	// A deletion request likewise.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	res, err = h.ag.HandleCommand(ctx2, wire.Command{Command: wire.CmdPurgeIdentity, Args: wire.CommandArgs{ID: sr.NewIdentity}})
	if err != nil {
		t.Fatalf("purge answered %v", err)
	}
	b, _ := json.Marshal(res)
	if string(b) != `{"identity":"`+sr.NewIdentity+`","visits_removed":1}` {
		t.Fatalf("purge answered %s", b)
	}
}

// A command whose deadline passes before the worker takes it never runs:
// its error says so (answered busy), and nothing changes later.
func TestCommandDeadlineBeforeStartRunsNothing(t *testing.T) {
	h := newHarness(t, "", nil, Config{})
	for i := range 4 {
		h.visit(scene{angle: float64(i)}, time.Minute, visit.Context{})
	}
	vs := h.visits()
	x := vs[0].IdentityID
	// Keep the worker busy.
	release := make(chan struct{})
	busy := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		busy <- h.ag.do(context.Background(), "busy", func(context.Context) error {
			close(started)
			<-release
			return nil
		})
	}()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := h.ag.HandleCommand(ctx, wire.Command{Command: wire.CmdSplitVisits, Args: wire.CommandArgs{ID: x, Visits: []string{vs[3].ID}}})
	if !errors.Is(err, context.DeadlineExceeded) || wire.CodeOf(err) != wire.CodeBusy {
		t.Fatalf("split on a busy worker: %v (code %q), want busy", err, wire.CodeOf(err))
	}
	close(release)
	if err := <-busy; err != nil {
		t.Fatal(err)
	}
	// The worker is free again: the split that timed out was not queued.
	if _, err := h.command(wire.CmdIdentityVisits, wire.CommandArgs{ID: x}); err != nil {
		t.Fatal(err)
	}
	if h.identities()[vs[3].ID] != x || len(h.constraints()) != 0 || h.ag.Stats().Corrections != 0 {
		t.Fatalf("a split that was not started changed the store: %v %v", h.identities(), h.constraints())
	}
}
