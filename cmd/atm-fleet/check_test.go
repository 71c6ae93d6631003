package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/periocular/atm-agent/sync/wire"
)

func writeFile(t *testing.T, path, body string, mode os.FileMode) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// Files the config names that run would fail on (a missing CA, an
// unreadable password file) and an invalid listen address: config check
// refuses them, and run exits 78, which the unit does not restart.
func TestSetupErrorsExit78(t *testing.T) {
	dir := t.TempDir()
	users := writeUsers(t, dir)
	pw := writeFile(t, filepath.Join(dir, "mqtt.password"), "secret\n", 0o600)
	for name, mqttWeb := range map[string]string{
		"missing ca_file":      `mqtt: {tls: {ca_file: /nonexistent/ca.pem}}` + "\nweb: {listen: 127.0.0.1:0, users_file: " + users + "}",
		"ca_file not PEM":      `mqtt: {tls: {ca_file: ` + pw + `}}` + "\nweb: {listen: 127.0.0.1:0, users_file: " + users + "}",
		"missing password":     `mqtt: {username: u, password_file: /nonexistent/pw}` + "\nweb: {listen: 127.0.0.1:0, users_file: " + users + "}",
		"listen port invalid":  "web: {listen: 127.0.0.1:18181x, users_file: " + users + "}",
		"web tls key missing":  "web: {listen: 127.0.0.1:0, users_file: " + users + ", tls_cert_file: /nonexistent/c, tls_key_file: /nonexistent/k}",
		"postgres dsn missing": "store: {driver: postgres, dsn_file: /nonexistent/dsn}\nweb: {listen: 127.0.0.1:0, users_file: " + users + "}",
	} {
		cfg := writeFile(t, filepath.Join(dir, "c.yaml"), fmt.Sprintf("store: {driver: bolt, path: %s}\n%s\n", filepath.Join(dir, "fleet.db"), mqttWeb), 0o644)
		if strings.HasPrefix(mqttWeb, "store:") {
			writeFile(t, cfg, mqttWeb+"\n", 0o644)
		}
		var errb bytes.Buffer
		if code := runMain(context.Background(), []string{"config", "check", cfg}, nil, io.Discard, &errb); code == 0 {
			t.Errorf("%s: config check passed", name)
		}
		errb.Reset()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if code := runMain(ctx, []string{"run", "--config", cfg}, nil, io.Discard, &errb); code != exitSetup {
			t.Errorf("%s: run exit %d, want %d: %s", name, code, exitSetup, errb.String())
		}
	}
}

// A password, DSN or private key file readable by group or others: config
// check warns (postinst shows it), naming the file.
func TestConfigCheckWarnsReadableSecret(t *testing.T) {
	dir := t.TempDir()
	users := writeUsers(t, dir)
	pw := writeFile(t, filepath.Join(dir, "mqtt.password"), "secret\n", 0o644)
	cfg := writeFile(t, filepath.Join(dir, "c.yaml"), fmt.Sprintf("mqtt: {username: u, password_file: %s}\nweb: {users_file: %s}\n", pw, users), 0o644)
	var out bytes.Buffer
	if code := runMain(context.Background(), []string{"config", "check", cfg}, nil, &out, os.Stderr); code != 0 {
		t.Fatalf("config check: exit %d", code)
	}
	if !strings.Contains(out.String(), cfg+": warning: mqtt.password_file "+pw+": permissions 0644") {
		t.Fatalf("no warning about %s: %q", pw, out.String())
	}
	os.Chmod(pw, 0o600)
	out.Reset()
	runMain(context.Background(), []string{"config", "check", cfg}, nil, &out, os.Stderr)
	if strings.Contains(out.String(), "warning") {
		t.Fatalf("warning for a 0600 file: %q", out.String())
	}
}

