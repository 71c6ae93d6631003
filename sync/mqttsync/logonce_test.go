package mqttsync

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A broker that refuses connections: the retries (every 200 ms here) fail
// with two messages each (the broker's, then the attempt's), which alternated
// and were both logged on every retry. Now the broker's is logged once, and the
// broker URL's password never.
func TestConnectErrorsLoggedOncePerState(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens: connection refused
	cfg := testConfig(fmt.Sprintf("tcp://u:Pw0rdSecret@%s", addr))
	cfg.ReconnectBackoffMax = 200 * time.Millisecond
	var buf lockedBuf
	p, err := New(cfg, Deps{Outbox: &memOutbox{}, Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	time.Sleep(2 * time.Second) // about ten retries
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	log := buf.String()
	warns := strings.Count(log, "level=WARN msg=mqtt")
	if strings.Contains(log, "Pw0rdSecret") {
		t.Errorf("the broker password is in the log:\n%s", log)
	}
	if warns != 1 {
		t.Errorf("%d connection warnings in 2 s of retries; want one:\n%s", warns, log)
	}
	t.Logf("%d warnings:\n%s", warns, log)
}

// A broker that takes the connection and refuses the credentials (CONNACK
// return code 5): paho reports no failed dial, only the failed attempt.
// That was recorded but never logged: a wrong password was invisible in the
// journal while the outbox grew.
func TestRefusedCredentialsLogged(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 512)
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Read(buf); err != nil { // the CONNECT
					return
				}
				_, _ = c.Write([]byte{0x20, 0x02, 0x00, 0x05}) // CONNACK: not authorized
			}()
		}
	}()
	cfg := testConfig(fmt.Sprintf("tcp://u:Pw0rdSecret@%s", l.Addr()))
	cfg.ReconnectBackoffMax = 200 * time.Millisecond
	var buf lockedBuf
	p, err := New(cfg, Deps{Outbox: &memOutbox{}, Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && !strings.Contains(buf.String(), "level=WARN msg=mqtt") {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second) // more retries: still one line per state
	cancel()
	<-done
	log := buf.String()
	if !strings.Contains(log, "connect tcp://") || !strings.Contains(strings.ToLower(log), "not authori") {
		t.Fatalf("refused credentials not logged with the broker and the reason:\n%s", log)
	}
	if strings.Contains(log, "Pw0rdSecret") {
		t.Errorf("the broker password is in the log:\n%s", log)
	}
	if n := strings.Count(log, "level=WARN msg=mqtt"); n != 1 {
		t.Errorf("%d connection warnings; want one:\n%s", n, log)
	}
	if e := p.Stats().LastError; !strings.Contains(strings.ToLower(e), "not authori") {
		t.Errorf("Stats().LastError = %q", e)
	}
}
