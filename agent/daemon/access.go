package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/periocular/atm-agent/hal/trigger"
)

// What the shipped unit (systemd/atm-agent.service) gives the agent; the
// unit test of this package checks these against the unit file.
const (
	// unitUser is User= (and Group=).
	unitUser = "atm-agent"
	// unitStateDir is StateDirectory=atm-agent: with ProtectSystem=strict,
	// the one folder outside /run/atm-agent (and the private /tmp) the
	// agent may write without a ReadWritePaths= drop-in.
	unitStateDir = "/var/lib/atm-agent"
)

// unitSupplementaryGroups is SupplementaryGroups=: groups the unit adds to
// the user's own at every start.
var unitSupplementaryGroups = []string{"video", "gpio"}

// access(2) mode bits.
const (
	accessR = 0x4
	accessW = 0x2
	accessX = 0x1
)

// access is access(2): may this process (its real uid and gids; under the
// unit those are the effective ones too) read, write or search path? It
// answers what an open would meet: EACCES for permissions, EROFS for a
// write on a read-only mount, which is what ProtectSystem=strict makes of
// every folder the unit does not list. Root passes every permission check
// (not EROFS). A variable for tests.
var access = func(path string, mode uint32) error { return syscall.Access(path, mode) }

// geteuid and lookupUnitUser are variables for tests.
var (
	geteuid        = os.Geteuid
	lookupUnitUser = func() (*user.User, error) { return user.Lookup(unitUser) }
)

// processUser names the user this process runs as, for messages ("atm-agent
// (uid 104)"), and its name and primary group's name for commands (chown,
// install -o/-g, usermod). Run by root, name and group are the unit's user
// and its group: whom the fix is for.
func processUser() (label, name, group string) {
	uid := geteuid()
	label, name, group = fmt.Sprintf("uid %d", uid), strconv.Itoa(uid), strconv.Itoa(os.Getegid())
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		label, name = fmt.Sprintf("%s (uid %d)", u.Username, uid), u.Username
		group = groupName(atoi(u.Gid), u.Gid)
	}
	if uid == 0 {
		name, group = unitUser, unitUser
		if u, err := lookupUnitUser(); err == nil {
			group = groupName(atoi(u.Gid), unitUser)
		}
	}
	return label, name, group
}

// quoteUnitPath quotes a path for a unit file line when it holds white
// space (ReadWritePaths= splits on it).
func quoteUnitPath(p string) string {
	if strings.ContainsAny(p, " \t") {
		return strconv.Quote(p)
	}
	return p
}

// roHint is the fix for a folder the agent must write that is read-only to
// it (EROFS): the drop-in that gives it to the unit, or the default place.
func roHint(dir, keep, doc string) string {
	return fmt.Sprintf("under the unit, ProtectSystem=strict makes every folder read-only but %s (StateDirectory=), %s (RuntimeDirectory=) and a private /tmp: "+
		"%s, or give the unit this folder with a drop-in: run `systemctl edit atm-agent`, add the two lines\n\n    [Service]\n    ReadWritePaths=%s\n\n"+
		"then `systemctl restart atm-agent` (%s); "+
		"if the file system itself is mounted read-only, remount it read-write", unitStateDir, unitRuntimeDir, keep, quoteUnitPath(dir), doc)
}

// under reports whether dir is root or inside it.
func under(dir, root string) bool {
	dir = filepath.Clean(dir)
	return dir == root || strings.HasPrefix(dir, root+"/")
}

// protectHomeHint explains a folder under /home, /root or /run/user, which
// ProtectHome=yes makes inaccessible (and empty) to the unit.
func protectHomeHint(dir string) string {
	for _, h := range []string{"/home", "/root", "/run/user"} {
		if under(dir, h) {
			return "; under the unit, ProtectHome=yes makes /home, /root and /run/user inaccessible and empty: keep it out of them"
		}
	}
	return ""
}

