package daemon

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestSDNotify(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		name := filepath.Join(t.TempDir(), "notify.sock")
		env := name
		if abstract {
			name = fmt.Sprintf("\x00atm-agent-test-%d", os.Getpid())
			env = "@" + name[1:]
		}
		c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv("NOTIFY_SOCKET", env)
		if err := sdNotify("READY=1"); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Read(buf)
		c.Close()
		if err != nil || string(buf[:n]) != "READY=1" {
			t.Fatalf("abstract=%v: got %q, %v", abstract, buf[:n], err)
		}
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if err := sdNotify("READY=1"); err != nil {
		t.Fatalf("without systemd: %v", err)
	}
	t.Setenv("WATCHDOG_USEC", "10000000")
	t.Setenv("WATCHDOG_PID", fmt.Sprint(os.Getpid()))
	if d := watchdogInterval(); d != 5*time.Second {
		t.Fatalf("watchdog interval %v", d)
	}
	t.Setenv("WATCHDOG_PID", "1")
	if d := watchdogInterval(); d != 0 {
		t.Fatalf("watchdog for another pid: %v", d)
	}
}
