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
# shellcheck source=scripts/packaging/repack.sh
. "$(dirname "${BASH_SOURCE[0]}")/repack.sh"
bumped_copy() {
	repack_deb "$1" "$2" "$3" "$(dpkg-deb -f "$1" Version)+upgradetest" "$tmp"
}
