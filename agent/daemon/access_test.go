package daemon

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/periocular/atm-agent/internal/testenv"
)

// fakeAccess makes access(2) answer errs[path] for these paths and the
// real answer for every other.
func fakeAccess(t *testing.T, errs map[string]error) {
	t.Helper()
	old := access
	access = func(p string, mode uint32) error {
		if err, ok := errs[p]; ok {
			return err
		}
		return old(p, mode)
	}
	t.Cleanup(func() { access = old })
}

func checkFilesOf(t *testing.T, yaml string) error {
	t.Helper()
	c, err := ParseConfig([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return c.CheckFiles()
}

func wantAll(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("CheckFiles passed, want an error with %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
}

// `config check` is the unit's ExecStartPre and runs in the unit's sandbox
// as its user: what access(2) answers there is what run's open will meet.
// A store folder ProtectSystem=strict leaves read-only (EROFS; before, the
// check said ok and run failed at every start with `read-only file
// system`), one the user may not write (EACCES), a missing one, and an
// existing store the user may not read and write (a backup restored as
// root:root 0600) are refused, naming the setting, the path, the reason and
// the fix; for EROFS the exact drop-in. The same for the trigger socket's
// folder. access(2) is faked here for the read-only and permission cases;
// TestCheckFilesAsNonRoot and TestCheckFilesReadOnlyMount meet them for
// real.
func TestCheckFilesStoreAndSocketAccess(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "srv atm") // a space: the drop-in line quotes it
	os.Mkdir(data, 0o700)
	store := filepath.Join(data, "agent.db")
	cfg := func(storePath, extra string) string {
		return "device: {id: a, site: b}\nmodels: {dir: " + dir + "/nomodels}\nstore: {path: \"" + storePath + "\"}\n" + extra
	}
	sockCfg := func(sock string) string {
		return "trigger:\n  http:\n    enabled: true\n    socket: " + sock + "\n"
	}

	t.Run("writable folder passes", func(t *testing.T) {
		if err := checkFilesOf(t, cfg(store, "")); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("read-only folder (ProtectSystem=strict)", func(t *testing.T) {
		fakeAccess(t, map[string]error{data: syscall.EROFS})
		wantAll(t, checkFilesOf(t, cfg(store, "")), "store.path "+store, "its folder "+data, "read-only file system",
			"ProtectSystem=strict", "keep the store under /var/lib/atm-agent", "systemctl edit atm-agent", `docs/operations.md, "Moving the store"`,
			"[Service]\n    ReadWritePaths=\""+data+"\"\n", "systemctl restart atm-agent")
	})
	t.Run("folder not writable by the user", func(t *testing.T) {
		fakeAccess(t, map[string]error{data: syscall.EACCES})
		label, name, group := processUser()
		wantAll(t, checkFilesOf(t, cfg(store, "")), "store.path "+store, "its folder "+data, "not writable by this process, user "+label,
			"permission denied", "chown "+name+":"+group+" "+data)
	})
	t.Run("missing folder", func(t *testing.T) {
		missing := filepath.Join(dir, "sub", "agent.db")
		_, name, group := processUser()
		wantAll(t, checkFilesOf(t, cfg(missing, "")), "store.path "+missing, "its folder "+filepath.Join(dir, "sub")+" does not exist",
			"install -d -m 0700 -o "+name+" -g "+group+" "+filepath.Join(dir, "sub"), "also needs a drop-in with ReadWritePaths="+filepath.Join(dir, "sub"),
			"keep the store under /var/lib/atm-agent")
	})
	t.Run("existing store not readable and writable", func(t *testing.T) {
		if err := os.WriteFile(store, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(store)
		fakeAccess(t, map[string]error{store: syscall.EACCES})
		_, name, group := processUser()
		wantAll(t, checkFilesOf(t, cfg(store, "")), "store.path "+store+" exists and is not readable and writable by this process",
			"mode 0600", "permission denied", "chown "+name+":"+group+" "+store)
	})
	t.Run("a link's target folder is the one checked", func(t *testing.T) {
		if err := os.WriteFile(store, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(store)
		link := filepath.Join(dir, "link.db")
		if err := os.Symlink(store, link); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(link)
		fakeAccess(t, map[string]error{data: syscall.EROFS})
		wantAll(t, checkFilesOf(t, cfg(link, "")), "store.path "+link, "its folder "+data, "ReadWritePaths=\""+data+"\"")
	})
	t.Run("the unit's state folder missing passes", func(t *testing.T) {
		if _, err := os.Stat(unitStateDir); err == nil {
			t.Skipf("%s exists here", unitStateDir)
		}
		if err := checkFilesOf(t, cfg(unitStateDir+"/agent.db", "")); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a folder under /home", func(t *testing.T) {
		err := checkWritableFolder("store.path", "/home/atm/agent.db", "/home/atm-test-no-such-"+strconv.Itoa(os.Getpid()), "run creates the store there", "keep it", "docs")
		wantAll(t, err, "does not exist", "ProtectHome=yes")
	})
	t.Run("socket folder read-only", func(t *testing.T) {
		sdir := filepath.Join(dir, "run-atm")
		os.Mkdir(sdir, 0o700)
		sock := filepath.Join(sdir, "trigger.sock")
		fakeAccess(t, map[string]error{sdir: syscall.EROFS})
		wantAll(t, checkFilesOf(t, cfg(store, sockCfg(sock))), "trigger.http.socket "+sock, "its folder "+sdir, "read-only file system",
			"run creates the socket and trigger.sock.lock there", "keep the socket in /run/atm-agent", "ReadWritePaths="+sdir+"\n", "docs/trigger-api.md")
	})
	t.Run("socket folder not writable", func(t *testing.T) {
		sdir := filepath.Join(dir, "run-atm2")
		os.Mkdir(sdir, 0o700)
		sock := filepath.Join(sdir, "trigger.sock")
		fakeAccess(t, map[string]error{sdir: syscall.EACCES})
		wantAll(t, checkFilesOf(t, cfg(store, sockCfg(sock))), "trigger.http.socket "+sock, "not writable by this process")
	})
	t.Run("socket lock file not openable", func(t *testing.T) {
		sdir := filepath.Join(dir, "run-atm3")
		os.Mkdir(sdir, 0o700)
		sock := filepath.Join(sdir, "trigger.sock")
		os.WriteFile(sock+".lock", nil, 0o600)
		fakeAccess(t, map[string]error{sock + ".lock": syscall.EACCES})
		wantAll(t, checkFilesOf(t, cfg(store, sockCfg(sock))), "trigger.http.socket "+sock+".lock exists and is not readable and writable", "remove it with the agent stopped")
	})
	t.Run("the unit's runtime folder missing passes", func(t *testing.T) {
		if _, err := os.Stat(unitRuntimeDir); err == nil {
			t.Skipf("%s exists here", unitRuntimeDir)
		}
		if err := checkFilesOf(t, cfg(store, sockCfg(unitRuntimeDir+"/trigger.sock"))); err != nil {
			t.Fatal(err)
		}
	})
}

// mqttCommandsYAML turns on MQTT commands with seen_file (left out when
// ""), for the seen_file checks.
func mqttCommandsYAML(seen string) string {
	s := "mqtt:\n  enabled: true\n  brokers: [tcp://127.0.0.1:1883]\n  commands:\n    enabled: true\n" +
		"    public_keys: [{name: central, key: \"A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=\"}]\n"
	if seen != "" {
		s += "    seen_file: \"" + seen + "\"\n"
	}
	return s
}

// A custom mqtt.commands.seen_file is checked as the store is: run reads it
// at start and records each accepted command's id through a copy renamed
// over it, so its folder must exist and be writable and an existing file
// readable. Before, `config check` passed a seen_file in a folder the
// unit leaves read-only, run started, and every signed command was then
// refused as unavailable. Faked access(2) here; TestCheckFilesAsNonRoot and
// TestCheckFilesReadOnlyMount meet the same for real.
func TestCheckFilesSeenFileAccess(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	cmds := filepath.Join(dir, "cmd seen") // a space: the drop-in line quotes it
	for _, d := range []string{data, cmds} {
		os.Mkdir(d, 0o700)
	}
	seen := filepath.Join(cmds, "seen.json")
	cfg := func(seen string) string {
		return "device: {id: a, site: b}\nmodels: {dir: " + dir + "/nomodels}\nstore: {path: " + data + "/agent.db}\n" + mqttCommandsYAML(seen)
	}
	const key = "mqtt.commands.seen_file "

	t.Run("writable folder passes", func(t *testing.T) {
		if err := checkFilesOf(t, cfg(seen)); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("read-only folder (ProtectSystem=strict)", func(t *testing.T) {
		fakeAccess(t, map[string]error{cmds: syscall.EROFS})
		wantAll(t, checkFilesOf(t, cfg(seen)), key+seen, "its folder "+cmds, "read-only file system", "seen.json.tmp-*",
			"ProtectSystem=strict", "leave mqtt.commands.seen_file empty", "systemctl edit atm-agent", `docs/operations.md, "Moving the store"`,
			"[Service]\n    ReadWritePaths=\""+cmds+"\"\n", "systemctl restart atm-agent")
	})
	t.Run("folder not writable by the user", func(t *testing.T) {
		fakeAccess(t, map[string]error{cmds: syscall.EACCES})
		label, name, group := processUser()
		wantAll(t, checkFilesOf(t, cfg(seen)), key+seen, "its folder "+cmds, "not writable by this process, user "+label,
			"permission denied", "chown "+name+":"+group+" "+cmds)
	})
	t.Run("missing folder", func(t *testing.T) {
		missing := filepath.Join(dir, "sub", "seen.json")
		_, name, group := processUser()
		wantAll(t, checkFilesOf(t, cfg(missing)), key+missing, "its folder "+filepath.Join(dir, "sub")+" does not exist",
			"install -d -m 0700 -o "+name+" -g "+group+" "+filepath.Join(dir, "sub"), "also needs a drop-in with ReadWritePaths="+filepath.Join(dir, "sub"))
	})
	t.Run("existing file not readable", func(t *testing.T) {
		if err := os.WriteFile(seen, []byte(`{"version":1,"ids":{}}`), 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(seen)
		fakeAccess(t, map[string]error{seen: syscall.EACCES})
		_, name, group := processUser()
		err := checkFilesOf(t, cfg(seen))
		wantAll(t, err, key+seen+" exists and is not readable by this process", "mode 0600", "permission denied", "chown "+name+":"+group+" "+seen)
		if strings.Contains(err.Error(), "readable and writable") {
			t.Errorf("a seen_file is replaced by rename, never written in place: %v", err)
		}
	})
	t.Run("the default, beside the store, is the store's folder", func(t *testing.T) {
		if err := checkFilesOf(t, cfg("")); err != nil {
			t.Fatal(err)
		}
		fakeAccess(t, map[string]error{data: syscall.EROFS})
		wantAll(t, checkFilesOf(t, cfg("")), "store.path "+data+"/agent.db", "its folder "+data)
	})
	t.Run("commands off: not checked", func(t *testing.T) {
		y := strings.Replace(cfg(filepath.Join(dir, "sub", "seen.json")), "  commands:\n    enabled: true\n", "  commands:\n    enabled: false\n", 1)
		if err := checkFilesOf(t, y); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("the unit's state folder missing passes", func(t *testing.T) {
		if _, err := os.Stat(unitStateDir); err == nil {
			t.Skipf("%s exists here", unitStateDir)
		}
		if err := checkFilesOf(t, cfg(unitStateDir+"/seen.json")); err != nil {
			t.Fatal(err)
		}
	})
}

// Run by root, permissions pass, so `config check` says what it can tell
// about the unit's user without claiming more: a socket_group that user is
// not in (checked in the group database, plus the unit's
// SupplementaryGroups=), and, under the state folder, a store file that
// user cannot read and write by owner and mode. Run by any other user it
// adds nothing (the check itself refuses then).
func TestRootWarnings(t *testing.T) {
	me, err := user.Current()
	if err != nil {
		t.Skip(err)
	}
	oldE, oldL := geteuid, lookupUnitUser
	t.Cleanup(func() { geteuid, lookupUnitUser = oldE, oldL })
	geteuid = func() int { return 0 }
	lookupUnitUser = func() (*user.User, error) { return me, nil } // stands in for atm-agent
	dir := t.TempDir()
	base := "device: {id: a, site: b}\nmodels: {dir: " + dir + "/nomodels}\nstore: {path: " + dir + "/agent.db, key_file: \"credential:store-key\"}\n"
	group := func(g string) string {
		return base + "trigger:\n  http:\n    enabled: true\n    socket: " + dir + "/t.sock\n    socket_group: \"" + g + "\"\n"
	}
	warnings := func(y string) string {
		c, err := ParseConfig([]byte(y))
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(c.Warnings(), "\n")
	}
	if w := warnings(group(me.Gid)); w != "" {
		t.Errorf("the user's primary group warned: %s", w)
	}
	const absent = 4242424 // a gid nobody is in
	w := warnings(group(strconv.Itoa(absent)))
	for _, s := range []string{"trigger.http.socket_group gid 4242424", "the unit runs the agent as atm-agent, which is not a member",
		"usermod -aG 4242424 atm-agent", "systemctl restart atm-agent", "checked as root"} {
		if !strings.Contains(w, s) {
			t.Errorf("warning lacks %q: %q", s, w)
		}
	}
	if g, err := user.LookupGroup("video"); err == nil { // SupplementaryGroups= adds it
		if w := warnings(group(g.Gid)); w != "" {
			t.Errorf("group video (added by the unit) warned: %s", w)
		}
	}
	lookupUnitUser = func() (*user.User, error) { return nil, user.UnknownUserError(unitUser) }
	if w := warnings(group(strconv.Itoa(absent))); !strings.Contains(w, "is not known") || !strings.Contains(w, "it must be") {
		t.Errorf("no unit user: %q", w)
	}
	geteuid = func() int { return 1000 }
	if w := warnings(group(strconv.Itoa(absent))); w != "" {
		t.Errorf("warned when not root: %s", w)
	}
}

// A store in the unit's state folder restored from a backup as root:root
// 0600: run as root, config check passes (root may open it), and warns
// that the unit's user cannot, with the chown. Only while the folder is
// already that user's: otherwise systemd (StateDirectory=) gives it all to
// that user at start, and the warning would be false.
func TestRootWarnsStoreTheUnitUserCannotOpen(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make files of two owners")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip(err)
	}
	state := filepath.Join(t.TempDir(), "state")
	os.Mkdir(state, 0o700)
	store := filepath.Join(state, "agent.db")
	os.WriteFile(store, nil, 0o600) // root:root 0600
	uid, gid := atoi(nobody.Uid), atoi(nobody.Gid)
	if w := storeRootWarnings(store, state, nobody); len(w) != 0 {
		t.Errorf("state folder not the user's (systemd chowns it all): warned %q", w)
	}
	if err := os.Chown(state, uid, gid); err != nil {
		t.Fatal(err)
	}
	w := strings.Join(storeRootWarnings(store, state, nobody), "\n")
	for _, s := range []string{"store.path " + store, "mode 0600", "not readable and writable by " + nobody.Username + ", the user the unit runs the agent as", "chown " + nobody.Username + ":", "checked as root"} {
		if !strings.Contains(w, s) {
			t.Errorf("warning lacks %q: %q", s, w)
		}
	}
	os.Chown(store, uid, gid)
	if w := storeRootWarnings(store, state, nobody); len(w) != 0 {
		t.Errorf("store the user's: warned %q", w)
	}
	sub := filepath.Join(state, "sub")
	os.Mkdir(sub, 0o755) // root's
	if w := strings.Join(storeRootWarnings(filepath.Join(sub, "agent.db"), state, nobody), "\n"); !strings.Contains(w, "its folder "+sub) {
		t.Errorf("subfolder not the user's: %q", w)
	}
	if w := storeRootWarnings(filepath.Join(t.TempDir(), "agent.db"), state, nobody); len(w) != 0 {
		t.Errorf("store outside the state folder: warned %q", w)
	}
	// A seen_file there: read by run, so readable is enough.
	seen := filepath.Join(state, "commands-seen.json")
	os.WriteFile(seen, nil, 0o600) // root:root 0600
	w = strings.Join(rootPathWarnings("mqtt.commands.seen_file", seen, state, true, accessR, state, nobody), "\n")
	for _, s := range []string{"mqtt.commands.seen_file " + seen, "mode 0600", "is not readable by " + nobody.Username, "chown " + nobody.Username + ":"} {
		if !strings.Contains(w, s) {
			t.Errorf("seen_file warning lacks %q: %q", s, w)
		}
	}
	os.Chmod(seen, 0o644)
	if w := rootPathWarnings("mqtt.commands.seen_file", seen, state, true, accessR, state, nobody); len(w) != 0 {
		t.Errorf("seen_file readable by the user: warned %q", w)
	}
	if w := strings.Join(rootPathWarnings("mqtt.commands.seen_file", filepath.Join(sub, "s.json"), sub, true, accessR, state, nobody), "\n"); !strings.Contains(w, "mqtt.commands.seen_file "+filepath.Join(sub, "s.json")+": its folder "+sub) {
		t.Errorf("seen_file subfolder not the user's: %q", w)
	}
}

// The real thing, as a user other than root (as nobody, in a child process,
// when the test runs as root): a store folder with mode 0555, a store file
// root:root 0600 (or 0000 of one's own) in a folder the user owns, a socket
// folder it may not write and a socket_group it is not a member of are
// refused by access(2) and getgroups(2) themselves, with the fixes; what is
// the user's passes.
func TestCheckFilesAsNonRoot(t *testing.T) {
	if fx := os.Getenv("ATM_DAEMON_TEST_FIXTURES"); fx != "" {
		checkAsNonRoot(t, fx)
		return
	}
	dir, err := os.MkdirTemp("", "atm-nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Chmod(filepath.Join(dir, "ro"), 0o700)
		os.Chmod(filepath.Join(dir, "sockro"), 0o700)
		os.RemoveAll(dir)
	})
	os.Chmod(dir, 0o755)
	for _, d := range []string{"ro", "sockro", "rw", "ok"} {
		os.Mkdir(filepath.Join(dir, d), 0o700)
	}
	os.WriteFile(filepath.Join(dir, "rw", "agent.db"), nil, 0o600)
	if os.Geteuid() != 0 {
		os.Chmod(filepath.Join(dir, "rw", "agent.db"), 0)
		os.Chmod(filepath.Join(dir, "ro"), 0o500)
		os.Chmod(filepath.Join(dir, "sockro"), 0o500)
		checkAsNonRoot(t, dir)
		return
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip(err)
	}
	uid, gid := atoi(nobody.Uid), atoi(nobody.Gid)
	os.Chmod(filepath.Join(dir, "ro"), 0o555)     // root's: nobody may not write
	os.Chmod(filepath.Join(dir, "sockro"), 0o555) // likewise
	os.Chown(filepath.Join(dir, "rw"), uid, gid)  // nobody's folder, root's 0600 file in it
	os.Chown(filepath.Join(dir, "ok"), uid, gid)
	// The test binary, where nobody may run it.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "daemon.test")
	if err := copyFile(self, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestCheckFilesAsNonRoot$", "-test.count=1", "-test.v")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "ATM_DAEMON_TEST_FIXTURES="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestCheckFilesAsNonRoot") {
		t.Fatalf("as nobody: %v\n%s", err, out)
	}
	t.Logf("as nobody:\n%s", out)
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// checkAsNonRoot runs the checks on the fixtures in dir, as a user other
// than root.
func checkAsNonRoot(t *testing.T, dir string) {
	if os.Geteuid() == 0 {
		t.Fatal("running as root")
	}
	label, name, group := processUser()
	t.Logf("as %s", label)
	cfg := func(store, extra string) string {
		return "device: {id: a, site: b}\nmodels: {dir: " + dir + "/nomodels}\nstore: {path: " + store + "}\n" + extra
	}
	sock := func(p, group string) string {
		s := "trigger:\n  http:\n    enabled: true\n    socket: " + p + "\n"
		if group != "" {
			s += "    socket_group: \"" + group + "\"\n"
		}
		return s
	}
	ro, rw, ok := filepath.Join(dir, "ro"), filepath.Join(dir, "rw"), filepath.Join(dir, "ok")
	wantAll(t, checkFilesOf(t, cfg(ro+"/agent.db", "")), "store.path "+ro+"/agent.db", "its folder "+ro+" is not writable by this process, user "+label, "permission denied", "chown "+name+":"+group+" "+ro)
	wantAll(t, checkFilesOf(t, cfg(rw+"/agent.db", "")), "store.path "+rw+"/agent.db exists and is not readable and writable by this process", "permission denied", "chown "+name+":"+group+" "+rw+"/agent.db")
	wantAll(t, checkFilesOf(t, cfg(ok+"/sub/agent.db", "")), "its folder "+ok+"/sub does not exist")
	wantAll(t, checkFilesOf(t, cfg(ok+"/agent.db", sock(dir+"/sockro/t.sock", ""))), "trigger.http.socket "+dir+"/sockro/t.sock", "not writable by this process")
	if err := checkFilesOf(t, cfg(ok+"/agent.db", sock(ok+"/t.sock", ""))); err != nil {
		t.Errorf("the user's own folders: %v", err)
	}
	wantAll(t, checkFilesOf(t, cfg(ok+"/agent.db", mqttCommandsYAML(ro+"/seen.json"))), "mqtt.commands.seen_file "+ro+"/seen.json", "its folder "+ro+" is not writable by this process", "chown "+name+":"+group+" "+ro)
	wantAll(t, checkFilesOf(t, cfg(ok+"/agent.db", mqttCommandsYAML(rw+"/agent.db"))), "mqtt.commands.seen_file "+rw+"/agent.db exists and is not readable by this process")
	if err := checkFilesOf(t, cfg(ok+"/agent.db", mqttCommandsYAML(ok+"/seen.json"))); err != nil {
		t.Errorf("a seen_file in the user's own folder: %v", err)
	}
	// A group it is not in: root's (gid 0), unless it is in it.
	groups, _ := os.Getgroups()
	if os.Getegid() != 0 && !slices.Contains(groups, 0) {
		wantAll(t, checkFilesOf(t, cfg(ok+"/agent.db", sock(ok+"/t.sock", "0"))), "trigger.http.socket_group", "(gid 0)", "is not a member of it", "usermod -aG "+groupName(0, "0")+" "+name)
	}
	if err := checkFilesOf(t, cfg(ok+"/agent.db", sock(ok+"/t.sock", strconv.Itoa(os.Getegid())))); err != nil {
		t.Errorf("its own group: %v", err)
	}
}

// A real read-only mount (what ProtectSystem=strict makes of a folder the
// unit does not list): in a child process in a mount namespace of its own,
// a folder bind-mounted read-only. access(2) answers EROFS even to root,
// so the check refuses it run as root too, with the drop-in.
func TestCheckFilesReadOnlyMount(t *testing.T) {
	if d := os.Getenv("ATM_DAEMON_TEST_ROMOUNT"); d != "" {
		if err := syscall.Mount(d, d, "", syscall.MS_BIND, ""); err != nil {
			t.Skipf("bind mount: %v", err)
		}
		if err := syscall.Mount("", d, "", syscall.MS_REMOUNT|syscall.MS_BIND|syscall.MS_RDONLY, ""); err != nil {
			t.Skipf("read-only remount: %v", err)
		}
		if err := access(d, accessW); !errors.Is(err, syscall.EROFS) {
			t.Fatalf("access(W_OK) on the read-only mount: %v, want EROFS", err)
		}
		y := "device: {id: a, site: b}\nmodels: {dir: " + d + "/nomodels}\nstore: {path: " + d + "/agent.db}\n"
		wantAll(t, checkFilesOf(t, y), "store.path "+d+"/agent.db", "read-only file system", "ReadWritePaths="+d+"\n")
		// A seen_file there, the store in a writable folder.
		y = "device: {id: a, site: b}\nmodels: {dir: " + d + "/nomodels}\nstore: {path: " + os.Getenv("ATM_DAEMON_TEST_RWDIR") + "/agent.db}\n" + mqttCommandsYAML(d+"/seen.json")
		wantAll(t, checkFilesOf(t, y), "mqtt.commands.seen_file "+d+"/seen.json", "read-only file system", "ReadWritePaths="+d+"\n")
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for a mount namespace")
	}
	d := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCheckFilesReadOnlyMount$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "ATM_DAEMON_TEST_ROMOUNT="+d, "ATM_DAEMON_TEST_RWDIR="+t.TempDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS} // Go makes / private first
	out, err := cmd.CombinedOutput()
	switch {
	case err != nil:
		t.Fatalf("child: %v\n%s", err, out)
	case strings.Contains(string(out), "--- SKIP"):
		t.Skipf("no mounts here:\n%s", out)
	case !strings.Contains(string(out), "--- PASS: TestCheckFilesReadOnlyMount"):
		t.Fatalf("child did not pass:\n%s", out)
	}
	t.Log(strings.TrimSpace(string(out)))
}

// The unit the constants describe: its user, state and runtime folders
// and supplementary groups, as systemd/atm-agent.service says.
func TestUnitConstantsMatchTheUnit(t *testing.T) {
	b, err := os.ReadFile(testenv.Path("systemd", "atm-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	unit := "\n" + string(b)
	for _, line := range []string{
		"User=" + unitUser, "Group=" + unitUser,
		"StateDirectory=" + filepath.Base(unitStateDir), "RuntimeDirectory=" + filepath.Base(unitRuntimeDir),
		"SupplementaryGroups=" + strings.Join(unitSupplementaryGroups, " "),
	} {
		if !strings.Contains(unit, "\n"+line+"\n") {
			t.Errorf("the unit lacks the line %q", line)
		}
	}
	if filepath.Dir(unitStateDir) != "/var/lib" || filepath.Dir(unitRuntimeDir) != "/run" {
		t.Errorf("state %s, runtime %s: not where systemd puts them", unitStateDir, unitRuntimeDir)
	}
}