// With --credentials-from (the unit's ExecStartPre=+, as root), config
// check reads the users file and the session key at their source, not
// systemd's 0400 copy: a source readable by others, too short, or with no
// user is refused, naming the source.
func TestConfigCheckCredentialSources(t *testing.T) {
	src := t.TempDir()
	writeUsers(t, src)
	key := writeFile(t, filepath.Join(src, "session.key"), strings.Repeat("k", 48)+"\n", 0o600)
	cfg := writeFile(t, filepath.Join(t.TempDir(), "config.yaml"),
		"web: {users_file: /run/credentials/atm-fleet.service/users.yaml, session_key_file: /run/credentials/atm-fleet.service/session.key}\n", 0o644)
	check := func() (int, string) {
		var out bytes.Buffer
		code := runMain(context.Background(), []string{"config", "check", "--credentials-from", src, cfg}, nil, &out, &out)
		return code, out.String()
	}
	if code, out := check(); code != 0 {
		t.Fatalf("good sources: exit %d: %s", code, out)
	}
	os.Chmod(key, 0o644)
	if code, out := check(); code == 0 || !strings.Contains(out, key) || !strings.Contains(out, "too open") {
		t.Fatalf("session key 0644: exit %d: %s", code, out)
	}
	writeFile(t, key, "x\n", 0o600)
	if code, out := check(); code == 0 || !strings.Contains(out, "1 bytes, want at least 32") || !strings.Contains(out, "> "+key) {
		t.Fatalf("short key: exit %d: %s", code, out)
	}
	writeFile(t, key, strings.Repeat("k", 48), 0o600)
	os.Chmod(filepath.Join(src, "users.yaml"), 0o666)
	if code, out := check(); code == 0 || !strings.Contains(out, filepath.Join(src, "users.yaml")) {
		t.Fatalf("users file 0666: exit %d: %s", code, out)
	}
	writeFile(t, filepath.Join(src, "users.yaml"), "users:\n", 0o600)
	if code, out := check(); code != exitSetup || !strings.Contains(out, "no users") {
		t.Fatalf("no users: exit %d: %s", code, out)
	}
}

// users check: what postinst asks before it starts the service; any users
// file run accepts counts (JSON style too), an empty hash does not.
func TestUsersCheck(t *testing.T) {
	dir := t.TempDir()
	users := writeUsers(t, dir)
	b, _ := os.ReadFile(users)
	hash := strings.Split(strings.Split(string(b), "password_hash: \"")[1], "\"")[0]
	for name, tc := range map[string]struct {
		body string
		code int
	}{
		"yaml":             {string(b), 0},
		"json":             {`{"users": [{"name": "admin", "role": "admin", "password_hash": "` + hash + `"}]}`, 0},
		"none":             {"users:\n#  - {name: a, role: admin, password_hash: \"x\"}\n", exitSetup},
		"empty hash":       {"users:\n  - {name: a, role: admin, password_hash: \"\"}\n", exitSetup},
		"scoped":           {"users:\n  - {name: vic, role: viewer, password_hash: \"" + hash + "\", sites: [lisbon-01, \"porto-*\"]}\n", 0},
		"admin with sites": {"users:\n  - {name: a, role: admin, password_hash: \"" + hash + "\", sites: [lisbon-01]}\n", exitSetup},
		"empty sites":      {"users:\n  - {name: a, role: analyst, password_hash: \"" + hash + "\", sites: []}\n", exitSetup},
		"glob":             {"users:\n  - {name: a, role: analyst, password_hash: \"" + hash + "\", sites: [\"lis?on\"]}\n", exitSetup},
	} {
		writeFile(t, users, tc.body, 0o600)
		if code := runMain(context.Background(), []string{"users", "check", users}, nil, io.Discard, io.Discard); code != tc.code {
			t.Errorf("%s: exit %d, want %d", name, code, tc.code)
		}
	}
	// Each user's role and scope, sorted by name.
	writeFile(t, users, "users:\n  - {name: vic, role: viewer, password_hash: \""+hash+"\", sites: [lisbon-01, \"porto-*\"]}\n"+
		"  - {name: ana, role: analyst, password_hash: \""+hash+"\"}\n", 0o600)
	var out bytes.Buffer
	if code := runMain(context.Background(), []string{"users", "check", users}, nil, &out, io.Discard); code != 0 ||
		out.String() != users+": 2 user(s)\n  ana: analyst, every site\n  vic: viewer, sites lisbon-01, porto-*\n" {
		t.Errorf("users check: exit %d, %q", code, out.String())
	}
}

