package trigger

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// fakeGroups makes CheckSocketGroupMember see these credentials.
func fakeGroups(t *testing.T, euid, egid int, groups ...int) {
	t.Helper()
	old := procGroups
	procGroups = func() (int, int, []int, error) { return euid, egid, groups, nil }
	t.Cleanup(func() { procGroups = old })
}

// A socket_group the process is not in cannot be given to the socket
// without CAP_CHOWN (the unit grants none): NewHTTP, which `config check`
// and run both call, refuses it with the fix, instead of run failing at
// every start with `chown ...: operation not permitted` after the check
// said ok. Root may give any group; the effective gid and every
// supplementary group pass.
func TestSocketGroupMembership(t *testing.T) {
	const user, primary, video, other = 2001, 2001, 44, 4242
	sock := filepath.Join(t.TempDir(), "t.sock")
	for _, tc := range []struct {
		name       string
		euid, egid int
		groups     []int
		gid        int
		socket     string
		want       string
	}{
		{"primary group", user, primary, []int{primary, video}, primary, sock, ""},
		{"supplementary group", user, primary, []int{primary, video}, video, sock, ""},
		{"effective gid not in the list", user, primary, []int{video}, primary, sock, ""},
		{"not a member", user, primary, []int{primary, video}, other, sock, "is not a member of it"},
		{"no supplementary groups", user, primary, nil, other, sock, "usermod -aG"},
		{"root may give any group", 0, 0, []int{0}, other, sock, ""},
		{"no socket: no group to give", user, primary, nil, other, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fakeGroups(t, tc.euid, tc.egid, tc.groups...)
			cfg := HTTPConfig{Socket: tc.socket, SocketGroup: strconv.Itoa(tc.gid)}
			if tc.socket == "" {
				tok := filepath.Join(t.TempDir(), "tok")
				os.WriteFile(tok, []byte("0123456789abcdef0123"), 0o600)
				cfg.Listen, cfg.TokenFile = "127.0.0.1:0", tok
			}
			_, err := NewHTTP(cfg, nil)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("NewHTTP: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("NewHTTP: %v, want %q", err, tc.want)
			case tc.want != "":
				// The message names the setting, the group and the fix.
				for _, w := range []string{"trigger.http.socket_group", "gid " + strconv.Itoa(tc.gid), "usermod -aG", "systemctl restart atm-agent"} {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("message lacks %q: %v", w, err)
					}
				}
			}
		})
	}
	t.Run("the real process", func(t *testing.T) {
		// Unfaked: this process's own effective gid always passes.
		if err := CheckSocketGroupMember(os.Getegid(), "own"); err != nil {
			t.Fatal(err)
		}
	})
}

// The socket gets the group: with this process's own effective gid given
// by number (any user may give a file its own group), Listen binds the
// socket with it and the mode, as the ATM application will see it.
func TestSocketGroupApplied(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "t.sock")
	gid := os.Getegid()
	h, err := NewHTTP(HTTPConfig{Socket: sock, SocketGroup: strconv.Itoa(gid)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Listen(); err != nil {
		t.Fatal(err)
	}
	defer closeListeners(h)
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Gid) != gid || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket group %d mode %04o, want group %d mode 0660", st.Gid, fi.Mode().Perm(), gid)
	}
}

// A group name is resolved; an unknown name and a negative gid are refused.
func TestResolveSocketGroup(t *testing.T) {
	if gid, label, err := ResolveSocketGroup("root"); err != nil || gid != 0 || label != "root (gid 0)" {
		t.Errorf("root: %d %q %v", gid, label, err)
	}
	if gid, label, err := ResolveSocketGroup("0"); err != nil || gid != 0 || label != "root (gid 0)" {
		t.Errorf("0: %d %q %v", gid, label, err)
	}
	if _, _, err := ResolveSocketGroup("no-such-group-xyz"); err == nil || !strings.Contains(err.Error(), "socket_group") {
		t.Errorf("unknown group: %v", err)
	}
	if _, _, err := ResolveSocketGroup("-1"); err == nil {
		t.Error("gid -1 accepted")
	}
}

