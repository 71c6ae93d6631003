package mqttsync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/wire"
)

func runPublisher(t *testing.T, cfg Config, d Deps) (*Publisher, context.CancelFunc, chan error) {
	t.Helper()
	if d.Logger == nil {
		d.Logger = testLogger(t)
	}
	p, err := New(cfg, d)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return p, cancel, done
}

func TestPublishOrderAckStatus(t *testing.T) {
	broker := startMochi(t)
	col := newCollector(t, broker, "col", "atm/test/#", false, nil)
	ob := &memOutbox{}
	old := time.Now().Add(-time.Hour)
	for i := 1; i <= 40; i++ {
		kind := wire.KindAlert
		if i%5 == 0 {
			kind = wire.KindSummary
		}
		ob.Add(kind, old, payload(t, kind, i, old))
	}
	cfg := testConfig(broker)
	cfg.Batch, cfg.MaxInflight = 7, 3
	statusCalls := 0
	var mu sync.Mutex
	p, cancel, done := runPublisher(t, cfg, Deps{Outbox: ob, Status: func() wire.Status {
		mu.Lock()
		statusCalls++
		mu.Unlock()
		return wire.Status{AgentVersion: "test", Models: []string{"m1"}, Outbox: &wire.OutboxStats{Depth: ob.Len()}}
	}})
	waitFor(t, 5*time.Second, "outbox drained", func() bool { return ob.Len() == 0 })
	waitFor(t, 5*time.Second, "40 messages", func() bool { return report(t, col.snapshot(), 40).Unique == 40 })

	// A live message after Notify is not historical.
	ob.Add(wire.KindAlert, time.Now(), payload(t, wire.KindAlert, 41, time.Now()))
	p.Notify()
	waitFor(t, 2*time.Second, "live alert", func() bool { return report(t, col.snapshot(), 41).Unique == 41 })

	r := report(t, col.snapshot(), 41)
	if len(r.Missing) != 0 || r.OutOfOrder != 0 || r.Duplicates != 0 {
		t.Fatalf("report %+v", r)
	}
	if r.Historical != 40 {
		t.Errorf("historical = %d, want 40 (the 40 old messages, not the live one)", r.Historical)
	}
	alertSchema, summarySchema, statusSchema := compileSchema(t, "alert"), compileSchema(t, "summary"), compileSchema(t, "status")
	for _, m := range col.byKind("alert") {
		validateAgainst(t, alertSchema, m.Payload)
	}
	for _, m := range col.byKind("summary") {
		validateAgainst(t, summarySchema, m.Payload)
	}
	st := p.Stats()
	if !st.Connected || st.Published != 41 || st.Historical != 40 || st.LastAckedSeq != 41 || st.Connects != 1 {
		t.Errorf("stats %+v", st)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run returned %v on cancel", err)
	}
	done <- nil // for the cleanup
	// A new subscriber sees the retained "stopped".
	late := newCollector(t, broker, "late", "atm/test/s1/atm-1/status", false, nil)
	waitFor(t, 2*time.Second, "retained status", func() bool { return len(late.snapshot()) > 0 })
	var s wire.Status
	m := late.snapshot()[0]
	if err := json.Unmarshal(m.Payload, &s); err != nil || !m.Retained || s.State != wire.StateStopped || s.Seq != 41 {
		t.Fatalf("retained status %s retained=%v err=%v", m.Payload, m.Retained, err)
	}
	validateAgainst(t, statusSchema, m.Payload)
	states := []wire.State{}
	for _, m := range col.byKind("status") {
		validateAgainst(t, statusSchema, m.Payload)
		var s wire.Status
		_ = json.Unmarshal(m.Payload, &s)
		states = append(states, s.State)
		if s.State == wire.StateOnline && (s.AgentVersion != "test" || s.Outbox == nil) {
			t.Errorf("online status lacks agent info: %s", m.Payload)
		}
	}
	// online at connect, again when the backlog of 40 drained (a change
	// of the outbox depth's magnitude: 40 -> 0, or through 1-9 when a
	// check falls mid-drain), stopped at the end.
	if n := len(states); n < 3 || n > 4 || states[n-1] != wire.StateStopped || slices.ContainsFunc(states[:n-1], func(s wire.State) bool { return s != wire.StateOnline }) {
		t.Errorf("status sequence %v, want 2 or 3 online then stopped", states)
	}
}