// checkWritableFolder refuses a folder this process cannot create files
// in: missing, not a folder, read-only (EROFS) or not writable (EACCES).
// key and p name the setting and its value; what says what run does there;
// keep is the fix that needs no drop-in; doc where the drop-in is told.
func checkWritableFolder(key, p, dir, what, keep, doc string) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		_, name, group := processUser()
		dropIn := ""
		if !under(dir, unitStateDir) && !under(dir, unitRuntimeDir) {
			dropIn = fmt.Sprintf(" (under the unit it also needs a drop-in with ReadWritePaths=%s: %s)", quoteUnitPath(dir), doc)
		}
		return fmt.Errorf("%s %s: its folder %s does not exist (%s; the agent creates no folder): "+
			"create it for the user the agent runs as (install -d -m 0700 -o %s -g %s %s)%s or %s%s",
			key, p, dir, what, name, group, dir, dropIn, keep, protectHomeHint(dir))
	case err != nil:
		return fmt.Errorf("%s %s: its folder %s: %w%s", key, p, dir, err, protectHomeHint(dir))
	case !fi.IsDir():
		return fmt.Errorf("%s %s: %s is not a folder", key, p, dir)
	}
	err = access(dir, accessW|accessX)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.EROFS):
		return fmt.Errorf("%s %s: its folder %s is on a read-only file system for this process (%s): %s",
			key, p, dir, what, roHint(dir, keep, doc))
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		label, name, group := processUser()
		return fmt.Errorf("%s %s: its folder %s is not writable by this process, user %s: permission denied (%s): "+
			"give the folder to that user (chown %s:%s %s; mode 0700) or %s%s",
			key, p, dir, label, what, name, group, dir, keep, protectHomeHint(dir))
	default:
		return fmt.Errorf("%s %s: its folder %s: %w", key, p, dir, err)
	}
}

// checkFileAccess refuses an existing file this process cannot open for
// mode (accessR, or accessR|accessW): a store restored from a backup as
// root:root 0600. A missing file passes: run creates it. fix says what to
// do, given the chown owner ("atm-agent:atm-agent").
func checkFileAccess(key, p string, mode uint32, keep, doc string, fix func(owner string) string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return nil // missing (run creates it), or refused elsewhere
	}
	err = access(p, mode)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.EROFS):
		return fmt.Errorf("%s %s is on a read-only file system for this process: %s", key, p, roHint(filepath.Dir(p), keep, doc))
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		label, name, group := processUser()
		return fmt.Errorf("%s %s exists and is not %s by this process, user %s; it is %s, mode %04o: permission denied (a file restored from a backup as root?): %s",
			key, p, modeWords(mode), label, statOwner(fi), fi.Mode().Perm(), fix(name+":"+group))
	default:
		return fmt.Errorf("%s %s: %w", key, p, err)
	}
}

// modeWords says what an access(2) mode asks of a file, for messages.
func modeWords(mode uint32) string {
	if mode&accessW != 0 {
		return "readable and writable"
	}
	return "readable"
}

// ownerString is "user:group" by name where known, else by number.
func ownerString(uid, gid int) string {
	u := strconv.Itoa(uid)
	if x, err := user.LookupId(u); err == nil {
		u = x.Username
	}
	return u + ":" + groupName(gid, strconv.Itoa(gid))
}

// storeFolder is the folder run creates and rewrites the store in: the
// folder of the file a symbolic link at store.path points to (compaction
// writes its copy beside that file and renames it there), else store.path's
// own folder.
func storeFolder(p string) string {
	if real, err := filepath.EvalSymlinks(p); err == nil {
		return filepath.Dir(real)
	}
	return filepath.Dir(p)
}

// checkStoreAccess refuses a store.path run would fail to open or rewrite:
// its folder missing, read-only or not writable, or an existing file this
// process cannot read and write. A missing /var/lib/atm-agent passes:
// systemd creates it (StateDirectory=) before ExecStartPre, and the
// package at install.
func (c Config) checkStoreAccess() error {
	p := c.Store.Path
	if p == "" {
		return nil
	}
	dir := storeFolder(p)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) && filepath.Clean(dir) == unitStateDir {
		return nil
	}
	what := "run creates the store there and rewrites it through a copy beside it, " + filepath.Base(p) + ".compact.tmp"
	keep, doc := "keep the store under "+unitStateDir, `docs/operations.md, "Moving the store"`
	if err := checkWritableFolder("store.path", p, dir, what, keep, doc); err != nil {
		return err
	}
	return checkFileAccess("store.path", p, accessR|accessW, keep, doc, func(owner string) string {
		return "give it to that user: chown " + owner + " " + p
	})
}

