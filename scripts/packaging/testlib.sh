# shellcheck shell=bash disable=SC2154
# Helpers of the install tests (test-deb.sh, test-deb-fleet.sh), sourced
# once they have set tmp (their scratch directory). Each check prints one
# "ok" or "FAIL" line; fails counts the failures.
fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
check() { # check DESCRIPTION COMMAND...
	local d=$1; shift
	if "$@" >"$tmp/out" 2>&1; then ok "$d"; else bad "$d: $(head -c 400 "$tmp/out")"; fi
}
perm() { # perm PATH MODE OWNER:GROUP
	local got; got=$(stat -c '%a %U:%G' "$1" 2>/dev/null || echo missing)
	if [ "$got" = "$2 $3" ]; then ok "$1 $got"; else bad "$1: $got, want $2 $3"; fi
}
sum() { sha256sum "$1" | cut -d' ' -f1; }

# bumped_copy DEB OUT CONFFILE: a copy of DEB with version <v>+upgradetest
# whose packaged CONFFILE (a path without the leading /) has a line more
# (a release with a changed default): with the operator's edit, dpkg has a
# conffile question to answer.
bumped_copy() {
	local deb=$1 out=$2 conf=$3 v2
	v2="$(dpkg-deb -f "$deb" Version)+upgradetest"
	rm -rf "$tmp/pkg"
	dpkg-deb -R "$deb" "$tmp/pkg"
	sed -i "s/^Version: .*/Version: $v2/" "$tmp/pkg/DEBIAN/control"
	echo "# $v2: a changed packaged default" >>"$tmp/pkg/$conf"
	sed -i "s|^[0-9a-f]*  $conf\$|$(md5sum <"$tmp/pkg/$conf" | cut -d' ' -f1)  $conf|" "$tmp/pkg/DEBIAN/md5sums"
	dpkg-deb -Zgzip -z1 -b "$tmp/pkg" "$out" >/dev/null
	rm -rf "$tmp/pkg"
}
