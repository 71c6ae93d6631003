package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/periocular/atm-agent/sync/fleet/fleettest"
)

// The real binary, sent the real SIGHUP (what systemctl reload has sent):
// a user removed from the users file loses their session and cannot sign
// in again, the other keeps theirs, the process is the same; a broken
// file is refused by `users check --reload` (the unit's ExecReload=) with
// the file and the line, and by the service, in its log and /healthz,
// and the users in force stay.
func TestRunReloadsUsersOnSIGHUP(t *testing.T) {
	h, _ := bcrypt.GenerateFromPassword([]byte("correct horse"), bcrypt.MinCost)
	ana := fmt.Sprintf("  - {name: ana, role: admin, password_hash: %q}\n", h)
	lou := fmt.Sprintf("  - {name: lou, role: analyst, password_hash: %q}\n", h)
	f := startFleetRun(t, "users:\n"+ana+lou)
	cmd, users, write, logs, signIn, status, base, exited := f.cmd, f.users, f.write, f.logs, f.signIn, f.status, f.base, f.exited
	var anaC, louC *http.Client
	fleettest.WaitFor(t, 10*time.Second, "the service signs ana in", func() bool { anaC = signIn("ana"); return anaC != nil })
	if louC = signIn("lou"); louC == nil {
		t.Fatal("lou cannot sign in")
	}

	write("users:\n" + ana)
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	fleettest.WaitFor(t, 5*time.Second, "lou's session refused after the reload", func() bool { return status(louC, "/api/v1/session") == 401 })
	if signIn("lou") != nil {
		t.Error("lou, removed, signs in after the reload")
	}
	if code := status(anaC, "/api/v1/session"); code != 200 {
		t.Errorf("ana's session after the reload: %d", code)
	}
	if !strings.Contains(logs(), "users file reloaded") || !strings.Contains(logs(), "removed=[lou]") {
		t.Errorf("the log after the reload:\n%s", logs())
	}

	// As the unit's ExecReload= does it: the check, then SIGHUP whatever
	// it found; its exit status says the file is refused.
	write("users:\n" + ana + strings.Replace(lou, "role:", "rol:", 1)) // line 3: an unknown key
	var errb strings.Builder
	if code := runMain(context.Background(), []string{"users", "check", "--reload", strconv.Itoa(cmd.Process.Pid), users}, nil, io.Discard, &errb); code != exitSetup ||
		!strings.Contains(errb.String(), users) || !strings.Contains(errb.String(), "line 3") {
		t.Errorf("users check --reload of a broken file: exit %d, %q; want %d naming the file and line", code, errb.String(), exitSetup)
	}
	var health struct {
		Users struct {
			ReloadFailures  int    `json:"reload_failures"`
			LastReloadOK    bool   `json:"last_reload_ok"`
			LastReloadError string `json:"last_reload_error"`
		}
	}
	fleettest.WaitFor(t, 5*time.Second, "/healthz counts the refused reload", func() bool {
		r, err := anaC.Get(base + "/healthz")
		if err != nil {
			return false
		}
		defer r.Body.Close()
		json.NewDecoder(r.Body).Decode(&health)
		return health.Users.ReloadFailures == 1
	})
	if health.Users.LastReloadOK || !strings.Contains(health.Users.LastReloadError, users) || !strings.Contains(health.Users.LastReloadError, "line 3") {
		t.Errorf("/healthz to the admin after a broken file: %+v, want the file and its line", health.Users)
	}
	if l := logs(); !strings.Contains(l, "users file not reloaded") || !strings.Contains(l, users) || !strings.Contains(l, "line 3") {
		t.Errorf("the log after a broken file:\n%s", l)
	}
	if code := status(anaC, "/api/v1/session"); code != 200 {
		t.Errorf("ana's session after a refused reload: %d", code)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err // for the cleanup
		if err != nil {
			t.Errorf("the process after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no exit 15 s after SIGTERM")
	}
}

// `users check --reload PID` signals only atm-fleet run: not a sleep (whose
// SIGHUP's default action would end it), not atm-fleet running another
// command; whether the check passes or fails, the process lives on and the
// exit status says it was not signalled. (The service itself is signalled:
// TestRunReloadsUsersOnSIGHUP.)
func TestUsersCheckReloadSignalsOnlyTheService(t *testing.T) {
	dir := t.TempDir()
	bin := buildFleet(t, dir)
	h, _ := bcrypt.GenerateFromPassword([]byte("correct horse"), bcrypt.MinCost)
	good := filepath.Join(dir, "users.yaml")
	if err := os.WriteFile(good, []byte(fmt.Sprintf("users:\n  - {name: ana, role: admin, password_hash: %q}\n", h)), 0o600); err != nil {
		t.Fatal(err)
	}
	start := func(name string, args ...string) *exec.Cmd {
		t.Helper()
		cmd := exec.Command(name, args...)
		stdin, err := cmd.StdinPipe() // passwd waits for its line
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	for _, p := range []*exec.Cmd{start("sleep", "1000"), start(bin, "passwd")} {
		for _, file := range []string{good, filepath.Join(dir, "missing.yaml")} {
			var errb strings.Builder
			code := runMain(context.Background(), []string{"users", "check", "--reload", strconv.Itoa(p.Process.Pid), file}, nil, io.Discard, &errb)
			if code != 1 || !strings.Contains(errb.String(), "is not atm-fleet run: not signalled") {
				t.Errorf("%s, %s: exit %d, %q; want 1, not signalled", p.Path, file, code, errb.String())
			}
		}
		time.Sleep(200 * time.Millisecond)
		var ws syscall.WaitStatus
		if pid, _ := syscall.Wait4(p.Process.Pid, &ws, syscall.WNOHANG, nil); pid != 0 {
			t.Errorf("%s ended (%v) after users check --reload", p.Path, ws)
		}
	}
}

// fleetRun is the built binary running `atm-fleet run` on a real
// mosquitto, with a users file of its own.
type fleetRun struct {
	cmd    *exec.Cmd
	users  string
	config string
	base   string
	exited chan error
	write  func(body string)
	logs   func() string
	// signIn signs a user in (password "correct horse"): nil if refused.
	signIn func(user string) *http.Client
	status func(c *http.Client, path string) int
	// restart stops the process (SIGTERM) and starts it again on the same
	// config, store and session key.
	restart func()
}

func startFleetRun(t *testing.T, usersBody string) *fleetRun {
	t.Helper()
	m := fleettest.StartMosquitto(t, "")
	dir := t.TempDir()
	bin := buildFleet(t, dir)
	f := &fleetRun{users: filepath.Join(dir, "users.yaml"), exited: make(chan error, 1)}
	f.write = func(body string) {
		t.Helper()
		if err := os.WriteFile(f.users, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f.write(usersBody)
	port := fleettest.FreePort(t)
	cfgPath, keyPath := filepath.Join(dir, "config.yaml"), filepath.Join(dir, "session.key")
	f.config = cfgPath
	os.WriteFile(keyPath, bytes.Repeat([]byte("k"), 48), 0o600)
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`store: {driver: bolt, path: %s}
mqtt: {brokers: [%q], prefix: atm/e2e, client_id: fleet-e2e-reload}
web: {listen: "127.0.0.1:%d", users_file: %s, session_key_file: %s}
`, filepath.Join(dir, "fleet.db"), m.URL(), port, f.users, keyPath)), 0o644)

	logFile, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logFile.Close() })
	f.logs = func() string { b, _ := os.ReadFile(logFile.Name()); return string(b) }
	start := func() {
		f.cmd = exec.Command(bin, "run", "--config", cfgPath)
		f.cmd.Stderr = logFile
		if err := f.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { f.exited <- f.cmd.Wait() }()
	}
	start()
	t.Cleanup(func() {
		f.cmd.Process.Kill()
		<-f.exited
	})
	f.restart = func() {
		t.Helper()
		f.cmd.Process.Signal(syscall.SIGTERM)
		if err := <-f.exited; err != nil {
			t.Fatalf("stop: %v\n%s", err, f.logs())
		}
		start()
		fleettest.WaitFor(t, 10*time.Second, "the service answers again", func() bool { return f.status(http.DefaultClient, "/healthz") == 200 })
	}
	f.base = fmt.Sprintf("http://127.0.0.1:%d", port)
	f.signIn = func(user string) *http.Client {
		jar, _ := cookiejar.New(nil)
		c := &http.Client{Jar: jar, Timeout: 10 * time.Second}
		req, _ := http.NewRequest("GET", f.base+"/login", nil)
		req.Header.Set("Accept", "application/json")
		r, err := c.Do(req)
		if err != nil {
			return nil
		}
		var tok struct{ CSRF string }
		json.NewDecoder(r.Body).Decode(&tok)
		r.Body.Close()
		req, _ = http.NewRequest("POST", f.base+"/login", strings.NewReader(url.Values{"csrf": {tok.CSRF}, "user": {user}, "password": {"correct horse"}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Accept", "application/json")
		if r, err = c.Do(req); err != nil {
			return nil
		}
		r.Body.Close()
		if r.StatusCode != 200 {
			return nil
		}
		return c
	}
	f.status = func(c *http.Client, path string) int {
		r, err := c.Get(f.base + path)
		if err != nil {
			return 0
		}
		r.Body.Close()
		return r.StatusCode
	}
	return f
}

// The users file rewritten in place, a line at a time (as `cat > FILE`
// over a slow link, or a script writing it), while SIGHUPs arrive: the
// service reads it at any point of the write, and lou, written as a block
// scoped to paris-01, is never given another site.
func TestRunNeverWidensWhileTheUsersFileIsRewritten(t *testing.T) {
	h, _ := bcrypt.GenerateFromPassword([]byte("correct horse"), bcrypt.MinCost)
	full := fmt.Sprintf(`users:
  - name: lou
    role: analyst
    password_hash: %[1]q
    sites: [paris-01]
  - name: ana
    role: analyst
    password_hash: %[1]q
    sites: all
  - {name: vic, role: viewer, password_hash: %[1]q}
  - {name: root, role: admin, password_hash: %[1]q}
`, h)
	f := startFleetRun(t, full)
	var lou *http.Client
	fleettest.WaitFor(t, 10*time.Second, "the service signs lou in", func() bool { lou = f.signIn("lou"); return lou != nil })

	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // the writer
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			fd, err := os.OpenFile(f.users, os.O_WRONLY|os.O_TRUNC, 0)
			if err != nil {
				t.Error(err)
				return
			}
			for _, l := range strings.SplitAfter(full, "\n") {
				fd.WriteString(l)
				time.Sleep(time.Millisecond)
			}
			fd.Close()
		}
	}()
	go func() { // systemctl reload, again and again
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case <-time.After(3 * time.Millisecond):
				f.cmd.Process.Signal(syscall.SIGHUP)
			}
		}
	}()
	scoped, other := 0, 0
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
		r, err := lou.Get(f.base + "/api/v1/session")
		if err != nil {
			t.Fatal(err)
		}
		var sess struct{ Sites []string }
		json.NewDecoder(r.Body).Decode(&sess)
		r.Body.Close()
		switch {
		case r.StatusCode != 200:
			other++
			if c := f.signIn("lou"); c != nil {
				lou = c
			}
		case len(sess.Sites) == 1 && sess.Sites[0] == "paris-01":
			scoped++
		default:
			t.Errorf("lou's session during the rewrite: sites %q, want [paris-01]", sess.Sites)
		}
	}
	close(done)
	wg.Wait()
	f.write(full)
	f.cmd.Process.Signal(syscall.SIGHUP)
	refused := strings.Count(f.logs(), "users file not reloaded")
	t.Logf("lou's session: %d scoped to paris-01, %d not 200; reloads refused: %d, reloaded: %d",
		scoped, other, refused, strings.Count(f.logs(), "users file reloaded"))
	if scoped < 20 || refused == 0 {
		t.Errorf("the test did not race: %d sessions seen, %d reloads refused", scoped, refused)
	}
}

