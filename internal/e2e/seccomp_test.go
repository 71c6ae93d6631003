package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/internal/testenv/standin"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
)

// The systemd unit's system call filter, applied to the real binaries.
//
// The allow-list is derived from systemd/atm-agent.service itself: its
// SystemCallFilter= lines are read in order and combined the way systemd
// 252 does (config_parse_syscall_filter: the first allow line starts an
// allow-list seeded with @default, a "~" line removes names, a later plain
// line adds them back, an empty assignment resets); @groups are expanded
// with `systemd-analyze syscall-filter`. The test binary re-executes itself
// as a small helper (TestMain, seccompExecEnv) that installs the list as a
// seccomp filter with systemd's default action for a refused call (kill the
// process, SIGSYS), restricted to the native architecture
// (SystemCallArchitectures=native), sets no_new_privs (NoNewPrivileges=yes)
// and execs the agent. Names the native syscall table does not know (for
// example clock_gettime64 on x86-64) are skipped, as libseccomp does for
// systemd.

const seccompExecEnv = "ATM_E2E_SECCOMP_EXEC"

// seccompSpec is what the helper loads: the allowed names; everything else
// kills the process.
type seccompSpec struct {
	Allow []string `json:"allow"`
}

// seccompExec is the helper: it loads the filter from the spec file named
// by $ATM_E2E_SECCOMP_EXEC and execs os.Args[1:]. It never returns.
func seccompExec(specFile string) {
	fail := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "seccomp helper: "+format+"\n", a...)
		os.Exit(126)
	}
	b, err := os.ReadFile(specFile)
	if err != nil {
		fail("%v", err)
	}
	var spec seccompSpec
	if err := json.Unmarshal(b, &spec); err != nil {
		fail("decode %s: %v", specFile, err)
	}
	if len(os.Args) < 2 {
		fail("no program to exec")
	}
	prog, err := exec.LookPath(os.Args[1])
	if err != nil {
		fail("%v", err)
	}
	env := slices.DeleteFunc(os.Environ(), func(s string) bool { return strings.HasPrefix(s, seccompExecEnv+"=") })
	// The filter binds the thread that loads it (and, with TSYNC, every
	// other thread); exec must run on that thread.
	runtime.LockOSThread()
	f := seccomp.Filter{
		NoNewPrivs: true,
		Flag:       seccomp.FilterFlagTSync,
		Policy: seccomp.Policy{
			DefaultAction: seccomp.ActionKillProcess,
			Syscalls:      []seccomp.SyscallGroup{{Action: seccomp.ActionAllow, Names: spec.Allow}},
		},
	}
	if err := seccomp.LoadFilter(f); err != nil {
		fail("load filter: %v", err)
	}
	err = syscall.Exec(prog, os.Args[1:], env)
	fail("exec %s: %v", prog, err)
}

// unitFilter is the system call filter a unit asks for.
type unitFilter struct {
	allow   map[string]bool // the allow-list (names only, groups expanded)
	unknown []string        // allowed names the native syscall table lacks (skipped)
}

// groupExpander expands @groups with systemd-analyze, memoised.
type groupExpander struct {
	tool  string
	cache map[string][]string
}

func (g *groupExpander) expand(name string) ([]string, error) {
	if !strings.HasPrefix(name, "@") {
		return []string{name}, nil
	}
	if v, ok := g.cache[name]; ok {
		return v, nil
	}
	out, err := exec.Command(g.tool, "syscall-filter", name).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("systemd-analyze syscall-filter %s: %v: %s", name, err, out)
	}
	var names []string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for first := true; sc.Scan(); first = false {
		line := strings.TrimSpace(sc.Text())
		if first {
			if line != name {
				return nil, fmt.Errorf("systemd-analyze syscall-filter %s: unexpected header %q", name, line)
			}
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		sub, err := g.expand(line)
		if err != nil {
			return nil, err
		}
		names = append(names, sub...)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("systemd-analyze syscall-filter %s: no system calls listed", name)
	}
	g.cache[name] = names
	return names, nil
}

