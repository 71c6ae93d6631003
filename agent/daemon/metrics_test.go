package daemon

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/periocular/atm-agent/agent"
	"github.com/periocular/atm-agent/agent/visit"
)

// The agent's metrics keep their names and labels in the text format;
// every outcome, stage, commit operation and configured rule is there at
// 0 before anything happened, and the total latency is its own histogram.
func TestMetricsExposition(t *testing.T) {
	m := newMetrics([]string{"same-face-repeat", "multiple-cards"})
	var b bytes.Buffer
	if _, err := m.reg.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`atm_agent_visits_total{outcome="face"} 0`,
		`atm_agent_visits_total{outcome="noface"} 0`,
		`atm_agent_visits_total{outcome="lowquality"} 0`,
		`atm_agent_visits_total{outcome="camera_error"} 0`,
		`atm_agent_alerts_total{rule="same-face-repeat"} 0`,
		`atm_agent_alerts_total{rule="multiple-cards"} 0`,
		`atm_agent_commit_failures_total{op="visit"} 0`,
		`atm_agent_commit_failures_total{op="summary"} 0`,
		`atm_agent_stage_seconds_count{stage="burst"} 0`,
		"atm_agent_visit_seconds_count 0",
		"atm_agent_rule_errors_total 0",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("at start, no %q in\n%s", want, b.String())
		}
	}

	m.Visit(visit.Visit{Descriptor: visit.Descriptor{Outcome: visit.FaceFound}}, agent.Stages{Burst: 20 * time.Millisecond, Total: 80 * time.Millisecond}, 1)
	m.Alerted("same-face-repeat")
	m.CommitFailed("visit")
	m.counter("atm_agent_triggers_total", "Triggers received.", func() float64 { return 3 })
	b.Reset()
	if _, err := m.reg.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`atm_agent_visits_total{outcome="face"} 1`,
		"atm_agent_faces_found_total 1",
		`atm_agent_alerts_total{rule="same-face-repeat"} 1`,
		`atm_agent_stage_seconds_bucket{stage="burst",le="0.025"} 1`,
		`atm_agent_visit_seconds_bucket{le="0.1"} 1`,
		`atm_agent_commit_failures_total{op="visit"} 1`,
		"atm_agent_triggers_total 3",
		"# TYPE atm_agent_consolidation_seconds histogram",
		"go_memstats_heap_alloc_bytes ",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("no %q in\n%s", want, b.String())
		}
	}
	if strings.Contains(b.String(), `stage="total"`) {
		t.Errorf("the total latency is still a stage:\n%s", b.String())
	}
	lintClean(t, b.Bytes())
}

// lintClean fails on anything Prometheus' promlint reports.
func lintClean(t *testing.T, exposition []byte) {
	t.Helper()
	probs, err := promlint.New(bytes.NewReader(exposition)).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range probs {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}
