package trigger

import (
	"fmt"
	"os"
	"os/user"
	"slices"
	"strconv"
)

// The socket group (trigger.http.socket_group) is set with chown(2) on the
// socket the agent just bound. Without CAP_CHOWN (the unit grants no
// capability: CapabilityBoundingSet= is empty) the kernel lets the owner
// give a file only a group the process is in: its effective gid or one of
// its supplementary groups. A socket_group the agent's user is not a member
// of therefore passed every check and then failed at every start, after
// the store was open (`chown ...: operation not permitted`).

// ResolveSocketGroup returns the gid of group (a name or a number) and a
// label for messages ("atmapp (gid 1001)", or "gid 1001" for a number with
// no group entry).
func ResolveSocketGroup(group string) (gid int, label string, err error) {
	if n, err := strconv.Atoi(group); err == nil {
		if n < 0 {
			return 0, "", fmt.Errorf("trigger.http.socket_group %s: a gid is 0 or more", group)
		}
		label = "gid " + group
		if g, err := user.LookupGroupId(group); err == nil {
			label = fmt.Sprintf("%s (gid %d)", g.Name, n)
		}
		return n, label, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, "", fmt.Errorf("trigger.http.socket_group: %w", err)
	}
	n, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, "", fmt.Errorf("trigger.http.socket_group %s: gid %q is not a number", group, g.Gid)
	}
	return n, fmt.Sprintf("%s (gid %d)", g.Name, n), nil
}

// procGroups is the process's credentials as chown(2) judges them: its
// effective uid, effective gid and supplementary groups. A variable for
// tests.
var procGroups = func() (euid, egid int, groups []int, err error) {
	groups, err = os.Getgroups()
	return os.Geteuid(), os.Getegid(), groups, err
}

// CheckSocketGroupMember refuses a socket group gid that this process
// cannot give its socket: run by a user other than root, it must be the
// process's effective gid or one of its supplementary groups. Root may give
// any group and passes (whether the service's user may is then unknown
// here: the caller says so). label names the group in the message.
func CheckSocketGroupMember(gid int, label string) error {
	euid, egid, groups, err := procGroups()
	if err != nil {
		return fmt.Errorf("trigger.http.socket_group %s: list this process's groups: %w", label, err)
	}
	if euid == 0 || gid == egid || slices.Contains(groups, gid) {
		return nil
	}
	name := "uid " + strconv.Itoa(euid)
	who := name
	if u, err := user.LookupId(strconv.Itoa(euid)); err == nil {
		name = u.Username
		who = fmt.Sprintf("%s (uid %d)", u.Username, euid)
	}
	gname := label
	if g, err := user.LookupGroupId(strconv.Itoa(gid)); err == nil {
		gname = g.Name
	}
	return fmt.Errorf("trigger.http.socket_group %s: this process, user %s, is not a member of it, so it cannot give the socket that group "+
		"(chown(2) without privileges takes a group the process is in; the unit grants no capabilities) and run would fail at every start: "+
		"add the user to the group (usermod -aG %s %s) and restart the agent (systemctl restart atm-agent: a running process keeps the groups it started with; docs/trigger-api.md)", label, who, gname, name)
}