// parseUnitFilter applies the unit's SystemCallFilter= lines in order, as
// systemd 252 does, and checks SystemCallArchitectures=native and that no
// SystemCallErrorNumber= changes the action (the harness models the kill).
func parseUnitFilter(unit string, g *groupExpander) (*unitFilter, error) {
	var set map[string]bool // nil: no filter yet
	allowList, native := false, false
	sc := bufio.NewScanner(strings.NewReader(unit))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		key, val, ok := strings.Cut(line, "=")
		if !ok || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") {
			continue
		}
		switch strings.TrimSpace(key) {
		case "SystemCallArchitectures":
			native = strings.TrimSpace(val) == "native"
			if !native {
				return nil, fmt.Errorf("SystemCallArchitectures=%s: the harness models native only", val)
			}
			continue
		case "SystemCallErrorNumber":
			return nil, fmt.Errorf("SystemCallErrorNumber=%s: the harness models systemd's default action (kill) only", val)
		case "SystemCallFilter":
		default:
			continue
		}
		val = strings.TrimSpace(val)
		if val == "" { // an empty assignment resets the filter
			set, allowList = nil, false
			continue
		}
		invert := strings.HasPrefix(val, "~")
		val = strings.TrimPrefix(val, "~")
		if set == nil {
			set = map[string]bool{}
			allowList = !invert
			if allowList { // an allow-list always holds @default
				names, err := g.expand("@default")
				if err != nil {
					return nil, err
				}
				for _, n := range names {
					set[n] = true
				}
			}
		}
		for _, w := range strings.Fields(val) {
			w, _, _ = strings.Cut(w, ":") // name:errno
			names, err := g.expand(w)
			if err != nil {
				return nil, err
			}
			for _, n := range names {
				// In an allow-list "~" removes; in a deny-list a plain line removes.
				if invert == allowList {
					delete(set, n)
				} else {
					set[n] = true
				}
			}
		}
	}
	if set == nil || !allowList {
		return nil, errors.New("no SystemCallFilter= allow-list in the unit (the harness models allow-lists)")
	}
	if !native {
		return nil, errors.New("the unit lacks SystemCallArchitectures=native")
	}
	info, err := arch.GetInfo("")
	if err != nil {
		return nil, err
	}
	f := &unitFilter{allow: map[string]bool{}}
	for n := range set {
		if _, ok := info.SyscallNames[n]; ok {
			f.allow[n] = true
		} else {
			f.unknown = append(f.unknown, n)
		}
	}
	sort.Strings(f.unknown)
	return f, nil
}

func (f *unitFilter) names() []string {
	var s []string
	for n := range f.allow {
		s = append(s, n)
	}
	sort.Strings(s)
	return s
}

func unitPath() string { return testenv.Path("systemd", "atm-agent.service") }

// unitFilterFrom reads the unit (with extra lines appended) and derives its filter.
func unitFilterFrom(t *testing.T, extra string) *unitFilter {
	t.Helper()
	tool, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze (Debian package systemd, installed by scripts/setup.sh) is needed: %v", err)
	}
	b, err := os.ReadFile(unitPath())
	if err != nil {
		t.Fatal(err)
	}
	f, err := parseUnitFilter(string(b)+extra, &groupExpander{tool: tool, cache: map[string][]string{}})
	if err != nil {
		t.Fatalf("%s: %v", unitPath(), err)
	}
	return f
}

// shippedBinaries are the binaries the package ships: the dynamic build
// (built by TestMain from this tree, as `make build` does) and the static
// one if it has been built (make static).
func shippedBinaries(t *testing.T) map[string]string {
	bins := map[string]string{"dynamic": agentBin}
	static := testenv.Path("build", "atm-agent-static")
	if _, err := os.Stat(static); err == nil {
		bins["static"] = static
	} else {
		t.Logf("static build not tested: %s absent (make static builds it)", static)
	}
	return bins
}

// seccompCmd returns a command that runs bin with args under allow.
func seccompCmd(t *testing.T, allow []string, bin string, args ...string) *exec.Cmd {
	t.Helper()
	spec, err := json.Marshal(seccompSpec{Allow: allow})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.CreateTemp(t.TempDir(), "seccomp-*.json")
	if err != nil {
		t.Fatal(err)
	}
	f.Write(spec)
	f.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, append([]string{bin}, args...)...)
	cmd.Env = append(os.Environ(), seccompExecEnv+"="+f.Name())
	return cmd
}

// killedBySIGSYS reports whether err is an exit by SIGSYS (the filter's kill).
func killedBySIGSYS(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGSYS
}

