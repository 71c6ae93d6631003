package command

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A device's commands are bounded: reviews use at most 3/4 of
// device_budget in 5 minutes, then are refused (ErrBudget, with when to
// retry) while corrections still go; past the whole budget corrections
// are refused too; another device has its own; the window slides.
func TestDeviceBudget(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DeviceBudget, cfg.ReviewCache = 8, 0
	c, f := newFake(t, cfg)
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	c.now = func() time.Time { return now }
	ctx := context.Background()
	for i := range 6 {
		if _, _, err := c.IdentityVisits(ctx, "lyon-07", "atm-1", "p-1"); err != nil {
			t.Fatalf("review %d: %v", i, err)
		}
		now = now.Add(time.Second)
	}
	_, _, err := c.IdentityVisits(ctx, "lyon-07", "atm-1", "p-1")
	var be *BudgetError
	if !errors.Is(err, ErrBudget) || !errors.As(err, &be) || !be.Review || be.RetryAfter < 4*time.Minute || be.RetryAfter > BudgetWindow {
		t.Fatalf("the 7th review: %v (%+v), want ErrBudget with a retry in about 5 min", err, be)
	}
	if _, _, err := c.IdentityVisits(ctx, "lyon-07", "atm-2", "p-1"); err != nil {
		t.Errorf("another device's review: %v", err)
	}
	for i := range 2 {
		if _, _, err := c.Merge(ctx, "lyon-07", "atm-1", "p-2", "p-1", nil); err != nil {
			t.Fatalf("merge %d within the corrections' share: %v", i, err)
		}
	}
	if _, _, err := c.Split(ctx, "lyon-07", "atm-1", "p-1", []string{"v-1"}, nil); !errors.As(err, &be) || be.Review {
		t.Errorf("a split past the whole budget: %v, want ErrBudget", err)
	}
	if n := len(f.commands()); n != 9 {
		t.Errorf("%d commands reached the agent, want 9 (6+1 reviews, 2 merges)", n)
	}
	now = now.Add(BudgetWindow - 5*time.Second) // the first review leaves the window
	if _, _, err := c.Split(ctx, "lyon-07", "atm-1", "p-1", []string{"v-1"}, nil); err != nil {
		t.Errorf("a split once the window slid: %v", err)
	}
	if st := c.Stats(); st.OverBudget != 2 {
		t.Errorf("stats %+v, want 2 over budget", st)
	}
}

// A review is answered from the cache within review_cache for the same
// device and identity; a correction sent to the device drops it; it
// expires.
func TestReviewCache(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ReviewCache = 10 * time.Second
	c, f := newFake(t, cfg)
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	c.now = func() time.Time { return now }
	ctx := context.Background()
	review := func(dev, id string) Sent {
		t.Helper()
		_, sent, err := c.IdentityVisits(ctx, "lyon-07", dev, id)
		if err != nil {
			t.Fatal(err)
		}
		return sent
	}
	first := review("atm-1", "p-1")
	if s := review("atm-1", "p-1"); !s.Cached || s.MessageID != first.MessageID {
		t.Errorf("a reload within the cache: %+v", s)
	}
	review("atm-1", "p-2")
	review("atm-2", "p-1")
	if n := len(f.commands()); n != 3 {
		t.Fatalf("%d commands sent, want 3 (one per device and identity)", n)
	}
	c.Merge(ctx, "lyon-07", "atm-1", "p-2", "p-1", nil)
	if s := review("atm-1", "p-1"); s.Cached {
		t.Error("a review after a merge on the device came from the cache")
	}
	if s := review("atm-2", "p-1"); !s.Cached {
		t.Error("another device's review was dropped by the merge")
	}
	now = now.Add(10 * time.Second)
	if s := review("atm-2", "p-1"); s.Cached {
		t.Error("an expired review came from the cache")
	}
	if st := c.Stats(); st.Cached != 2 {
		t.Errorf("stats %+v, want 2 cached", st)
	}
}
