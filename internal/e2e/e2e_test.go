// Package e2e tests the real atm-agent binary: built once by TestMain, run
// as a child process with a replay camera, a replay trigger, a bbolt file
// and Debian's mosquitto on loopback; killed with SIGKILL and restarted;
// stopped with SIGTERM; fed bad input. Skipped with -short.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/hal/sim"
	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/store"
)

// agentBin is the daemon binary, toolsBin the offline tools (cluster,
// command keygen/sign).
var agentBin, toolsBin string

func TestMain(m *testing.M) {
	if spec := os.Getenv(seccompExecEnv); spec != "" {
		seccompExec(spec) // the seccomp helper (seccomp_test.go); does not return
	}
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "atm-agent-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin, toolsBin = filepath.Join(dir, "atm-agent"), filepath.Join(dir, "atm-tools")
	for _, b := range []string{agentBin, toolsBin} {
		cmd := exec.Command("go", "build", "-o", b, "./cmd/"+filepath.Base(b))
		cmd.Dir = testenv.Path()
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build", filepath.Base(b)+":", err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test of the real binary skipped with -short")
	}
}

func modelsDir(t *testing.T) string {
	d := testenv.ModelsDir(t)
	if _, err := os.Stat(filepath.Join(d, "manifest.yaml")); err != nil {
		t.Fatalf("built models needed (make models): %v", err)
	}
	return d
}

// socketClient is an HTTP client that reaches the agent's trigger API on
// its unix socket (the host part of a URL is ignored).
func socketClient(sock string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// freePorts returns n distinct free loopback ports (freePort called twice
// may return the same one: each is closed before the next is asked for).
func freePorts(t *testing.T, n int) []int {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// mosquitto runs Debian's broker on a free loopback port.
func mosquitto(t *testing.T) string {
	const bin = "/usr/sbin/mosquitto"
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("mosquitto not installed: %v", err)
	}
	dir, port := t.TempDir(), freePort(t)
	conf := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\nlog_dest stderr\nlog_type error\n", port)
	if os.Geteuid() == 0 {
		conf += "user root\n" // Debian's broker would drop to "mosquitto" and lose the temp dir
	}
	cf := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", cf)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(5 * time.Second); ; {
		if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto did not listen: %s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "tcp://" + addr
}

// collector is a dashboard: a QoS 1 subscriber for the whole test.
type collector struct {
	mu       sync.Mutex
	byID     map[string]int // message_id -> times received
	seqs     map[uint64]string
	alertIDs map[string]bool
	raw      int
}

func collect(t *testing.T, url, filter string) *collector {
	c := &collector{byID: map[string]int{}, seqs: map[uint64]string{}, alertIDs: map[string]bool{}}
	opts := paho.NewClientOptions().AddBroker(url).SetClientID("e2e-dashboard").SetCleanSession(false).SetAutoReconnect(true)
	cl := paho.NewClient(opts)
	if tok := cl.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("collector connect: %v", tok.Error())
	}
	tok := cl.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
		// Outbox messages only (seq, dedup): not the retained status and
		// state, whose seq repeats the last acknowledged one.
		if !strings.HasSuffix(m.Topic(), "/summary") && !strings.HasSuffix(m.Topic(), "/alert") {
			return
		}
		var p struct {
			MessageID string `json:"message_id"`
			Seq       uint64 `json:"seq"`
			AlertID   string `json:"alert_id"`
		}
		if err := json.Unmarshal(m.Payload(), &p); err != nil {
			return
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		c.raw++
		c.byID[p.MessageID]++
		c.seqs[p.Seq] = p.MessageID
		if p.AlertID != "" {
			c.alertIDs[p.AlertID] = true
		}
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("collector subscribe: %v", tok.Error())
	}
	t.Cleanup(func() { cl.Disconnect(100) })
	return c
}

