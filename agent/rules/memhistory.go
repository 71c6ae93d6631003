package rules

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
)

// MemHistory is an in-memory History for tests and tools. The zero value is
// ready to use; it is safe for concurrent use.
type MemHistory struct {
	mu     sync.Mutex
	visits []visit.Visit
	last   map[string]time.Time
	alerts map[string]visit.Alert
}

// AddVisit records a visit.
func (m *MemHistory) AddVisit(v visit.Visit) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.visits = append(m.visits, v)
	sort.SliceStable(m.visits, func(i, j int) bool { return m.visits[i].Time.Before(m.visits[j].Time) })
}

// RecordAlerts records alerts as a store would: an alert whose ID is already
// recorded is ignored. It returns the alerts that were new.
func (m *MemHistory) RecordAlerts(as ...visit.Alert) []visit.Alert {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.alerts == nil {
		m.alerts, m.last = map[string]visit.Alert{}, map[string]time.Time{}
	}
	var fresh []visit.Alert
	for _, a := range as {
		if _, dup := m.alerts[a.ID]; dup {
			continue
		}
		m.alerts[a.ID] = a
		k := a.Rule + "\x00" + a.IdentityID
		if a.Raised.After(m.last[k]) {
			m.last[k] = a.Raised
		}
		fresh = append(fresh, a)
	}
	return fresh
}

// VisitsSince implements History.
func (m *MemHistory) VisitsSince(ctx context.Context, identityID string, since time.Time) ([]visit.Visit, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []visit.Visit
	for _, v := range m.visits {
		if v.Time.After(since) && (identityID == "" || v.IdentityID == identityID) {
			out = append(out, v)
		}
	}
	return out, nil
}

// LastAlert implements History.
func (m *MemHistory) LastAlert(ctx context.Context, rule, identityID string) (time.Time, bool, error) {
	if err := ctx.Err(); err != nil {
		return time.Time{}, false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.last[rule+"\x00"+identityID]
	return t, ok, nil
}
