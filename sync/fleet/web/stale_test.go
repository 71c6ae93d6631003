package web

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/fleet/storage"
)

// An agent online on a real broker whose messages then stop, without a
// Last Will: past web.stale_after (5 min) since the last message of any
// kind the fleet page, the device page and the API say stale; a summary
// counts as being heard from; a device that said stopped is never stale.
// The web server's clock is moved, the broker and the ingest are real.
func TestStaleDevice(t *testing.T) {
	m := fleettest.StartMosquitto(t, "")
	addr := fmt.Sprintf("127.0.0.1:%d", fleettest.FreePort(t))
	svc := startService(t, filepath.Join(t.TempDir(), "fleet.db"), m.URL(), addr)
	t.Cleanup(func() { svc.stop(t) })
	var mu sync.Mutex
	clock := time.Now()
	svc.srv.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	set := func(at time.Time) { mu.Lock(); clock = at; mu.Unlock() }

	a := fleettest.StartAgent(t, m.URL(), browserPrefix, "lyon-07", "atm-0042")
	waitState(t, svc.st, "lyon-07", "atm-0042", "online")
	ana := newClient(t, "http://"+addr)
	ana.login("ana", "correct horse")
	heard := func() time.Time {
		d, err := svc.st.Device(context.Background(), "lyon-07", "atm-0042")
		if err != nil {
			t.Fatal(err)
		}
		return lastHeard(d)
	}
	expect := func(when, state string) {
		t.Helper()
		_, fleet := ana.get("/")
		_, notOnline := ana.get("/?state=notonline")
		_, dev := ana.get("/devices/lyon-07/atm-0042")
		_, api := ana.json("GET", "/api/v1/devices/lyon-07/atm-0042", "", "")
		_, listBody := ana.get("/api/v1/devices")
		var list []map[string]any
		if err := json.Unmarshal([]byte(listBody), &list); err != nil {
			t.Fatalf("%s: device list: %v: %s", when, err, listBody)
		}
		span := fmt.Sprintf(`<span class="state %[1]s">%[1]s</span>`, state)
		stale := state == StaleState
		if !strings.Contains(fleet, span) || !strings.Contains(dev, span) {
			t.Errorf("%s: the fleet or device page lacks %s", when, span)
		}
		if got := strings.Contains(notOnline, "atm-0042"); got != (state != "online") {
			t.Errorf("%s: listed as not online: %v", when, got)
		}
		if api["stale"] != stale || api["state"] != map[bool]string{true: "online", false: state}[stale] || api["last_heard"] == nil {
			t.Errorf("%s: API stale %v, state %v, last_heard %v; want %v", when, api["stale"], api["state"], api["last_heard"], stale)
		}
		if len(list) != 1 || list[0]["stale"] != stale {
			t.Errorf("%s: the device list says %v", when, list)
		}
	}
	t0 := heard()
	set(t0.Add(DefaultStaleAfter))
	expect("5 min after its status", "online")
	set(t0.Add(DefaultStaleAfter + time.Second))
	expect("5 min 1 s after its status", StaleState)

	// Any message is being heard from: a summary.
	time.Sleep(10 * time.Millisecond)
	a.Summary(t, 3, "p-1")
	fleettest.WaitFor(t, 10*time.Second, "summary ingested", func() bool { return svc.in.Stats().Applied == 1 })
	t1 := heard()
	if !t1.After(t0) {
		t.Fatalf("last heard %v, not after the status's %v", t1, t0)
	}
	set(t1.Add(DefaultStaleAfter))
	expect("5 min after the summary", "online")
	set(t1.Add(DefaultStaleAfter + time.Second))
	expect("5 min 1 s after the summary", StaleState)

	// Stopped (or offline) says what it is, never stale.
	a.Stop()
	waitState(t, svc.st, "lyon-07", "atm-0042", "stopped")
	set(heard().Add(24 * time.Hour))
	ana.login("ana", "correct horse") // the session of the day before has expired
	expect("a day after stopping", "stopped")
}

// lastHeard is the later of the last status and the last summary or alert.
func TestLastHeard(t *testing.T) {
	t0 := time.Unix(1000, 0)
	for _, d := range []storage.Device{{StatusReceived: t0, LastReceived: t0.Add(-time.Hour)}, {StatusReceived: t0.Add(-time.Hour), LastReceived: t0}} {
		if got := lastHeard(d); !got.Equal(t0) {
			t.Errorf("lastHeard(%v, %v) = %v", d.StatusReceived, d.LastReceived, got)
		}
	}
}