func TestNothingAckedWithoutBroker(t *testing.T) {
	cfg := testConfig(fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t)))
	ob := &memOutbox{}
	for i := 1; i <= 5; i++ {
		ob.Add(wire.KindAlert, time.Now(), payload(t, wire.KindAlert, i, time.Now()))
	}
	p, cancel, done := runPublisher(t, cfg, Deps{Outbox: ob})
	waitFor(t, 5*time.Second, "a connect error", func() bool { return p.Stats().LastError != "" })
	time.Sleep(300 * time.Millisecond)
	cancel()
	<-done
	done <- nil
	if ob.Len() != 5 || ob.acks != 0 {
		t.Fatalf("outbox len %d acks %d, want 5 and 0", ob.Len(), ob.acks)
	}
	if e := p.Stats().LastError; !strings.Contains(e, "connect") || !strings.Contains(e, "refused") {
		t.Errorf("last error %q does not say the connection was refused", e)
	}
}

type fakeCommands struct {
	mu     sync.Mutex
	purged []string
}

func (f *fakeCommands) HandleCommand(ctx context.Context, c wire.Command) (any, error) {
	switch c.Command {
	case wire.CmdPurgeIdentity:
		if c.Args.ID == "p-missing" {
			return nil, errors.New("identity p-missing not found")
		}
		f.mu.Lock()
		f.purged = append(f.purged, c.Args.ID)
		f.mu.Unlock()
		return map[string]int{"visits_deleted": 3}, nil
	case wire.CmdPublishSummary:
		return nil, nil
	}
	return nil, fmt.Errorf("unsupported %s", c.Command)
}

func (f *fakeCommands) snapshot() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.purged...)
}

