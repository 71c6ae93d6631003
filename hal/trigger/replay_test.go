package trigger

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
)

// instantClock advances its time by each wait and fires at once, so a
// simulated day replays without sleeping. It records the waits.
type instantClock struct {
	mu    sync.Mutex
	now   time.Time
	waits []time.Duration
}

func (c *instantClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *instantClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.waits = append(c.waits, d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

func drain(t *testing.T, r *Replay, buf int) []visit.Trigger {
	t.Helper()
	out := make(chan visit.Trigger, buf)
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background(), out); close(out) }()
	var evs []visit.Trigger
	for ev := range out {
		evs = append(evs, ev)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return evs
}

func TestReplayScheduleSimulatedDay(t *testing.T) {
	sched := `# a simulated morning
0s card_hash=` + goodHash + ` txn_id=T1
8h15m
8h15m30s txn_id=T3

12h
`
	path := filepath.Join(t.TempDir(), "day.txt")
	if err := os.WriteFile(path, []byte(sched), 0o600); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	clk := &instantClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	r, err := NewReplay(ReplayConfig{File: path, Speed: 3600, Start: t0.Format(time.RFC3339)}, nil, WithReplayClock(clk))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(r.Entries()); n != 4 {
		t.Fatalf("%d entries", n)
	}
	evs := drain(t, r, 0) // unbuffered: Run blocks on the consumer, losing nothing
	wantOff := []time.Duration{0, 8*time.Hour + 15*time.Minute, 8*time.Hour + 15*time.Minute + 30*time.Second, 12 * time.Hour}
	if len(evs) != len(wantOff) {
		t.Fatalf("%d events, want %d", len(evs), len(wantOff))
	}
	for i, ev := range evs {
		if !ev.Time.Equal(t0.Add(wantOff[i])) || ev.Source != SourceReplay {
			t.Errorf("event %d at %v, want %v", i, ev.Time, t0.Add(wantOff[i]))
		}
	}
	if !reflect.DeepEqual(evs[0].Context, visit.Context{CardHash: goodHash, TxnID: "T1"}) || evs[2].Context.TxnID != "T3" {
		t.Errorf("contexts %+v %+v", evs[0].Context, evs[2].Context)
	}
	// Waits are the gaps divided by the speed: 8h15m/3600 = 8.25s, 30s/3600, 3h44m30s/3600.
	want := []time.Duration{8250 * time.Millisecond, 30 * time.Second / 3600, (3*time.Hour + 44*time.Minute + 30*time.Second) / 3600}
	if len(clk.waits) != len(want) {
		t.Fatalf("waits %v, want %v", clk.waits, want)
	}
	for i := range want {
		if d := clk.waits[i] - want[i]; d < -time.Microsecond || d > time.Microsecond {
			t.Errorf("wait %d = %v, want %v", i, clk.waits[i], want[i])
		}
	}
}

func TestReplayAbsoluteTimes(t *testing.T) {
	entries, err := ParseSchedule(strings.NewReader("2025-03-01T09:00:00Z\n2025-03-01T09:00:05Z card_hash=" + goodHash + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewReplay(ReplayConfig{Speed: 1e6}, nil, WithSchedule(entries))
	if err != nil {
		t.Fatal(err)
	}
	evs := drain(t, r, 2)
	if len(evs) != 2 || !evs[1].Time.Equal(time.Date(2025, 3, 1, 9, 0, 5, 0, time.UTC)) {
		t.Fatalf("events %+v", evs)
	}
}

func TestReplayIntervalRealClock(t *testing.T) {
	r, err := NewReplay(ReplayConfig{Interval: time.Second, Count: 5, Speed: 100}, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	evs := drain(t, r, 5)
	el := time.Since(start)
	if len(evs) != 5 {
		t.Fatalf("%d events", len(evs))
	}
	if el < 45*time.Millisecond || el > 2*time.Second { // 5 x 1s / 100
		t.Errorf("5 events at 1s / speed 100 took %s, want about 50ms", el)
	}
	for i := 1; i < len(evs); i++ {
		if d := evs[i].Time.Sub(evs[i-1].Time); d != time.Second {
			t.Errorf("simulated gap %v, want 1s", d)
		}
	}
}

func TestReplayStopsOnCancel(t *testing.T) {
	r, err := NewReplay(ReplayConfig{Interval: time.Hour}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := r.Run(ctx, make(chan visit.Trigger)); err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > time.Second {
		t.Fatal("Run did not stop on cancel")
	}
}

// A schedule's card hashes are stored in the canonical form, as the
// endpoint's: one card in uppercase hex or base64 is the same card.
func TestParseScheduleCanonicalCardHash(t *testing.T) {
	in := "0s card_hash=" + strings.ToUpper(goodHash) + "\n1s card_hash=n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=\n2s txn_id=T1\n"
	entries, err := ParseSchedule(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 || entries[0].Context.CardHash != goodHash || entries[1].Context.CardHash != goodHash || entries[2].Context.CardHash != "" {
		t.Fatalf("entries %+v: want card_hash %s twice", entries, goodHash)
	}
}

func TestParseScheduleErrors(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"bad when", "soon\n", "line 1"},
		{"negative", "-5s\n", "line 1"},
		{"backwards", "10s\n5s\n", "line 2: goes back"},
		{"mixed", "10s\n2025-03-01T09:00:00Z\n", "mixes"},
		{"unknown field", "1s pan=4111111111111111\n", `unknown field "pan"`},
		{"pan", "1s card_hash=4111111111111111\n", "card number"},
		{"odd hex", "1s card_hash=" + goodHash[:63] + "\n", "line 1: card_hash: must be hex"},
		{"before 1970", "1900-01-01T00:00:00Z\n", "line 1: 1900-01-01T00:00:00Z is outside the times a visit can be stored at"},
		{"after 2262", "2300-01-01T00:00:00Z\n", "outside the times"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseSchedule(strings.NewReader(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want containing %q", err, tt.want)
			}
		})
	}
}

func TestReplayConfigValidate(t *testing.T) {
	for _, cfg := range []ReplayConfig{{}, {Interval: time.Second, File: "x"}, {Interval: time.Second, Speed: -1}, {File: "x", Start: "yesterday"}} {
		if _, err := NewReplay(cfg, nil); err == nil {
			t.Errorf("config %+v accepted", cfg)
		}
	}
	// Every visit of such a day was lost at commit ("time not set").
	for _, start := range []string{"2300-01-01T00:00:00Z", "1900-01-01T00:00:00Z", "1970-01-01T00:00:00Z"} {
		if err := (ReplayConfig{Interval: time.Second, Start: start}).Validate(); err == nil || !strings.Contains(err.Error(), "outside the times") {
			t.Errorf("start %s: %v", start, err)
		}
	}
	if err := (ReplayConfig{Interval: time.Second, Start: "2026-03-14T09:00:00Z"}).Validate(); err != nil {
		t.Errorf("an ordinary start refused: %v", err)
	}
	if _, err := NewReplay(ReplayConfig{File: filepath.Join(t.TempDir(), "missing")}, nil); err == nil {
		t.Error("missing schedule file accepted")
	}
}