// The shipped unit's runtime folder is atm-agent's, mode 0751
// (RuntimeDirectoryMode=): the ATM application's user, not in group
// atm-agent, passes through it to the socket, and the socket's own mode and
// group decide. Under the old 0750 it could not reach a socket it had every
// right to (the hostile packaging review, F3: curl rc=7). Real kernel:
// the socket is served by this process (root) in a folder of another
// owner, and a child process as nobody dials it, with and without the
// socket's group, through a folder of each mode.
func TestSocketGroupReachesThroughRuntimeFolder(t *testing.T) {
	if p := os.Getenv("ATM_TRIGGER_TEST_DIAL"); p != "" {
		c, err := net.Dial("unix", p)
		if err != nil {
			fmt.Println("DIAL:", err)
			return
		}
		c.Close()
		fmt.Println("DIAL: ok")
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another user")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip(err)
	}
	const sockGID = 4242421 // the ATM application's group here
	uid, gid := atoiT(t, nobody.Uid), atoiT(t, nobody.Gid)
	top, err := os.MkdirTemp("", "atm-rundir-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(top)
	os.Chmod(top, 0o755)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(top, "trigger.test")
	if b, err := os.ReadFile(self); err != nil || os.WriteFile(bin, b, 0o755) != nil {
		t.Fatalf("copy the test binary: %v", err)
	}
	run := filepath.Join(top, "atm-agent") // /run/atm-agent: the agent's own
	os.Mkdir(run, 0o700)
	sock := filepath.Join(run, "trigger.sock")
	h, err := NewHTTP(HTTPConfig{Socket: sock, SocketGroup: strconv.Itoa(sockGID)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Listen(); err != nil {
		t.Fatal(err)
	}
	defer closeListeners(h)
	// The folder is the agent user's, as systemd makes it; here another
	// user's than both the server's and the client's.
	if err := os.Chown(run, 1, 1); err != nil {
		t.Fatal(err)
	}
	dial := func(groups ...uint32) string {
		cmd := exec.Command(bin, "-test.run=^TestSocketGroupReachesThroughRuntimeFolder$", "-test.count=1")
		cmd.Env = append(os.Environ(), "ATM_TRIGGER_TEST_DIAL="+sock)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("client: %v\n%s", err, out)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "DIAL: ") {
				return strings.TrimPrefix(l, "DIAL: ")
			}
		}
		t.Fatalf("client said nothing:\n%s", out)
		return ""
	}
	for _, tc := range []struct {
		mode   os.FileMode
		groups []uint32
		want   string
	}{
		{0o751, []uint32{sockGID}, "ok"},                // the shipped unit: the socket's group connects
		{0o751, nil, "permission denied"},               // anyone else: the socket's 0660 refuses
		{0o750, []uint32{sockGID}, "permission denied"}, // the old unit: the folder refused even the socket's group
		{0o700, []uint32{sockGID}, "permission denied"}, // sanity
	} {
		if err := os.Chmod(run, tc.mode); err != nil {
			t.Fatal(err)
		}
		if got := dial(tc.groups...); !strings.Contains(got, tc.want) {
			t.Errorf("folder %04o, client groups %v: dial %q, want %q", tc.mode, tc.groups, got, tc.want)
		}
	}
	// Others may pass, not list: the lock file is 0600 and nothing but the
	// socket and its lock is left in the folder.
	ents, _ := os.ReadDir(run)
	for _, e := range ents {
		fi, _ := e.Info()
		switch {
		case e.Name() == "trigger.sock" && fi.Mode()&os.ModeSocket != 0 && fi.Mode().Perm() == 0o660:
		case e.Name() == "trigger.sock.lock" && fi.Mode().Perm() == 0o600:
		default:
			t.Errorf("in the runtime folder: %s %v", e.Name(), fi.Mode())
		}
	}
}

func atoiT(t *testing.T, s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