func TestCommands(t *testing.T) {
	broker := startMochi(t)
	cfg := testConfig(broker)
	sg := newSigner(t)
	sg.enable(t, &cfg)
	h := &fakeCommands{}
	p, _, _ := runPublisher(t, cfg, Deps{Outbox: &memOutbox{}, Commands: h})
	col := newCollector(t, broker, "col", "atm/test/s1/atm-1/reply", false, nil)
	waitFor(t, 5*time.Second, "connected", func() bool { return p.Stats().Connects > 0 })
	time.Sleep(100 * time.Millisecond) // subscription in place
	cmd := func(id, name, device, args string) string {
		return string(sg.sign(t, sg.payload(id, name, device, args, time.Now())))
	}
	send := []struct{ topic, payload string }{
		{"atm/test/s1/atm-1/cmd", cmd("c-1", "ping", "atm-1", "")},
		{"atm/test/s1/atm-1/cmd", cmd("c-2", "purge_identity", "atm-1", `{"id":"p-7"}`)},
		{"atm/test/s1/atm-1/cmd", cmd("c-3", "purge_identity", "atm-1", `{"id":"p-missing"}`)},
		{"atm/test/s1/atm-1/cmd", cmd("c-4", "purge_identity", "atm-2", `{"id":"p-8"}`)}, // wrong device
		{"atm/test/s1/atm-1/cmd", cmd("c-5", "reboot", "atm-1", "")},
		{"atm/test/s1/atm-1/cmd", `garbage`},
		{"atm/test/s1/atm-2/cmd", cmd("c-6", "purge_identity", "atm-2", `{"id":"p-9"}`)}, // other device's topic
		{"atm/test/s1/atm-1/cmd", cmd("c-7", "publish_summary", "atm-1", "")},
	}
	for _, s := range send {
		col.c.Publish(s.topic, 1, false, []byte(s.payload)).WaitTimeout(time.Second)
	}
	waitFor(t, 5*time.Second, "6 replies", func() bool { return len(col.snapshot()) >= 6 })
	time.Sleep(200 * time.Millisecond)
	replySchema := compileSchema(t, "reply")
	got := map[string]wire.Reply{}
	for _, m := range col.snapshot() {
		validateAgainst(t, replySchema, m.Payload)
		var r wire.Reply
		if err := json.Unmarshal(m.Payload, &r); err != nil {
			t.Fatal(err)
		}
		got[r.CorrelationID] = r
	}
	// c-6 went to another device's topic (never received); "garbage" is
	// unsigned: refused without a reply.
	want := map[string]bool{"c-1": true, "c-2": true, "c-3": false, "c-4": false, "c-5": false, "c-7": true}
	if len(got) != len(want) {
		t.Errorf("got %d replies, want %d: %v", len(got), len(want), got)
	}
	for id, ok := range want {
		if r, found := got[id]; !found || r.OK != ok {
			t.Errorf("reply %s = %+v, want ok=%v", id, r, ok)
		}
	}
	if !strings.Contains(string(got["c-2"].Result), `"visits_deleted":3`) || !strings.Contains(got["c-3"].Error, "not found") {
		t.Errorf("c-2 %s / c-3 %q", got["c-2"].Result, got["c-3"].Error)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if fmt.Sprint(h.purged) != "[p-7]" {
		t.Errorf("purged %v, want [p-7]", h.purged)
	}
	st := p.Stats()
	if st.CommandsAccepted != 4 || st.CommandsRejected[rejUnsigned] != 1 || st.CommandsRejected[rejWrongDevice] != 1 || st.CommandsRejected[rejInvalid] != 1 {
		t.Errorf("accepted %d rejected %v", st.CommandsAccepted, st.CommandsRejected)
	}
}

func TestCommandsOffByDefault(t *testing.T) {
	broker := startMochi(t)
	cfg := testConfig(broker)
	h := &fakeCommands{}
	sg := newSigner(t)
	p, _, _ := runPublisher(t, cfg, Deps{Outbox: &memOutbox{}, Commands: h})
	col := newCollector(t, broker, "col", "atm/test/s1/atm-1/reply", false, nil)
	waitFor(t, 5*time.Second, "connected", func() bool { return p.Stats().Connects > 0 })
	col.c.Publish("atm/test/s1/atm-1/cmd", 1, false, sg.sign(t, sg.payload("c-1", "purge_identity", "atm-1", `{"id":"p-1"}`, time.Now()))).WaitTimeout(time.Second)
	time.Sleep(400 * time.Millisecond)
	if n := len(col.snapshot()); n != 0 || len(h.purged) != 0 {
		t.Fatalf("commands disabled but got %d replies, purged %v", n, h.purged)
	}
}

func TestConfig(t *testing.T) {
	good := `
brokers: ["ssl://broker.example:8883"]
topic: {prefix: atm/eu, site: lyon-07, device: atm-0042}
tls: {ca_file: /etc/atm/ca.pem, cert_file: /etc/atm/c.pem, key_file: /etc/atm/c.key}
username: atm-0042
password_file: /etc/atm/mqtt.pw
keep_alive: 45s
publish_timeout: 5s
commands:
  enabled: true
  seen_file: /var/lib/atm-agent/commands-seen.json
  device_key_file: /var/lib/atm-agent/device.key
  public_keys:
    - {name: central-2026, key: "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="}
    - {name: central-2027, file: /etc/atm-agent/command-2027.pub}
`
	c, err := ParseConfig([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if c.KeepAlive != 45*time.Second || c.PublishTimeout != 5*time.Second || c.DrainInterval != 2*time.Second || !c.Commands.Enabled || c.clientID() != "atm-agent-atm-0042" {
		t.Errorf("parsed %+v", c)
	}
	bad := map[string]string{
		"unknown key":                 "brokers: [tcp://h:1883]\ntopic: {site: s, device: d}\nbrokr: x\n",
		"no brokers":                  "topic: {site: s, device: d}\n",
		"bad scheme":                  "brokers: [http://h]\ntopic: {site: s, device: d}\n",
		"tls on tcp":                  "brokers: [tcp://h:1883]\ntopic: {site: s, device: d}\ntls: {ca_file: x}\n",
		"wildcard":                    "brokers: [tcp://h:1883]\ntopic: {site: s, device: '+'}\n",
		"cert no key":                 "brokers: [ssl://h:1883]\ntopic: {site: s, device: d}\ntls: {cert_file: x}\n",
		"bad duration":                "brokers: [tcp://h:1883]\ntopic: {site: s, device: d}\nkeep_alive: soon\n",
		"zero batch":                  "brokers: [tcp://h:1883]\ntopic: {site: s, device: d}\nbatch: 0\n",
		"no device":                   "brokers: [tcp://h:1883]\ntopic: {site: s}\n",
		"commands without device key": "brokers: [tcp://h:1883]\ntopic: {site: s, device: d}\ncommands: {enabled: true, seen_file: /x, public_keys: [{name: a, key: \"A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=\"}]}\n",
		"commands without keys":       "brokers: [tcp://h:1883]\ntopic: {site: s, device: d}\ncommands: {enabled: true, seen_file: /x, device_key_file: /k}\n",
		"commands bad key":            "brokers: [tcp://h:1883]\ntopic: {site: s, device: d}\ncommands: {enabled: true, seen_file: /x, device_key_file: /k, public_keys: [{name: a, key: aGVsbG8=}]}\n",
		"commands key and file":       "brokers: [tcp://h:1883]\ntopic: {site: s, device: d}\ncommands: {enabled: true, seen_file: /x, device_key_file: /k, public_keys: [{name: a, key: \"A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=\", file: /k}]}\n",
		"commands no seen file":       "brokers: [tcp://h:1883]\ntopic: {site: s, device: d}\ncommands: {enabled: true, public_keys: [{name: a, key: \"A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=\"}]}\n",
		"commands skew 0":             "brokers: [tcp://h:1883]\ntopic: {site: s, device: d}\ncommands: {enabled: true, max_clock_skew: 0s, seen_file: /x, device_key_file: /k, public_keys: [{name: a, key: \"A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=\"}]}\n",
		"commands timeout 3ms":        "brokers: [tcp://h:1883]\ntopic: {site: s, device: d}\ncommands: {enabled: true, timeout: 3ms, seen_file: /x, device_key_file: /k, public_keys: [{name: a, key: \"A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=\"}]}\n",
		"commands timeout 1h":         "brokers: [tcp://h:1883]\ntopic: {site: s, device: d}\ncommands: {enabled: true, timeout: 1h, seen_file: /x, device_key_file: /k, public_keys: [{name: a, key: \"A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=\"}]}\n",
	}
	for name, y := range bad {
		if _, err := ParseConfig([]byte(y)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestFleetGapsAndRender(t *testing.T) {
	f := NewFleet(3)
	ts := time.Date(2025, 3, 14, 9, 0, 0, 0, time.UTC)
	add := func(kind string, seq uint64, hist bool) {
		b, err := wire.Finalize(payload(t, kind, int(seq), ts), seq, fmt.Sprintf("m-%d", seq), hist)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Add("atm", "atm/s1/atm-1/"+kind, b); err != nil {
			t.Fatal(err)
		}
	}
	add("alert", 1, false)
	add("alert", 2, false)
	add("alert", 5, true) // 3 and 4 missing
	add("alert", 5, true) // duplicate
	add("summary", 3, true)
	add("summary", 3, true) // the retained summary again after a resubscribe: not a duplicate
	if err := f.Add("atm", "atm/s1/atm-1/status", []byte(`{"schema_version":2,"state":"online","health":"degraded","reasons":["camera: down"],"ts":"2025-03-14T09:00:00Z","outbox":{"depth":2,"dropped_summaries":1,"dropped_alerts":0}}`)); err != nil {
		t.Fatal(err)
	}
	if err := f.Add("atm", "other/x", nil); err == nil {
		t.Error("foreign topic accepted")
	}
	d := f.devices["s1/atm-1"]
	if d.MaxSeq != 5 || d.Gaps != 1 || d.Duplicates != 1 {
		t.Fatalf("view %+v", d)
	}
	var b strings.Builder
	f.Render(&b, ts.Add(time.Minute), 3, 2)
	out := b.String()
	for _, want := range []string{"atm-1", "online DEGRADED (camera: down)", "2 (drop s1/a0)", "1/3/3", "p-0001:3", "many-visits", "historical"} {
		if !strings.Contains(out, want) {
			t.Errorf("render lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, "many-visits") != 2 {
		t.Errorf("want the 2 most recent alerts:\n%s", out)
	}
	// The window as the config writes it, not Go's "24h0m0s" (the wire's).
	if !regexp.MustCompile(`\d+/5\s+24h\s`).MatchString(out) || strings.Contains(out, "24h0m0s") {
		t.Errorf("alert window not shown as 24h:\n%s", out)
	}
}

func TestWatch(t *testing.T) {
	broker := startMochi(t)
	cfg := testConfig(broker)
	ob := &memOutbox{}
	ob.Add(wire.KindSummary, time.Now(), payload(t, wire.KindSummary, 4, time.Now()))
	ob.Add(wire.KindAlert, time.Now(), payload(t, wire.KindAlert, 2, time.Now()))
	var out syncBuffer
	wcfg := cfg
	wcfg.Topic.Site, wcfg.Topic.Device = "", ""
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Watch(ctx, wcfg, WatchFilter{Refresh: 50 * time.Millisecond}, &out)
	}()
	time.Sleep(300 * time.Millisecond)
	runPublisher(t, cfg, Deps{Outbox: ob})
	waitFor(t, 5*time.Second, "watch table with the alert", func() bool {
		s := out.String()
		return strings.Contains(s, "many-visits") && strings.Contains(s, "online") && strings.Contains(s, "p-0001:4")
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// An unreachable broker is an error, not a hang.
	bad := cfg
	bad.Brokers = []string{fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if err := Watch(ctx2, bad, WatchFilter{}, &out); err == nil || ctx2.Err() != nil {
		t.Fatalf("Watch on a dead broker: %v (ctx %v)", err, ctx2.Err())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestConfigWarnings(t *testing.T) {
	base := func(brokers ...string) Config {
		c := DefaultConfig()
		c.Brokers = brokers
		return c
	}
	tests := []struct {
		name string
		cfg  func() Config
		want []string // substrings, one per warning
	}{
		{"tls, nothing to say", func() Config {
			c := base("ssl://broker:8883")
			c.PasswordFile = "/p"
			c.Commands.Enabled = true
			return c
		}, nil},
		{"loopback tcp", func() Config {
			c := base("tcp://127.0.0.1:1883", "tcp://localhost:1883", "tcp://[::1]:1883")
			c.PasswordFile, c.Commands.Enabled = "/p", true
			return c
		}, nil},
		{"plain tcp, nothing secret", func() Config { return base("tcp://broker:1883") }, nil},
		{"commands over tcp", func() Config { c := base("tcp://broker:1883"); c.Commands.Enabled = true; return c }, []string{"commands are enabled over plaintext tcp://broker:1883"}},
		{"password over ws", func() Config { c := base("ws://10.0.0.5:80"); c.PasswordFile = "/p"; return c }, []string{"password is sent in clear over ws://10.0.0.5:80"}},
		{"insecure tls", func() Config { c := base("ssl://broker:8883"); c.TLS.InsecureSkipVerify = true; return c }, []string{"insecure_skip_verify"}},
		// A warning names the broker with its credentials masked.
		{"credentials in the broker URL", func() Config {
			c := base("ws://dev:S3cretPw@10.0.0.5:80/mqtt?token=T0kenValue")
			c.PasswordFile, c.Commands.Enabled = "/p", true
			return c
		}, []string{"over plaintext ws://dev:xxxxx@10.0.0.5:80/mqtt?token=xxxxx", "in clear over ws://dev:xxxxx@10.0.0.5:80/mqtt?token=xxxxx"}},
	}
	for _, tc := range tests {
		got := tc.cfg().Warnings()
		if len(got) != len(tc.want) {
			t.Errorf("%s: warnings %q, want %d", tc.name, got, len(tc.want))
			continue
		}
		for i, w := range tc.want {
			if !strings.Contains(got[i], w) {
				t.Errorf("%s: warning %q lacks %q", tc.name, got[i], w)
			}
		}
	}
}

// Deps.Ready wakes the drain at once: with a one-minute DrainInterval a
// message added after the first drain arrives only through the signal.
func TestReadySignalDrains(t *testing.T) {
	statusCheck = time.Hour // its tick would drain within the window below
	t.Cleanup(func() { statusCheck = StatusCheck })
	broker := startMochi(t)
	col := newCollector(t, broker, "col", "atm/test/#", false, nil)
	ob := &memOutbox{}
	cfg := testConfig(broker)
	cfg.DrainInterval = time.Minute
	// The state will's own connection wakes a drain when it connects,
	// which can be after the status: without it, only the signal drains.
	cfg.StateWill = false
	ready := make(chan struct{}, 1)
	p, _, _ := runPublisher(t, cfg, Deps{Outbox: ob, Ready: ready})
	// The online status follows the drain the connection woke: after it,
	// only a signal or the minute's tick drains.
	waitFor(t, 5*time.Second, "connected and drained once", func() bool { return p.Stats().StatusPublished > 0 })
	ob.Add(wire.KindAlert, time.Now(), payload(t, wire.KindAlert, 1, time.Now()))
	time.Sleep(300 * time.Millisecond)
	if n := report(t, col.snapshot(), 1).Unique; n != 0 {
		t.Fatalf("published %d before the signal (the drain interval is a minute)", n)
	}
	ready <- struct{}{}
	waitFor(t, 2*time.Second, "alert after the ready signal", func() bool { return report(t, col.snapshot(), 1).Unique == 1 })
}

// TestStatusHold: the online status and state wait for Deps.StatusHold
// (the daemon's camera's first open), at most StatusHoldMax; the outbox
// drains meanwhile.
func TestStatusHold(t *testing.T) {
	for _, c := range []struct {
		name    string
		release bool
	}{{"released", true}, {"bounded", false}} {
		t.Run(c.name, func(t *testing.T) {
			broker := startMochi(t) // none retained from the other case
			col := newCollector(t, broker, "col-"+c.name, "atm/test/#", false, nil)
			ob := &memOutbox{}
			ob.Add(wire.KindAlert, time.Now(), payload(t, wire.KindAlert, 1, time.Now()))
			hold := make(chan struct{})
			maxWait := time.Hour
			if !c.release {
				maxWait = 700 * time.Millisecond
			}
			start := time.Now()
			runPublisher(t, testConfig(broker), Deps{Outbox: ob, StatusHold: hold, StatusHoldMax: maxWait,
				Status: func() wire.Status { return wire.Status{Health: wire.HealthOK} }})
			waitFor(t, 5*time.Second, "the alert drained while held", func() bool { return len(col.byKind("alert")) == 1 })
			time.Sleep(300 * time.Millisecond)
			if n := len(col.byKind("status")) + len(col.byKind("state")); n != 0 {
				t.Fatalf("%d status/state published while held", n)
			}
			if c.release {
				close(hold)
			}
			waitFor(t, 5*time.Second, "status and state after the hold", func() bool {
				return len(col.byKind("status")) > 0 && len(col.byKind("state")) > 0
			})
			if d := time.Since(start); !c.release && d < maxWait {
				t.Errorf("status after %s, before StatusHoldMax %s", d, maxWait)
			}
		})
	}
}