// agentProc is one run of the binary.
type agentProc struct {
	cmd  *exec.Cmd
	log  *syncBuf
	done chan error
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func start(t *testing.T, args ...string) *agentProc {
	t.Helper()
	return startProg(t, agentBin, args...)
}

// startProg runs prog (the agent, or a wrapper that execs it) with args.
func startProg(t *testing.T, prog string, args ...string) *agentProc {
	t.Helper()
	p := &agentProc{log: &syncBuf{}, done: make(chan error, 1)}
	p.cmd = exec.Command(prog, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// wait returns the exit error and true, or false if still running after d.
func (p *agentProc) wait(d time.Duration) (error, bool) {
	select {
	case err := <-p.done:
		p.done <- err
		return err, true
	case <-time.After(d):
		return nil, false
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func healthz(port int) (map[string]any, int, error) {
	c := http.Client{Timeout: time.Second}
	r, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", port))
	if err != nil {
		return nil, 0, err
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	var m map[string]any
	err = json.Unmarshal(b, &m)
	return m, r.StatusCode, err
}

// baseConfig is a config for the test's temp dir. The manifest may not
// carry calibrated thresholds yet, so they are set explicitly.
func baseConfig(models, db string, metricsPort int) string {
	return fmt.Sprintf(`device:
  id: e2e-atm
  site: e2e-site
models:
  dir: %s
identity:
  thresholds: {uu: 0.35, mm: 0.30, mu: 0}
store:
  path: %s
metrics:
  listen: 127.0.0.1:%d
log:
  level: info
agent:
  heartbeat_interval: 1s
`, models, db, metricsPort)
}

// writeFrames renders a few simulated visits as PNG frames for the replay camera.
func writeFrames(t *testing.T, dir string, visits int) {
	t.Helper()
	src := testenv.ModelSrc()
	faces, err := sim.LoadFaces(modelsDir(t), filepath.Join(src, "face-api", "demo"))
	if err != nil {
		t.Fatal(err)
	}
	sc := sim.Build(len(faces), 3)
	if err := sc.WriteFrames(faces, dir, 5, visits); err != nil {
		t.Fatal(err)
	}
}

func openStore(t *testing.T, path string) *store.Store {
	t.Helper()
	opts, err := store.DefaultConfig().Options()
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestKillRestartNoVisitLost replays a schedule of card inserts, SIGKILLs
// the agent at random points, restarts it with the same config and checks
// that every scheduled insert is stored exactly once, that every stored
// alert reached the broker (dedup by message_id, no sequence gaps), and
// that SIGTERM stops the agent cleanly within 5 s.
func TestKillRestartNoVisitLost(t *testing.T) {
	skipShort(t)
	models := modelsDir(t)
	dir := t.TempDir()
	frames := filepath.Join(dir, "frames")
	writeFrames(t, frames, 12)
	url := mosquitto(t)
	col := collect(t, url, "atm/e2e-site/e2e-atm/#")

	// 60 card inserts, 10 simulated minutes apart; every third carries a
	// card hash, cycling over four cards. The wall spacing (700 ms) is
	// above one visit's processing time, so no trigger is coalesced.
	const n = 60
	const spacing = 700 * time.Millisecond
	var sched strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&sched, "%dm", 10*i)
		if i%3 == 0 {
			fmt.Fprintf(&sched, " card_hash=%064x", i%4+1)
		}
		sched.WriteString("\n")
	}
	schedFile := filepath.Join(dir, "schedule.txt")
	os.WriteFile(schedFile, []byte(sched.String()), 0o644)
	speed := float64(10*time.Minute) / float64(spacing)
	startAt := time.Now().Add(-11 * time.Hour).UTC().Format(time.RFC3339)
	db := filepath.Join(dir, "agent.db")
	port := freePort(t)
	cfg := baseConfig(models, db, port) + fmt.Sprintf(`camera:
  source: %s
  kind: images
  loop: true
  burst_frames: 5
  burst_duration: 100ms
trigger:
  http:
    enabled: false
  replay:
    enabled: true
    file: %s
    speed: %g
    start: %q
alerts:
  rules:
    - {name: repeat, kind: visits, threshold: 3, window: 1h, cooldown: 1h}
    - {name: cards, kind: distinct_cards, threshold: 2, window: 3h, cooldown: 3h}
    - {name: faceless, kind: faceless, threshold: 2, window: 1h, cooldown: 1h}
mqtt:
  enabled: true
  brokers: [%s]
  drain_interval: 200ms
`, frames, schedFile, speed, startAt, url)
	cfgFile := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfgFile, []byte(cfg), 0o644)

	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	kills := 3
	for k := 0; k < kills; k++ {
		p := start(t, "run", "--config", cfgFile)
		// Kill after a random number of new visits (the replay restarts
		// from its first entry; stored ones are skipped), at a random
		// moment inside the next visit.
		want := 3 + r.IntN(10)
		t0 := time.Now()
		waitFor(t, 60*time.Second, "new visits", func() bool { return strings.Count(p.log.String(), "msg=visit ") >= want })
		time.Sleep(time.Duration(r.IntN(700)) * time.Millisecond)
		visits := strings.Count(p.log.String(), "msg=visit ")
		p.cmd.Process.Signal(syscall.SIGKILL)
		p.wait(5 * time.Second)
		t.Logf("run %d: SIGKILL after %v, %d new visits logged", k+1, time.Since(t0).Round(time.Millisecond), visits)
	}

	p := start(t, "run", "--config", cfgFile)
	waitFor(t, 90*time.Second, "replay done and idle", func() bool {
		s := p.log.String()
		if !strings.Contains(s, "replay schedule done") {
			return false
		}
		h, _, err := healthz(port)
		return err == nil && h["outbox_depth"] == float64(0) && h["visits"] != nil &&
			time.Since(lastLine(p.log)) > 1500*time.Millisecond
	})
	stop := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	err, ok := p.wait(6 * time.Second)
	took := time.Since(stop)
	if !ok {
		t.Fatalf("agent still running %v after SIGTERM", took)
	}
	if err != nil {
		t.Errorf("exit after SIGTERM: %v\n%s", err, tail(p.log.String(), 20))
	}
	if took > 5*time.Second {
		t.Errorf("SIGTERM to exit took %v, want <= 5s", took)
	}
	t.Logf("SIGTERM -> exit %v", took.Round(time.Millisecond))
	var coalesced []string
	for _, l := range strings.Split(p.log.String(), "\n") {
		if strings.Contains(l, "coalesc") {
			coalesced = append(coalesced, l)
		}
	}

	st := openStore(t, db)
	defer st.Close()
	ctx := context.Background()
	vs, err := st.VisitsBetween(ctx, time.Now().Add(-48*time.Hour), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int{}
	var prefix string
	outcomes := map[visit.Outcome]int{}
	for _, v := range vs {
		ids[v.ID]++
		outcomes[v.Outcome]++
		if i := strings.LastIndexByte(v.ID, '-'); i > 0 {
			prefix = v.ID[:i+1]
		}
	}
	var missing []int
	for i := 1; i <= n; i++ {
		if ids[fmt.Sprintf("%s%06d", prefix, i)] != 1 {
			missing = append(missing, i)
		}
	}
	t.Logf("stored %d visits for %d scheduled inserts (outcomes %v)", len(vs), n, outcomes)
	if len(vs) != n || len(missing) > 0 {
		t.Fatalf("stored %d visits for %d inserts; schedule entries not stored exactly once: %v\ncoalescing in the last run: %q", len(vs), n, missing, coalesced)
	}

	alerts, err := st.Alerts(ctx, time.Now().Add(-48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(alerts) == 0 {
		t.Fatal("no alert raised: the rules should fire on this schedule")
	}
	waitFor(t, 10*time.Second, "alerts at the dashboard", func() bool {
		col.mu.Lock()
		defer col.mu.Unlock()
		for _, a := range alerts {
			if !col.alertIDs[a.ID] {
				return false
			}
		}
		return true
	})
	col.mu.Lock()
	defer col.mu.Unlock()
	var seqs []uint64
	for s := range col.seqs {
		seqs = append(seqs, s)
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("sequence gap: received seqs %v", seqs)
		}
	}
	dups := col.raw - len(col.byID)
	t.Logf("alerts stored %d, all received; messages %d unique, %d duplicates (redelivery after SIGKILL), seq 1..%d without gaps",
		len(alerts), len(col.byID), dups, len(seqs))
}

var tsRE = "time="

// lastLine returns the time of the last log line (text handler "time=").
func lastLine(b *syncBuf) time.Time {
	s := b.String()
	i := strings.LastIndex(s, tsRE)
	if i < 0 {
		return time.Time{}
	}
	f := strings.Fields(s[i+len(tsRE):])
	if len(f) == 0 {
		return time.Time{}
	}
	ts, _ := time.Parse(time.RFC3339Nano, f[0])
	return ts
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