// configCheck runs `bin config check cfg` under allow.
func configCheck(t *testing.T, allow []string, bin, cfg string) (string, error) {
	cmd := seccompCmd(t, allow, bin, "config", "check", cfg)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// missingCalls names the calls that make run(allow) die by SIGSYS, by
// bisection over the calls the filter refuses: the smallest prefix of the
// refused names that, allowed as well, lets the binary pass ends with a
// needed call; repeated up to three times. Only used to explain a failure.
func missingCalls(t *testing.T, allow []string, run func(allow []string) bool) []string {
	info, _ := arch.GetInfo("")
	in := map[string]bool{}
	for _, n := range allow {
		in[n] = true
	}
	var refused []string
	for n := range info.SyscallNames {
		if !in[n] {
			refused = append(refused, n)
		}
	}
	sort.Strings(refused)
	var found []string
	for range 3 {
		if !run(append(slices.Clone(allow), refused...)) {
			return append(found, "(still killed with every call allowed)")
		}
		lo, hi := 0, len(refused) // run(allow + refused[:hi]) passes
		for lo+1 < hi {
			mid := (lo + hi) / 2
			if run(append(slices.Clone(allow), refused[:mid]...)) {
				hi = mid
			} else {
				lo = mid
			}
		}
		need := refused[hi-1]
		found = append(found, need)
		allow = append(allow, need)
		refused = slices.Delete(refused, hi-1, hi)
		if run(allow) {
			return found
		}
	}
	return found
}

// seccompSetup is one daemon configuration exercising what the service
// does: replayed visits, the unix-socket (with a socket_group: the agent
// chowns its socket) and TCP trigger endpoints, MQTT to a real broker,
// metrics, the periodic jobs, encryption at rest, sd_notify.
type seccompSetup struct {
	cfg, sock, token string
	port             int
	tcp              string
	broker           string
}

func newSeccompSetup(t *testing.T) *seccompSetup {
	t.Helper()
	dir := t.TempDir()
	frames := filepath.Join(dir, "frames")
	writeFrames(t, frames, 4)
	ports := freePorts(t, 2)
	s := &seccompSetup{sock: filepath.Join(dir, "trigger.sock"), token: "seccomp-test-token-0123456789",
		port: ports[0], broker: mosquitto(t)}
	s.tcp = fmt.Sprintf("127.0.0.1:%d", ports[1])
	tokFile, keyFile := filepath.Join(dir, "token"), filepath.Join(dir, "store.key")
	key := make([]byte, 32)
	rand.Read(key)
	os.WriteFile(tokFile, []byte(s.token+"\n"), 0o600)
	os.WriteFile(keyFile, key, 0o600)
	cfg := baseConfig(modelsDir(t), filepath.Join(dir, "agent.db"), s.port) + fmt.Sprintf(`  summary_interval: 1s
  consolidate_interval: 1s
  purge_interval: 1s
camera:
  source: %s
  kind: images
  loop: true
  burst_frames: 3
  burst_duration: 100ms
trigger:
  http:
    enabled: true
    socket: %s
    socket_group: "%d"
    listen: %s
    token_file: %s
  replay:
    enabled: true
    interval: 300ms
    count: 4
mqtt:
  enabled: true
  brokers: [%s]
  drain_interval: 200ms
`, frames, s.sock, os.Getegid(), s.tcp, tokFile, s.broker)
	cfg = strings.Replace(cfg, "store:\n", "store:\n  key_file: "+keyFile+"\n", 1)
	s.cfg = filepath.Join(dir, "config.yaml")
	os.WriteFile(s.cfg, []byte(cfg), 0o644)
	return s
}

// notifySocket listens where the agent sends READY=1 and WATCHDOG=1.
func notifySocket(t *testing.T) (string, func() []string) {
	p := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: p, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []string
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := c.ReadFromUnix(buf)
			if err != nil {
				return
			}
			mu.Lock()
			got = append(got, string(buf[:n]))
			mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.Close() })
	return p, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
}

