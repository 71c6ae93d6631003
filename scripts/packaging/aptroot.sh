# Shared by test-apt.sh and test-ops.sh (sourced, not run): a clean Debian 12
# root of ARCH (mmdebstrap --variant=apt, created once and copied for each
# run), the signed repository of `make apt-repo` served in it from
# file:/srv/atm-agent, and the checks' bookkeeping.
#   ARCH       amd64 (default) or arm64 (programs in the root run under qemu
#              through binfmt_misc, mounted and enabled here if needed)
#   APT_REPO   the repository (default build/apt-repo); APT_GNUPG its key
#   ROOT_CACHE the clean root, created once (default build/_aptroot-ARCH; the
#              leading _ keeps it out of go ./...)
#   APTROOT_REPO  no: the caller installs no package from the repository
# The caller sets TEST (its name, for messages) and then calls aptroot_setup,
# aptroot_enter; the root is $R, the scratch dir $W, both removed on exit
# with everything started in the root.
ARCH=${ARCH:-amd64}
# shellcheck source=scripts/packaging/repack.sh
. "$(dirname "${BASH_SOURCE[0]}")/repack.sh"
REPO=$(realpath -m "${APT_REPO:-build/apt-repo}")
export GNUPGHOME=$(realpath -m "${APT_GNUPG:-build/apt-gnupg}")
CACHE=$(realpath -m "${ROOT_CACHE:-build/_aptroot-$ARCH}")
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
log() { echo "$TEST: $*" >&2; }

