package daemon

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent"
	"github.com/periocular/atm-agent/agent/visit"
)

// The agent's metrics keep their names and labels in the text format.
func TestMetricsExposition(t *testing.T) {
	m := newMetrics()
	m.Visit(visit.Visit{Descriptor: visit.Descriptor{Outcome: visit.FaceFound}}, agent.Stages{Burst: 20 * time.Millisecond, Total: 80 * time.Millisecond}, 1)
	m.CommitFailed("visit")
	m.counter("atm_agent_triggers_total", "Triggers received.", func() float64 { return 3 })
	var b bytes.Buffer
	if _, err := m.reg.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`atm_agent_visits_total{outcome="face"} 1`,
		"atm_agent_faces_found_total 1",
		"atm_agent_alerts_total 1",
		`atm_agent_stage_seconds_bucket{stage="burst",le="0.025"} 1`,
		`atm_agent_stage_seconds_count{stage="total"} 1`,
		`atm_agent_commit_failures_total{op="visit"} 1`,
		"atm_agent_triggers_total 3",
		"# TYPE atm_agent_consolidation_seconds histogram",
		"go_memstats_heap_alloc_bytes ",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("no %q in\n%s", want, b.String())
		}
	}
}
