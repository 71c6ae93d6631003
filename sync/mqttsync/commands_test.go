package mqttsync

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/wire"
)

// lockedBuffer is a log sink safe for paho's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestMosquittoSignedCommands: through Debian's mosquitto (with the
// documented message_size_limit), an attacker who may publish on the
// command topic gets nothing purged: unsigned, wrongly signed, tampered,
// stale, future, replayed (also after a restart) and oversized commands
// are all refused, each reason logged once; signed fresh commands run. A
// retained signed command runs once (live subscribers get it without the
// retain flag) and is refused when the broker hands it out again as
// retained after the restart.
func TestMosquittoSignedCommands(t *testing.T) {
	skipShort(t)
	m := newMosquitto(t, "message_size_limit 16384\n")
	broker := m.url("tcp")
	cfg := testConfig(broker)
	sg := newSigner(t)
	sg.enable(t, &cfg)
	h := &fakeCommands{}
	logs := &lockedBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	p, cancel, done := runPublisher(t, cfg, Deps{Outbox: &memOutbox{}, Commands: h, Logger: log})
	col := newCollector(t, broker, "dash", "atm/test/s1/atm-1/reply", false, nil)
	waitFor(t, 5*time.Second, "connected", func() bool { return p.Stats().Connects > 0 })
	time.Sleep(200 * time.Millisecond) // the command subscription is in place

	const topic = "atm/test/s1/atm-1/cmd"
	send := func(b []byte, retained bool) {
		t.Helper()
		if tok := col.c.Publish(topic, 1, retained, b); !tok.WaitTimeout(2*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	now := time.Now()
	purge := func(id, target string, ts time.Time) []byte {
		return sg.payload(id, "purge_identity", "atm-1", fmt.Sprintf(`{"id":%q}`, target), ts)
	}
	attacker := newSigner(t)
	good := sg.sign(t, purge("c-good", "p-good", now))
	var goodEnv wire.SignedCommand
	json.Unmarshal(good, &goodEnv)
	tampered, _ := json.Marshal(wire.SignedCommand{SchemaVersion: 2, Sig: goodEnv.Sig,
		Payload: base64.StdEncoding.EncodeToString(purge("c-good", "p-evil", now))})
	padded := append(sg.sign(t, purge("c-big", "p-big", now)), bytes.Repeat([]byte(" "), 9000)...)  // over the agent's 8 KiB, under the broker's 16 KiB
	huge := append(sg.sign(t, purge("c-huge", "p-huge", now)), bytes.Repeat([]byte(" "), 20000)...) // over the broker's limit: never delivered

	for i := 0; i < 5; i++ {
		send([]byte(fmt.Sprintf(`{"schema_version":1,"message_id":"c-v1-%d","device":"atm-1","site":"s1","ts":%q,"command":"purge_identity","args":{"id":"p-unsigned"}}`, i, now.UTC().Format(time.RFC3339))), false)
	}
	send(purge("c-bare", "p-bare", now), false) // a v2 payload without its envelope
	send(attacker.sign(t, purge("c-wrongkey", "p-wrongkey", now)), false)
	send(tampered, false)
	send(sg.sign(t, purge("c-stale", "p-stale", now.Add(-6*time.Minute))), false)
	send(sg.sign(t, purge("c-2001", "p-2001", time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC))), false)
	send(sg.sign(t, purge("c-future", "p-future", now.Add(6*time.Minute))), false)
	send(padded, false)
	send(huge, false)
	send(sg.sign(t, purge("c-retained", "p-retained", now)), true)
	send(good, false)
	waitFor(t, 5*time.Second, "the good command", func() bool { return len(h.snapshot()) == 2 })
	send(good, false)                                        // replay of the exact message
	send(sg.sign(t, purge("c-good", "p-other", now)), false) // a new command reusing the id
	waitFor(t, 5*time.Second, "replays refused", func() bool { return p.Stats().CommandsRejected[rejReplayed] == 2 })

	// Restart the agent's publisher: the ids it accepted are remembered.
	cancel()
	<-done
	done <- nil
	p2, _, _ := runPublisher(t, cfg, Deps{Outbox: &memOutbox{}, Commands: h, Logger: log})
	waitFor(t, 5*time.Second, "reconnected", func() bool { return p2.Stats().Connects > 0 })
	time.Sleep(200 * time.Millisecond)
	send(good, false)
	send(sg.sign(t, purge("c-after", "p-after", time.Now())), false)
	send(sg.sign(t, sg.payload("c-ping", "ping", "atm-1", "", time.Now())), false)
	waitFor(t, 5*time.Second, "commands after restart", func() bool { return p2.Stats().CommandsAccepted == 2 })
	waitFor(t, 5*time.Second, "the replay after restart", func() bool { return p2.Stats().CommandsRejected[rejReplayed] == 1 })
	time.Sleep(300 * time.Millisecond)

	purged := h.snapshot()
	slices.Sort(purged)
	if got := fmt.Sprint(purged); got != "[p-after p-good p-retained]" {
		t.Errorf("purged %s, want [p-after p-good p-retained]", got)
	}
	st1, st2 := p.Stats(), p2.Stats()
	want := map[string]uint64{rejUnsigned: 6, rejSignature: 2, rejStale: 3, rejOversize: 1, rejReplayed: 2}
	for r, n := range want {
		if st1.CommandsRejected[r] != n {
			t.Errorf("before restart: %d refused as %s, want %d (all: %v)", st1.CommandsRejected[r], r, n, st1.CommandsRejected)
		}
	}
	if st1.CommandsAccepted != 2 || st2.CommandsRejected[rejRetained] != 1 {
		t.Errorf("accepted before restart %d, want 2; retained refused after restart %d, want 1", st1.CommandsAccepted, st2.CommandsRejected[rejRetained])
	}
	t.Logf("before restart: accepted %d, refused %v; after: accepted %d, refused %v", st1.CommandsAccepted, st1.CommandsRejected, st2.CommandsAccepted, st2.CommandsRejected)

	// Replies: only to signed commands, never to a replay.
	replies := map[string][]wire.Reply{}
	for _, r := range col.snapshot() {
		var rep wire.Reply
		if err := json.Unmarshal(r.Payload, &rep); err != nil {
			t.Fatal(err)
		}
		replies[rep.CorrelationID] = append(replies[rep.CorrelationID], rep)
	}
	for id, ok := range map[string]bool{"c-good": true, "c-after": true, "c-retained": true, "c-ping": true, "c-future": false} {
		if rs := replies[id]; len(rs) != 1 || rs[0].OK != ok {
			t.Errorf("replies to %s: %+v, want one with ok=%v", id, rs, ok)
		}
	}
	// Unauthenticated, and signed but older than the window (what a
	// captured command replayed after its id left the seen set looks
	// like): no reply.
	for _, id := range []string{"c-v1-0", "c-bare", "c-wrongkey", "c-big", "c-huge", "c-stale", "c-2001"} {
		if len(replies[id]) != 0 {
			t.Errorf("reply to %s: %+v, want none", id, replies[id])
		}
	}
	if e := replies["c-future"]; len(e) == 1 && !strings.Contains(e[0].Error, "max skew 5m0s") {
		t.Errorf("stale reply %q does not say why", e[0].Error)
	}

	// Five unsigned commands, one log line.
	out := logs.String()
	if n := strings.Count(out, "reason=unsigned"); n != 1 {
		t.Errorf("%d log lines for 6 unsigned commands, want 1:\n%s", n, out)
	}
	for _, r := range []string{rejSignature, rejStale, rejOversize, rejRetained, rejReplayed} {
		if !strings.Contains(out, "reason="+r) {
			t.Errorf("no log line for reason %s", r)
		}
	}
	// The seen file holds the accepted ids, nothing else.
	b, err := os.ReadFile(cfg.Commands.SeenFile)
	if err != nil {
		t.Fatal(err)
	}
	var f seenFile
	if err := json.Unmarshal(b, &f); err != nil || len(f.IDs) != 4 {
		t.Errorf("seen file %s: %v", b, err)
	}
	if matches, _ := filepath.Glob(cfg.Commands.SeenFile + ".tmp-*"); len(matches) != 0 {
		t.Errorf("temp files left: %v", matches)
	}
}
