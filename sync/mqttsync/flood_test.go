package mqttsync

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/periocular/atm-agent/sync/wire"
)

// cpuTime is this process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestMosquittoForgedCommandFlood: a broker client that may publish on the
// command topic sends 18,000 forged commands (well formed, fresh, signed
// by a key the device does not know) and 2,000 malformed ones, from
// mosquitto_pub in a process of its own, as fast as the loopback broker
// takes them. Each forged one used to cost an Ed25519 check (about
// 80 µs of CPU each, 1.6 s for the flood, on both cores at once); now the
// checks that fail are bounded by the budget (forgedBurst, then
// forgedRate a second) and the rest are dropped unchecked, counted as
// throttled, with one log line. Meanwhile the central side's signed pings,
// each resent (the same message) until answered, are served, each exactly
// once. Every message is accounted for.
func TestMosquittoForgedCommandFlood(t *testing.T) {
	skipShort(t)
	pubBin, err := exec.LookPath("mosquitto_pub")
	if err != nil {
		t.Skipf("mosquitto_pub not installed (%v): apt-get install mosquitto-clients", err)
	}
	m := newMosquitto(t, "")
	broker := m.url("tcp")
	cfg := testConfig(broker)
	sg := newSigner(t)
	sg.enable(t, &cfg)
	logs := &lockedBuffer{}
	p, err := New(cfg, Deps{Outbox: &memOutbox{}, Commands: &fakeCommands{}, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	// ATM_MQTT_FLOOD_UNBOUNDED=1 measures the flood as it was before the
	// budget: every signature checked (the bounds are then not asserted).
	unbounded := os.Getenv("ATM_MQTT_FLOOD_UNBOUNDED") != ""
	if unbounded {
		p.guard.budget = newVerifyBudget(math.Inf(1), math.Inf(1))
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-runDone })
	waitFor(t, 5*time.Second, "connected", func() bool { return p.Stats().Connects > 0 })
	time.Sleep(300 * time.Millisecond) // the command subscription is in place

	// The flood, written for mosquitto_pub -l (one message a line).
	const forged, malformed = 18000, 2000
	attacker := newSigner(t)
	var flood bytes.Buffer
	now := time.Now()
	for i := 0; i < forged+malformed; i++ {
		if i%10 == 9 {
			fmt.Fprintf(&flood, `{"schema_version":2,"payload":"not base64 %d","sig":"%s"}`+"\n", i, strings.Repeat("A", 86)+"==")
			continue
		}
		flood.Write(attacker.sign(t, attacker.payload(fmt.Sprintf("f-%d", i), "purge_identity", "atm-1", `{"id":"p-victim"}`, now)))
		flood.WriteByte('\n')
	}
	floodFile := filepath.Join(t.TempDir(), "flood")
	if err := os.WriteFile(floodFile, flood.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}

	// The central side: replies by correlation id.
	answered := map[string]time.Time{}
	var mu sync.Mutex
	central := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID("central"))
	if tok := central.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("central: connect: %v", tok.Error())
	}
	defer central.Disconnect(50)
	central.Subscribe("atm/test/s1/atm-1/reply", 1, func(_ mqtt.Client, m mqtt.Message) {
		var r wire.Reply
		if json.Unmarshal(m.Payload(), &r) == nil && r.OK {
			mu.Lock()
			if _, ok := answered[r.CorrelationID]; !ok {
				answered[r.CorrelationID] = time.Now()
			}
			mu.Unlock()
		}
	}).WaitTimeout(5 * time.Second)

	runtime.GC()
	var peakG, peakHeap atomic.Int64
	stopSampling := make(chan struct{})
	go func() {
		var ms runtime.MemStats
		for {
			select {
			case <-stopSampling:
				return
			case <-time.After(5 * time.Millisecond):
			}
			peakG.Store(max(peakG.Load(), int64(runtime.NumGoroutine())))
			runtime.ReadMemStats(&ms)
			peakHeap.Store(max(peakHeap.Load(), int64(ms.HeapInuse)))
		}
	}()
	rejected := func() (n uint64) {
		for _, v := range p.Stats().CommandsRejected {
			n += v
		}
		return n
	}
	cpu0, log0, t0 := cpuTime(), len(logs.String()), time.Now()
	cmd := exec.Command(pubBin, "-h", "127.0.0.1", "-p", fmt.Sprint(m.port), "-q", "0", "-t", "atm/test/s1/atm-1/cmd", "-l")
	cmd.Stdin = bytes.NewReader(flood.Bytes())
	var pubOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &pubOut, &pubOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pubDone := make(chan error, 1)
	go func() { pubDone <- cmd.Wait() }()

	// Once the budget is spent, the central's pings: each resent every
	// 2 ms until its reply comes.
	waitFor(t, 10*time.Second, "the budget spent", func() bool {
		return p.Stats().CommandsRejected[rejThrottled] > 0 || unbounded && p.Stats().CommandsRejected[rejSignature] > forgedBurst
	})
	const pings = 5
	sent := 0
	var servedDuring int
	var slowest time.Duration
	for i := 0; i < pings; i++ {
		id := fmt.Sprintf("c-ping-%d", i)
		first := time.Now()
		msg := sg.sign(t, sg.payload(id, "ping", "atm-1", "", time.Now()))
		deadline := time.Now().Add(30 * time.Second)
		for {
			mu.Lock()
			_, ok := answered[id]
			mu.Unlock()
			if ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("ping %s not answered in 30 s of resends (%d sent); stats %+v", id, sent, p.Stats())
			}
			central.Publish("atm/test/s1/atm-1/cmd", 1, false, msg)
			sent++
			time.Sleep(2 * time.Millisecond)
		}
		slowest = max(slowest, time.Since(first))
		if rejected()+p.Stats().CommandsAccepted < forged+malformed {
			servedDuring++ // the flood was still being counted
		}
	}
	if err := <-pubDone; err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, pubOut.String())
	}
	total := uint64(forged + malformed + sent)
	waitFor(t, 30*time.Second, "every message counted", func() bool { return rejected()+p.Stats().CommandsAccepted >= total })
	elapsed := time.Since(t0)
	cpu := cpuTime() - cpu0
	close(stopSampling)
	time.Sleep(200 * time.Millisecond) // nothing more arrives

	st := p.Stats()
	r := st.CommandsRejected
	lg := logs.String()[log0:]
	t.Logf("flood of %d forged + %d malformed: counted in %v; CPU %v (%.1f µs a message); signature checks that failed %d, dropped unchecked %d, malformed %d; "+
		"%d pings sent %d times, answered at most %v after their first send, %d while the flood was still arriving; log %d bytes, %d lines; peak goroutines %d, peak heap in use %.1f MiB",
		forged, malformed, elapsed.Round(time.Millisecond), cpu.Round(time.Millisecond), float64(cpu.Microseconds())/float64(total),
		r[rejSignature], r[rejThrottled], r[rejUnsigned], pings, sent, slowest.Round(time.Millisecond), servedDuring, len(lg), strings.Count(lg, "\n"), peakG.Load(), float64(peakHeap.Load())/(1<<20))

	if got := st.CommandsAccepted + r[rejSignature] + r[rejThrottled] + r[rejUnsigned] + r[rejReplayed]; got != total || st.CommandsAccepted+rejected() != total {
		t.Errorf("counted %d (%v, accepted %d), sent %d: messages unaccounted for", got, r, st.CommandsAccepted, total)
	}
	if unbounded {
		return
	}
	if st.CommandsAccepted != pings {
		t.Errorf("accepted %d, want each of the %d pings once", st.CommandsAccepted, pings)
	}
	if r[rejUnsigned] != malformed {
		t.Errorf("malformed refused as unsigned: %d, want %d (they cost no signature check)", r[rejUnsigned], malformed)
	}
	// The bound: the burst, then the rate over the flood's duration.
	if bound := uint64(forgedBurst + forgedRate*elapsed.Seconds() + 1); r[rejSignature] > bound {
		t.Errorf("%d failed signature checks in %v, budget %d", r[rejSignature], elapsed, bound)
	}
	if r[rejThrottled] < forged/2 {
		t.Errorf("only %d dropped unchecked", r[rejThrottled])
	}
	if n := strings.Count(lg, "reason=throttled"); n != 1 {
		t.Errorf("%d log lines for %d throttled, want 1 (then one a minute):\n%s", n, r[rejThrottled], lg)
	}
	if n := strings.Count(lg, "\n"); n > 10 {
		t.Errorf("%d log lines for the flood:\n%s", n, lg)
	}
}

