#!/bin/bash
# Check that binaries are position-independent executables (lintian's
# hardening-no-pie; docs/packaging.md "lintian"), from their ELF headers, so a
# build that loses -buildmode=pie fails here rather than in a lintian warning.
# Any architecture (binutils' readelf reads them all).
#   check-pie.sh dynamic FILE...  ELF type DYN, DT_FLAGS_1 has PIE, a program
#                                 interpreter (linked against shared libraries)
#   check-pie.sh static FILE...   the same, but no program interpreter and no
#                                 NEEDED library: a static PIE (-static-pie)
#   check-pie.sh aslr AGENT       start the atm-agent binary AGENT twice (native
#                                 architecture; `db stats` waiting on a locked
#                                 store) and fail unless the kernel mapped it at
#                                 two different addresses
# One line per file on stdout; exit 1 at the first failure.
set -euo pipefail
mode=${1:-}
shift || true
[ $# -gt 0 ] || { echo "usage: check-pie.sh dynamic|static|aslr FILE..." >&2; exit 2; }
fail() { echo "check-pie: $*" >&2; exit 1; }

pie() { # pie FILE KIND
	local f=$1 kind=$2 type flags interp needed
	[ -f "$f" ] || fail "$f missing"
	type=$(LC_ALL=C readelf -hW "$f" | awk -F: '/^ *Type:/{sub(/^ */, "", $2); print $2}')
	flags=$(LC_ALL=C readelf -dW "$f" | awk '/\(FLAGS_1\)/{sub(/.*Flags: */, ""); print}')
	interp=$(LC_ALL=C readelf -lW "$f" | awk '/Requesting program interpreter/{sub(/.*interpreter: */, ""); sub(/\]$/, ""); print}')
	needed=$(LC_ALL=C readelf -dW "$f" | grep -c '(NEEDED)' || true)
	case "$type" in DYN*) ;; *) fail "$f: ELF type '$type', not DYN: not position independent" ;; esac
	[[ " $flags " == *" PIE "* ]] || fail "$f: DT_FLAGS_1 '$flags' lacks PIE (type DYN without it is a shared library)"
	if [ "$kind" = static ]; then
		[ -z "$interp" ] || fail "$f: has program interpreter $interp: not static"
		[ "$needed" = 0 ] || fail "$f: needs $needed shared libraries: not static"
		echo "$f: static PIE (type $type; FLAGS_1 $flags; no interpreter, no NEEDED)"
	else
		[ -n "$interp" ] || fail "$f: no program interpreter (a static binary: check it with 'static')"
		echo "$f: PIE (type $type; FLAGS_1 $flags; interpreter $interp, $needed NEEDED)"
	fi
}

# load_address AGENT: the first mapping of AGENT in a running process.
load_address() {
	local bin=$1 d p addr
	d=$(mktemp -d /tmp/check-pie.XXXXXX)
	"$bin" config default | sed "s|^  path: /var/lib/atm-agent/agent.db|  path: $d/agent.db|" >"$d/config.yaml"
	: >"$d/agent.db"
	# The store's lock is held, so `db stats` waits (store.lock_timeout, 5 s).
	flock "$d/agent.db" sleep 30 &
	local holder=$!
	sleep 0.2
	"$bin" db stats --config "$d/config.yaml" >/dev/null 2>&1 &
	p=$!
	addr=
	for _ in $(seq 50); do
		addr=$(awk -v b="$bin" '$6 == b {split($1, a, "-"); print a[1]; exit}' "/proc/$p/maps" 2>/dev/null || true)
		[ -n "$addr" ] && break
		sleep 0.1
	done
	kill "$p" "$holder" 2>/dev/null || true
	wait "$p" "$holder" 2>/dev/null || true
	rm -rf "$d"
	[ -n "$addr" ] || fail "$bin: no mapping of it found in /proc/$p/maps"
	echo "$addr"
}

case "$mode" in
dynamic | static)
	for f in "$@"; do pie "$f" "$mode"; done
	;;
aslr)
	bin=$(realpath "$1")
	command -v flock >/dev/null || fail "flock missing (util-linux)"
	r=$(cat /proc/sys/kernel/randomize_va_space)
	[ "$r" != 0 ] || fail "kernel.randomize_va_space is 0: ASLR is off on this machine, nothing to check"
	a1=$(load_address "$bin")
	a2=$(load_address "$bin")
	[ "$a1" != "$a2" ] || fail "$bin: loaded at 0x$a1 twice: not randomised"
	echo "$bin: loaded at 0x$a1, then at 0x$a2 (kernel.randomize_va_space=$r)"
	;;
*)
	echo "usage: check-pie.sh dynamic|static|aslr FILE..." >&2
	exit 2
	;;
esac