// config get prints one value, for postinst's message (any indentation).
func TestConfigGet(t *testing.T) {
	cfg := writeFile(t, filepath.Join(t.TempDir(), "c.yaml"), "web:\n  listen: 0.0.0.0:9443\n  users_file: /u\n", 0o644)
	var out bytes.Buffer
	if code := runMain(context.Background(), []string{"config", "get", cfg, "web.listen"}, nil, &out, os.Stderr); code != 0 || out.String() != "0.0.0.0:9443\n" {
		t.Fatalf("config get web.listen: exit %d, %q", code, out.String())
	}
	if code := runMain(context.Background(), []string{"config", "get", cfg, "web.nope"}, nil, io.Discard, io.Discard); code == 0 {
		t.Fatal("config get of an unknown key passed")
	}
}

// Usage errors exit 2 (the man page's EXIT STATUS); passwd --help prints
// help instead of reading a password.
func TestUsageAndHelp(t *testing.T) {
	if code := runMain(context.Background(), []string{"config", "check"}, nil, io.Discard, io.Discard); code != 2 {
		t.Errorf("config check without FILE: exit %d, want 2", code)
	}
	var out bytes.Buffer
	if code := runMain(context.Background(), []string{"passwd", "--help"}, strings.NewReader("short\n"), &out, io.Discard); code != 0 ||
		!strings.Contains(out.String(), "usage: atm-fleet passwd") {
		t.Errorf("passwd --help: exit %d, %q", code, out.String())
	}
	// Every --help: on stdout, nothing on stderr, exit 0 (docs/operations.md).
	for args, want := range map[string]string{
		"--help": "atm-fleet run --config FILE", "run --help": "-config", "compact -h": "-wait",
		"config --help": "atm-fleet config get FILE KEY", "config check --help": "-credentials-from",
		"config get --help": "atm-fleet config get FILE KEY", "config default --help": "atm-fleet config default",
		"users --help": "atm-fleet users check [--reload PID] FILE", "devices --help": "atm-fleet devices key set", "devices key list --help": "atm-fleet devices key list", "users check --help": "password_hash", "passwd -h": "usage: atm-fleet passwd",
	} {
		var out, errb bytes.Buffer
		if code := runMain(context.Background(), strings.Fields(args), strings.NewReader(""), &out, &errb); code != 0 || !strings.Contains(out.String(), want) || errb.Len() > 0 {
			t.Errorf("atm-fleet %s: exit %d, stdout %q, stderr %q; want 0, %q on stdout", args, code, out.String(), errb.String(), want)
		}
	}
}