// The budget itself, on an injected clock: a burst, then the rate; a
// check that verified gives its token back, so signed commands never use
// the budget up however many there are.
func TestVerifyBudget(t *testing.T) {
	b := newVerifyBudget(10, 5)
	t0 := time.Unix(1_700_000_000, 0)
	n := 0
	for b.take(t0) {
		n++
	}
	if n != 5 {
		t.Fatalf("burst: %d checks, want 5", n)
	}
	if b.take(t0.Add(50 * time.Millisecond)) {
		t.Error("a check half a token later")
	}
	if !b.take(t0.Add(100*time.Millisecond)) || b.take(t0.Add(100*time.Millisecond)) {
		t.Error("one token a tenth of a second: want exactly one check")
	}
	if b.take(t0.Add(50 * time.Millisecond)) {
		t.Error("a clock stepped back gave tokens")
	}
	n = 0
	for b.take(t0.Add(time.Hour)) {
		n++
	}
	if n != 5 {
		t.Errorf("after an hour: %d checks, want the burst, 5", n)
	}
	// Signed commands: each takes and gives back.
	b = newVerifyBudget(10, 5)
	for i := 0; i < 1000; i++ {
		if !b.take(t0) {
			t.Fatalf("signed command %d found no token", i)
		}
		b.refund()
	}
	if b.tokens != 5 {
		t.Errorf("tokens after 1000 signed commands: %v, want 5", b.tokens)
	}
}

