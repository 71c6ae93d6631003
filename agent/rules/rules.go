// Package rules raises alerts from visit counts over sliding time windows.
//
// Rules are configured in YAML (see Rule) and evaluated on each new visit
// against the visit history the caller provides (the store satisfies
// History). An alert's ID is stable: it hashes the rule name, the identity
// and the start of the fixed window bucket containing the evaluation time,
// so re-evaluating never yields a second alert for the same rule, identity
// and window, and the store writes an alert ID only once. The cooldown stops
// the same rule and identity from firing again in the next bucket while the
// condition simply persists. The semantics an analyst relies on (sliding
// counts, buckets, cooldowns under clock steps, merges, coalesced cards) are
// in docs/agent.md, "Alert rules".
package rules

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/durfmt"
)

// Kind selects what a rule counts.
type Kind string

const (
	// KindVisits counts visits of one identity.
	KindVisits Kind = "visits"
	// KindDistinctCards counts distinct card hashes used by one identity.
	KindDistinctCards Kind = "distinct_cards"
	// KindFaceless counts visits without a usable face, device-wide.
	KindFaceless Kind = "faceless"
)

// Rule is one alert rule. Counting is over the sliding window (now-Window, now].
type Rule struct {
	Name      string        `yaml:"name"`
	Kind      Kind          `yaml:"kind"`
	Threshold int           `yaml:"threshold"`
	Window    time.Duration `yaml:"window"`
	// Cooldown: after firing for an identity, the rule stays quiet for that
	// identity this long. 0 means only the once-per-window guarantee. An
	// alert stamped more than a cooldown after the evaluation time (a clock
	// stepped back by more than the cooldown) does not hold the rule quiet
	// (InCooldown).
	Cooldown time.Duration `yaml:"cooldown"`
	// Enabled defaults to true when omitted.
	Enabled *bool `yaml:"enabled,omitempty"`
}

// IsEnabled reports whether the rule is on (omitted means on).
func (r Rule) IsEnabled() bool { return r.Enabled == nil || *r.Enabled }

// Config is the rules section of the agent configuration.
type Config struct {
	Rules []Rule `yaml:"rules"`
}

// DefaultConfig holds DefaultRules.
func DefaultConfig() Config { return Config{Rules: DefaultRules()} }

// Validate checks c.Rules (see Validate).
func (c Config) Validate() error { return Validate(c.Rules) }

// DefaultRules are sensible for a single ATM: the same face 5 times in an
// hour (cash-out runs, shoulder surfing), 3 different cards from one face in
// a day (card trapping / mule cash-out), 10 visits without a usable face in
// an hour (covered camera, helmets).
func DefaultRules() []Rule {
	return []Rule{
		{Name: "same-face-repeat", Kind: KindVisits, Threshold: 5, Window: time.Hour, Cooldown: time.Hour},
		{Name: "multiple-cards", Kind: KindDistinctCards, Threshold: 3, Window: 24 * time.Hour, Cooldown: 24 * time.Hour},
		{Name: "faceless-burst", Kind: KindFaceless, Threshold: 10, Window: time.Hour, Cooldown: time.Hour},
	}
}

