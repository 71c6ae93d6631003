package service

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/fleettest"
)

// A start waits for a PostgreSQL that does not answer yet (a server that
// starts after the service, as at boot) instead of exiting into a restart
// loop that the unit's start limit ends; a server that answers and
// refuses (no such database) is not waited for.
func TestOpenWaitsForPostgres(t *testing.T) {
	pg := fleettest.StartPostgres(t)
	dsn := pg.NewDatabase(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx := context.Background()

	// The database behind a port that accepts nothing for a while: a
	// forwarder starts listening there 1.5 s after the open begins.
	port := fleettest.FreePort(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	target := u.Host
	u.Host = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	go func() {
		time.Sleep(1500 * time.Millisecond)
		ln, err := net.Listen("tcp", u.Host)
		if err != nil {
			t.Error(err)
			return
		}
		t.Cleanup(func() { ln.Close() })
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go forward(c, target)
		}
	}()
	start := time.Now()
	st, err := openPostgres(ctx, u.String(), log)
	if err != nil {
		t.Fatalf("open while the server came up after 1.5 s: %v", err)
	}
	st.Close()
	if d := time.Since(start); d < 1500*time.Millisecond {
		t.Fatalf("opened after %v, before the server answered", d)
	}
	t.Logf("opened after %v", time.Since(start).Round(time.Millisecond))

	// No such database: the server answers and refuses, at once.
	u2, _ := url.Parse(dsn)
	u2.Path = "/no_such_database"
	start = time.Now()
	if _, err := openPostgres(ctx, u2.String(), log); err == nil {
		t.Fatal("opened a database that does not exist")
	} else if d := time.Since(start); d > 2*time.Second {
		t.Errorf("a refusal was waited on for %v: %v", d, err)
	}

	// Nobody ever answers: given up after pgWait, saying so.
	defer func(w time.Duration) { pgWait = w }(pgWait)
	pgWait = time.Second
	u3, _ := url.Parse(dsn)
	u3.Host = net.JoinHostPort("127.0.0.1", strconv.Itoa(fleettest.FreePort(t)))
	start = time.Now()
	if _, err := openPostgres(ctx, u3.String(), log); err == nil || !pgUnreachable(err) {
		t.Fatalf("a server that never answers: %v", err)
	} else if d := time.Since(start); d < 500*time.Millisecond || d > 5*time.Second {
		t.Errorf("gave up after %v with pgWait 1 s: %v", d, err)
	} else {
		t.Logf("gave up: %v", err)
	}
}

// forward copies c to and from a new connection to addr.
func forward(c net.Conn, addr string) {
	defer c.Close()
	d, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer d.Close()
	go io.Copy(d, c)
	io.Copy(c, d)
}