// floodMsg is a message on the command topic, for onCommand directly.
type floodMsg struct{ payload []byte }

func (floodMsg) Duplicate() bool   { return false }
func (floodMsg) Qos() byte         { return 0 }
func (floodMsg) Retained() bool    { return false }
func (floodMsg) Topic() string     { return "atm/test/s1/atm-1/cmd" }
func (floodMsg) MessageID() uint16 { return 0 }
func (m floodMsg) Payload() []byte { return m.payload }
func (floodMsg) Ack()              {}

// The journal during a long flood, on an injected clock: the first
// command dropped unchecked is logged at once, then one line a minute
// counting those dropped since (refused_since_last_log); the budget comes
// back at the rate, so checks go on at forgedRate a second.
func TestThrottledLoggedOnceAMinute(t *testing.T) {
	cfg := testConfig("tcp://127.0.0.1:1")
	sg := newSigner(t)
	sg.enable(t, &cfg)
	clock := time.Unix(1_700_000_000, 0)
	logs := &lockedBuffer{}
	p, err := New(cfg, Deps{Outbox: &memOutbox{}, Commands: &fakeCommands{}, Logger: slog.New(slog.NewTextHandler(logs, nil)),
		Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	attacker := newSigner(t)
	forged := attacker.sign(t, attacker.payload("f-1", "purge_identity", "atm-1", `{"id":"p-x"}`, clock))
	send := func(n int) {
		for i := 0; i < n; i++ {
			p.onCommand(nil, floodMsg{forged})
		}
	}
	send(forgedBurst + 500)
	r := p.Stats().CommandsRejected
	if r[rejSignature] != forgedBurst || r[rejThrottled] != 500 {
		t.Fatalf("checked %d, dropped %d; want the burst %d checked and 500 dropped", r[rejSignature], r[rejThrottled], forgedBurst)
	}
	// 30 s later: the budget is full again; the flood goes on.
	clock = clock.Add(30 * time.Second)
	send(2 * forgedBurst)
	clock = clock.Add(31 * time.Second)
	send(forgedBurst + 1)
	r = p.Stats().CommandsRejected
	if want := uint64(3 * forgedBurst); r[rejSignature] != want {
		t.Errorf("checked %d, want %d (a full budget at each step)", r[rejSignature], want)
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	var throttled []string
	for _, l := range lines {
		if strings.Contains(l, "reason=throttled") {
			throttled = append(throttled, l)
		}
	}
	if len(throttled) != 2 || !strings.Contains(throttled[0], "refused_since_last_log=0") ||
		!strings.Contains(throttled[1], fmt.Sprintf("refused_since_last_log=%d", 499+forgedBurst)) {
		t.Errorf("throttled lines: want two, the second counting %d:\n%s", 499+forgedBurst, strings.Join(throttled, "\n"))
	}
	if len(lines) > 5 {
		t.Errorf("%d log lines for %d forged commands:\n%s", len(lines), 4*forgedBurst+501, logs.String())
	}
}
