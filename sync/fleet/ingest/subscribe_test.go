package ingest

import (
	"log/slog"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// slowToken is a SUBACK that comes after the connect timeout, as with a
// persistent session whose backlog the broker delivers first.
type slowToken struct{ done chan struct{} }

func (t slowToken) Wait() bool { <-t.done; return true }
func (t slowToken) WaitTimeout(d time.Duration) bool {
	select {
	case <-t.done:
		return true
	case <-time.After(d):
		return false
	}
}
func (t slowToken) Done() <-chan struct{} { return t.done }
func (t slowToken) Error() error          { return nil }

type subClient struct {
	mqtt.Client
	tok slowToken
}

func (c subClient) SubscribeMultiple(map[string]byte, mqtt.MessageHandler) mqtt.Token { return c.tok }

// A subscription answered after the connect timeout: the service said
// "subscribe: timed out" and stayed "not connected" in /healthz for as
// long as it ingested the backlog. It now waits on and is connected once
// the answer comes.
func TestLateSubscribeAnswerConnects(t *testing.T) {
	in := &Ingester{log: slog.New(slog.DiscardHandler), now: time.Now, cfg: Config{ConnectTimeout: 50 * time.Millisecond}}
	tok := slowToken{done: make(chan struct{})}
	in.onConnect(subClient{tok: tok})
	time.Sleep(200 * time.Millisecond)
	if in.Stats().Connected {
		t.Fatal("connected before the subscription was answered")
	}
	close(tok.done)
	deadline := time.Now().Add(5 * time.Second)
	for !in.Stats().Connected {
		if time.Now().After(deadline) {
			t.Fatalf("not connected after the late answer: %+v", in.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
