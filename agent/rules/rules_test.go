package rules_test

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/periocular/atm-agent/agent/rules"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/store"
	"github.com/periocular/atm-agent/store/record"
)

var t0 = time.Date(2025, 3, 3, 8, 0, 0, 0, time.UTC) // aligned to the hour

var _ rules.History = (*store.Store)(nil)
var _ rules.History = (*rules.MemHistory)(nil)

func TestDefaultRulesValid(t *testing.T) {
	if err := rules.DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

func boolp(b bool) *bool { return &b }

func TestValidate(t *testing.T) {
	ok := rules.Rule{Name: "r", Kind: rules.KindVisits, Threshold: 5, Window: time.Hour}
	tests := []struct {
		name string
		mod  func(r *rules.Rule)
		want string // substring of the error; "" for valid
	}{
		{"valid", func(r *rules.Rule) {}, ""},
		{"no name", func(r *rules.Rule) { r.Name = "" }, `rule #1: name is required`},
		{"bad name", func(r *rules.Rule) { r.Name = "a b" }, `name must be`},
		{"no kind", func(r *rules.Rule) { r.Kind = "" }, `kind is required`},
		{"unknown kind", func(r *rules.Rule) { r.Kind = "visit" }, `unknown kind "visit": use one of visits, distinct_cards, faceless`},
		{"zero threshold", func(r *rules.Rule) { r.Threshold = 0 }, `threshold must be at least 2 (got 0)`},
		{"faceless threshold 1", func(r *rules.Rule) { r.Kind, r.Threshold = rules.KindFaceless, 1 }, ""},
		{"cards threshold 1", func(r *rules.Rule) { r.Kind, r.Threshold = rules.KindDistinctCards, 1 }, `threshold must be at least 2`},
		{"zero window", func(r *rules.Rule) { r.Window = 0 }, `window must be a positive duration`},
		{"tiny window", func(r *rules.Rule) { r.Window = time.Millisecond }, `too short`},
		{"negative cooldown", func(r *rules.Rule) { r.Cooldown = -time.Second }, `cooldown must not be negative`},
		{"disabled still validated", func(r *rules.Rule) { r.Enabled = boolp(false); r.Threshold = -1 }, `threshold`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := ok
			tt.mod(&r)
			err := rules.Validate([]rules.Rule{r})
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
	err := rules.Validate([]rules.Rule{ok, {Name: "x", Kind: "k"}, ok})
	for _, want := range []string{`alert rule "r": name is used by rules #1 and #3`, `alert rule "x": unknown kind`, `alert rule "x": window`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("combined error %v lacks %q", err, want)
		}
	}
	if _, err := rules.New([]rules.Rule{{Name: "bad"}}); err == nil {
		t.Error("New accepted an invalid rule")
	}
}

func TestYAMLStrict(t *testing.T) {
	src := `
rules:
  - name: same-face
    kind: visits
    threshold: 4
    window: 30m
    cooldown: 2h
  - name: cards
    kind: distinct_cards
    threshold: 3
    window: 24h
    enabled: false
`
	dec := yaml.NewDecoder(strings.NewReader(src))
	dec.KnownFields(true)
	cfg := rules.DefaultConfig()
	if err := dec.Decode(&cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Rules) != 2 || cfg.Rules[0].Window != 30*time.Minute || cfg.Rules[0].Cooldown != 2*time.Hour ||
		!cfg.Rules[0].IsEnabled() || cfg.Rules[1].IsEnabled() {
		t.Fatalf("decoded %+v", cfg.Rules)
	}
	e, err := rules.New(cfg.Rules)
	if err != nil {
		t.Fatal(err)
	}
	if got := e.Rules(); len(got) != 1 || got[0].Name != "same-face" {
		t.Errorf("enabled rules %+v", got)
	}

	dec = yaml.NewDecoder(strings.NewReader("rules:\n  - name: x\n    threshhold: 3\n"))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err == nil || !strings.Contains(err.Error(), "line 3") {
		t.Errorf("unknown key: %v", err)
	}

	out, err := yaml.Marshal(rules.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out, []byte("window: 1h0m0s")) {
		t.Errorf("marshalled defaults:\n%s", out)
	}
}

type ev struct {
	at       time.Duration
	identity string
	card     string
	outcome  visit.Outcome
}

// simulate feeds visits in order, evaluating each, recording alerts as the
// store would, and returns "rule@minute" for each new alert.
func simulate(t *testing.T, rs []rules.Rule, evs []ev) ([]string, []visit.Alert) {
	t.Helper()
	e, err := rules.New(rs)
	if err != nil {
		t.Fatal(err)
	}
	h := &rules.MemHistory{}
	var fired []string
	var all []visit.Alert
	for i, x := range evs {
		v := visit.Visit{ID: fmt.Sprint("v", i), Time: t0.Add(x.at), IdentityID: x.identity,
			Context: visit.Context{CardHash: x.card, TxnID: fmt.Sprint("T-", i)}, Descriptor: visit.Descriptor{Outcome: x.outcome}}
		as, err := e.Evaluate(context.Background(), v.Time, v, h)
		if err != nil {
			t.Fatal(err)
		}
		// Evaluating again with the visit already in history gives the same IDs.
		h.AddVisit(v)
		again, _ := e.Evaluate(context.Background(), v.Time, v, h)
		if fmt.Sprint(again) != fmt.Sprint(as) {
			t.Fatalf("re-evaluation differs:\n%v\n%v", as, again)
		}
		for _, a := range h.RecordAlerts(as...) {
			fired = append(fired, fmt.Sprintf("%s@%v", a.Rule, x.at))
			all = append(all, a)
		}
	}
	return fired, all
}

func every(n int, step, start time.Duration, identity string) []ev {
	var out []ev
	for i := range n {
		out = append(out, ev{at: start + time.Duration(i)*step, identity: identity})
	}
	return out
}

func TestEvaluate(t *testing.T) {
	visits5h := rules.Rule{Name: "v5", Kind: rules.KindVisits, Threshold: 5, Window: time.Hour, Cooldown: time.Hour}
	cards3 := rules.Rule{Name: "c3", Kind: rules.KindDistinctCards, Threshold: 3, Window: 24 * time.Hour, Cooldown: 24 * time.Hour}
	faceless3 := rules.Rule{Name: "f3", Kind: rules.KindFaceless, Threshold: 3, Window: 10 * time.Minute}
	m := time.Minute
	tests := []struct {
		name  string
		rules []rules.Rule
		evs   []ev
		want  []string
	}{
		{"fires on the 5th visit", []rules.Rule{visits5h}, every(6, m, 0, "A"), []string{"v5@4m0s"}},
		{"window is (now-W, now]: visit exactly W ago not counted",
			[]rules.Rule{visits5h}, every(5, 15*m, 0, "A"), nil},
		{"window boundary also holds when a longer rule shares the history query",
			[]rules.Rule{visits5h, cards3}, every(5, 15*m, 0, "A"), nil},
		{"sliding: old visits fall out", []rules.Rule{visits5h},
			append(every(4, m, 0, "A"), ev{at: 61 * m, identity: "A"}, ev{at: 62 * m, identity: "A"}), nil},
		{"other identities not counted", []rules.Rule{visits5h},
			append(every(3, m, 0, "A"), every(3, m, 10*m, "B")...), nil},
		{"faceless visits never count for identity rules", []rules.Rule{visits5h},
			[]ev{{0, "", "", visit.NoFace}, {m, "", "", visit.NoFace}, {2 * m, "", "", visit.NoFace}, {3 * m, "", "", visit.NoFace}, {4 * m, "", "", visit.NoFace}}, nil},
		{"cooldown spans the next window bucket", []rules.Rule{visits5h},
			// fires at 55m; the bucket changes at 60m but the cooldown holds until 1h55m.
			append(every(10, m, 51*m, "A"), every(5, m, 116*m, "A")...), []string{"v5@55m0s", "v5@1h56m0s"}},
		{"no cooldown: once per window bucket", []rules.Rule{{Name: "v2", Kind: rules.KindVisits, Threshold: 2, Window: time.Hour}},
			every(8, 10*m, 30*m, "A"), []string{"v2@40m0s", "v2@1h0m0s"}},
		{"distinct cards", []rules.Rule{cards3}, []ev{
			{0, "A", "c1", 0}, {m, "A", "c1", 0}, {2 * m, "A", "", 0}, {3 * m, "A", "c2", 0},
			{4 * m, "B", "c3", 0}, {5 * m, "A", "c3", 0}, {6 * m, "A", "c4", 0}},
			[]string{"c3@5m0s"}},
		{"faceless is device-wide; camera errors and faces excluded", []rules.Rule{faceless3}, []ev{
			{0, "", "", visit.NoFace}, {m, "A", "", visit.FaceFound}, {2 * m, "", "", visit.CameraError},
			{3 * m, "", "", visit.LowQuality}, {4 * m, "", "", visit.CameraError}, {5 * m, "", "", visit.NoFace}},
			[]string{"f3@5m0s"}},
		{"disabled rule is silent", []rules.Rule{{Name: "off", Kind: rules.KindVisits, Threshold: 2, Window: time.Hour, Enabled: boolp(false)}},
			every(5, m, 0, "A"), nil},
		{"several rules at once", []rules.Rule{visits5h, cards3}, []ev{
			{0, "A", "c1", 0}, {m, "A", "c2", 0}, {2 * m, "A", "c3", 0}, {3 * m, "A", "c3", 0}, {4 * m, "A", "c3", 0}},
			[]string{"c3@2m0s", "v5@4m0s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := simulate(t, tt.rules, tt.evs)
			if !slices.Equal(got, tt.want) {
				t.Errorf("fired %v, want %v", got, tt.want)
			}
		})
	}
}

func TestAlertFields(t *testing.T) {
	r := rules.Rule{Name: "v3", Kind: rules.KindVisits, Threshold: 3, Window: time.Hour}
	_, as := simulate(t, []rules.Rule{r}, every(3, 10*time.Minute, 5*time.Minute, "A"))
	if len(as) != 1 {
		t.Fatalf("alerts %v", as)
	}
	a := as[0]
	want := visit.Alert{
		ID: rules.AlertID("v3", "A", t0), Rule: "v3", Kind: "visits", IdentityID: "A",
		VisitID: "v2", TxnID: "T-2", // the third visit raised it
		Window:      "1h0m0s",
		WindowStart: t0, Count: 3, Threshold: 3, FirstSeen: t0.Add(5 * time.Minute),
		LastSeen: t0.Add(25 * time.Minute), Raised: t0.Add(25 * time.Minute),
	}
	if fmt.Sprint(a) != fmt.Sprint(want) {
		t.Errorf("alert\n got %+v\nwant %+v", a, want)
	}
	ids := map[string]bool{
		rules.AlertID("v3", "A", t0): true, rules.AlertID("v3", "B", t0): true,
		rules.AlertID("v4", "A", t0): true, rules.AlertID("v3", "A", t0.Add(time.Hour)): true,
	}
	if len(ids) != 4 {
		t.Error("alert ids collide across rule, identity or window")
	}
	if got := rules.WindowStart(t0.Add(89*time.Minute), time.Hour); !got.Equal(t0.Add(time.Hour)) {
		t.Errorf("WindowStart = %v", got)
	}
}

// TestWithStore runs rules against the real store: history, cooldown via
// LastAlert and once-only alert IDs all come from bbolt.
func TestWithStore(t *testing.T) {
	ctx := context.Background()
	s, err := store.Open(filepath.Join(t.TempDir(), "a.db"), store.Options{Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	e, err := rules.New([]rules.Rule{
		{Name: "v3", Kind: rules.KindVisits, Threshold: 3, Window: time.Hour, Cooldown: 30 * time.Minute},
		{Name: "f2", Kind: rules.KindFaceless, Threshold: 2, Window: time.Hour},
	})
	if err != nil {
		t.Fatal(err)
	}
	var fired []string
	for i, x := range []ev{
		{0, "A", "", 0}, {time.Minute, "", "", visit.NoFace}, {2 * time.Minute, "A", "", 0},
		{3 * time.Minute, "", "", visit.NoFace}, {4 * time.Minute, "A", "", 0}, {5 * time.Minute, "A", "", 0},
		{40 * time.Minute, "A", "", 0}, {41 * time.Minute, "", "", visit.NoFace},
	} {
		v := visit.Visit{ID: fmt.Sprint("v", i), Time: t0.Add(x.at), IdentityID: x.identity,
			Descriptor: visit.Descriptor{Outcome: x.outcome}}
		as, err := e.Evaluate(ctx, v.Time, v, s)
		if err != nil {
			t.Fatal(err)
		}
		c := record.Commit{Visit: &v}
		if v.IdentityID != "" {
			c.Identities = []record.Identity{{ID: v.IdentityID}}
		}
		for _, a := range as {
			c.Alerts = append(c.Alerts, record.NewAlert{Alert: a, Message: &visit.OutboxMessage{Topic: "alert", Payload: []byte(a.ID)}})
		}
		res, err := s.CommitVisit(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range res.NewAlerts {
			for _, a := range as {
				if a.ID == id {
					fired = append(fired, fmt.Sprintf("%s@%v", a.Rule, x.at))
				}
			}
		}
	}
	// v3 fires at 4m; at 5m the cooldown holds; at 40m (cooldown over, same
	// hour bucket) the same ID comes back and the store does not write it again.
	// f2 fires at 3m; at 41m the same bucket gives the same ID: not new.
	want := []string{"f2@3m0s", "v3@4m0s"}
	if !slices.Equal(fired, want) {
		t.Errorf("fired %v, want %v", fired, want)
	}
	if n, _, _ := s.OutboxStats(); n != 2 {
		t.Errorf("outbox holds %d alert messages, want 2", n)
	}
}

// TestCooldownAfterClockStepBack: a controller that booted with its clock
// in 2038 raised an alert; NTP then set the clock right. Before, that alert
// stayed the rule's last one (the store keeps the latest Raised) and
// now-at < cooldown held for 13 years: the rule never fired again for that
// identity (or, device-wide, at all). A small step back (less than the
// cooldown) still holds the rule quiet.
func TestCooldownAfterClockStepBack(t *testing.T) {
	ctx := context.Background()
	clock := time.Date(2038, 1, 19, 3, 0, 0, 0, time.UTC)
	s, err := store.Open(filepath.Join(t.TempDir(), "a.db"), store.Options{Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	e, err := rules.New([]rules.Rule{
		{Name: "v3", Kind: rules.KindVisits, Threshold: 3, Window: time.Hour, Cooldown: time.Hour},
		{Name: "f2", Kind: rules.KindFaceless, Threshold: 2, Window: time.Hour, Cooldown: time.Hour},
	})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	visitAt := func(at time.Time, identity string, outcome visit.Outcome) []string {
		t.Helper()
		clock = at
		n++
		v := visit.Visit{ID: fmt.Sprint("v", n), Time: at, IdentityID: identity, Descriptor: visit.Descriptor{Outcome: outcome}}
		as, err := e.Evaluate(ctx, v.Time, v, s)
		if err != nil {
			t.Fatal(err)
		}
		c := record.Commit{Visit: &v}
		if identity != "" {
			c.Identities = []record.Identity{{ID: identity}}
		}
		for _, a := range as {
			c.Alerts = append(c.Alerts, record.NewAlert{Alert: a})
		}
		res, err := s.CommitVisit(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		var fired []string
		for _, a := range as {
			if slices.Contains(res.NewAlerts, a.ID) {
				fired = append(fired, a.Rule)
			}
		}
		return fired
	}
	burst := func(from time.Time, k int) (fired []string) {
		for i := range k {
			fired = append(fired, visitAt(from.Add(time.Duration(i)*time.Minute), "A", visit.FaceFound)...)
			fired = append(fired, visitAt(from.Add(time.Duration(i)*time.Minute+time.Second), "", visit.NoFace)...)
		}
		return fired
	}
	if got := burst(clock, 3); !slices.Equal(got, []string{"f2", "v3"}) {
		t.Fatalf("under the 2038 clock: fired %v", got)
	}
	// NTP sets the clock back to 2025.
	if got := burst(t0.Add(5*time.Minute), 3); !slices.Equal(got, []string{"f2", "v3"}) {
		t.Errorf("after the clock was set right: fired %v, want both rules again", got)
	}
	// Next window bucket, still within the cooldown of the 08:06 alerts:
	// the 2038 alerts must not hide them.
	if got := burst(t0.Add(62*time.Minute), 3); len(got) != 0 {
		t.Errorf("within the cooldown of the real alerts: fired %v", got)
	}
	// A step back smaller than the cooldown still holds the rule quiet.
	if got := burst(t0.Add(3*time.Hour), 3); !slices.Equal(got, []string{"f2", "v3"}) {
		t.Errorf("at 11:00: fired %v", got)
	}
	if got := burst(t0.Add(2*time.Hour+40*time.Minute), 3); len(got) != 0 {
		t.Errorf("after a 22 min step back: fired %v", got)
	}
	if !rules.InCooldown(t0, t0.Add(59*time.Minute), time.Hour) || rules.InCooldown(t0, t0.Add(61*time.Minute), time.Hour) ||
		!rules.InCooldown(t0.Add(59*time.Minute), t0, time.Hour) || rules.InCooldown(t0.Add(time.Hour), t0, time.Hour) {
		t.Error("InCooldown bounds")
	}
}

// TestRetentionWarnings: a window or cooldown longer than the retention is
// valid but counts less (or waits less) than it says: config check warns.
func TestRetentionWarnings(t *testing.T) {
	rs := []rules.Rule{
		{Name: "ok", Kind: rules.KindVisits, Threshold: 2, Window: 24 * time.Hour, Cooldown: 24 * time.Hour},
		{Name: "long", Kind: rules.KindVisits, Threshold: 2, Window: 60 * 24 * time.Hour, Cooldown: 90 * 24 * time.Hour},
		{Name: "off", Kind: rules.KindVisits, Threshold: 2, Window: 60 * 24 * time.Hour, Enabled: boolp(false)},
	}
	w := rules.RetentionWarnings(rs, 30*24*time.Hour)
	if len(w) != 2 || !strings.Contains(w[0], `rule "long": window 60d is longer than store.retention 30d`) ||
		!strings.Contains(w[1], `rule "long": cooldown`) {
		t.Errorf("warnings %q", w)
	}
	if w := rules.RetentionWarnings(rules.DefaultRules(), 30*24*time.Hour); len(w) != 0 {
		t.Errorf("default rules: %q", w)
	}
}

// TestAlertWindowFormat: an alert's window is a Go duration string
// (docs/mqtt.md, alert): for every window a rule may have (1 s to a year),
// the documented expression matches it and 3600*h + 60*m + s is its length.
func TestAlertWindowFormat(t *testing.T) {
	form := regexp.MustCompile(`^(?:(\d+)h)?(?:(\d+)m)?(\d+(?:\.\d+)?)s$`)
	for _, w := range []time.Duration{time.Second, 1500 * time.Millisecond, 45 * time.Second, 90 * time.Second,
		time.Hour, 90 * time.Minute, 24 * time.Hour, 7 * 24 * time.Hour, time.Hour + 250*time.Millisecond, rules.MaxSpan} {
		_, as := simulate(t, []rules.Rule{{Name: "w", Kind: rules.KindVisits, Threshold: 2, Window: w}}, every(2, 0, 0, "A"))
		if len(as) != 1 {
			t.Fatalf("window %v: alerts %v", w, as)
		}
		m := form.FindStringSubmatch(as[0].Window)
		if m == nil {
			t.Fatalf("window %v: %q does not match %s", w, as[0].Window, form)
		}
		h, _ := strconv.ParseFloat("0"+m[1], 64)
		mi, _ := strconv.ParseFloat("0"+m[2], 64)
		s, _ := strconv.ParseFloat(m[3], 64)
		if got := 3600*h + 60*mi + s; got != w.Seconds() {
			t.Errorf("window %v: %q reads as %v s", w, as[0].Window, got)
		}
	}
}