// A file the config names as a credential copy (a drop-in's
// LoadCredential=): outside the unit (postinst) config check does not
// read it, as it exists only while the service runs; under the unit
// ($CREDENTIALS_DIRECTORY) it does; --credentials-from reads its source.
func TestConfigCheckCredentialCopies(t *testing.T) {
	src := t.TempDir()
	users := writeUsers(t, src)
	writeFile(t, filepath.Join(src, "session.key"), strings.Repeat("k", 48), 0o600)
	cfg := writeFile(t, filepath.Join(t.TempDir(), "c.yaml"), "mqtt: {username: u, password_file: /run/credentials/atm-fleet.service/mqtt.password}\n"+
		"web: {users_file: "+users+", session_key_file: /run/credentials/atm-fleet.service/session.key}\n", 0o644)
	check := func(args ...string) int {
		return runMain(context.Background(), append([]string{"config", "check"}, append(args, cfg)...), nil, io.Discard, io.Discard)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	if code := check(); code != 0 {
		t.Errorf("outside the unit: exit %d, want 0 (the copy is not read)", code)
	}
	if code := check("--credentials-from", src); code == 0 {
		t.Errorf("--credentials-from without the source mqtt.password: passed")
	}
	writeFile(t, filepath.Join(src, "mqtt.password"), "pw\n", 0o600)
	if code := check("--credentials-from", src); code != 0 {
		t.Errorf("--credentials-from with the source: exit %d", code)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", "/run/credentials/atm-fleet.service")
	if code := check(); code == 0 {
		t.Errorf("under the unit with no copy: passed")
	}
}

// What run refuses at start (a missing users file or session key, a hash
// that is not bcrypt, a users file without a user) config check refuses
// too, exit 78, with run's message; before, it said ok.
func TestConfigCheckRefusesWhatRunRefuses(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	dir := t.TempDir()
	users := writeUsers(t, dir)
	key := writeFile(t, filepath.Join(dir, "session.key"), strings.Repeat("k", 48), 0o600)
	plain := writeFile(t, filepath.Join(dir, "plain.yaml"), "users:\n  - {name: ana, role: analyst, password_hash: \"correct horse\"}\n", 0o600)
	empty := writeFile(t, filepath.Join(dir, "empty.yaml"), "users:\n", 0o600)
	for name, tc := range map[string]struct{ web, want string }{
		"users file missing":   {"users_file: " + filepath.Join(dir, "nope.yaml"), "no such file"},
		"session key missing":  {"users_file: " + users + ", session_key_file: " + filepath.Join(dir, "nope.key"), "no such file"},
		"hash not bcrypt":      {"users_file: " + plain, "password_hash is not a bcrypt hash"},
		"no user":              {"users_file: " + empty, "users file: no users"},
		"session key too open": {"users_file: " + users + ", session_key_file: " + writeFile(t, filepath.Join(dir, "open.key"), strings.Repeat("k", 48), 0o644), "too open"},
	} {
		cfg := writeFile(t, filepath.Join(dir, "c.yaml"), fmt.Sprintf("store: {driver: bolt, path: %s}\nweb: {listen: 127.0.0.1:0, %s}\n", filepath.Join(dir, "fleet.db"), tc.web), 0o644)
		var check, run bytes.Buffer
		code := runMain(context.Background(), []string{"config", "check", cfg}, nil, io.Discard, &check)
		if code != exitSetup || !strings.Contains(check.String(), tc.want) {
			t.Errorf("%s: config check exit %d, %q; want %d, %q", name, code, check.String(), exitSetup, tc.want)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if code := runMain(ctx, []string{"run", "--config", cfg}, nil, io.Discard, &run); code != exitSetup {
			t.Errorf("%s: run exit %d", name, code)
		}
		_, runMsg, _ := strings.Cut(run.String(), "atm-fleet run: ")
		if !strings.HasSuffix(check.String(), runMsg) {
			t.Errorf("%s: config check says %q, run %q", name, check.String(), runMsg)
		}
	}
	// The unit's copies are not read outside it, and the check says so.
	cfg := writeFile(t, filepath.Join(dir, "c.yaml"), "web: {users_file: /run/credentials/atm-fleet.service/users.yaml, session_key_file: "+key+"}\n", 0o644)
	var out bytes.Buffer
	if code := runMain(context.Background(), []string{"config", "check", cfg}, nil, &out, io.Discard); code != 0 ||
		!strings.Contains(out.String(), cfg+": note: web.users_file: systemd's copies") {
		t.Errorf("credential copy outside the unit: exit %d, %q", code, out.String())
	}
}

// The command key as the packaged unit takes it (LoadCredential=,
// commands.private_key_file under /run/credentials/atm-fleet.service/):
// outside the unit (postinst, root's check) the copy, the dynamic user's,
// present only while the service runs, is not read, as for the users file
// and session key, and the check passes and says so; --credentials-from
// (the unit's root check) reads the source and refuses it readable by
// others, naming it.
func TestConfigCheckCommandKeyCopy(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	src := t.TempDir()
	writeUsers(t, src)
	writeFile(t, filepath.Join(src, "session.key"), strings.Repeat("k", 48), 0o600)
	cfg := writeFile(t, filepath.Join(t.TempDir(), "c.yaml"), "web: {users_file: /run/credentials/atm-fleet.service/users.yaml, session_key_file: /run/credentials/atm-fleet.service/session.key}\n"+
		"commands: {enabled: true, private_key_file: /run/credentials/atm-fleet.service/command.key}\n", 0o644)
	check := func(args ...string) (int, string) {
		var out bytes.Buffer
		code := runMain(context.Background(), append([]string{"config", "check"}, append(args, cfg)...), nil, &out, &out)
		return code, out.String()
	}
	if code, out := check(); code != 0 || !strings.Contains(out, "commands.private_key_file") {
		t.Errorf("outside the unit: exit %d, %q; want 0 and a note naming commands.private_key_file", code, out)
	}
	if code, out := check("--credentials-from", src); code != exitSetup || !strings.Contains(out, filepath.Join(src, "command.key")) {
		t.Errorf("--credentials-from without the source command.key: exit %d, %q", code, out)
	}
	_, priv, _ := wire.GenerateCommandKey()
	pemb, _ := wire.MarshalPrivateKeyPEM(priv)
	key := writeFile(t, filepath.Join(src, "command.key"), string(pemb), 0o600)
	if code, out := check("--credentials-from", src); code != 0 {
		t.Errorf("--credentials-from with the source: exit %d, %q", code, out)
	}
	os.Chmod(key, 0o644)
	if code, out := check("--credentials-from", src); code != exitSetup || !strings.Contains(out, key+": permissions 0644 are too open") {
		t.Errorf("--credentials-from, source 0644: exit %d, %q", code, out)
	}
}

// A command key the config names directly (/etc/atm-fleet/command.key,
// the natural first try): root's check warns that only root can read it
// and names LoadCredential=; the service's user, refused it, is told the
// same.
func TestCommandKeyRootOnlyNamesLoadCredential(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a root-owned 0600 key and a user who cannot read it")
	}
	dir, err := os.MkdirTemp("", "atm-fleet-key-") // t.TempDir's parent is 0700: the other user must reach it
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	users := writeUsers(t, dir)
	os.Chmod(users, 0o644)
	_, priv, _ := wire.GenerateCommandKey()
	pemb, _ := wire.MarshalPrivateKeyPEM(priv)
	key := writeFile(t, filepath.Join(dir, "command.key"), string(pemb), 0o600)
	cfg := writeFile(t, filepath.Join(dir, "c.yaml"), "web: {users_file: "+users+"}\ncommands: {enabled: true, private_key_file: "+key+"}\n", 0o644)
	var out bytes.Buffer
	if code := runMain(context.Background(), []string{"config", "check", cfg}, nil, &out, &out); code != 0 ||
		!strings.Contains(out.String(), "warning: commands.private_key_file "+key+": only root can read it") || !strings.Contains(out.String(), "LoadCredential=command.key:") {
		t.Errorf("root's check: exit %d, %q; want 0 and a warning naming LoadCredential=", code, out.String())
	}
	bin := filepath.Join(dir, "atm-fleet")
	if b, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, b)
	}
	cmd := exec.Command(bin, "config", "check", cfg)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	b, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(b), "permission denied") || !strings.Contains(string(b), "LoadCredential=command.key:") {
		t.Errorf("as nobody: %v, %q; want a refusal naming LoadCredential=", err, b)
	}
}