// checkSocketAccess refuses a trigger socket whose folder run cannot create
// the socket and its lock file in, or whose existing lock file it cannot
// open. The caller has let a missing /run/atm-agent pass.
func checkSocketAccess(sock string) error {
	dir := filepath.Dir(sock)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil // refused by CheckSocketTarget, or the unit's own folder
	}
	what := "run creates the socket and " + filepath.Base(sock) + ".lock there"
	keep, doc := "keep the socket in "+unitRuntimeDir+" (the default)", "docs/trigger-api.md"
	if err := checkWritableFolder("trigger.http.socket", sock, dir, what, keep, doc); err != nil {
		return err
	}
	lock := sock + ".lock"
	return checkFileAccess("trigger.http.socket", lock, accessR|accessW, keep, doc, func(owner string) string {
		return "give it to that user (chown " + owner + " " + lock + ") or remove it with the agent stopped"
	})
}

// checkSeenFileAccess refuses a mqtt.commands.seen_file run could not
// keep: run reads it at start and records every accepted command's id by
// writing a copy beside it and renaming that over it, so its folder must
// exist and be writable and an existing file readable. Unchecked, a
// seen_file in a folder the unit leaves read-only let the agent start and
// then refused every signed command as unavailable. A missing
// /var/lib/atm-agent passes, as for the store.
func (c Config) checkSeenFileAccess() error {
	p := c.seenFile()
	if p == "" {
		return nil
	}
	dir := filepath.Dir(p)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) && filepath.Clean(dir) == unitStateDir {
		return nil
	}
	what := "run records each accepted command's id there, through a copy beside it (" + filepath.Base(p) + ".tmp-*) renamed over it"
	keep, doc := "leave mqtt.commands.seen_file empty (commands-seen.json beside the store)", `docs/operations.md, "Moving the store"`
	if err := checkWritableFolder("mqtt.commands.seen_file", p, dir, what, keep, doc); err != nil {
		return err
	}
	return checkFileAccess("mqtt.commands.seen_file", p, accessR, keep, doc, func(owner string) string {
		return "give it to that user: chown " + owner + " " + p
	})
}

// seenFile is the seen_file run keeps, "" when commands are off.
func (c Config) seenFile() string {
	if !c.MQTT.Enabled || !c.MQTT.Commands.Enabled {
		return ""
	}
	return c.MQTT.Commands.SeenFile
}

// rootWarnings: run by root, `config check` passes every permission check
// (root may write any folder and give a socket any group), so it cannot
// tell whether the unit's user may. What it can tell from the files and the
// group database, it warns about: the socket group the unit's user is not
// in, and a store in the unit's state folder that user cannot read and
// write by its owner and mode.
func (c Config) rootWarnings() []string {
	if geteuid() != 0 {
		return nil
	}
	var w []string
	u, uerr := lookupUnitUser()
	if h := c.Trigger.HTTP; h.Enabled && h.Socket != "" && h.SocketGroup != "" {
		if gid, label, err := trigger.ResolveSocketGroup(h.SocketGroup); err == nil {
			if in, groups, err := unitUserInGroup(u, uerr, gid); err != nil {
				w = append(w, fmt.Sprintf("trigger.http.socket_group %s: checked as root, who may give the socket any group: whether the user the unit runs the agent as (%s) is a member is not known (%v); it must be, or run fails at every start under the unit (docs/trigger-api.md)", label, unitUser, err))
			} else if !in {
				w = append(w, fmt.Sprintf("trigger.http.socket_group %s: the unit runs the agent as %s, which is not a member of it (its groups: %s; the unit adds %s): under the unit, run cannot give the socket that group and fails at every start: usermod -aG %s %s, then systemctl restart atm-agent (checked as root, who may give any group)",
					label, unitUser, strings.Join(groups, ", "), strings.Join(unitSupplementaryGroups, " and "), groupName(gid, h.SocketGroup), unitUser))
			}
		}
	}
	if uerr == nil && c.Store.Path != "" {
		w = append(w, storeRootWarnings(c.Store.Path, unitStateDir, u)...)
	}
	if p := c.seenFile(); uerr == nil && p != "" {
		// Its folder, when the store's, is warned about above.
		w = append(w, rootPathWarnings("mqtt.commands.seen_file", p, filepath.Dir(p), filepath.Dir(p) != storeFolder(c.Store.Path), accessR, unitStateDir, u)...)
	}
	return w
}

// storeRootWarnings: a store under /var/lib/atm-agent that the unit's user
// u cannot read and write by owner and mode, or a subfolder of it that user
// cannot write.
func storeRootWarnings(p, stateDir string, u *user.User) []string {
	return rootPathWarnings("store.path", p, storeFolder(p), true, accessR|accessW, stateDir, u)
}

