#!/bin/bash
# Install test through the signed apt repository (make apt-repo), as a fleet
# operator's kiosks would do it, in a clean Debian 12 root (mmdebstrap) of
# ARCH: add the repository with its key, `apt-get install atm-agent` (apt
# resolves the OpenCV libraries from Debian), check the binary, the config
# and the models; replay card-insert visits through the daemon; edit the
# conffile, publish a newer build, `apt-get upgrade` and find the edit, the
# key and the visit data kept; purge and find them gone. Needs root (chroot).
# For arm64 the root's programs (maintainer scripts, apt, the agent) run
# under qemu through binfmt_misc (qemu-user-static), mounted here if needed.
#   ARCH       amd64 (default) or arm64
#   APT_REPO   the repository (default build/apt-repo); APT_GNUPG its key
#   ROOT_CACHE the clean root, created once (default build/_aptroot-ARCH; the leading _ keeps it out of go ./...)
#   PHOTOS     the replayed faces (default build/src/face-api/demo)
set -euo pipefail
ARCH=${ARCH:-amd64}
REPO=$(realpath -m "${APT_REPO:-build/apt-repo}")
export GNUPGHOME=$(realpath -m "${APT_GNUPG:-build/apt-gnupg}")
CACHE=$(realpath -m "${ROOT_CACHE:-build/_aptroot-$ARCH}")
PHOTOS=$(realpath -m "${PHOTOS:-build/src/face-api/demo}")
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
log() { echo "test-apt: $*" >&2; }

[ "$(id -u)" = 0 ] || { log "needs root (chroot)"; exit 1; }
for t in mmdebstrap reprepro curl; do
	command -v "$t" >/dev/null || { log "$t missing: apt-get install mmdebstrap reprepro curl"; exit 1; }
done
[ -f "$REPO/conf/distributions" ] || { log "$REPO: no repository (make apt-repo)"; exit 1; }
[ -f "$PHOTOS/sample1.jpg" ] || { log "$PHOTOS: no photos (make models)"; exit 1; }
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

W=$(mktemp -d /tmp/atm-test-apt.XXXXXX)
R=$W/root
mounted=()
apid=
cleanup() {
	[ -n "$apid" ] && kill "$apid" 2>/dev/null && wait "$apid" 2>/dev/null
	# Nothing started in the root outlives the test.
	for p in /proc/[0-9]*; do
		[ "$(readlink "$p/root" 2>/dev/null)" = "$R" ] && kill -KILL "${p#/proc/}" 2>/dev/null
	done
	for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
	# Never follow a mount point out of the test root.
	rm -rf --one-file-system "$W"
}
trap cleanup EXIT
cp -a "$CACHE" "$R"
for m in proc dev; do
	case $m in
	proc) mount -t proc proc "$R/proc" ;;
	dev) mount --bind /dev "$R/dev" ;;
	esac
	mounted+=("$R/$m")