// runUnderFilter starts `bin run` under allow with a setup of its own (a
// fresh store: replayed visits already stored are skipped), drives every listener once
// while four replayed visits go through, stops it with SIGTERM and returns
// the exit error and the log. ok is false if the agent did not get as far
// as its visits (it was killed earlier or timed out).
func runUnderFilter(t *testing.T, allow []string, bin string) (err error, log string, ok bool) {
	t.Helper()
	s := newSeccompSetup(t)
	notify, notes := notifySocket(t)
	p := &agentProc{log: &syncBuf{}, done: make(chan error, 1)}
	p.cmd = seccompCmd(t, allow, bin, "run", "--config", s.cfg)
	p.cmd.Env = append(p.cmd.Env, "NOTIFY_SOCKET="+notify, "WATCHDOG_USEC=30000000")
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	defer func() {
		select {
		case err := <-p.done:
			p.done <- err
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
	}()
	exited := func() bool {
		select {
		case err := <-p.done:
			p.done <- err
			return true
		default:
			return false
		}
	}
	deadline := time.Now().Add(90 * time.Second)
	visits := func() int { return strings.Count(p.log.String(), "msg=visit ") }
	waitUntil := func(cond func() bool) bool {
		for !cond() && !exited() && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		return cond()
	}
	stopped := func() (error, string, bool) {
		err, _ := p.wait(2 * time.Second)
		return err, p.log.String(), false
	}
	if !waitUntil(func() bool { return visits() >= 4 && slices.Contains(notes(), "READY=1") }) {
		return stopped()
	}
	// Every listener once: the socket and TCP trigger (one visit each),
	// metrics, healthz.
	unixc := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", s.sock)
		}}}
	tcpc := http.Client{Timeout: 5 * time.Second}
	steps := []struct {
		do    func() (*http.Response, error)
		code  int
		visit bool
	}{
		{func() (*http.Response, error) { return unixc.Do(visitReq("http://agent", s.token)) }, http.StatusAccepted, true},
		{func() (*http.Response, error) { return tcpc.Do(visitReq("http://"+s.tcp, s.token)) }, http.StatusAccepted, true},
		{func() (*http.Response, error) { return tcpc.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", s.port)) }, http.StatusOK, false},
		{func() (*http.Response, error) { return tcpc.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", s.port)) }, http.StatusOK, false},
	}
	for i, st := range steps {
		before := visits()
		r, err := st.do()
		if err != nil {
			t.Logf("step %d: %v", i, err)
			return stopped()
		}
		r.Body.Close()
		if r.StatusCode != st.code {
			t.Logf("step %d: status %d, want %d", i, r.StatusCode, st.code)
			return stopped()
		}
		if st.visit && !waitUntil(func() bool { return visits() > before }) {
			return stopped()
		}
	}
	time.Sleep(1500 * time.Millisecond) // a round of the periodic jobs and the outbox drain
	if exited() {
		return stopped()
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	err, done := p.wait(10 * time.Second)
	if !done {
		return errors.New("still running 10 s after SIGTERM"), p.log.String(), false
	}
	return err, p.log.String(), visits() >= 6
}

// visitTxns numbers the txn_ids of visitReq.
var visitTxns atomic.Int64

// visitReq is a card-insert trigger for the HTTP endpoint at base, with a
// txn_id of its own (a repeated txn_id is answered as a duplicate and
// starts no visit). The id is mostly letters: a long run of digits, such
// as a nanosecond clock, can pass the Luhn check and is then refused as
// card data.
func visitReq(base, token string) *http.Request {
	body := fmt.Sprintf(`{"txn_id":"e2e-visit-%d"}`, visitTxns.Add(1))
	req, _ := http.NewRequest("POST", base+"/v1/visit", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	return req
}

// A Torch model (the OpenFace stand-in) is loaded from the checked bytes
// in a sealed memfd (models.SealedFile): `models verify`, whose test
// forward runs LoadNet in a child `models probe`, passes under the unit's
// own filter, which allows memfd_create (in @system-service's @ipc) and
// fcntl. Without memfd_create in the list, the same verify fails for the
// Torch model alone: the test does reach the call.
func TestSeccompTorchModel(t *testing.T) {
	skipShort(t)
	f := unitFilterFrom(t, "")
	allow := f.names()
	for _, c := range []string{"memfd_create", "fcntl"} {
		if !f.allow[c] {
			t.Errorf("the unit's filter refuses %s, which loading a Torch model needs", c)
		}
	}
	dir := t.TempDir()
	if _, err := standin.WriteModelsDir(dir); err != nil {
		t.Fatal(err)
	}
	verify := func(allow []string) (string, error) {
		out, err := seccompCmd(t, allow, agentBin, "models", "verify", "--dir", dir).CombinedOutput()
		return string(out), err
	}
	out, err := verify(allow)
	if err != nil {
		t.Fatalf("models verify of the stand-ins under the unit's filter: %v\n%s", err, out)
	}
	t.Logf("under the unit's filter:\n%s", strings.TrimSpace(out))
	without := slices.DeleteFunc(slices.Clone(allow), func(c string) bool { return c == "memfd_create" })
	out, err = verify(without)
	if err == nil || !strings.Contains(out, standin.OpenFaceName+"  ") || strings.Count(out, "FAIL") != 1 || !strings.Contains(out, "killed by the system call filter") {
		t.Errorf("without memfd_create: %v, want the Torch model alone to fail\n%s", err, out)
	}
	t.Logf("without memfd_create:\n%s", strings.TrimSpace(out))
}

// TestSeccompUnitFilter runs `config check` and a replayed `run` of every
// shipped binary under the unit's own system call filter. Before the unit
// allowed set_mempolicy again, both died by SIGSYS before main.
func TestSeccompUnitFilter(t *testing.T) {
	skipShort(t)
	f := unitFilterFrom(t, "")
	allow := f.names()
	t.Logf("unit allow-list: %d system calls (%d names of other architectures skipped, e.g. %s)", len(allow), len(f.unknown), strings.Join(f.unknown[:min(3, len(f.unknown))], " "))
	if !f.allow["set_mempolicy"] {
		t.Errorf("the unit's filter refuses set_mempolicy, which libnuma calls at load")
	}
	if !f.allow["mbind"] {
		t.Errorf("the unit's filter refuses mbind, which OpenBLAS calls at load")
	}
	type target struct{ bin, libPath string }
	runs := map[string]target{}
	for name, bin := range shippedBinaries(t) {
		runs[name] = target{bin: bin}
	}
	// The dynamic build once more with each BLAS a kiosk may have.
	for name, path := range blasProviders(t) {
		runs["dynamic, "+name] = target{agentBin, path}
	}
	for name, run := range runs {
		bin := run.bin
		t.Run(name, func(t *testing.T) {
			if run.libPath != "" {
				t.Setenv("LD_LIBRARY_PATH", run.libPath)
			}
			s := newSeccompSetup(t)
			out, err := configCheck(t, allow, bin, s.cfg)
			if err != nil {
				if killedBySIGSYS(err) {
					t.Errorf("config check killed by the unit's filter (SIGSYS); refused calls it needs: %v",
						missingCalls(t, allow, func(a []string) bool { _, err := configCheck(t, a, bin, s.cfg); return err == nil }))
				} else {
					t.Errorf("config check under the filter: %v\n%s", err, out)
				}
				return
			}
			err, log, ok := runUnderFilter(t, allow, bin)
			if err != nil || !ok {
				msg := fmt.Sprintf("run under the unit's filter: exit %v, completed %v\n%s", err, ok, tail(log, 15))
				if killedBySIGSYS(err) {
					msg += fmt.Sprintf("\nrefused calls it needs: %v", missingCalls(t, allow, func(a []string) bool {
						err, _, ok := runUnderFilter(t, a, bin)
						return err == nil && ok
					}))
				}
				t.Fatal(msg)
			}
			t.Logf("%s: config check and run (%d visits, socket+TCP trigger, MQTT, metrics, periodic jobs, SIGTERM) pass under the filter",
				name, strings.Count(log, "msg=visit "))
		})
	}
}

// blasProviders returns, by name, an LD_LIBRARY_PATH that makes the dynamic
// linker load that BLAS as libblas.so.3 and liblapack.so.3 (the libraries
// OpenCV links), whatever the machine's alternatives choose: Debian's
// reference BLAS (libblas3, liblapack3: OpenCV's own dependencies) and
// OpenBLAS (libopenblas0-pthread, installed by scripts/setup.sh), which
// calls mbind at load. ATM_SECCOMP_BLAS adds others, as NAME=LD_LIBRARY_PATH
// pairs separated by ";" (docs/security.md: BLAS builds unpacked with
// dpkg -x, not installed).
func blasProviders(t *testing.T) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(os.Getenv("ATM_SECCOMP_BLAS"), ";") {
		if name, path, ok := strings.Cut(kv, "="); ok {
			out[name] = path
		}
	}
	for name, libs := range map[string][]string{
		"reference BLAS": {"blas/libblas.so.3", "lapack/liblapack.so.3"},
		"OpenBLAS":       {"openblas-pthread/libblas.so.3", "openblas-pthread/liblapack.so.3"},
	} {
		var dirs []string
		for _, l := range libs {
			m, _ := filepath.Glob(filepath.Join("/usr/lib", "*-linux-gnu", l))
			if len(m) == 0 {
				t.Errorf("%s: no /usr/lib/*-linux-gnu/%s (scripts/setup.sh installs it)", name, l)
				break
			}
			dirs = append(dirs, filepath.Dir(m[0]))
		}
		if len(dirs) == len(libs) {
			out[name] = strings.Join(slices.Compact(dirs), ":")
		}
	}
	return out
}

// TestSeccompHarnessCatchesRefusedCall shows the harness can fail: with a
// call the binary makes refused again, the binary is killed. fchownat
// (the socket's group, trigger.http.socket_group) kills `run` under the
// unit as it shipped before it was given back. set_mempolicy
// (libnuma at load, dynamic build) kills `config check` before main, both
// in the unit as it shipped before the fix and with the call refused again
// by an appended line, and the bisection names it; accept4 (the listeners'
// accept loops, which `config check` never reaches) kills `run` after
// `config check` passed, so the run is under the filter too.
func TestSeccompHarnessCatchesRefusedCall(t *testing.T) {
	skipShort(t)
	s := newSeccompSetup(t)
	t.Run("set_mempolicy", func(t *testing.T) {
		// The unit as it shipped before the fix: the same lines, without the allow line.
		b, err := os.ReadFile(unitPath())
		if err != nil {
			t.Fatal(err)
		}
		old := strings.Replace(string(b), "\nSystemCallFilter=set_mempolicy\n", "\n", 1)
		if old == string(b) {
			t.Fatal("the unit has no SystemCallFilter=set_mempolicy line to take out")
		}
		tool, _ := exec.LookPath("systemd-analyze")
		f, err := parseUnitFilter(old, &groupExpander{tool: tool, cache: map[string][]string{}})
		if err != nil {
			t.Fatal(err)
		}
		for _, allow := range map[string][]string{
			"unit before the fix":            f.names(),
			"unit + ~set_mempolicy appended": unitFilterFrom(t, "SystemCallFilter=~set_mempolicy\n").names(),
		} {
			out, err := configCheck(t, allow, agentBin, s.cfg)
			if !killedBySIGSYS(err) {
				t.Fatalf("config check with set_mempolicy refused: want death by SIGSYS, got %v\n%s", err, out)
			}
			if got := missingCalls(t, allow, func(a []string) bool { _, err := configCheck(t, a, agentBin, s.cfg); return err == nil }); !slices.Equal(got, []string{"set_mempolicy"}) {
				t.Errorf("bisection names %v as the refused calls, want [set_mempolicy]", got)
			}
		}
	})
	t.Run("fchownat", func(t *testing.T) {
		// The unit before trigger.http.socket_group could work: the same
		// lines without the one giving fchownat back. config check passes
		// (it chowns nothing); run dies when it gives its socket the group.
		b, err := os.ReadFile(unitPath())
		if err != nil {
			t.Fatal(err)
		}
		old := strings.Replace(string(b), "\nSystemCallFilter=fchownat\n", "\n", 1)
		if old == string(b) {
			t.Fatal("the unit has no SystemCallFilter=fchownat line to take out")
		}
		tool, _ := exec.LookPath("systemd-analyze")
		f, err := parseUnitFilter(old, &groupExpander{tool: tool, cache: map[string][]string{}})
		if err != nil {
			t.Fatal(err)
		}
		allow := f.names()
		if out, err := configCheck(t, allow, agentBin, s.cfg); err != nil {
			t.Fatalf("config check without fchownat: %v\n%s", err, out)
		}
		err, log, ok := runUnderFilter(t, allow, agentBin)
		if ok || !killedBySIGSYS(err) {
			t.Fatalf("run with socket_group and fchownat refused: want death by SIGSYS, got exit %v, completed %v\n%s", err, ok, tail(log, 10))
		}
	})
	t.Run("accept4", func(t *testing.T) {
		allow := unitFilterFrom(t, "SystemCallFilter=~accept4\n").names()
		if out, err := configCheck(t, allow, agentBin, s.cfg); err != nil {
			t.Fatalf("config check without accept4: %v\n%s", err, out)
		}
		err, log, ok := runUnderFilter(t, allow, agentBin)
		if ok || !killedBySIGSYS(err) {
			t.Fatalf("run with accept4 refused: want death by SIGSYS once a listener serves, got exit %v, completed %v\n%s", err, ok, tail(log, 10))
		}
	})
}
