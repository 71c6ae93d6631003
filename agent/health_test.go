package agent

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/store"
	"github.com/periocular/atm-agent/store/record"
)

// faultyStore is the real bbolt store with switchable failures: commits
// fail as on a full disk, history reads fail as on a damaged index.
type faultyStore struct {
	*store.Store
	failCommit, failHistory atomic.Bool
}

var errDiskFull = errors.New("write agent.db: file too large")

func (f *faultyStore) CommitVisit(ctx context.Context, c record.Commit) (record.CommitResult, error) {
	if f.failCommit.Load() {
		return record.CommitResult{}, errDiskFull
	}
	return f.Store.CommitVisit(ctx, c)
}

func (f *faultyStore) VisitsSince(ctx context.Context, id string, since time.Time) ([]visit.Visit, error) {
	if f.failHistory.Load() {
		return nil, errors.New("visits of identity: decode record: unexpected EOF")
	}
	return f.Store.VisitsSince(ctx, id, since)
}

// countingObserver counts commit failures and rule errors.
type countingObserver struct {
	nopObserver
	mu      sync.Mutex
	commits map[string]int
	rules   int
}

func (o *countingObserver) CommitFailed(op string) {
	o.mu.Lock()
	o.commits[op]++
	o.mu.Unlock()
}
func (o *countingObserver) RuleFailed() { o.mu.Lock(); o.rules++; o.mu.Unlock() }

func TestHealthDegradesOnFailingCommitsAndRecovers(t *testing.T) {
	var fs *faultyStore
	obs := &countingObserver{commits: map[string]int{}}
	cfg := Config{CommitRetries: 1}
	h := newHarnessWith(t, "", nil, cfg, func(d *Deps) {
		fs = &faultyStore{Store: d.Store.(*store.Store)}
		d.Store, d.Observer = fs, obs
	})
	h.visit(scene{angle: 0}, time.Minute, visit.Context{})
	if hl := h.ag.Health(); hl.Degraded {
		t.Fatalf("degraded after a good visit: %+v", hl)
	}
	fs.failCommit.Store(true)
	for i := 1; i <= 3; i++ {
		h.visit(scene{angle: 0}, time.Minute, visit.Context{})
		hl := h.ag.Health()
		if want := i >= 3; hl.Degraded != want {
			t.Fatalf("after %d failed commits degraded=%v, want %v (%+v)", i, hl.Degraded, want, hl)
		}
	}
	hl := h.ag.Health()
	if len(hl.Reasons) != 1 || !strings.Contains(hl.Reasons[0], "last 3 commits failed") || !strings.Contains(hl.Reasons[0], "file too large") {
		t.Errorf("reasons %q", hl.Reasons)
	}
	obs.mu.Lock()
	if obs.commits["visit"] != 3 {
		t.Errorf("commit failures observed %v, want visit=3", obs.commits)
	}
	obs.mu.Unlock()
	fs.failCommit.Store(false)
	h.visit(scene{angle: 0}, time.Minute, visit.Context{})
	if hl := h.ag.Health(); hl.Degraded {
		t.Fatalf("still degraded after a commit succeeded: %+v", hl)
	}
	if s := h.ag.Stats(); s.Committed != 2 || s.CommitErrors != 3 {
		t.Errorf("stats committed %d errors %d, want 2 and 3", s.Committed, s.CommitErrors)
	}
}

func TestHealthDegradesOnRuleErrorsAndRecovers(t *testing.T) {
	var fs *faultyStore
	obs := &countingObserver{commits: map[string]int{}}
	h := newHarnessWith(t, "", nil, Config{DegradedAfter: 2}, func(d *Deps) {
		fs = &faultyStore{Store: d.Store.(*store.Store)}
		d.Store, d.Observer = fs, obs
	})
	fs.failHistory.Store(true)
	h.visit(scene{angle: 0}, time.Minute, visit.Context{})
	if h.ag.Health().Degraded {
		t.Fatal("degraded after one rule error with degraded_after 2")
	}
	h.visit(scene{angle: 0}, time.Minute, visit.Context{})
	hl := h.ag.Health()
	if !hl.Degraded || len(hl.Reasons) != 1 || !strings.Contains(hl.Reasons[0], "alert rules") || !strings.Contains(hl.Reasons[0], "decode record") {
		t.Fatalf("health %+v, want degraded by the alert rules", hl)
	}
	// The visits themselves were stored: only the alerts are missing.
	obs.mu.Lock()
	if s := h.ag.Stats(); s.Committed != 2 || s.RuleErrors != 2 || obs.rules != 2 {
		t.Errorf("committed %d rule errors %d observed %d, want 2, 2, 2", s.Committed, s.RuleErrors, obs.rules)
	}
	obs.mu.Unlock()
	fs.failHistory.Store(false)
	h.visit(scene{angle: 0}, time.Minute, visit.Context{})
	if hl := h.ag.Health(); hl.Degraded {
		t.Fatalf("still degraded after rules evaluated: %+v", hl)
	}
}