// rootPathWarnings: a file p (setting key) in folder dir under stateDir
// that the unit's user u cannot open for mode by owner and mode bits, or,
// with checkDir, a subfolder dir of stateDir that user cannot write.
// systemd chowns /var/lib/atm-agent to the unit's user at every start
// (StateDirectory=), and everything in it as well when the folder itself
// was not that user's: only under a folder that already is that user's
// does a file of another owner stay so and fail run.
func rootPathWarnings(key, p, dir string, checkDir bool, mode uint32, stateDir string, u *user.User) []string {
	if !under(dir, stateDir) {
		return nil
	}
	top, err := os.Stat(stateDir)
	if err != nil {
		return nil
	}
	uid := atoi(u.Uid)
	if st, ok := top.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != uid || int(st.Gid) != atoi(u.Gid) {
		return nil // systemd gives the whole folder to the unit's user at start
	}
	gids := userGids(u)
	owner := u.Username + ":" + groupName(atoi(u.Gid), u.Gid)
	var w []string
	if fi, err := os.Stat(dir); err == nil && checkDir && dir != stateDir && !permits(fi, uid, gids, accessW|accessX) {
		w = append(w, fmt.Sprintf("%s %s: its folder %s (owner %s, mode %04o) is not writable by %s, the user the unit runs the agent as, by its owner and mode: run fails under the unit: chown %s %s (checked as root, who may write any folder)",
			key, p, dir, statOwner(fi), fi.Mode().Perm(), u.Username, owner, dir))
	}
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && !permits(fi, uid, gids, mode) {
		w = append(w, fmt.Sprintf("%s %s (owner %s, mode %04o) is not %s by %s, the user the unit runs the agent as, by its owner and mode (a file restored from a backup as root?): run fails under the unit: chown %s %s (checked as root, who may open any file)",
			key, p, statOwner(fi), fi.Mode().Perm(), modeWords(mode), u.Username, owner, p))
	}
	return w
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

// groupName is gid's name, or fallback.
func groupName(gid int, fallback string) string {
	if g, err := user.LookupGroupId(strconv.Itoa(gid)); err == nil {
		return g.Name
	}
	return fallback
}

func statOwner(fi os.FileInfo) string {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return ownerString(int(st.Uid), int(st.Gid))
	}
	return "?"
}

// userGids lists u's groups from the group database (its primary group
// included); nil when they cannot be listed.
func userGids(u *user.User) []int {
	ids, err := u.GroupIds()
	if err != nil {
		ids = []string{u.Gid}
	}
	var out []int
	for _, id := range ids {
		if n, err := strconv.Atoi(id); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// unitUserInGroup reports whether the unit's user (u, or the error looking
// it up) is in gid under the unit: its primary group, its groups in the
// group database, or one the unit's SupplementaryGroups= adds. groups names
// the user's own groups for the message.
func unitUserInGroup(u *user.User, uerr error, gid int) (in bool, groups []string, err error) {
	if uerr != nil {
		return false, nil, fmt.Errorf("no user %s here: %w", unitUser, uerr)
	}
	ids, err := u.GroupIds()
	if err != nil {
		return false, nil, fmt.Errorf("list the groups of %s: %w", unitUser, err)
	}
	if !slices.Contains(ids, u.Gid) {
		ids = append(ids, u.Gid)
	}
	for _, id := range ids {
		n, _ := strconv.Atoi(id)
		groups = append(groups, groupName(n, id))
		if n == gid {
			in = true
		}
	}
	for _, name := range unitSupplementaryGroups {
		if g, err := user.LookupGroup(name); err == nil && g.Gid == strconv.Itoa(gid) {
			in = true
		}
	}
	return in, groups, nil
}

// permits tells from fi's owner and mode bits whether a user uid with
// groups gids may do want (accessR|accessW|accessX), as the kernel does
// without ACLs: the owner's bits for its owner, else the group's for a
// member, else the others'.
func permits(fi os.FileInfo, uid int, gids []int, want uint32) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true
	}
	m := uint32(fi.Mode().Perm())
	var bits uint32
	switch {
	case uid == 0:
		return true
	case int(st.Uid) == uid:
		bits = m >> 6
	case slices.Contains(gids, int(st.Gid)):
		bits = m >> 3
	default:
		bits = m
	}
	return bits&7&want == want
}
