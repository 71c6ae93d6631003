package agent

import "fmt"

// Health is the agent's own verdict on whether it does its job: Degraded
// when the last Config.DegradedAfter store commits in a row failed (a full
// disk, a damaged store: visits are being lost) or the alert rules failed on
// the last DegradedAfter visits in a row (visits are stored, alerts are
// not). The first success clears the condition. Reasons say what and why.
type Health struct {
	Degraded bool
	Reasons  []string
}

// Health returns the current verdict. It never blocks on the worker.
func (a *Agent) Health() Health {
	a.mu.Lock()
	s := a.stats
	a.mu.Unlock()
	var h Health
	n := uint64(a.cfg.DegradedAfter)
	if s.FailingCommits >= n {
		h.Reasons = append(h.Reasons, fmt.Sprintf("store: the last %d commits failed: %s", s.FailingCommits, s.LastCommitError))
	}
	if s.FailingRules >= n {
		h.Reasons = append(h.Reasons, fmt.Sprintf("alert rules: evaluation failed on the last %d visits: %s", s.FailingRules, s.LastRuleError))
	}
	h.Degraded = len(h.Reasons) > 0
	return h
}

// commitResult records the outcome of one store commit of kind op.
func (a *Agent) commitResult(op string, err error) {
	a.mu.Lock()
	if err == nil {
		recovered := a.stats.FailingCommits >= uint64(a.cfg.DegradedAfter)
		a.stats.FailingCommits = 0
		a.mu.Unlock()
		if recovered {
			a.log.Info("store commits succeed again", "op", op)
		}
		return
	}
	a.stats.FailingCommits++
	a.stats.LastCommitError = err.Error()
	a.mu.Unlock()
	a.obs.CommitFailed(op)
}

// ruleResult records the outcome of one alert-rule evaluation.
func (a *Agent) ruleResult(err error) {
	a.mu.Lock()
	if err == nil {
		recovered := a.stats.FailingRules >= uint64(a.cfg.DegradedAfter)
		a.stats.FailingRules = 0
		a.mu.Unlock()
		if recovered {
			a.log.Info("alert rules evaluate again")
		}
		return
	}
	a.stats.FailingRules++
	a.stats.RuleErrors++
	a.stats.LastRuleError = err.Error()
	a.mu.Unlock()
	if o, ok := a.obs.(RuleErrorObserver); ok {
		o.RuleFailed()
	}
}
