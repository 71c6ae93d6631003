package agent

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/agent/rules"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/store"
	"github.com/periocular/atm-agent/sync/wire"
)

const testDim = 8

// scene is what the fake camera sees for one visit: who stands there.
type scene struct {
	angle   float64 // degrees in the plane of the first two axes; the person
	noface  bool
	quality float32
	mask    visit.MaskState
}

// fakeCamera returns one tiny frame per burst whose first byte indexes the
// scene; gate, when set, blocks Burst until a value is received.
type fakeCamera struct {
	mu     sync.Mutex
	scenes []scene
	next   int
	gate   chan struct{}
	calls  chan struct{} // receives on every Burst start, when set
	fail   bool
	short  bool // the frame comes with an error: the camera failed mid-burst
	// onBurst, when set, runs at every Burst start (before gate).
	onBurst func()
}

func (c *fakeCamera) Burst(ctx context.Context) ([]visit.Frame, error) {
	if c.calls != nil {
		c.calls <- struct{}{}
	}
	if c.onBurst != nil {
		c.onBurst()
	}
	if c.gate != nil {
		select {
		case <-c.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail {
		return nil, errors.New("camera down")
	}
	i := c.next % len(c.scenes)
	c.next++
	f := []visit.Frame{{W: 1, H: 1, BGR: []byte{byte(i), 0, 0}, Time: time.Now()}}
	if c.short {
		return f, errors.New("camera burst: 1 of 5 frames: device unplugged")
	}
	return f, nil
}

func (c *fakeCamera) push(s ...scene) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.scenes = s
	c.next = 0
}

// fakePerceiver maps the scene index in the frame to a descriptor.
type fakePerceiver struct{ cam *fakeCamera }

func (p fakePerceiver) Perceive(ctx context.Context, frames []visit.Frame) (visit.Descriptor, error) {
	p.cam.mu.Lock()
	s := p.cam.scenes[int(frames[0].BGR[0])]
	p.cam.mu.Unlock()
	d := visit.Descriptor{Model: "test-emb", Frames: len(frames), Mask: s.mask}
	if s.noface {
		d.Outcome = visit.NoFace
		return d, nil
	}
	d.Outcome, d.Used, d.Quality = visit.FaceFound, 1, s.quality
	if d.Quality == 0 {
		d.Quality = 0.9
	}
	d.Embedding = vec(s.angle)
	return d, nil
}

func vec(deg float64) []float32 {
	r := deg * math.Pi / 180
	v := make([]float32, testDim)
	v[0], v[1] = float32(math.Cos(r)), float32(math.Sin(r))
	return v
}

type fixedClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fixedClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fixedClock) Add(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

type harness struct {
	t     *testing.T
	path  string
	st    *store.Store
	cam   *fakeCamera
	clk   *fixedClock
	eng   *identity.Engine
	ag    *Agent
	stop  context.CancelFunc
	done  chan error
	rules []rules.Rule
}

func testRules() []rules.Rule {
	return []rules.Rule{
		{Name: "repeat", Kind: rules.KindVisits, Threshold: 3, Window: time.Hour, Cooldown: time.Hour},
		{Name: "faceless", Kind: rules.KindFaceless, Threshold: 3, Window: time.Hour, Cooldown: time.Hour},
		{Name: "cards", Kind: rules.KindDistinctCards, Threshold: 2, Window: 24 * time.Hour},
	}
}

func openStore(t *testing.T, path string, clk *fixedClock, maxMsgs int) *store.Store {
	t.Helper()
	st, err := store.Open(path, store.Options{Now: clk.Now, DeviceID: "atm-1", OutboxMaxMessages: maxMsgs, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// newHarness starts an agent on a real bbolt file at path (a new file in
// t.TempDir() when empty).
func newHarness(t *testing.T, path string, clk *fixedClock, cfg Config) *harness {
	t.Helper()
	return newHarnessWith(t, path, clk, cfg, nil)
}

// newHarnessWith is newHarness with the agent's deps changed by tweak
// before New (e.g. the store wrapped to inject failures, an observer).
func newHarnessWith(t *testing.T, path string, clk *fixedClock, cfg Config, tweak func(d *Deps)) *harness {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "agent.db")
	}
	if clk == nil {
		clk = &fixedClock{t: time.Date(2025, 3, 1, 9, 0, 0, 0, time.UTC)}
	}
	h := &harness{t: t, path: path, clk: clk, cam: &fakeCamera{scenes: []scene{{angle: 0}}}, rules: testRules()}
	h.st = openStore(t, path, clk, 0)
	icfg := identity.DefaultConfig()
	icfg.Thresholds = identity.Thresholds{UU: 0.3, MM: 0.3}
	icfg.Exact = true
	var err error
	h.eng, err = identity.New(icfg, testDim)
	if err != nil {
		t.Fatal(err)
	}
	re, err := rules.New(h.rules)
	if err != nil {
		t.Fatal(err)
	}
	d := Deps{Camera: h.cam, Perceiver: fakePerceiver{h.cam}, Store: h.st, Identities: h.eng,
		Rules: re, Clock: clk, Model: "test-emb", NewIdentityQuality: 0.5, Site: "s1", Device: "atm-1"}
	if tweak != nil {
		tweak(&d)
	}
	h.ag, err = New(cfg, d)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.stop, h.done = cancel, make(chan error, 1)
	go func() { h.done <- h.ag.Run(ctx) }()
	t.Cleanup(h.close)
	return h
}

func (h *harness) close() {
	if h.stop == nil {
		return
	}
	h.stop()
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		h.t.Fatal("Run did not return within 5s")
	}
	h.stop = nil
	h.st.Close()
}

// visit triggers one visit of scene s at the clock's time plus d and waits
// until it is committed.
func (h *harness) visit(s scene, d time.Duration, ctxt visit.Context) {
	h.t.Helper()
	h.cam.push(s)
	before := h.ag.Stats().Committed + h.ag.Stats().CommitErrors + h.ag.Stats().Duplicates
	h.ag.Trigger(visit.Trigger{Time: h.clk.Add(d), Source: "test", Context: ctxt})
	h.waitProcessed(before + 1)
}

func (h *harness) waitProcessed(n uint64) {
	h.t.Helper()
	h.waitProcessedWithin(n, 5*time.Second)
}

func (h *harness) waitProcessedWithin(n uint64, d time.Duration) {
	h.t.Helper()
	deadline := time.Now().Add(d)
	for {
		s := h.ag.Stats()
		if s.Committed+s.CommitErrors+s.Duplicates >= n {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %d visits (stats %+v)", n, s)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (h *harness) outbox() []visit.OutboxMessage {
	h.t.Helper()
	ms, err := h.st.OutboxPending(context.Background(), 1000)
	if err != nil {
		h.t.Fatal(err)
	}
	return ms
}

// oneAlert is the outbox's only message, an alert (want says which).
func (h *harness) oneAlert(want string) wire.Alert {
	h.t.Helper()
	ob := h.outbox()
	if len(ob) != 1 || ob[0].Kind != KindAlert {
		h.t.Fatalf("outbox %d messages, want %s", len(ob), want)
	}
	var a wire.Alert
	if err := json.Unmarshal(ob[0].Payload, &a); err != nil {
		h.t.Fatal(err)
	}
	return a
}

func (h *harness) visits() []visit.Visit {
	h.t.Helper()
	vs, err := h.st.VisitsBetween(context.Background(), time.Unix(1, 0), time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC))
	if err != nil {
		h.t.Fatal(err)
	}
	return vs
}

func TestVisitsCommitIdentityAndAlertOnce(t *testing.T) {
	h := newHarness(t, "", nil, Config{})
	for i := 0; i < 4; i++ {
		h.visit(scene{angle: float64(i)}, time.Minute, visit.Context{})
	}
	vs := h.visits()
	if len(vs) != 4 {
		t.Fatalf("stored %d visits, want 4", len(vs))
	}
	for i, v := range vs {
		if v.IdentityID == "" || v.IdentityID != vs[0].IdentityID {
			t.Fatalf("visit %d identity %q, want all %q", i, v.IdentityID, vs[0].IdentityID)
		}
		if v.Outcome != visit.FaceFound || v.Trigger != "test" || v.Seq != uint64(i+1) {
			t.Fatalf("visit %d: %+v", i, v)
		}
	}
	id, err := h.st.Identity(context.Background(), vs[0].IdentityID)
	if err != nil {
		t.Fatal(err)
	}
	if id.Count != 4 || id.Status != string(identity.Confirmed) || id.Model != "test-emb" {
		t.Fatalf("identity %+v: want 4 visits, confirmed, model test-emb", id)
	}
	// Threshold 3 in 1 h: the third visit raises one alert; the fourth is
	// in the same window and cooldown.
	ob := h.outbox()
	if len(ob) != 1 || ob[0].Kind != KindAlert || ob[0].Topic != "alert" {
		t.Fatalf("outbox %+v: want exactly one alert", ob)
	}
	var a wire.Alert
	if err := json.Unmarshal(ob[0].Payload, &a); err != nil {
		t.Fatal(err)
	}
	if a.Rule != "repeat" || a.IdentityID != vs[0].IdentityID || a.Count != 3 || a.Threshold != 3 ||
		a.Device != "atm-1" || a.Site != "s1" || a.SchemaVersion != wire.SchemaVersion ||
		!a.LastSeen.Equal(vs[2].Time) || !a.FirstSeen.Equal(vs[0].Time) {
		t.Fatalf("alert payload %+v", a)
	}
	if ok, _ := h.st.AlertExists(context.Background(), a.AlertID); !ok {
		t.Fatal("alert published but not stored")
	}
	if s := h.ag.Stats(); s.Alerts != 1 || s.Visits[visit.FaceFound] != 4 {
		t.Fatalf("stats %+v", s)
	}
	select {
	case <-h.st.OutboxReady():
	default:
		t.Fatal("the store never signalled the outbox write")
	}
}

func TestLowQualityMayMatchButNotStart(t *testing.T) {
	h := newHarness(t, "", nil, Config{})
	h.visit(scene{angle: 0, quality: 0.2}, time.Minute, visit.Context{})  // nobody to match: unassigned
	h.visit(scene{angle: 90, quality: 0.9}, time.Minute, visit.Context{}) // starts B
	h.visit(scene{angle: 91, quality: 0.2}, time.Minute, visit.Context{}) // matches B
	vs := h.visits()
	if vs[0].IdentityID != "" || vs[0].Outcome != visit.FaceFound {
		t.Fatalf("low-quality first visit: %+v, want stored without identity", vs[0])
	}
	if vs[1].IdentityID == "" || vs[2].IdentityID != vs[1].IdentityID {
		t.Fatalf("low-quality visit did not join the existing identity: %q vs %q", vs[2].IdentityID, vs[1].IdentityID)
	}
	if n := len(h.eng.Identities()); n != 1 {
		t.Fatalf("engine has %d identities, want 1", n)
	}
}

// TestRefusedVisitsAttachedLater: two poor visits come before their
// person's first good one and stay without identity; the consolidation
// attaches them to the identity the good one founded (the cut an online
// visit faces), with their distances, and evaluates the rules again: the
// three visits in the hour raise the repeat alert. A poor visit far from
// every identity stays out. A second consolidation and a restart change
// nothing.
func TestRefusedVisitsAttachedLater(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.db")
	clk := &fixedClock{t: time.Date(2025, 3, 1, 9, 0, 0, 0, time.UTC)}
	h := newHarness(t, path, clk, Config{})
	ctx := context.Background()
	h.visit(scene{angle: 0, quality: 0.2}, time.Minute, visit.Context{})
	h.visit(scene{angle: 60, quality: 0.2}, time.Minute, visit.Context{}) // 1-cos60 = 0.5 > 0.3 from X
	h.visit(scene{angle: 2, quality: 0.2}, time.Minute, visit.Context{})
	h.visit(scene{angle: 1, quality: 0.9}, time.Minute, visit.Context{}) // founds X
	vs := h.visits()
	x := vs[3].IdentityID
	if x == "" || vs[0].IdentityID != "" || vs[1].IdentityID != "" || vs[2].IdentityID != "" {
		t.Fatalf("setup: identities %q %q %q %q, want only the good visit's", vs[0].IdentityID, vs[1].IdentityID, vs[2].IdentityID, x)
	}
	if n := len(h.outbox()); n != 0 {
		t.Fatalf("setup: %d messages before the consolidation", n)
	}

	attached := func(h *harness, want uint64) {
		t.Helper()
		if err := h.ag.Consolidate(ctx); err != nil {
			t.Fatal(err)
		}
		if s := h.ag.Stats(); s.Attached != want {
			t.Fatalf("attached %d, want %d", s.Attached, want)
		}
		vs := h.visits()
		if vs[0].IdentityID != x || vs[2].IdentityID != x || vs[1].IdentityID != "" {
			t.Fatalf("after consolidation: %q %q %q, want %s, none, %s", vs[0].IdentityID, vs[1].IdentityID, vs[2].IdentityID, x, x)
		}
		if d0, d2 := vs[0].Distance, vs[2].Distance; !(d0 > 0 && d0 < 0.01 && d2 > 0 && d2 < 0.01) {
			t.Errorf("distances of the attached visits %v, %v", d0, d2)
		}
		if id, _ := h.st.Identity(ctx, x); id.Count != 3 || !id.FirstSeen.Equal(vs[0].Time) || id.Status != "confirmed" {
			t.Fatalf("identity X %+v, want 3 visits from the first", id)
		}
		if a := h.oneAlert("the repeat alert"); a.Rule != "repeat" || a.IdentityID != x || a.Count != 3 {
			t.Fatalf("alert %+v: want repeat for %s with count 3", a, x)
		}
	}
	attached(h, 2)
	attached(h, 2)
	if got, _ := h.eng.IdentityOf(vs[0].ID); got != x || h.eng.Len() != 3 {
		t.Fatalf("engine: first visit in %q, %d visits", got, h.eng.Len())
	}
	h.close()

	h2 := newHarness(t, path, clk, Config{})
	attached(h2, 0)
	if got, _ := h2.eng.IdentityOf(vs[2].ID); got != x || h2.eng.Len() != 3 || h2.eng.IdentityCount() != 1 {
		t.Fatalf("restored engine: third visit in %q, %d visits, %d identities", got, h2.eng.Len(), h2.eng.IdentityCount())
	}
}

func TestTriggersDuringVisitAreQueuedThenCoalesced(t *testing.T) {
	h := newHarness(t, "", nil, Config{})
	h.cam.gate = make(chan struct{})
	h.cam.calls = make(chan struct{}, 10)
	h.cam.push(scene{angle: 0}, scene{angle: 0})
	t0 := h.clk.Add(time.Minute)
	if !h.ag.Trigger(visit.Trigger{Time: t0, Source: "gpio"}) {
		t.Fatal("first trigger not accepted")
	}
	<-h.cam.calls // the first visit is inside Burst
	results := []bool{
		h.ag.Trigger(visit.Trigger{Time: t0.Add(time.Second), Source: "gpio"}),
		h.ag.Trigger(visit.Trigger{Time: t0.Add(2 * time.Second), Source: "socket", Context: visit.Context{CardHash: "h1", TxnID: "t1"}}),
		h.ag.Trigger(visit.Trigger{Time: t0.Add(3 * time.Second), Source: "socket", Context: visit.Context{TxnID: "t2"}}),
	}
	if want := []bool{true, false, false}; results[0] != want[0] || results[1] != want[1] || results[2] != want[2] {
		t.Fatalf("trigger results %v, want %v", results, want)
	}
	h.cam.gate <- struct{}{} // finish visit 1
	<-h.cam.calls
	h.cam.gate <- struct{}{} // finish visit 2
	h.waitProcessed(2)
	vs := h.visits()
	if len(vs) != 2 {
		t.Fatalf("stored %d visits, want 2", len(vs))
	}
	q := vs[1]
	if !q.Time.Equal(t0.Add(time.Second)) || q.Trigger != "gpio" || q.Context.CardHash != "h1" || q.Context.TxnID != "t1" {
		t.Fatalf("queued visit %+v: want the first queued trigger's time and source, context from the coalesced one", q)
	}
	// The later coalesced txn_id is kept with the visit it joined (stored,
	// so the daemon remembers it across a restart).
	if !slices.Equal(q.Context.Coalesced, []string{"t2"}) {
		t.Fatalf("coalesced txn_ids %v, want [t2]", q.Context.Coalesced)
	}
	if s := h.ag.Stats(); s.Coalesced != 2 || s.Triggers != 4 {
		t.Fatalf("stats: coalesced %d triggers %d, want 2 and 4", s.Coalesced, s.Triggers)
	}
}

// TestCoalescedCardsCount: three different cards inserted while a visit
// runs (the second queued, the third coalesced into it) are three cards for
// the distinct-cards rule and the summary. Before, the coalesced trigger's
// card hash was dropped because the queued one had a card already: 2 cards,
// no alert at threshold 3.
func TestCoalescedCardsCount(t *testing.T) {
	h := newHarnessWith(t, "", nil, Config{}, func(d *Deps) {
		d.Rules, _ = rules.New([]rules.Rule{{Name: "cards", Kind: rules.KindDistinctCards, Threshold: 3, Window: time.Hour}})
	})
	h.cam.gate = make(chan struct{})
	h.cam.calls = make(chan struct{}, 10)
	h.cam.push(scene{angle: 0}, scene{angle: 0})
	t0 := h.clk.Add(time.Minute)
	h.ag.Trigger(visit.Trigger{Time: t0, Source: "socket", Context: visit.Context{CardHash: "c1", TxnID: "t1"}})
	<-h.cam.calls
	h.ag.Trigger(visit.Trigger{Time: t0.Add(time.Second), Source: "socket", Context: visit.Context{CardHash: "c2", TxnID: "t2"}})
	for _, c := range []string{"c3", "c2", "c3"} { // c3 once, c2 already the queued visit's
		h.ag.Trigger(visit.Trigger{Time: t0.Add(2 * time.Second), Source: "socket", Context: visit.Context{CardHash: c, TxnID: "t3"}})
	}
	h.cam.gate <- struct{}{}
	<-h.cam.calls
	h.cam.gate <- struct{}{}
	h.waitProcessed(2)
	vs := h.visits()
	if len(vs) != 2 || vs[1].Context.CardHash != "c2" || !slices.Equal(vs[1].Context.CoalescedCards, []string{"c3"}) {
		t.Fatalf("stored visits %+v: want the queued one with card c2 and coalesced card c3", vs)
	}
	if a := h.oneAlert("1 alert for 3 distinct cards"); a.Rule != "cards" || a.Count != 3 {
		t.Fatalf("alert %+v", a)
	}
	s := BuildSummary(wire.NewEnvelope("s", "d", t0), t0.Add(time.Minute), vs, 10)
	if len(s.Identities) != 1 || s.Identities[0].DistinctCards != wc(3, 3, 3) {
		t.Fatalf("summary identities %+v: want 3 distinct cards", s.Identities)
	}
}

// TestStoredCardHashEncodingsCountOnce: visits stored before the trigger
// sources canonicalised card hashes may hold one card as uppercase hex,
// lowercase hex and base64 (and among a visit's coalesced cards). Across
// the upgrade they count as one card for the distinct-cards rule and the
// summary; before, each spelling was a card of its own.
func TestStoredCardHashEncodingsCountOnce(t *testing.T) {
	const lower = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	h := newHarness(t, "", nil, Config{})
	t0 := h.clk.Now()
	h.visit(scene{angle: 0}, time.Minute, visit.Context{CardHash: strings.ToUpper(lower)})
	h.visit(scene{angle: 0}, time.Minute, visit.Context{CardHash: lower,
		CoalescedCards: []string{"n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg="}})
	for _, m := range h.outbox() {
		var a wire.Alert
		if json.Unmarshal(m.Payload, &a) == nil && a.Rule == "cards" {
			t.Fatalf("one card in three spellings raised %+v", a)
		}
	}
	s := BuildSummary(wire.NewEnvelope("s", "d", t0), h.clk.Now(), h.visits(), 10)
	if len(s.Identities) != 1 || s.Identities[0].DistinctCards != wc(1, 1, 1) {
		t.Fatalf("summary identities %+v: want 1 distinct card", s.Identities)
	}
}

func TestFacelessVisitsFeedFacelessRule(t *testing.T) {
	h := newHarness(t, "", nil, Config{})
	for i := 0; i < 3; i++ {
		h.visit(scene{noface: true}, time.Minute, visit.Context{})
	}
	vs := h.visits()
	if len(vs) != 3 {
		t.Fatalf("stored %d visits", len(vs))
	}
	for _, v := range vs {
		if v.Outcome != visit.NoFace || v.IdentityID != "" {
			t.Fatalf("faceless visit stored as %+v", v)
		}
	}
	ob := h.outbox()
	if len(ob) != 1 {
		t.Fatalf("outbox has %d messages, want 1 faceless alert", len(ob))
	}
	var a wire.Alert
	json.Unmarshal(ob[0].Payload, &a)
	if a.Kind != "faceless" || a.Count != 3 || a.IdentityID != "" {
		t.Fatalf("alert %+v", a)
	}
	// A camera failure is stored too, but is not "faceless".
	h.cam.fail = true
	h.visit(scene{}, time.Minute, visit.Context{})
	if vs := h.visits(); vs[3].Outcome != visit.CameraError {
		t.Fatalf("camera failure stored as %v", vs[3].Outcome)
	}
}

func TestDistinctCardsRule(t *testing.T) {
	h := newHarness(t, "", nil, Config{})
	h.visit(scene{angle: 0}, time.Minute, visit.Context{CardHash: "c1"})
	h.visit(scene{angle: 1}, time.Minute, visit.Context{CardHash: "c2"})
	ob := h.outbox()
	if len(ob) != 1 {
		t.Fatalf("outbox %d messages, want 1", len(ob))
	}
	var a wire.Alert
	json.Unmarshal(ob[0].Payload, &a)
	if a.Rule != "cards" || a.Count != 2 {
		t.Fatalf("alert %+v", a)
	}
}

func TestRestartRestoresIdentities(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.db")
	clk := &fixedClock{t: time.Date(2025, 3, 1, 9, 0, 0, 0, time.UTC)}
	h := newHarness(t, path, clk, Config{})
	h.visit(scene{angle: 0}, time.Minute, visit.Context{})
	h.visit(scene{angle: 2}, time.Minute, visit.Context{})
	h.visit(scene{angle: 90}, time.Minute, visit.Context{})
	first := h.visits()
	h.close()

	h2 := newHarness(t, path, clk, Config{})
	if n := len(h2.eng.Identities()); n != 2 {
		// Run restores before serving; wait for the first heartbeat.
		time.Sleep(50 * time.Millisecond)
		if n = len(h2.eng.Identities()); n != 2 {
			t.Fatalf("restored %d identities, want 2", n)
		}
	}
	h2.visit(scene{angle: 1}, time.Minute, visit.Context{})
	h2.visit(scene{angle: 91}, time.Minute, visit.Context{})
	vs := h2.visits()
	if vs[3].IdentityID != first[0].IdentityID || vs[4].IdentityID != first[2].IdentityID {
		t.Fatalf("after restart visits got %q and %q, want %q and %q", vs[3].IdentityID, vs[4].IdentityID,
			first[0].IdentityID, first[2].IdentityID)
	}
	if id, _ := h2.st.Identity(context.Background(), first[0].IdentityID); id.Count != 3 || id.Status != "confirmed" {
		t.Fatalf("identity after restart %+v", id)
	}
}

func TestDuplicateEventIDStoredOnce(t *testing.T) {
	h := newHarness(t, "", nil, Config{})
	h.cam.push(scene{angle: 0})
	h.ag.Trigger(visit.Trigger{ID: "replay-0001", Time: h.clk.Add(time.Minute), Source: "replay"})
	h.waitProcessed(1)
	h.ag.Trigger(visit.Trigger{ID: "replay-0001", Time: h.clk.Now(), Source: "replay"})
	h.waitProcessed(2)
	if n := len(h.visits()); n != 1 {
		t.Fatalf("stored %d visits, want 1", n)
	}
	if s := h.ag.Stats(); s.Duplicates != 1 {
		t.Fatalf("duplicates %d, want 1", s.Duplicates)
	}
	// The engine was resynchronised: it holds one visit, not two.
	if n := h.eng.Len(); n != 1 {
		t.Fatalf("engine holds %d visits, want 1", n)
	}
}

func TestConsolidationRelabelsCommitted(t *testing.T) {
	h := newHarness(t, "", nil, Config{})
	// X at 0 deg, Y at 60 deg (too far to match X: 1-cos60 = 0.5 > 0.3).
	// Three visits at 29 deg join X online; then, by average linkage, X and
	// Y are one person: consolidation merges Y into X.
	h.visit(scene{angle: 0}, time.Minute, visit.Context{})
	h.visit(scene{angle: 60}, time.Minute, visit.Context{})
	for i := 0; i < 3; i++ {
		h.visit(scene{angle: 29 + 0.1*float64(i)}, time.Minute, visit.Context{})
	}
	before := h.visits()
	x, y := before[0].IdentityID, before[1].IdentityID
	if x == y {
		t.Fatal("setup: X and Y matched online")
	}
	for _, v := range before[2:] {
		if v.IdentityID != x {
			t.Fatalf("setup: middle visit joined %q, want X %q", v.IdentityID, x)
		}
	}
	if err := h.ag.Consolidate(context.Background()); err != nil {
		t.Fatal(err)
	}
	after := h.visits()
	for i, v := range after {
		if v.IdentityID != x {
			t.Fatalf("visit %d in store has identity %q after consolidation, want %q", i, v.IdentityID, x)
		}
	}
	if _, err := h.st.Identity(context.Background(), y); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("merged identity still stored: %v", err)
	}
	if id, _ := h.st.Identity(context.Background(), x); id.Count != 5 {
		t.Fatalf("identity X count %d, want 5", id.Count)
	}
	if s := h.ag.Stats(); s.Relabelled != 1 {
		t.Fatalf("relabelled %d, want 1", s.Relabelled)
	}
	// The engine and the store agree after a restart.
	if got, _ := h.eng.IdentityOf(before[1].ID); got != x {
		t.Fatalf("engine has %q for Y's visit", got)
	}
}

// TestConsolidationMergeRaisesAlert: X has 4 visits and Y 1 within the
// hour; consolidation merges Y into X, whose 5 visits reach the threshold.
// Before, no alert was raised until X came back (never, if the person left).
// The alert is raised once: a second consolidation or X's next visit inside
// the cooldown does not repeat it.
func TestConsolidationMergeRaisesAlert(t *testing.T) {
	h := newHarnessWith(t, "", nil, Config{}, func(d *Deps) {
		d.Rules, _ = rules.New([]rules.Rule{{Name: "repeat5", Kind: rules.KindVisits, Threshold: 5, Window: time.Hour, Cooldown: time.Hour}})
	})
	h.visit(scene{angle: 0}, time.Minute, visit.Context{})
	h.visit(scene{angle: 60}, time.Minute, visit.Context{TxnID: "T-Y"})
	for i := 0; i < 3; i++ {
		h.visit(scene{angle: 29 + 0.1*float64(i)}, time.Minute, visit.Context{})
	}
	if n := len(h.outbox()); n != 0 {
		t.Fatalf("setup: %d alerts before the merge", n)
	}
	x := h.visits()[0].IdentityID
	h.clk.Add(10 * time.Minute)
	for range 2 {
		if err := h.ag.Consolidate(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(h.outbox()); n != 1 {
		t.Fatalf("outbox %d messages after the merge, want 1 alert", n)
	}
	h.visit(scene{angle: 0}, time.Minute, visit.Context{})
	ob := h.outbox()
	if len(ob) != 1 {
		t.Fatalf("outbox %d messages after X came back, want still 1 alert", len(ob))
	}
	var a wire.Alert
	json.Unmarshal(ob[0].Payload, &a)
	if a.Rule != "repeat5" || a.IdentityID != x || a.Count != 5 {
		t.Fatalf("alert %+v: want repeat5 for %s with count 5", a, x)
	}
	if s := h.ag.Stats(); s.Alerts != 1 {
		t.Fatalf("stats: %d alerts, want 1", s.Alerts)
	}
}

func TestSummaryCoalescing(t *testing.T) {
	dir := t.TempDir()
	clk := &fixedClock{t: time.Date(2025, 3, 1, 9, 0, 0, 0, time.UTC)}
	path := filepath.Join(dir, "agent.db")
	st := openStore(t, path, clk, 2)
	defer st.Close()
	cam := &fakeCamera{scenes: []scene{{noface: true}}}
	icfg := identity.DefaultConfig()
	icfg.Thresholds = identity.Thresholds{UU: 0.3, MM: 0.3}
	eng, _ := identity.New(icfg, testDim)
	re, _ := rules.New([]rules.Rule{{Name: "faceless", Kind: rules.KindFaceless, Threshold: 1, Window: time.Hour}})
	ag, err := New(Config{}, Deps{Camera: cam, Perceiver: fakePerceiver{cam}, Store: st, Identities: eng, Rules: re,
		Clock: clk, Model: "test-emb", Site: "s1", Device: "atm-1"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ag.Run(ctx) }()
	defer func() { cancel(); <-done }()

	ag.Trigger(visit.Trigger{Time: clk.Add(time.Minute), Source: "test"}) // one faceless alert
	for ag.Stats().Committed < 1 {
		time.Sleep(time.Millisecond)
	}
	for i := 0; i < 4; i++ {
		clk.Add(time.Minute)
		if err := ag.PublishSummary(ctx); err != nil {
			t.Fatal(err)
		}
	}
	ms, _ := st.OutboxPending(ctx, 100)
	// Bound of 2 messages: the alert stays, superseded summaries go first,
	// the newest summary stays.
	if len(ms) != 2 || ms[0].Kind != KindAlert || ms[1].Kind != KindSummary {
		t.Fatalf("outbox %+v: want the alert and the newest summary", ms)
	}
	var s wire.Summary
	json.Unmarshal(ms[1].Payload, &s)
	if !s.TS.Equal(clk.Now()) || s.Faceless.H1 != 1 || s.Totals.Visits.D7 != 1 {
		t.Fatalf("kept summary %+v: want the newest with one faceless visit", s)
	}
	_, _, dropped := st.OutboxStats()
	if dropped[KindSummary] != 3 || dropped[KindAlert] != 0 {
		t.Fatalf("dropped %v: want 3 summaries, 0 alerts", dropped)
	}
}

func wc(h1, h24, d7 int) wire.WindowCounts { return wire.WindowCounts{H1: h1, H24: h24, D7: d7} }

func TestBuildSummary(t *testing.T) {
	now := time.Date(2025, 3, 8, 12, 0, 0, 0, time.UTC)
	v := func(id string, ago time.Duration, out visit.Outcome, mask visit.MaskState, card string) visit.Visit {
		return visit.Visit{IdentityID: id, Time: now.Add(-ago), Descriptor: visit.Descriptor{Outcome: out, Mask: mask},
			Context: visit.Context{CardHash: card}}
	}
	vs := []visit.Visit{
		v("p-a", 6*24*time.Hour, visit.FaceFound, visit.Unmasked, "c1"),
		v("p-a", 2*time.Hour, visit.FaceFound, visit.Masked, "c2"),
		v("p-a", 10*time.Minute, visit.FaceFound, visit.Masked, "c2"),
		v("p-b", 30*time.Minute, visit.FaceFound, visit.Unmasked, ""),
		v("", 5*time.Minute, visit.NoFace, visit.MaskUnknown, ""),
		v("", 8*24*time.Hour, visit.NoFace, visit.MaskUnknown, ""), // outside 7 d
		// The camera gave no frames: no visit for the totals.
		v("", 20*time.Minute, visit.CameraError, visit.MaskUnknown, ""),
		v("", 3*time.Hour, visit.CameraError, visit.MaskUnknown, ""),
	}
	s := BuildSummary(wire.NewEnvelope("s", "d", now), now, vs, 1)
	if len(s.Identities) != 1 || s.IdentitiesOmitted != 1 {
		t.Fatalf("cap: %d listed, %d omitted", len(s.Identities), s.IdentitiesOmitted)
	}
	a := s.Identities[0]
	want := wire.IdentityCounts{ID: "p-a", Visits: wc(1, 2, 3), Masked: wc(1, 2, 2),
		DistinctCards: wc(1, 1, 2), FirstSeen: now.Add(-6 * 24 * time.Hour), LastSeen: now.Add(-10 * time.Minute)}
	if a != want {
		t.Fatalf("identity counts\n got %+v\nwant %+v", a, want)
	}
	if s.Faceless != (wc(1, 1, 1)) || s.Totals.Visits != (wc(3, 4, 5)) ||
		s.Totals.Identities != (wc(2, 2, 2)) || s.Totals.Masked != (wc(1, 2, 2)) {
		t.Fatalf("totals %+v faceless %+v", s.Totals, s.Faceless)
	}
}

// With the next card insert always arriving while a visit runs, the worker
// never finds the queue empty; periodic jobs that are due must still run
// between visits (retention above all), not wait for a quiet moment.
func TestPeriodicJobsRunUnderSteadyTriggers(t *testing.T) {
	cfg := Config{SummaryInterval: time.Second, ConsolidateInterval: time.Second, PurgeInterval: time.Second}
	h := newHarness(t, "", nil, cfg)
	const visits = 250 // 10 ms each: 2.5 s
	var n atomic.Int64
	h.cam.onBurst = func() {
		if n.Add(1) < visits {
			h.ag.Trigger(visit.Trigger{Source: "test"}) // queued behind the running visit
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	h.ag.Trigger(visit.Trigger{Source: "test"})
	h.waitProcessedWithin(visits, 30*time.Second)
	st := h.ag.Stats()
	t.Logf("%d visits in %v; summaries %d, consolidations %d, coalesced %d", st.Committed, time.Since(start), st.Summaries, st.Consolidated, st.Coalesced)
	if st.Coalesced != 0 {
		t.Fatalf("%d triggers coalesced: the stream is not one trigger per visit", st.Coalesced)
	}
	if time.Since(start) < 2*cfg.SummaryInterval {
		t.Skipf("visits ran too fast (%v) for the jobs to fall due", time.Since(start))
	}
	if st.Summaries == 0 || st.Consolidated == 0 {
		t.Errorf("summaries %d, consolidations %d under steady triggers: periodic jobs starved", st.Summaries, st.Consolidated)
	}
}

// A visit whose burst outlasts visit_timeout is still stored, as a
// camera_error: the rules and the commit run on their own deadline (before,
// the commit reused the expired context and the visit was lost).
func TestVisitPastTimeoutIsStored(t *testing.T) {
	cfg := DefaultConfig()
	cfg.VisitTimeout = 150 * time.Millisecond
	h := newHarness(t, "", nil, cfg)
	h.cam.mu.Lock()
	h.cam.gate = make(chan struct{}) // never opened: the burst hangs until the deadline
	h.cam.mu.Unlock()
	h.visit(scene{angle: 0}, time.Second, visit.Context{})
	if s := h.ag.Stats(); s.Committed != 1 || s.CommitErrors != 0 {
		t.Fatalf("stats %+v: want the visit committed", s)
	}
	vs := h.visits()
	if len(vs) != 1 || vs[0].Outcome != visit.CameraError {
		t.Fatalf("stored %+v; want one camera_error visit", vs)
	}
}

// sourceFunc adapts a function to Source.
type sourceFunc func(ctx context.Context, emit Emit) error

func (f sourceFunc) Run(ctx context.Context, emit Emit) error { return f(ctx, emit) }

// The channel Emit returns closes when the worker has taken the trigger, not
// before: a replay that waits on it never has an event coalesced.
func TestEmitSignalsTaken(t *testing.T) {
	emits := make(chan visit.Trigger)
	frees := make(chan (<-chan struct{}))
	var cam *fakeCamera
	h := newHarnessWith(t, "", nil, Config{}, func(d *Deps) {
		cam = d.Camera.(*fakeCamera)
		cam.gate = make(chan struct{})
		cam.calls = make(chan struct{}, 10)
		d.Sources = []Source{sourceFunc(func(ctx context.Context, emit Emit) error {
			for {
				select {
				case ev := <-emits:
					frees <- emit(ev)
				case <-ctx.Done():
					return nil
				}
			}
		})}
	})
	cam.push(scene{angle: 0}, scene{angle: 0})
	closed := func(c <-chan struct{}) bool {
		select {
		case <-c:
			return true
		default:
			return false
		}
	}
	t0 := h.clk.Add(time.Minute)
	emits <- visit.Trigger{Time: t0, Source: "replay"}
	free1 := <-frees
	<-cam.calls // the worker took visit 1 and is inside Burst
	select {
	case <-free1:
	case <-time.After(5 * time.Second):
		t.Fatal("first trigger taken but its channel is still open")
	}
	emits <- visit.Trigger{Time: t0.Add(time.Second), Source: "replay"}
	free2 := <-frees
	time.Sleep(50 * time.Millisecond)
	if closed(free2) {
		t.Fatal("second trigger's channel closed while the worker is busy with the first")
	}
	cam.gate <- struct{}{} // finish visit 1; the worker takes visit 2
	select {
	case <-free2:
	case <-time.After(5 * time.Second):
		t.Fatal("second trigger taken but its channel is still open")
	}
	cam.gate <- struct{}{}
	h.waitProcessed(2)
	if s := h.ag.Stats(); s.Coalesced != 0 {
		t.Fatalf("coalesced %d", s.Coalesced)
	}
}

// An idle agent blocks: between card inserts its worker waits on its
// channels. (A default case in the idle select once made it spin, using a
// core of the ATM controller while nobody was at the machine.) The
// process's CPU time over a second of idling, after one visit, must be a
// small fraction of that second.
func TestIdleAgentDoesNotSpin(t *testing.T) {
	h := newHarness(t, "", nil, Config{})
	h.ag.Trigger(visit.Trigger{Source: "test"})
	h.waitProcessed(1)
	cpu := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	time.Sleep(100 * time.Millisecond) // the visit's aftermath settles
	c0, w0 := cpu(), time.Now()
	time.Sleep(time.Second)
	used, wall := cpu()-c0, time.Since(w0)
	t.Logf("idle for %v: %v of CPU", wall.Round(time.Millisecond), used)
	if used > wall/5 {
		t.Errorf("an idle agent used %v of CPU in %v: its worker does not block", used, wall.Round(time.Millisecond))
	}
}

// A camera that drops out mid-burst (unplugged, re-enumerated): the frames
// it gave before failing show no face. Such visits are camera_error, not
// noface, and raise no faceless alert; a short burst that did show a face
// is still a face visit. Before, every one was noface and the third raised
// a faceless alert.
func TestShortBurstWithoutFaceIsCameraError(t *testing.T) {
	h := newHarness(t, "", nil, Config{})
	h.cam.mu.Lock()
	h.cam.short = true
	h.cam.mu.Unlock()
	for range 4 {
		h.visit(scene{noface: true}, time.Minute, visit.Context{})
	}
	h.visit(scene{angle: 10}, time.Minute, visit.Context{})
	vs := h.visits()
	if len(vs) != 5 {
		t.Fatalf("stored %d visits, want 5", len(vs))
	}
	for _, v := range vs[:4] {
		if v.Outcome != visit.CameraError || v.Frames != 1 {
			t.Errorf("short faceless burst stored as %v (%d frames), want camera_error", v.Outcome, v.Frames)
		}
	}
	if vs[4].Outcome != visit.FaceFound {
		t.Errorf("short burst with a face stored as %v", vs[4].Outcome)
	}
	if ob := h.outbox(); len(ob) != 0 {
		t.Errorf("outbox %d messages, want no faceless alert", len(ob))
	}
	if s := h.ag.Stats(); s.Visits[visit.CameraError] != 4 || s.Visits[visit.NoFace] != 0 {
		t.Errorf("counted %v", s.Visits)
	}
}
