package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/crypto/bcrypt"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/mqttsync"
	"github.com/periocular/atm-agent/sync/wire"
)

// TestLoad is the load benchmark of docs/benchmarks.md ("Fleet service"). It
// runs only when ATM_FLEET_LOAD is a duration, e.g.
//
//	ATM_FLEET_LOAD=2m go test ./cmd/atm-fleet -run Load -v -timeout 20m
//
// ATM_FLEET_LOAD_AGENTS (default 2000) simulated agents publish a summary
// every 5 s each (spread evenly) and, at random (1 in 50 summaries), an
// alert, QoS 1, into a real mosquitto; ten of them skip one seq (injected
// gaps). The service runs as the real binary in its own process
// (ATM_FLEET_LOAD_STORE=bolt, default) or as two processes in one shared
// subscription group on one PostgreSQL (=postgres2). Reported: messages
// published and ingested, ingest rate, gaps and duplicates, p50/p99 render
// time of the fleet and alerts pages during the load, peak RSS per process.
func TestLoad(t *testing.T) {
	dur, err := time.ParseDuration(os.Getenv("ATM_FLEET_LOAD"))
	if err != nil {
		t.Skip("load benchmark: set ATM_FLEET_LOAD=2m to run it")
	}
	nAgents := 2000
	if v, err := strconv.Atoi(os.Getenv("ATM_FLEET_LOAD_AGENTS")); err == nil && v > 0 {
		nAgents = v
	}
	mode := os.Getenv("ATM_FLEET_LOAD_STORE")
	if mode == "" {
		mode = "bolt"
	}
	m := fleettest.StartMosquitto(t, "max_inflight_messages 100\nmax_queued_messages 1000000\n")
	dir := t.TempDir()
	bin := buildFleet(t, dir)
	h, _ := bcrypt.GenerateFromPassword([]byte("correct horse"), bcrypt.MinCost)
	users := filepath.Join(dir, "users.yaml")
	os.WriteFile(users, []byte(fmt.Sprintf("users:\n  - {name: ana, role: analyst, password_hash: %q}\n", h)), 0o600)
	key := filepath.Join(dir, "session.key")
	os.WriteFile(key, []byte(strings.Repeat("k", 48)), 0o600)

	var storeConf []string
	switch mode {
	case "bolt":
		storeConf = []string{fmt.Sprintf("{driver: bolt, path: %s}", filepath.Join(dir, "fleet.db"))}
	case "postgres2":
		pg := fleettest.StartPostgres(t)
		dsn := pg.NewDatabase(t)
		storeConf = []string{fmt.Sprintf("{driver: postgres, dsn: %q}", dsn), fmt.Sprintf("{driver: postgres, dsn: %q}", dsn)}
	default:
		t.Fatalf("ATM_FLEET_LOAD_STORE=%q: want bolt or postgres2", mode)
	}
	type inst struct {
		cmd  *exec.Cmd
		base string
		cl   *http.Client
		csrf string
		log  *bytes.Buffer
	}
	var insts []*inst
	for i, sc := range storeConf {
		port := fleettest.FreePort(t)
		group := ""
		if len(storeConf) > 1 {
			group = "fleet"
		}
		conf := fmt.Sprintf("log_level: warn\nstore: %s\nmqtt: {brokers: [%q], prefix: atm/load, client_id: fleet-load-%d, shared_group: %q}\nweb: {listen: \"127.0.0.1:%d\", users_file: %s, session_key_file: %s}\n",
			sc, m.URL(), i, group, port, users, key)
		cp := filepath.Join(dir, fmt.Sprintf("config-%d.yaml", i))
		os.WriteFile(cp, []byte(conf), 0o600)
		in := &inst{base: fmt.Sprintf("http://127.0.0.1:%d", port), log: new(bytes.Buffer)}
		in.cmd = exec.Command(bin, "run", "--config", cp)
		in.cmd.Stdout, in.cmd.Stderr = in.log, in.log
		if err := in.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { in.cmd.Process.Signal(os.Interrupt); in.cmd.Wait() })
		insts = append(insts, in)
	}
	applied := func(in *inst) (uint64, bool) {
		r, err := http.Get(in.base + "/healthz")
		if err != nil {
			return 0, false
		}
		defer r.Body.Close()
		var h struct {
			Ingest struct {
				Connected                     bool
				Applied, Duplicates, Rejected uint64
			}
		}
		json.NewDecoder(r.Body).Decode(&h)
		return h.Ingest.Applied, h.Ingest.Connected
	}
	for _, in := range insts {
		fleettest.WaitFor(t, 20*time.Second, "service up", func() bool { _, ok := applied(in); return ok })
		jar, _ := cookiejar.New(nil)
		in.cl = &http.Client{Jar: jar, Timeout: 30 * time.Second}
		r, _ := in.cl.Get(in.base + "/login")
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		tok := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindSubmatch(b)
		r, err := in.cl.PostForm(in.base+"/login", url.Values{"csrf": {string(tok[1])}, "user": {"ana"}, "password": {"correct horse"}})
		if err != nil || r.StatusCode != 200 {
			t.Fatalf("login: %v %v", err, r.Status)
		}
		r.Body.Close()
	}

	// The load generator: 20 connections, each owns nAgents/20 devices.
	const conns = 20
	var published, alerts atomic.Uint64
	injected := map[string]bool{}
	for i := 0; i < 10 && i < nAgents; i++ {
		injected[fmt.Sprintf("atm-%04d", i*nAgents/10)] = true
	}
	ctx, stop := context.WithTimeout(context.Background(), dur)
	defer stop()
	var wg sync.WaitGroup
	start := time.Now()
	for c := 0; c < conns; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(m.URL()).SetClientID(fmt.Sprintf("load-%d", c)).SetCleanSession(true))
			if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Errorf("load conn %d: %v", c, tok.Error())
				return
			}
			defer cl.Disconnect(500)
			var devs []string
			for d := c; d < nAgents; d += conns {
				devs = append(devs, fmt.Sprintf("atm-%04d", d))
			}
			seq := make([]uint64, len(devs))
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			for i, d := range devs {
				st := wire.Status{Envelope: wire.NewEnvelope(siteOf(d), d, time.Now()), State: wire.StateOnline,
					Cameras: []wire.CameraHealth{{Name: "front", OK: true}}, Outbox: &wire.OutboxStats{}}
				st.MessageID = "st-" + d
				b, _ := json.Marshal(st)
				cl.Publish("atm/load/"+siteOf(d)+"/"+d+"/status", 1, true, b).WaitTimeout(5 * time.Second)
				_ = i
			}
			tick := time.NewTicker(5 * time.Second / time.Duration(len(devs)))
			defer tick.Stop()
			var toks []mqtt.Token
			for i := 0; ; i = (i + 1) % len(devs) {
				select {
				case <-ctx.Done():
					for _, tk := range toks {
						tk.WaitTimeout(10 * time.Second)
					}
					return
				case <-tick.C:
				}
				d := devs[i]
				if injected[d] && seq[i] == 1 {
					seq[i]++ // injected gap: seq 2 never sent
				}
				send := func(kind string, v any, created time.Time) {
					seq[i]++
					msgID := mqttsync.MessageID(d, visit.OutboxMessage{Seq: seq[i], Created: created, Topic: kind})
					b, _ := json.Marshal(v)
					b, _ = wire.Finalize(b, seq[i], msgID, false)
					toks = append(toks, cl.Publish("atm/load/"+siteOf(d)+"/"+d+"/"+kind, 1, false, b))
					published.Add(1)
				}
				now := time.Now().UTC()
				s := wire.Summary{Envelope: wire.NewEnvelope(siteOf(d), d, now), Identities: []wire.IdentityCounts{
					{ID: "p-" + d[4:] + "a", Visits: wire.WindowCounts{H1: 1, H24: 3, D7: 9}, FirstSeen: now.Add(-time.Hour), LastSeen: now},
					{ID: "p-" + d[4:] + "b", Visits: wire.WindowCounts{H1: 2, H24: 4, D7: 5}, FirstSeen: now.Add(-time.Hour), LastSeen: now}},
					Totals: wire.Totals{Visits: wire.WindowCounts{H1: 3, H24: 7, D7: 14}}}
				send(wire.KindSummary, s, now)
				if rng.IntN(50) == 0 {
					a := wire.NewAlert(wire.NewEnvelope(siteOf(d), d, now), visit.Alert{ID: fmt.Sprintf("a-%s-%d", d, seq[i]+1),
						Rule: "many-visits-24h", Kind: "visits", IdentityID: "p-" + d[4:] + "a", Window: "24h0m0s",
						WindowStart: now.Add(-24 * time.Hour), Count: 6, Threshold: 5, FirstSeen: now.Add(-time.Hour), LastSeen: now, Raised: now})
					send(wire.KindAlert, a, now.Add(time.Nanosecond))
					alerts.Add(1)
				}
				if len(toks) >= 200 {
					for _, tk := range toks {
						tk.WaitTimeout(10 * time.Second)
					}
					toks = toks[:0]
				}
			}
		}(c)
	}
	// Page renders during the load, alternating instances.
	var lat = map[string][]time.Duration{}
	var latMu sync.Mutex
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			in := insts[i%len(insts)]
			for _, p := range []string{"/", "/alerts"} {
				t0 := time.Now()
				r, err := in.cl.Get(in.base + p)
				if err == nil {
					io.Copy(io.Discard, r.Body)
					r.Body.Close()
				}
				latMu.Lock()
				lat[p] = append(lat[p], time.Since(t0))
				latMu.Unlock()
			}
			time.Sleep(500 * time.Millisecond)
		}
	}()
	wg.Wait()
	sendDone := time.Since(start)
	total := func() (n uint64) {
		for _, in := range insts {
			a, _ := applied(in)
			n += a
		}
		return n
	}
	fleettest.WaitFor(t, 2*time.Minute, "every published message ingested", func() bool { return total() >= published.Load() })
	ingestDone := time.Since(start)
	time.Sleep(time.Second)

	// Every instance must serve the same complete fleet.
	var gaps, dups uint64
	var gapDevs []string
	for k, in := range insts {
		r, err := in.cl.Get(in.base + "/api/v1/devices")
		if err != nil {
			t.Fatal(err)
		}
		var devs []struct {
			Device           string
			State            string
			Gaps, Duplicates uint64
			MaxSeq           uint64 `json:"max_seq"`
		}
		json.NewDecoder(r.Body).Decode(&devs)
		r.Body.Close()
		if len(devs) != nAgents {
			t.Errorf("instance %d serves %d devices, want %d", k, len(devs), nAgents)
		}
		gaps, dups, gapDevs = 0, 0, nil
		for _, d := range devs {
			gaps += d.Gaps
			dups += d.Duplicates
			if d.Gaps > 0 {
				gapDevs = append(gapDevs, d.Device)
			}
			if d.State != "online" {
				t.Errorf("instance %d: %s is %s", k, d.Device, d.State)
			}
		}
		slices.Sort(gapDevs)
		var want []string
		for d, ok := range injected {
			if ok {
				want = append(want, d)
			}
		}
		slices.Sort(want)
		if !slices.Equal(gapDevs, want) || gaps != uint64(len(want)) {
			t.Errorf("instance %d: gaps %d on %v, want 1 each on %v", k, gaps, gapDevs, want)
		}
	}
	pct := func(ds []time.Duration, p float64) time.Duration {
		if len(ds) == 0 {
			return 0
		}
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[min(len(s)-1, int(float64(len(s))*p))]
	}
	t.Logf("mode %s: %d agents, %v of load: published %d (%d alerts), ingested %d, duplicates %d, gaps %d (injected %d)",
		mode, nAgents, dur, published.Load(), alerts.Load(), total(), dups, gaps, len(injected))
	t.Logf("rate: %.0f msg/s offered; all ingested %.1f s after the first message (%.1f s after the last was sent)",
		float64(published.Load())/sendDone.Seconds(), ingestDone.Seconds(), (ingestDone - sendDone).Seconds())
	for _, p := range []string{"/", "/alerts"} {
		t.Logf("page %s: %d renders during the load, p50 %v, p99 %v", p, len(lat[p]), pct(lat[p], 0.5).Round(time.Millisecond), pct(lat[p], 0.99).Round(time.Millisecond))
	}
	for k, in := range insts {
		a, _ := applied(in)
		t.Logf("instance %d: applied %d, peak RSS %s", k, a, vmHWM(in.cmd.Process.Pid))
	}
	if total() != published.Load() {
		t.Errorf("ingested %d of %d", total(), published.Load())
	}
}

func siteOf(device string) string {
	n, _ := strconv.Atoi(device[4:])
	return fmt.Sprintf("site-%02d", n%40)
}

func vmHWM(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			return strings.TrimSpace(strings.TrimPrefix(l, "VmHWM:"))
		}
	}
	return "?"
}

// buildFleet builds this command into dir: the real binary, for the tests
// that run it as a process of its own.
func buildFleet(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "atm-fleet")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}
