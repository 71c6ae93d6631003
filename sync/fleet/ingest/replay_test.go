package ingest

import (
	"crypto/ed25519"
	"encoding/json"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/wire"
)

// cutter forwards TCP connections to a broker until Cut, which drops them
// without a DISCONNECT (an agent killed, or its network gone: the broker
// publishes its Last Will) and accepts no more.
type cutter struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func startCutter(t *testing.T, broker string) *cutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &cutter{ln: ln}
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return // Cut
			}
			out, err := net.Dial("tcp", strings.TrimPrefix(broker, "tcp://"))
			if err != nil {
				in.Close()
				continue
			}
			c.mu.Lock()
			c.conns = append(c.conns, in, out)
			c.mu.Unlock()
			go func() { _, _ = io.Copy(out, in); out.Close() }()
			go func() { _, _ = io.Copy(in, out); in.Close() }()
		}
	}()
	t.Cleanup(c.Cut)
	return c
}

func (c *cutter) URL() string { return "tcp://" + c.ln.Addr().String() }

func (c *cutter) Cut() {
	c.ln.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, conn := range c.conns {
		conn.Close()
	}
	c.conns = nil
}

// TestIngestStatusReplay: a signed agent through mosquitto into bbolt, its
// key pinned. Its statuses are captured as any client with publish rights
// on its topics can. The agent's connection dies (its will makes it
// offline); its captured online status, republished retained, leaves it
// offline. A new run of the agent comes online; its earlier run's will,
// and online status (saved with a trailing newline), republished, leave it
// online with its own status, and neither is a reject.
func TestIngestStatusReplay(t *testing.T) {
	m := fleettest.StartMosquitto(t, "")
	st := openBolt(t, filepath.Join(t.TempDir(), "fleet.db"))
	defer st.Close()
	_, key, _ := ed25519.GenerateKey(nil)
	pin(t, st, "lyon-07", "atm-1", key.Public().(ed25519.PublicKey))
	in := start(t, m.URL(), st, "fleet-replay", "")
	defer in.stop(t)

	topic := prefix + "/lyon-07/atm-1/status"
	var mu sync.Mutex
	captured := map[wire.State][]byte{}
	sub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(m.URL()).SetClientID("replayer"))
	if tok := sub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber: %v", tok.Error())
	}
	defer sub.Disconnect(50)
	if tok := sub.Subscribe(topic, 1, func(_ mqtt.Client, msg mqtt.Message) {
		var s wire.Status
		if json.Unmarshal(msg.Payload(), &s) == nil {
			mu.Lock()
			captured[s.State] = msg.Payload()
			mu.Unlock()
		}
	}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	capturedOf := func(s wire.State) []byte {
		mu.Lock()
		defer mu.Unlock()
		return captured[s]
	}
	// replay republishes a captured status, retained, and waits until the
	// fleet has taken it in.
	replay := func(payload []byte) {
		t.Helper()
		n := in.Stats().Statuses
		fleettest.Publish(t, m.URL(), topic, payload, true)
		fleettest.WaitFor(t, 10*time.Second, "the replayed status taken in", func() bool { return in.Stats().Statuses > n })
	}

	cut := startCutter(t, m.URL())
	run1 := fleettest.StartAgent(t, cut.URL(), prefix, "lyon-07", "atm-1", fleettest.Signed(key))
	fleettest.WaitFor(t, 10*time.Second, "run 1 online, captured", func() bool {
		return device(t, st, "lyon-07", "atm-1").State() == "online" && capturedOf(wire.StateOnline) != nil
	})
	cut.Cut()
	fleettest.WaitFor(t, 10*time.Second, "run 1's will: offline", func() bool {
		return device(t, st, "lyon-07", "atm-1").State() == "offline" && capturedOf(wire.StateOffline) != nil
	})
	run1.Stop()
	oldOnline, oldWill := capturedOf(wire.StateOnline), capturedOf(wire.StateOffline)
	replay(oldOnline)
	if d := device(t, st, "lyon-07", "atm-1"); d.State() != "offline" || !d.StatusAuthenticated {
		t.Fatalf("run 1's online status replayed after its will: %s (authenticated %v), want offline", d.State(), d.StatusAuthenticated)
	}
	if s := in.Stats(); s.Unauthenticated != 0 || s.Rejected != 0 {
		t.Errorf("a genuine replayed status is refused as a forgery: %+v", s)
	}

	fleettest.StartAgent(t, m.URL(), prefix, "lyon-07", "atm-1", fleettest.Signed(key))
	fleettest.WaitFor(t, 10*time.Second, "run 2 online", func() bool { return device(t, st, "lyon-07", "atm-1").State() == "online" })
	run2 := device(t, st, "lyon-07", "atm-1").Status
	replay(oldWill)
	replay(append(slices.Clone(oldOnline), '\n')) // as saved by mosquitto_sub > file: verifies, still old
	d := device(t, st, "lyon-07", "atm-1")
	if d.State() != "online" || !d.Status.StartedAt.Equal(run2.StartedAt) {
		t.Errorf("run 1's will and online status replayed on run 2: %s of the run started %s, want online of run 2 (started %s)",
			d.State(), d.Status.StartedAt, run2.StartedAt)
	}
	if s := in.Stats(); s.Rejected != 0 {
		t.Errorf("a genuine replayed status (one with a trailing newline) is refused: %+v", s)
	}
}
