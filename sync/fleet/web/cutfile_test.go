package web

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

// cutFile is a users file in both styles: lou (block) scoped to paris-01,
// ana (block) every site said with sites: all, vic (flow) every site by
// omission, root an admin (block), moe (block) scoped with a block list.
func cutFile(h []byte) string {
	return fmt.Sprintf(`users:
  - name: root
    role: admin
    password_hash: %[1]q
  - name: lou
    role: analyst
    password_hash: %[1]q
    sites: [paris-01]
  - {name: vic, role: viewer,
     password_hash: %[1]q}
  - name: ana
    role: analyst
    password_hash: %[1]q
    sites: all
  - name: moe
    password_hash: %[1]q
    role: viewer
    sites:
      - paris-01
      - "lyon-*"
`, h)
}

// A users file read halfway through a write is a prefix of the file
// meant. Every prefix, cut at any byte, is refused or gives each user it
// lists at most what the whole file gives them: the same role, and no
// site the whole file does not give.
func TestUsersFileCutShortNeverWidens(t *testing.T) {
	h, _ := bcrypt.GenerateFromPassword([]byte("correct horse"), bcrypt.MinCost)
	full := cutFile(h)
	want, err := ParseUsers([]byte(full))
	if err != nil {
		t.Fatal(err)
	}
	if want["lou"].Sites == nil || want["moe"].Sites == nil || want["ana"].Sites != nil || want["vic"].Sites != nil {
		t.Fatalf("the whole file: %+v", want)
	}
	probes := []string{"paris-01", "paris-02", "lyon-07", "lyon-", "lisbon-01", "p"}
	accepted := 0
	for n := 0; n < len(full); n++ {
		got, err := ParseUsers([]byte(full[:n]))
		if err != nil {
			continue
		}
		accepted++
		for name, u := range got {
			w, ok := want[name]
			if !ok || u.Role != w.Role {
				t.Errorf("cut at byte %d: user %q %s, the whole file: %q %s", n, name, u.Role, w.Name, w.Role)
				continue
			}
			for _, site := range probes {
				if u.Sites.Allows(site) && !w.Sites.Allows(site) {
					t.Errorf("cut at byte %d (%q): %s sees %s, the whole file gives %s", n, full[max(0, n-20):n], name, site, w.Sites)
				}
			}
		}
	}
	if accepted == 0 {
		t.Error("no prefix accepted: the test cuts nothing that parses")
	}
	t.Logf("%d of %d prefixes parse, none wider", accepted, len(full))
}

// A viewer or analyst written as a block must say its sites; one written
// as {...} need not (the files written before keep working).
func TestUsersFileBlockUserSaysItsSites(t *testing.T) {
	h, _ := bcrypt.GenerateFromPassword([]byte("x"), bcrypt.MinCost)
	_, err := ParseUsers([]byte(fmt.Sprintf("users:\n  - name: root\n    role: admin\n    password_hash: %q\n  - name: ana\n    role: analyst\n    password_hash: %q\n", h, h)))
	if err == nil || !strings.Contains(err.Error(), `user "ana" (line 5)`) || !strings.Contains(err.Error(), "sites: all") {
		t.Errorf("a block analyst without sites: %v, want refused naming ana, line 5 and sites: all", err)
	}
	for _, y := range []string{
		fmt.Sprintf("users:\n  - name: ana\n    role: analyst\n    password_hash: %q\n    sites: all\n", h),
		fmt.Sprintf("users:\n  - {name: ana, role: analyst, password_hash: %q}\n", h),
		fmt.Sprintf("users: [{name: ana, role: analyst, password_hash: %q}]\n", h),
		fmt.Sprintf("users:\n  - {name: ana, role: admin, password_hash: %q, sites: all}\n", h),
	} {
		if u, err := ParseUsers([]byte(y)); err != nil || u["ana"].Sites != nil {
			t.Errorf("%s: %+v %v, want every site", y, u["ana"], err)
		}
	}
}

// The reload of a file cut before a block user's sites is refused; the
// scoped user keeps their scope.
func TestReloadUsersRefusesACutFile(t *testing.T) {
	h, _ := bcrypt.GenerateFromPassword([]byte("correct horse"), bcrypt.MinCost)
	full := cutFile(h)
	st := openBolt(t)
	seedScoped(t, st) // a-1 in lyon-07, a-9 in paris-01
	file := filepath.Join(t.TempDir(), "users.yaml")
	writeMode(t, file, full, 0o600)
	s, hs, _ := serveUsersFile(t, st, file)
	lou := newClient(t, hs.URL)
	lou.login("lou", "correct horse")
	writeMode(t, file, full[:strings.Index(full, "    sites: [paris-01]")], 0o600)
	if err := s.ReloadUsers(); err == nil || !strings.Contains(err.Error(), `user "lou"`) || !strings.Contains(err.Error(), "must say its sites") {
		t.Errorf("the reload of the cut file: %v, want refused for lou", err)
	}
	if code, _ := lou.send("GET", "/api/v1/devices/lyon-07/atm-1", "", ""); code != 404 {
		t.Errorf("lou on lyon-07 after the cut file: %d, want 404", code)
	}
	if code, _ := lou.send("GET", "/api/v1/devices/paris-01/atm-2", "", ""); code != 200 {
		t.Errorf("lou on paris-01 after the cut file: %d, want 200", code)
	}
}

// A file that is one {...} (JSON) needs no final newline: cut short, it is
// a YAML error.
func TestUsersFileJSONNeedsNoNewline(t *testing.T) {
	h, _ := bcrypt.GenerateFromPassword([]byte("x"), bcrypt.MinCost)
	j := fmt.Sprintf(`{"users": [{"name": "vic", "role": "viewer", "password_hash": %q, "sites": ["paris-01"]}]}`, h)
	if _, err := ParseUsers([]byte(j)); err != nil {
		t.Errorf("JSON without a final newline: %v", err)
	}
	for n := 0; n < len(j)-1; n++ {
		if _, err := ParseUsers([]byte(j[:n])); err == nil {
			t.Errorf("JSON cut at byte %d accepted", n)
		}
	}
}