done
cp /etc/resolv.conf "$R/etc/resolv.conf" 2>/dev/null || true
in_root() { chroot "$R" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"; }

fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
check() { # check DESCRIPTION COMMAND...
	local d=$1; shift
	if "$@" >"$W/out" 2>&1; then ok "$d"; else bad "$d: $(tail -c 600 "$W/out")"; fi
}
sum() { sha256sum "$1" | cut -d' ' -f1; }

# The repository as a kiosk sees it: served from a local mirror path with
# its key in /usr/share/keyrings, signature checked by apt.
publish() { # copy the repository into the root
	rm -rf "$R/srv/atm-agent"
	mkdir -p "$R/srv"
	cp -a "$1" "$R/srv/atm-agent"
}
publish "$REPO"
install -m 0644 "$REPO/atm-agent-archive-keyring.gpg" "$R/usr/share/keyrings/atm-agent-archive-keyring.gpg"
cat >"$R/etc/apt/sources.list.d/atm-agent.sources" <<EOF
Types: deb
URIs: file:/srv/atm-agent
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/atm-agent-archive-keyring.gpg
EOF
ver=$(reprepro -b "$REPO" --list-format '${version}\n' -A "$ARCH" list "$SUITE" atm-agent)
[ -n "$ver" ] || { log "$REPO holds no $ARCH atm-agent"; exit 1; }

echo "== $ARCH: apt-get install atm-agent $ver"
check "apt-get update (repository signature checked)" in_root apt-get update
check "apt-get install atm-agent" in_root apt-get install -y --no-install-recommends atm-agent
check "installed version is $ver" test "$(in_root dpkg-query -W -f='${Version}' atm-agent)" = "$ver"
check "architecture is $ARCH" test "$(in_root dpkg-query -W -f='${Architecture}' atm-agent)" = "$ARCH"
check "atm-agent --version" sh -c "chroot '$R' atm-agent --version | grep -qF '$ver'"
check "config check as atm-agent" in_root runuser -u atm-agent -- atm-agent config check /etc/atm-agent/config.yaml
check "models verify" in_root atm-agent models verify --dir /usr/lib/atm-agent/models
echo "info $(in_root dpkg-query -W -f='${Installed-Size}' atm-agent) KiB installed; $(in_root dpkg-query -W -f='${Depends}' atm-agent | tr ',' '\n' | wc -l) Depends; root $(du -sm --one-file-system "$R" | cut -f1) MiB"

# Replayed card inserts through the installed daemon, as its user: the
# six sample photos, then two of them again (the same people come back).
seq=(1 2 3 4 5 6 1 3)
T=/var/lib/atm-agent/replay
mkdir -p "$R$T/frames"
cp "$PHOTOS/sample1.jpg" "$R$T/frames/000_0.jpg" # the camera's probe frame
for k in "${!seq[@]}"; do
	for f in 1 2 3; do cp "$PHOTOS/sample${seq[$k]}.jpg" "$R$T/frames/$(printf '%03d_%d' "$k" "$f").jpg"; done
done
cat >"$R$T/config.yaml" <<EOF
device: {id: apt-test-atm, site: apt-test-site}
models: {dir: /usr/lib/atm-agent/models}
camera: {source: $T/frames, kind: images, loop: false, burst_frames: 3, burst_duration: 100ms, flush_frames: 0}
trigger:
  http: {enabled: true, socket: $T/trigger.sock}
store: {path: $T/agent.db}
metrics: {listen: ""}
mqtt: {enabled: false}
log: {level: info, format: text}
agent: {visit_timeout: 30m}
EOF
chroot "$R" chown -R atm-agent:atm-agent "$T"
# Started directly (not through a shell function, whose subshell would
# take the signal): chroot, env and setpriv exec, so $! is the agent.
chroot "$R" env -i PATH=/usr/sbin:/usr/bin LC_ALL=C.UTF-8 \
	setpriv --reuid=atm-agent --regid=atm-agent --init-groups \
	atm-agent run --config "$T/config.yaml" >"$W/run.log" 2>&1 &
apid=$!
for _ in $(seq 900); do [ -S "$R$T/trigger.sock" ] && break; sleep 0.2; done
visits=0
if [ -S "$R$T/trigger.sock" ]; then
	t0=$(date +%s)
	for k in "${!seq[@]}"; do
		curl -sf --unix-socket "$R$T/trigger.sock" -X POST -d "{\"txn_id\":\"apt-test-$k\"}" http://agent/v1/visit >/dev/null || break
		for _ in $(seq 6000); do
			visits=$(grep -c 'msg=visit ' "$W/run.log" || true)
			[ "$visits" -gt "$k" ] && break
			sleep 0.1
		done
	done
	echo "info replay: $visits visits in $(($(date +%s) - t0)) s"
fi
kill -TERM "$apid" 2>/dev/null || true
wait "$apid" && ok "agent stopped cleanly on SIGTERM" || bad "agent exit status $? (log: $(tail -c 600 "$W/run.log"))"
apid=
check "replayed ${#seq[@]} visits" test "$visits" = "${#seq[@]}"
faces=$(grep 'msg=visit ' "$W/run.log" | grep -c 'outcome=face' || true)
ids=$(grep 'msg=visit ' "$W/run.log" | sed -nE 's/.* identity=([a-z0-9-]+) .*/\1/p' | sort -u | wc -l)
check "every replayed visit found a face ($faces)" test "$faces" = "${#seq[@]}"
# Eight visits of six photos: the two returns join an earlier identity.
check "returning customers matched ($ids identities for ${#seq[@]} visits)" test "$ids" -lt "${#seq[@]}" -a "$ids" -gt 0
grep 'msg=visit ' "$W/run.log" | sed -E 's/.* (outcome=[^ ]*) (identity=[^ ]*) (mask=[^ ]*) .*/    \1 \2 \3/' >&2 || true

# An operator's edit and visit data that the upgrade must keep.
sed -i 's/^  id: atm-0001 /  id: atm-apt-test /' "$R/etc/atm-agent/config.yaml"
check "config edit" grep -q 'id: atm-apt-test' "$R/etc/atm-agent/config.yaml"
db=$(sum "$R$T/agent.db")
key=$(sum "$R/etc/atm-agent/store.key")

# A newer build published to a copy of the repository.
ver2="$ver+apttest1"
deb=$(ls "$REPO"/pool/main/a/atm-agent/atm-agent_*_"$ARCH".deb | head -1)
dpkg-deb -R "$deb" "$W/pkg"
sed -i "s/^Version: .*/Version: $ver2/" "$W/pkg/DEBIAN/control"
dpkg-deb -Zgzip -z1 -b "$W/pkg" "$W/upgrade.deb" >/dev/null
rm -rf "$W/pkg"
cp -a "$REPO" "$W/repo2"
reprepro --silent -b "$W/repo2" includedeb "$SUITE" "$W/upgrade.deb"
publish "$W/repo2"

echo "== $ARCH: apt-get upgrade to $ver2"
check "apt-get update" in_root apt-get update
check "apt-get upgrade (no conffile prompt)" in_root apt-get upgrade -y
check "installed version is $ver2" test "$(in_root dpkg-query -W -f='${Version}' atm-agent)" = "$ver2"
check "config edit kept" grep -q 'id: atm-apt-test' "$R/etc/atm-agent/config.yaml"
check "store.key kept" test "$(sum "$R/etc/atm-agent/store.key")" = "$key"
check "visit data kept" test "$(sum "$R$T/agent.db")" = "$db"
check "config check after upgrade" in_root runuser -u atm-agent -- atm-agent config check /etc/atm-agent/config.yaml

echo "== $ARCH: apt-get purge"
check "apt-get purge atm-agent" in_root apt-get purge -y atm-agent
check "binary gone" test ! -e "$R/usr/bin/atm-agent"
check "/etc/atm-agent gone" test ! -e "$R/etc/atm-agent"
check "/var/lib/atm-agent gone" test ! -e "$R/var/lib/atm-agent"

if [ "$fails" -gt 0 ]; then
	echo "test-apt ($ARCH): $fails check(s) failed"
	exit 1
fi
echo "test-apt ($ARCH): all checks passed"
