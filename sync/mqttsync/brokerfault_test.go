package mqttsync

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/wire"
)

// ackProxy sits between the agent and a real broker on loopback and reads
// the MQTT packets in both directions: it counts the agent's PUBLISHes per
// topic suffix and withholds the broker's PUBACKs while hold is set (they
// are released, late, when it is cleared).
type ackProxy struct {
	t        testing.TB
	ln       net.Listener
	upstream string
	hold     atomic.Bool

	mu        sync.Mutex
	published map[string]int // topic suffix -> PUBLISH packets from the agent
	held      []heldAck
	cond      *sync.Cond
}

type heldAck struct {
	w   io.Writer
	pkt []byte
}

func newAckProxy(t testing.TB, upstream string) *ackProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &ackProxy{t: t, ln: ln, upstream: strings.TrimPrefix(upstream, "tcp://"), published: map[string]int{}}
	p.cond = sync.NewCond(&p.mu)
	go p.serve()
	t.Cleanup(func() { ln.Close() })
	return p
}

func (p *ackProxy) url() string { return "tcp://" + p.ln.Addr().String() }

func (p *ackProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.upstream)
		if err != nil {
			c.Close()
			continue
		}
		var wmu sync.Mutex
		toClient := writerFunc(func(b []byte) (int, error) { wmu.Lock(); defer wmu.Unlock(); return c.Write(b) })
		go p.pipe(c, u, true, nil)
		go p.pipe(u, c, false, toClient)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// readPacket reads one MQTT control packet (fixed header included).
func readPacket(r *bufio.Reader) ([]byte, error) {
	h, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	pkt := []byte{h}
	n, mul := 0, 1
	for {
		b, err := r.ReadByte()
		if err != nil {
			return nil, err
		}
		pkt = append(pkt, b)
		n += int(b&127) * mul
		mul *= 128
		if b&128 == 0 {
			break
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return append(pkt, body...), nil
}

func (p *ackProxy) pipe(from, to net.Conn, fromClient bool, toClient io.Writer) {
	defer from.Close()
	defer to.Close()
	r := bufio.NewReader(from)
	for {
		pkt, err := readPacket(r)
		if err != nil {
			return
		}
		typ := pkt[0] >> 4
		if fromClient && typ == 3 { // PUBLISH
			i := 1
			for pkt[i]&128 != 0 {
				i++
			}
			i++
			tl := int(pkt[i])<<8 | int(pkt[i+1])
			topic := string(pkt[i+2 : i+2+tl])
			p.mu.Lock()
			p.published[topic[strings.LastIndex(topic, "/")+1:]]++
			p.mu.Unlock()
		}
		if !fromClient && typ == 4 && p.hold.Load() { // PUBACK
			p.mu.Lock()
			p.held = append(p.held, heldAck{toClient, pkt})
			p.mu.Unlock()
			continue
		}
		var w io.Writer = to
		if toClient != nil {
			w = toClient
		}
		if _, err := w.Write(pkt); err != nil {
			return
		}
	}
}

// release sends the withheld PUBACKs and stops withholding.
func (p *ackProxy) release() {
	p.hold.Store(false)
	p.mu.Lock()
	held := p.held
	p.held = nil
	p.mu.Unlock()
	for _, h := range held {
		_, _ = h.w.Write(h.pkt)
	}
}

func (p *ackProxy) count(suffix string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.published[suffix]
}

func (p *ackProxy) heldN() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.held)
}

// TestBrokerWithoutPuback: a broker (mosquitto behind a proxy) that takes
// the publishes but sends no PUBACK. Nothing is deleted from the outbox
// without one; the publisher does not re-publish the unacknowledged
// messages on the same connection round after round (paho keeps every copy
// in memory until its PUBACK: without a bound that grows for as long as the
// broker stays so); Stats say how many wait; and the late PUBACKs, once
// they come, ack the outbox messages without a second copy being sent.
func TestBrokerWithoutPuback(t *testing.T) {
	skipShort(t)
	m := newMosquitto(t, "")
	px := newAckProxy(t, m.url("tcp"))
	col := newCollector(t, m.url("tcp"), "dash", "atm/test/#", false, nil)
	ob := &memOutbox{}
	cfg := testConfig(px.url())
	cfg.StateWill = false
	cfg.PublishTimeout = 300 * time.Millisecond
	cfg.MaxInflight = 4
	p, _, _ := runPublisher(t, cfg, Deps{Outbox: ob, Logger: testLogger(t)})
	waitFor(t, 5*time.Second, "connected", func() bool { return p.Stats().Connected })
	time.Sleep(300 * time.Millisecond) // the connect's status went through

	px.hold.Store(true)
	const n = 10
	now := time.Now()
	for i := range n {
		ob.Add(wire.KindAlert, now, payload(t, wire.KindAlert, i, now))
	}
	p.Notify()
	time.Sleep(4 * time.Second) // >10 publish timeouts
	if ob.Len() != n {
		t.Fatalf("%d of %d messages deleted from the outbox without a PUBACK", n-ob.Len(), n)
	}
	sent := px.count("alert")
	t.Logf("without PUBACK for 4 s: %d alert PUBLISH packets for %d messages (max_inflight %d), %d PUBACKs held, stats %+v",
		sent, n, cfg.MaxInflight, px.heldN(), p.Stats())
	if sent > cfg.MaxInflight {
		t.Errorf("%d alert publishes on a connection that acknowledged none: unacknowledged messages are re-published (paho holds every copy), want at most max_inflight %d", sent, cfg.MaxInflight)
	}
	if st := p.Stats(); st.Unacked == 0 || !strings.Contains(st.LastError, "timed out") {
		t.Errorf("stats do not say publishes wait for a PUBACK: %+v", st)
	}

	px.release()
	waitFor(t, 10*time.Second, "outbox drained after the late PUBACKs", func() bool { return ob.Len() == 0 })
	waitFor(t, 5*time.Second, "all received", func() bool { return len(col.byKind("alert")) >= n })
	time.Sleep(300 * time.Millisecond)
	r := report(t, col.snapshot(), n)
	t.Logf("after release: %+v, alert publishes %d, stats %+v", r, px.count("alert"), p.Stats())
	if len(r.Missing) > 0 {
		t.Errorf("missing seqs %v", r.Missing)
	}
	if r.Duplicates > 0 {
		t.Errorf("%d duplicates: a message acknowledged late was sent again on the same connection", r.Duplicates)
	}
	if st := p.Stats(); st.Unacked != 0 {
		t.Errorf("unacked %d after the PUBACKs came", st.Unacked)
	}
}