// FieldError is one problem of one rule: Rule is its index in the list,
// Field its key (name, kind, threshold, window, cooldown). The config
// file's reader puts the line of that key before the message.
type FieldError struct {
	Rule  int
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// Bounds of a rule's numbers: a threshold no window of visits can reach,
// or a span whose arithmetic with times overflows, is a mistake.
const (
	MaxThreshold = 1_000_000
	MaxSpan      = 366 * 24 * time.Hour
)

// Validate checks every rule and returns all problems at once, each naming
// the rule and saying how to fix it.
func Validate(rules []Rule) error {
	var errs []error
	seen := map[string]int{}
	for i, r := range rules {
		label := "rule #" + strconv.Itoa(i+1)
		if r.Name != "" {
			label = fmt.Sprintf("rule %q", r.Name)
		}
		bad := func(field, format string, a ...any) {
			errs = append(errs, &FieldError{Rule: i, Field: field,
				Err: fmt.Errorf("alert %s: "+format, append([]any{label}, a...)...)})
		}
		switch {
		case r.Name == "":
			bad("name", "name is required")
		case !nameRE.MatchString(r.Name):
			bad("name", "name must be 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit")
		default:
			if j, dup := seen[r.Name]; dup {
				bad("name", "name is used by rules #%d and #%d; names must be unique", j+1, i+1)
			}
			seen[r.Name] = i
		}
		minThreshold := 1
		switch r.Kind {
		case KindVisits, KindDistinctCards:
			minThreshold = 2 // 1 would alert on every visit
		case KindFaceless:
		case "":
			bad("kind", "kind is required: use one of visits, distinct_cards, faceless")
		default:
			bad("kind", "unknown kind %q: use one of visits, distinct_cards, faceless", r.Kind)
		}
		if r.Threshold < minThreshold {
			bad("threshold", "threshold must be at least %d (got %d)", minThreshold, r.Threshold)
		} else if r.Threshold > MaxThreshold {
			bad("threshold", "threshold %d is above %d: it could never be reached", r.Threshold, MaxThreshold)
		}
		if r.Window <= 0 {
			bad("window", "window must be a positive duration such as \"1h\" or \"24h\" (got %v)", r.Window)
		} else if r.Window < time.Second {
			bad("window", "window %v is too short; use at least 1s", r.Window)
		} else if r.Window > MaxSpan {
			bad("window", "window %v is too long; use at most %v (a year)", r.Window, MaxSpan)
		}
		if r.Cooldown < 0 {
			bad("cooldown", "cooldown must not be negative (got %v)", r.Cooldown)
		} else if r.Cooldown > MaxSpan {
			bad("cooldown", "cooldown %v is too long; use at most %v (a year)", r.Cooldown, MaxSpan)
		}
	}
	return errors.Join(errs...)
}

// RetentionWarnings names the rules that a retention (store.retention)
// shorter than their window or cooldown quietly weakens: visits and alerts
// older than the retention are deleted, so such a window counts at most the
// retention's worth of visits, and such a cooldown ends when its alert is
// deleted.
func RetentionWarnings(rules []Rule, retention time.Duration) []string {
	var w []string
	for _, r := range rules {
		if !r.IsEnabled() || retention <= 0 {
			continue
		}
		if r.Window > retention {
			w = append(w, fmt.Sprintf("alerts: rule %q: window %s is longer than store.retention %s: visits older than the retention are deleted, so it counts at most %s of visits",
				r.Name, durfmt.WindowOf(r.Window), durfmt.Format(retention), durfmt.Format(retention)))
		}
		if r.Cooldown > retention {
			w = append(w, fmt.Sprintf("alerts: rule %q: cooldown %s is longer than store.retention %s: the alert it waits on is deleted after %s, and the rule may fire again then",
				r.Name, durfmt.WindowOf(r.Cooldown), durfmt.Format(retention), durfmt.Format(retention)))
		}
	}
	return w
}

// History is what rules need to know about the past. Visits returned need
// no embeddings.
type History interface {
	// VisitsSince returns visits with Time strictly after since, of one
	// identity, or of the whole device when identityID is "".
	VisitsSince(ctx context.Context, identityID string, since time.Time) ([]visit.Visit, error)
	// LastAlert returns when rule last raised an alert for identityID
	// ("" for device-wide rules).
	LastAlert(ctx context.Context, rule, identityID string) (time.Time, bool, error)
}

// Engine evaluates a validated rule set. It holds no state of its own and is
// safe for concurrent use.
type Engine struct {
	rules []Rule
}

// New validates rules and returns an engine for the enabled ones.
func New(rules []Rule) (*Engine, error) {
	if err := Validate(rules); err != nil {
		return nil, err
	}
	e := &Engine{}
	for _, r := range rules {
		if r.IsEnabled() {
			e.rules = append(e.rules, r)
		}
	}
	return e, nil
}

// Rules returns the enabled rules.
func (e *Engine) Rules() []Rule { return append([]Rule(nil), e.rules...) }

// Faceless reports whether a visit counts for faceless rules: the camera
// worked but no usable face came out of it. Camera errors are an operational
// fault, reported elsewhere, and are not counted.
func Faceless(v visit.Visit) bool {
	return v.Outcome == visit.NoFace || v.Outcome == visit.LowQuality
}

// Evaluate returns the alerts the new visit v raises at time now (normally
// v.Time). v may or may not already be in the history. Alerts are not
// recorded anywhere: the caller commits them (the store ignores IDs it
// already holds) and LastAlert must reflect committed alerts for cooldowns.
func (e *Engine) Evaluate(ctx context.Context, now time.Time, v visit.Visit, h History) ([]visit.Alert, error) {
	// One history query per scope, over the longest window needed.
	type scope struct {
		identity string
		faceless bool
	}
	longest := map[scope]time.Duration{}
	var applicable []Rule
	for _, r := range e.rules {
		var sc scope
		switch r.Kind {
		case KindVisits, KindDistinctCards:
			if v.IdentityID == "" {
				continue
			}
			sc = scope{identity: v.IdentityID}
		case KindFaceless:
			if !Faceless(v) {
				continue
			}
			sc = scope{faceless: true}
		default:
			continue
		}
		applicable = append(applicable, r)
		longest[sc] = max(longest[sc], r.Window)
	}
	hist := map[scope][]visit.Visit{}
	for sc, w := range longest {
		vs, err := h.VisitsSince(ctx, sc.identity, now.Add(-w))
		if err != nil {
			return nil, fmt.Errorf("evaluate alert rules: history: %w", err)
		}
		seen := false
		out := vs[:0:0]
		for _, x := range vs {
			if x.ID == v.ID {
				seen = true
			}
			if sc.faceless && !Faceless(x) {
				continue
			}
			out = append(out, x)
		}
		if !seen {
			out = append(out, v)
		}
		hist[sc] = out
	}

	var alerts []visit.Alert
	for _, r := range applicable {
		sc := scope{identity: v.IdentityID}
		if r.Kind == KindFaceless {
			sc = scope{faceless: true}
		}
		since := now.Add(-r.Window)
		count, first, last := 0, time.Time{}, time.Time{}
		cards := map[string]bool{}
		for _, x := range hist[sc] {
			if !x.Time.After(since) || x.Time.After(now) {
				continue
			}
			n := 1
			if r.Kind == KindDistinctCards {
				// Every card of the visit, coalesced ones included.
				n = 0
				for _, h := range x.Context.Cards() {
					if !cards[h] {
						cards[h] = true
						n++
					}
				}
				if n == 0 {
					continue
				}
			}
			count += n
			if first.IsZero() || x.Time.Before(first) {
				first = x.Time
			}
			if x.Time.After(last) {
				last = x.Time
			}
		}
		if count < r.Threshold {
			continue
		}
		if r.Cooldown > 0 {
			at, ok, err := h.LastAlert(ctx, r.Name, sc.identity)
			if err != nil {
				return nil, fmt.Errorf("evaluate alert rule %q: last alert: %w", r.Name, err)
			}
			if ok && InCooldown(now, at, r.Cooldown) {
				continue
			}
		}
		start := WindowStart(now, r.Window)
		alerts = append(alerts, visit.Alert{
			ID:          AlertID(r.Name, sc.identity, start),
			Rule:        r.Name,
			Kind:        string(r.Kind),
			IdentityID:  sc.identity,
			VisitID:     v.ID,
			TxnID:       v.Context.TxnID,
			Window:      r.Window.String(),
			WindowStart: start,
			Count:       count,
			Threshold:   r.Threshold,
			FirstSeen:   first,
			LastSeen:    last,
			Raised:      now.UTC(),
		})
	}
	return alerts, nil
}

// InCooldown reports whether an alert raised at `at` keeps a rule with
// this cooldown quiet at now. It does while |now - at| < cooldown: an alert
// stamped up to a cooldown after now (the clock was stepped back, e.g. by
// NTP, or a replayed trigger is evaluated at its own time) still holds the
// rule quiet, but one stamped further ahead was raised under a wrong clock
// (a controller that booted in 2038) and no longer silences the rule: before,
// such an alert silenced its rule and identity until the clock caught up,
// years later.
func InCooldown(now, at time.Time, cooldown time.Duration) bool {
	d := now.Sub(at)
	return d < cooldown && d > -cooldown
}

// WindowStart aligns t down to a multiple of window since the Unix epoch:
// the bucket that makes alert IDs stable.
func WindowStart(t time.Time, window time.Duration) time.Time {
	n := t.UnixNano()
	w := int64(window)
	s := n - n%w
	if n < 0 && n%w != 0 {
		s -= w
	}
	return time.Unix(0, s).UTC()
}

// AlertID is the stable id of an alert of rule for identity ("" for
// device-wide rules) in the window bucket starting at start.
func AlertID(rule, identity string, start time.Time) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%d", rule, identity, start.UnixNano())
	return hex.EncodeToString(h.Sum(nil)[:16])
}