// A removed user's old session stays refused when the file is restored
// (the same password hash), at a reload and across restarts of the real
// binary on the same store: the removal seen by a reload, or only by a
// start. A user kept all along keeps their session across the restarts.
func TestRunRemovedUserStaysSignedOut(t *testing.T) {
	h, _ := bcrypt.GenerateFromPassword([]byte("correct horse"), bcrypt.MinCost)
	full := fmt.Sprintf("users:\n  - {name: ana, role: admin, password_hash: %[1]q}\n  - {name: vic, role: viewer, password_hash: %[1]q}\n", h)
	without := fmt.Sprintf("users:\n  - {name: ana, role: admin, password_hash: %q}\n", h)
	f := startFleetRun(t, full)
	var ana, vic *http.Client
	fleettest.WaitFor(t, 10*time.Second, "the service signs ana in", func() bool { ana = f.signIn("ana"); return ana != nil })
	if vic = f.signIn("vic"); vic == nil {
		t.Fatal("vic cannot sign in")
	}
	reload := func(body string) {
		t.Helper()
		f.write(body)
		n := strings.Count(f.logs(), "users file reloaded")
		f.cmd.Process.Signal(syscall.SIGHUP)
		fleettest.WaitFor(t, 5*time.Second, "the reload", func() bool { return strings.Count(f.logs(), "users file reloaded") > n })
	}
	reload(without)
	reload(full)
	if code := f.status(vic, "/api/v1/session"); code != 401 {
		t.Errorf("vic's session after her removal and the file restored (reloads): %d, want 401", code)
	}
	if vic = f.signIn("vic"); vic == nil {
		t.Fatal("vic, back, cannot sign in")
	}
	f.restart()
	if code := f.status(vic, "/api/v1/session"); code != 200 {
		t.Errorf("vic's session after a restart: %d, want 200 (kept users keep their sessions)", code)
	}
	f.write(without)
	f.restart()
	f.write(full)
	f.restart()
	if code := f.status(vic, "/api/v1/session"); code != 401 {
		t.Errorf("vic's session after a start without her and one with the file restored: %d, want 401", code)
	}
	if code := f.status(ana, "/api/v1/session"); code != 200 {
		t.Errorf("ana's session after the restarts: %d, want 200", code)
	}
}
