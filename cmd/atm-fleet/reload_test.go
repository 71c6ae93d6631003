package main

import (
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
	m := fleettest.StartMosquitto(t, "")
	dir := t.TempDir()
	bin := buildFleet(t, dir)
	h, _ := bcrypt.GenerateFromPassword([]byte("correct horse"), bcrypt.MinCost)
	ana := fmt.Sprintf("  - {name: ana, role: admin, password_hash: %q}\n", h)
	lou := fmt.Sprintf("  - {name: lou, role: analyst, password_hash: %q}\n", h)
	users := filepath.Join(dir, "users.yaml")
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(users, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("users:\n" + ana + lou)
	port := fleettest.FreePort(t)
	cfgPath := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`store: {driver: bolt, path: %s}
mqtt: {brokers: [%q], prefix: atm/e2e, client_id: fleet-e2e-reload}
web: {listen: "127.0.0.1:%d", users_file: %s}
`, filepath.Join(dir, "fleet.db"), m.URL(), port, users)), 0o644)

	cmd := exec.Command(bin, "run", "--config", cfgPath)
	logFile, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd.Stderr = logFile
	logs := func() string { b, _ := os.ReadFile(logFile.Name()); return string(b) }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	signIn := func(user string) *http.Client {
		jar, _ := cookiejar.New(nil)
		c := &http.Client{Jar: jar, Timeout: 10 * time.Second}
		req, _ := http.NewRequest("GET", base+"/login", nil)
		req.Header.Set("Accept", "application/json")
		r, err := c.Do(req)
		if err != nil {
			return nil
		}
		var tok struct{ CSRF string }
		json.NewDecoder(r.Body).Decode(&tok)
		r.Body.Close()
		req, _ = http.NewRequest("POST", base+"/login", strings.NewReader(url.Values{"csrf": {tok.CSRF}, "user": {user}, "password": {"correct horse"}}.Encode()))
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
	status := func(c *http.Client, path string) int {
		r, err := c.Get(base + path)
		if err != nil {
			return 0
		}
		r.Body.Close()
		return r.StatusCode
	}
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