// bigSummary is a real summary payload listing n identities.
func bigSummary(t testing.TB, n int, ts time.Time) []byte {
	s := wire.Summary{Envelope: wire.NewEnvelope("s1", "atm-1", ts), IdentitiesOmitted: 3}
	s.SchemaVersion = wire.SummarySchemaVersion
	for i := range n {
		w := wire.WindowCounts{H1: 1, H24: n - i, D7: n - i}
		s.Identities = append(s.Identities, wire.IdentityCounts{ID: fmt.Sprintf("p-%010d", i), Visits: w, Masked: w,
			DistinctCards: w, FirstSeen: ts.Add(-time.Hour), LastSeen: ts})
	}
	s.Totals.Visits = wire.WindowCounts{H1: n, H24: n, D7: n}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMosquittoMessageSizeLimit: mosquitto with message_size_limit
// acknowledges a larger QoS 1 publish and drops it (MQTT 3.1.1 has no
// refusal), so the agent deleted a summary nobody ever received. With
// max_message_size at the broker's limit the summary arrives with its least
// active identities moved to identities_omitted, schema-valid; the alert
// after it arrives too.
func TestMosquittoMessageSizeLimit(t *testing.T) {
	skipShort(t)
	const limit = 20000
	m := newMosquitto(t, fmt.Sprintf("message_size_limit %d\n", limit))
	col := newCollector(t, m.url("tcp"), "dash", "atm/test/#", false, nil)
	ob := &memOutbox{}
	now := time.Now()
	big := bigSummary(t, 200, now)
	if len(big) < 3*limit {
		t.Fatalf("summary of %d bytes", len(big))
	}
	ob.Add(wire.KindSummary, now, big)
	ob.Add(wire.KindAlert, now, payload(t, wire.KindAlert, 1, now))
	cfg := testConfig(m.url("tcp"))
	cfg.StateWill = false
	cfg.MaxMessageSize = limit
	pub := withDeviceKey(t, &cfg) // the summary must fit with its signature
	p, _, _ := runPublisher(t, cfg, Deps{Outbox: ob, Logger: testLogger(t)})
	waitFor(t, 10*time.Second, "outbox drained", func() bool { return ob.Len() == 0 })
	waitFor(t, 5*time.Second, "alert", func() bool { return len(col.byKind("alert")) == 1 })
	time.Sleep(500 * time.Millisecond)
	sums := col.byKind("summary")
	t.Logf("summary of %d bytes enqueued; received %d summaries; stats %+v", len(big), len(sums), p.Stats())
	if len(sums) != 1 {
		t.Fatalf("the summary was acknowledged by the broker and deleted from the outbox, but never delivered (%d received)", len(sums))
	}
	var s wire.Summary
	if err := json.Unmarshal(sums[0].Payload, &s); err != nil {
		t.Fatal(err)
	}
	t.Logf("received: %d bytes, %d identities listed, %d omitted", len(sums[0].Payload), len(s.Identities), s.IdentitiesOmitted)
	if len(sums[0].Payload) > limit || len(s.Identities) == 0 || len(s.Identities)+s.IdentitiesOmitted != 203 ||
		s.Identities[0].ID != "p-0000000000" || s.Totals.Visits.H24 != 200 {
		t.Errorf("trimmed summary wrong: %d bytes, %d listed, %d omitted", len(sums[0].Payload), len(s.Identities), s.IdentitiesOmitted)
	}
	validateAgainst(t, compileSchema(t, "summary"), sums[0].Payload)
	verifyAll(t, col, pub, "s1", "atm-1")
	if st := p.Stats(); st.Trimmed != 1 || st.Oversize != 0 || st.Published != 2 {
		t.Errorf("stats %+v", st)
	}
}
