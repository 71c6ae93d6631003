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
#   ARCH, APT_REPO, APT_GNUPG, ROOT_CACHE: scripts/packaging/aptroot.sh
#   PHOTOS     the replayed faces (default build/src/face-api/demo)
set -euo pipefail
TEST=test-apt
. "$(dirname "$0")/aptroot.sh"
PHOTOS=$(realpath -m "${PHOTOS:-build/src/face-api/demo}")
[ -f "$PHOTOS/sample1.jpg" ] || { log "$PHOTOS: no photos (make models)"; exit 1; }
aptroot_setup
aptroot_enter
publish "$REPO"
aptroot_sources
ver=$(repo_version)
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
bgpids=("$apid")
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
bgpids=()
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
# The packaged default changed and the operator edited it: the unattended
# upgrade keeps the edit and offers the new default beside it.
upgrade_checks atm-agent "$ver2" 'id: atm-apt-test'
check "store.key kept" test "$(sum "$R/etc/atm-agent/store.key")" = "$key"
check "visit data kept" test "$(sum "$R$T/agent.db")" = "$db"
check "config check after upgrade" in_root runuser -u atm-agent -- atm-agent config check /etc/atm-agent/config.yaml

echo "== $ARCH: apt-get purge"
check "apt-get purge atm-agent" in_root apt-get purge -y atm-agent
check "binary gone" test ! -e "$R/usr/bin/atm-agent"
check "/etc/atm-agent gone" test ! -e "$R/etc/atm-agent"
check "/var/lib/atm-agent gone" test ! -e "$R/var/lib/atm-agent"

aptroot_done