# aptroot_setup: the preconditions and the cached clean root.
aptroot_setup() {
	[ "$(id -u)" = 0 ] || { log "needs root (chroot)"; exit 1; }
	for t in mmdebstrap curl; do
		command -v "$t" >/dev/null || { log "$t missing: apt-get install mmdebstrap curl"; exit 1; }
	done
	if [ "${APTROOT_REPO:-yes}" = yes ]; then
		command -v reprepro >/dev/null || { log "reprepro missing: apt-get install reprepro"; exit 1; }
		[ -f "$REPO/conf/distributions" ] || { log "$REPO: no repository (make apt-repo)"; exit 1; }
	fi
	if [ "$ARCH" != "$(dpkg --print-architecture)" ]; then
		[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
		[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 ||
			{ log "no binfmt_misc entry for $ARCH programs: apt-get install qemu-user-static binfmt-support"; exit 1; }
	fi
	# The clean root: Debian's apt variant, nothing of ours. Created once.
	if [ ! -f "$CACHE/.complete" ]; then
		rm -rf --one-file-system "$CACHE"
		mmdebstrap --variant=apt --architectures="$ARCH" --include=ca-certificates \
			"$SUITE" "$CACHE" "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
			"deb http://deb.debian.org/debian-security $SUITE-security main" >&2
		touch "$CACHE/.complete"
	fi
}

# aptroot_enter: a copy of the clean root in $W/root with /proc and /dev.
W=
R=
mounted=()
bgpids=() # the caller's background processes, stopped first on exit
aptroot_cleanup() {
	# Every step of the cleanup runs: a killed process's wait status must
	# not end it through set -e.
	set +e
	local p
	for p in "${bgpids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
	[ -n "$R" ] || return 0
	# Nothing started in the root outlives the test.
	for p in /proc/[0-9]*; do
		[ "$(readlink "$p/root" 2>/dev/null)" = "$R" ] && kill -KILL "${p#/proc/}" 2>/dev/null
	done
	for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
	# Never follow a mount point out of the test root.
	rm -rf --one-file-system "$W"
}
aptroot_enter() {
	W=$(mktemp -d "/tmp/atm-$TEST.XXXXXX")
	R=$W/root
	trap aptroot_cleanup EXIT
	cp -a "$CACHE" "$R"
	mount -t proc proc "$R/proc"
	mounted+=("$R/proc")
	mount --bind /dev "$R/dev"
	mounted+=("$R/dev")
	cp /etc/resolv.conf "$R/etc/resolv.conf" 2>/dev/null || true
}
in_root() { chroot "$R" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"; }

# aptroot_boot [NSPAWN OPTION...]: Debian's systemd, installed in the root,
# booted as its PID 1 by systemd-nspawn (apt-get install systemd-container);
# the root's /proc and /dev mounts give way to the container's own. Then
# in_sys runs a command inside the container (all its namespaces), where
# systemctl and journalctl are the real ones. Without options the container
# shares the host's network.
ct=
aptroot_boot() {
	local t state nspawn
	for t in systemd-nspawn nsenter; do
		command -v "$t" >/dev/null || { log "$t missing: apt-get install systemd-container util-linux"; exit 1; }
	done
	check "systemd installed in the root" in_root sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends systemd systemd-sysv dbus'
	[ "$fails" = 0 ] || aptroot_done
	umount "$R/proc" "$R/dev"
	mounted=()
	systemd-nspawn -D "$R" --register=no --keep-unit --boot --console=pipe \
		--machine="atm-$TEST-$$" "$@" >"$W/boot.log" 2>&1 </dev/null &
	nspawn=$!
	bgpids+=("$nspawn")
	# The container's PID 1: nspawn's child once it runs systemd.
	for _ in $(seq 300); do
		ct=$(pgrep -P "$nspawn" -x systemd | head -1) && [ -n "$ct" ] && break
		sleep 0.1
	done
	[ -n "$ct" ] || { cat "$W/boot.log" >&2; log "the container did not start"; exit 1; }
	# systemctl answers once systemd listens on its private socket.
	for _ in $(seq 300); do in_sys test -S /run/systemd/private 2>/dev/null && break; sleep 0.2; done
	state=$(in_sys timeout 120 systemctl is-system-running --wait 2>&1 || true)
	check "the root booted systemd as PID 1 (state \"$state\")" test "$state" = running
	[ "$fails" = 0 ] || { tail -n 30 "$W/boot.log" >&2; aptroot_done; }
}
in_sys() {
	nsenter -t "$ct" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
}
# The caller's unit in the booted root ($UNIT): a property, the main
# process (none: fails), a line of that process's /proc status, a line of
# the unit's journal (else its tail is shown), and the exposure level
# systemd-analyze security gives it.
prop() { in_sys systemctl show -p "$1" --value "$UNIT"; }
main_pid() { local p; p=$(prop MainPID); [ "$p" != 0 ] && echo "$p"; }
status_has() { in_sys cat "/proc/$(main_pid)/status" | grep -q "$1"; } # status_has REGEX
journal_has() { # journal_has REGEX
	local j; j=$(in_sys journalctl -u "$UNIT" --no-pager)
	grep -q "$1" <<<"$j" || { tail -n 12 <<<"$j"; return 1; }
}
exposure() { in_sys systemd-analyze security --no-pager "$UNIT" 2>/dev/null | sed -nE 's/^→ Overall exposure level for .*: ([0-9.]+) .*/\1/p'; }
# sandbox_checks: the agent's sandbox as the kernel applies it to its main
# process (a seccomp filter, no new privileges, no capabilities) and its
# memory limit (test-ops.sh under systemd, test-systemd-arm64.sh).
sandbox_checks() {
	local caps=0000000000000000
	check "the agent's seccomp filter is on (Seccomp: 2)" status_has '^Seccomp:[[:space:]]*2$'
	check "no new privileges" status_has '^NoNewPrivs:[[:space:]]*1$'
	check "no capabilities: effective" status_has "^CapEff:[[:space:]]*$caps$"
	check "no capabilities: permitted" status_has "^CapPrm:[[:space:]]*$caps$"
	check "no capabilities: bounding set" status_has "^CapBnd:[[:space:]]*$caps$"
	check "memory limit 400M" test "$(prop MemoryMax)" = $((400 * 1024 * 1024))
}

fails=0
checks=0
ok() { echo "ok   $*"; checks=$((checks + 1)); }
bad() { echo "FAIL $*"; fails=$((fails + 1)); checks=$((checks + 1)); }
check() { # check DESCRIPTION COMMAND...
	local d=$1; shift
	if "$@" >"$W/out" 2>&1; then ok "$d"; else bad "$d: $(tail -c 600 "$W/out")"; fi
}
sum() { sha256sum "$1" | cut -d' ' -f1; }
wait_for() { # wait_for SECONDS COMMAND...: until COMMAND succeeds
	local n=$(($1 * 2)); shift
	for _ in $(seq "$n"); do "$@" && return 0; sleep 0.5; done
	return 1
}
# aptroot_done: the summary line and the exit status.
aptroot_done() {
	if [ "$fails" -gt 0 ]; then
		echo "$TEST ($ARCH): $fails of $checks check(s) failed"
		echo "$TEST: $((checks - fails)) passed, $fails failed"
		exit 1
	fi
	echo "$TEST ($ARCH): all $checks checks passed"
	echo "$TEST: $checks passed, 0 failed"
}

# The repository as a kiosk sees it: served from a local path in the root,
# its key in /usr/share/keyrings (sources entry: aptroot_sources).
publish() { # publish REPO_DIR: copy a repository to /srv/atm-agent in the root
	rm -rf "$R/srv/atm-agent"
	mkdir -p "$R/srv"
	cp -a "$1" "$R/srv/atm-agent"
}
aptroot_sources() {
	install -m 0644 "$REPO/atm-agent-archive-keyring.gpg" "$R/usr/share/keyrings/atm-agent-archive-keyring.gpg"
	cat >"$R/etc/apt/sources.list.d/atm-agent.sources" <<EOS
Types: deb
URIs: file:/srv/atm-agent
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/atm-agent-archive-keyring.gpg
EOS
}
# repo_version [PACKAGE]: the ARCH version of PACKAGE (default atm-agent)
# the repository holds.
repo_version() {
	reprepro -b "$REPO" --list-format '${version}\n' -A "$ARCH" list "$SUITE" "${1:-atm-agent}"
}
# publish_newer VERSION [PACKAGE]: the repository's PACKAGE (default
# atm-agent) repacked as VERSION, added to a copy of the repository,
# published in the root. Its packaged config (etc/PACKAGE/config.yaml)
# differs (a line appended), as in a release whose default config changed:
# with the operator's edit, dpkg then has a conffile question to answer,
# which an unattended upgrade must answer by its options (docs/operations.md
# "Upgrade").
publish_newer() {
	local deb pkg=${2:-atm-agent}
	deb=$(ls "$REPO"/pool/main/a/"$pkg"/"$pkg"_*_"$ARCH".deb | head -1)
	repack_deb "$deb" "$W/upgrade.deb" "etc/$pkg/config.yaml" "$1" "$W"
	rm -rf "$W/repo2"
	cp -a "$REPO" "$W/repo2"
	reprepro --silent -b "$W/repo2" includedeb "$SUITE" "$W/upgrade.deb"
	publish "$W/repo2"
}
# upgrade_checks PACKAGE VERSION EDIT: PACKAGE repacked as VERSION
# (publish_newer) and upgraded to unattended, as docs/operations.md
# "Upgrade" says; the operator's edit (EDIT, a grep regex of
# etc/PACKAGE/config.yaml) is kept and the new default offered beside it.
upgrade_checks() {
	local pkg=$1 v=$2 conf=$R/etc/$1/config.yaml
	publish_newer "$v" "$pkg"
	echo "== $ARCH: apt-get upgrade to $v"
	check "apt-get update" in_root apt-get update
	check "apt-get upgrade (new default config, edited config kept; no prompt)" \
		in_root apt-get -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold upgrade -y
	check "installed version is $v" test "$(in_root dpkg-query -W -f='${Version}' "$pkg")" = "$v"
	check "config edit kept" grep -q "$3" "$conf"
	check "new default offered as config.yaml.dpkg-dist" grep -q "^# $v: a changed packaged default" "$conf.dpkg-dist"
}
