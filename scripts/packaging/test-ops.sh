#!/bin/bash
# docs/operations.md's operator procedure, run as written: every shell block
# marked <!-- ops-test: NAME --> (install, configure, start, health,
# rotate-key, upgrade, remove, purge, in that order) is extracted and run
# with bash -e -o pipefail as root in a fresh copy of the clean Debian 12
# root of test-apt.sh (scripts/packaging/aptroot.sh); the first step that
# fails fails the test. Between steps the test checks what the step should
# have done. What it supplies in place of a real controller (the repository
# URL, `editor`, systemctl/journalctl stand-ins, a broker) is described in
# docs/operations.md "What the test replaces". Needs root (chroot).
#   ARCH, APT_REPO, APT_GNUPG, ROOT_CACHE: scripts/packaging/aptroot.sh
#   OPS_DOC    the procedure (default docs/operations.md)
#   PHOTOS     the camera's face photo (default build/src/face-api/demo)
#   BIN        a host atm-agent for checks after the package is removed
#              (default build/atm-agent)
#   INIT       standin (default): systemctl and journalctl stand-ins in a
#              chroot, as described there; systemd: the root boots Debian's
#              systemd as its PID 1 under systemd-nspawn (shared network),
#              and the steps and checks run inside it with the real
#              systemctl, journalctl, maintainer-script helpers and every
#              sandboxing setting of the unit enforced; more checks follow
#              the health step (the sandbox as the kernel sees it, restart
#              after a crash, the watchdog). Needs systemd-container.
set -euo pipefail
TEST=test-ops
. "$(dirname "$0")/aptroot.sh"
HERE=$(realpath "$(dirname "$0")")
DOC=$(realpath -m "${OPS_DOC:-docs/operations.md}")
PHOTOS=$(realpath -m "${PHOTOS:-build/src/face-api/demo}")
BIN=$(realpath -m "${BIN:-build/atm-agent}")
INIT=${INIT:-standin}
STEPS=(install configure start health rotate-key upgrade remove purge)
URL=https://apt.example-bank.internal/atm-agent
UNIT=atm-agent.service

[ -f "$DOC" ] || { log "$DOC missing"; exit 1; }
[ -f "$PHOTOS/sample1.jpg" ] || { log "$PHOTOS: no photos (make models)"; exit 1; }
[ -x "$BIN" ] || { log "$BIN missing (make build)"; exit 1; }
case $INIT in
standin | systemd) ;;
*) log "INIT=$INIT: want standin or systemd"; exit 1 ;;
esac
for t in mosquitto mosquitto_sub python3; do
	command -v "$t" >/dev/null || { log "$t missing: apt-get install mosquitto mosquitto-clients python3"; exit 1; }
done
if (exec 3<>/dev/tcp/127.0.0.1/9464) 2>/dev/null; then
	log "something listens on 127.0.0.1:9464 (the agent's metrics port in the procedure); stop it first"
	exit 1
fi
aptroot_setup
aptroot_enter
ver=$(repo_version)
[ -n "$ver" ] || { log "$REPO holds no $ARCH atm-agent"; exit 1; }
publish "$REPO"
cp "$REPO/atm-agent-archive-keyring.gpg" "$R/root/"

# The procedure's blocks, in document order.
T=/srv/atm-test
mkdir -p "$R$T/steps"
awk -v dir="$R$T/steps" '
	/^<!-- ops-test: [a-z0-9-]+ -->$/ { name = $3; want = 1; next }
	want && /^```sh$/ { want = 0; inb = 1; n++; f = sprintf("%s/%02d-%s.sh", dir, n, name); printf "" > f; next }
	want && !/^$/ { printf "ops-test marker %s: not followed by a ```sh block\n", name > "/dev/stderr"; exit 1 }
	inb && /^```$/ { inb = 0; close(f); next }
	inb { print > f }
' "$DOC"
mapfile -t files < <(cd "$R$T/steps" && ls)
names=$(printf '%s\n' "${files[@]}" | sed -E 's/^[0-9]+-(.*)\.sh$/\1/' | paste -sd' ')
if [ "$names" != "${STEPS[*]}" ]; then
	log "$DOC: marked steps are \"$names\", want \"${STEPS[*]}\""
	exit 1
fi
grep -qF "$URL" "$R$T/steps/01-install.sh" || { log "step install does not name $URL (the test serves the repository in its place)"; exit 1; }
sed -i "s|$URL|file:/srv/atm-agent|" "$R$T/steps/01-install.sh"

# The camera: one face photo, looped (no camera in a chroot).
mkdir -p "$R$T/frames"
for i in 1 2 3; do cp "$PHOTOS/sample1.jpg" "$R$T/frames/frame$i.jpg"; done
chmod -R a+rX "$R$T"

# A broker on the host (the root shares its network) and a subscriber.
port=$((20000 + $$ % 20000))
while (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; do port=$((port + 1)); done
mosquitto -p "$port" >"$W/mosquitto.log" 2>&1 &
bgpids+=($!)
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
mosquitto_sub -h 127.0.0.1 -p "$port" -t 'atm/#' -v >"$W/mqtt.log" 2>&1 &
bgpids+=($!)

# The editor stand-in: the test's edits in place of a person's; each must
# take, so a changed default config is noticed.
cat >"$R/usr/local/bin/editor" <<EOF
#!/bin/sh
# test-ops stand-in for a person editing the agent's config
set -e
f=\$1
edit() { sed -i -E "\$1" "\$f"; grep -qE "\$2" "\$f" || { echo "editor stand-in: edit \$1 did not take in \$f" >&2; exit 1; }; }
edit 's/^  id: [^ ]+ /  id: atm-ops-test /' '^  id: atm-ops-test '
edit 's/^  site: [^ ]+ /  site: ops-test-site /' '^  site: ops-test-site '
edit 's|^  source: /dev/video0 |  source: $T/frames |' '^  source: $T/frames '
edit '/^camera:/,/^[a-z]/ s/^  loop: false /  loop: true  /' '^  loop: true '
edit '/^mqtt:/,/^[a-z]/ s/^  enabled: false /  enabled: true  /' '^  enabled: true  '
edit '/^mqtt:/,/^[a-z]/ s|^  brokers: \[\] |  brokers: [tcp://127.0.0.1:$port] |' 'brokers: \[tcp://127.0.0.1:$port\]'
EOF
chmod 0755 "$R/usr/local/bin/editor"

if [ "$INIT" = standin ]; then
	# systemctl and journalctl stand-ins, a notify socket served from here, and
	# /run/systemd/system so that maintainer scripts take their systemd branches.
	# The install pulls in Debian's systemd package (a dependency's
	# Recommends), whose programs cannot work without systemd as PID 1: its
	# /bin/systemctl and /bin/journalctl are diverted (dpkg-divert, before they
	# exist) and the stand-in takes their place, for the steps and for the
	# maintainer scripts alike.
	install -m 0755 "$HERE/systemctl-standin.sh" "$R/usr/local/sbin/systemctl"
	for p in systemctl journalctl; do
		in_root dpkg-divert --local --rename --divert "/bin/$p.distrib" --add "/bin/$p" >/dev/null
		ln -s /usr/local/sbin/systemctl "$R/usr/bin/$p"
	done
	mkdir -p "$R/run/systemd/system" "$R/run/standin"
	python3 -c '
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o777)
while True:
    m = s.recv(4096)
    with open(sys.argv[2], "ab") as f:
        f.write(m.strip() + b"\n")
' "$R/run/standin/notify.sock" "$R/run/standin/notify.log" &
	bgpids+=($!)
	for _ in $(seq 50); do [ -S "$R/run/standin/notify.sock" ] && break; sleep 0.1; done
	in_sys() { in_root "$@"; }
	main_pid() { cat "$R/run/standin/$UNIT.pid" 2>/dev/null; }
	svc_log() { cat "$R/var/log/standin/$UNIT.log" 2>/dev/null; }
else
	# Debian's systemd as the root's PID 1, installed before the procedure
	# starts (a controller runs it). The container shares the host's
	# network: the broker and the health port are on 127.0.0.1. Its root
	# keeps CAP_IPC_LOCK, as a machine's systemd has it: without it
	# nspawn's own system-call filter refuses mlock to everything in the
	# container, and libgcrypt (loaded by OpenCV's ffmpeg through libssh)
	# logs "Warning: using insecure memory!" at every start, which no
	# controller shows (docs/operations.md "The same procedure under the real
	# systemd").
	aptroot_boot --capability=CAP_IPC_LOCK
	svc_log() { in_sys journalctl -u "$UNIT" -o cat --no-pager 2>/dev/null; }
fi

visits() { svc_log | grep -c 'msg=visit ' || true; }
wait_visits() { # wait_visits N: up to 120 s for N visit lines
	for _ in $(seq 1200); do [ "$(visits)" -ge "$1" ] && return 0; sleep 0.1; done
	return 1
}
visit_identity() { svc_log | grep 'msg=visit ' | sed -n "${1}p" | sed -nE 's/.* identity=([a-z0-9-]+) .*/\1/p'; }
healthz() { curl -fsS 127.0.0.1:9464/healthz; }
trigger() { in_sys curl -fsS --unix-socket /run/atm-agent/trigger.sock -X POST -d "{\"txn_id\":\"$1\"}" http://agent/v1/visit; }
env_has() { in_sys cat "/proc/$(main_pid)/environ" | tr '\0' '\n' | grep -qx "$1"; }
first_visit_found_face() { svc_log | grep 'msg=visit ' | head -1 | grep -q 'outcome=face'; }
# agent_gone: no process in the root runs the agent's binary (also once
# the package has deleted it).
agent_gone() {
	in_sys sh -c 'for p in /proc/[0-9]*; do case $(readlink "$p/exe" 2>/dev/null) in /usr/bin/atm-agent*) exit 1 ;; esac; done'
}
watchdog_pinged() {
	if [ "$INIT" = standin ]; then
		grep -qx 'WATCHDOG=1' "$R/run/standin/notify.log"
	else
		# systemd stamps every WATCHDOG=1 it accepts.
		[ "$(in_sys systemctl show -p WatchdogTimestampMonotonic --value "$UNIT")" -gt 0 ] 2>/dev/null
	fi
}

# Under the real systemd only, after the health step: the unit's sandbox as
# the kernel applies it to the agent, and what systemd does when the agent
# dies or hangs. The unit is as it was when they end.
running_again() { # running_again OLD_PID RESTARTS: a new main process, active
	local p; p=$(main_pid) || return 1
	[ "$p" != "$1" ] && [ "$(prop NRestarts)" = "$2" ] && [ "$(prop SubState)" = running ] && healthz >/dev/null
}
journal_lacks() { ! in_sys journalctl --no-pager -u "$UNIT" | grep -E "$1"; } # journal_lacks REGEX (else the lines are shown)
systemd_checks() {
	local n p exposure
	sandbox_checks
	exposure=$(exposure)
	echo "info systemd-analyze security $UNIT: exposure $exposure"
	check "exposure level $exposure below 3.0" awk -v e="${exposure:-99}" 'BEGIN { exit !(e < 3.0) }'
	check "no mode warning for /etc/atm-agent (ConfigurationDirectoryMode=)" journal_lacks 'ConfigurationDirectory.*mode is different'
	check "no libgcrypt warning (using insecure memory)" journal_lacks 'using insecure memory'

	n=$(prop NRestarts)
	p=$(main_pid)
	check "systemctl kill -s KILL (pid $p)" in_sys systemctl kill -s KILL --kill-whom=main "$UNIT"
	check "restarted after SIGKILL (pid $p, restart $((n + 1)))" wait_for 30 running_again "$p" $((n + 1))

	# The watchdog at 6 s by a drop-in: the agent pings at half the
	# period it is given, so an idle agent is not killed; a stopped one is.
	in_sys mkdir -p "/etc/systemd/system/$UNIT.d"
	printf '[Service]\nWatchdogSec=6s\n' >"$R/etc/systemd/system/$UNIT.d/test-watchdog.conf"
	in_sys systemctl daemon-reload
	in_sys systemctl restart "$UNIT"
	n=$(prop NRestarts)
	p=$(main_pid)
	sleep 15
	check "an idle agent keeps a 6 s watchdog fed (15 s, no restart)" test "$(prop NRestarts)/$(main_pid)" = "$n/$p"
	check "systemctl kill -s STOP (pid $p)" in_sys systemctl kill -s STOP --kill-whom=main "$UNIT"
	check "a hung agent is killed by the watchdog and restarted" wait_for 60 running_again "$p" $((n + 1))
	check "the journal names the watchdog" wait_for 10 journal_has 'Watchdog timeout'
	rm "$R/etc/systemd/system/$UNIT.d/test-watchdog.conf"
	rmdir "$R/etc/systemd/system/$UNIT.d"
	in_sys systemctl daemon-reload
	in_sys systemctl restart "$UNIT"
	check "the unit's own watchdog again (30 s)" test "$(prop WatchdogUSec)" = 30s

	# The store key's source readable by others: the unit's root check
	# (ExecStartPre=+) refuses it; the agent itself sees only the 0400 copy.
	chmod 0644 "$R/etc/atm-agent/store.key"
	check "a store.key others may read: systemctl restart fails" sh -c "! nsenter -t $ct -a systemctl restart $UNIT"
	check "  ... the journal names the source and the chmod" wait_for 10 journal_has 'chmod o-rwx /etc/atm-agent/store.key'
	chmod 0600 "$R/etc/atm-agent/store.key"
	in_sys systemctl reset-failed "$UNIT"
	check "fixed: systemctl restart starts it" in_sys systemctl restart "$UNIT"
	check "  ... answering" wait_for 30 healthz
}

run_step() { # run_step FILE
	local f=$1 name
	name=$(echo "$f" | sed -E 's/^[0-9]+-(.*)\.sh$/\1/')
	echo "== step $name (docs/operations.md)"
	sed 's/^/    | /' "$R$T/steps/$f"
	local t0=$SECONDS rc=0
	in_sys env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb \
		env -C /root bash -e -o pipefail -x "$T/steps/$f" </dev/null >"$W/step.log" 2>&1 || rc=$?
	tail -n 40 "$W/step.log" | sed 's/^/    /'
	if [ $rc != 0 ]; then
		bad "step $name exited $rc after $((SECONDS - t0)) s (the procedure as written failed)"
		echo "    service log:"
		svc_log | tail -n 15 | sed 's/^/    /'
		aptroot_done
	fi
	ok "step $name ($((SECONDS - t0)) s)"
}

for f in "${files[@]}"; do
	case $f in
	*-rotate-key.sh)
		cp "$R/etc/atm-agent/store.key" "$W/old.key"
		;;
	*-upgrade.sh)
		key=$(sum "$R/etc/atm-agent/store.key")
		pid1=$(main_pid)
		ver2="$ver+opstest1"
		publish_newer "$ver2"
		;;
	esac
	run_step "$f"
	case $f in
	*-install.sh)
		check "installed version is the repository's $ver" test "$(in_root dpkg-query -W -f='${Version}' atm-agent)" = "$ver"
		check "system user atm-agent" in_root getent passwd atm-agent
		;;
	*-configure.sh)
		check "config holds the edit" grep -q '^  id: atm-ops-test ' "$R/etc/atm-agent/config.yaml"
		check "root's device-key show prints the edited device's pin line" grep -q '^pin: atm-fleet devices key set ops-test-site atm-ops-test ' "$W/step.log"
		;;
	*-start.sh)
		uid=$(in_root id -u atm-agent)
		check "agent runs as atm-agent (uid $uid)" status_has "^Uid:[[:space:]]*$uid[[:space:]]"
		if [ "$INIT" = standin ]; then
			check "agent sent READY=1" grep -qx 'READY=1' "$R/run/standin/notify.log"
		else
			# Type=notify: systemd calls the unit active only after READY=1.
			check "agent sent READY=1 (active, running)" test "$(in_sys systemctl show -p ActiveState,SubState --value "$UNIT" | paste -sd,)" = active,running
		fi
		check "agent has the credential" env_has "CREDENTIALS_DIRECTORY=/run/credentials/$UNIT"
		;;
	*-health.sh)
		check "the test card insert is stored as a visit" wait_visits 1
		check "the visit found a face" first_visit_found_face
		id1=$(visit_identity 1)
		check "/healthz: mqtt_connected true" sh -c 'for i in $(seq 60); do curl -fsS 127.0.0.1:9464/healthz | grep -q "\"mqtt_connected\":true" && exit 0; sleep 0.5; done; exit 1'
		check "the broker has the device's status" sh -c "for i in \$(seq 60); do grep -q '^atm/ops-test-site/atm-ops-test/status ' '$W/mqtt.log' && exit 0; sleep 0.5; done; exit 1"
		check "agent sent WATCHDOG=1" wait_for 30 watchdog_pinged
		[ "$INIT" = standin ] || systemd_checks
		;;
	*-rotate-key.sh)
		check "store.key changed" test "$(sum "$R/etc/atm-agent/store.key")" != "$(sum "$W/old.key")"
		check "trigger after the rotation" trigger ops-test-after-rekey
		check "a second visit is stored" wait_visits 2
		check "it joins the first visit's identity ($id1: templates read with the new key)" test "$(visit_identity 2)" = "$id1" -a -n "$id1"
		;;
	*-upgrade.sh)
		check "installed version is $ver2" test "$(in_root dpkg-query -W -f='${Version}' atm-agent)" = "$ver2"
		check "agent restarted by the upgrade (pid $pid1 -> $(main_pid))" test "$(main_pid)" != "$pid1"
		check "agent runs the new binary" test "$(in_sys readlink "/proc/$(main_pid)/exe")" = /usr/bin/atm-agent
		check "config edit kept" grep -q '^  id: atm-ops-test ' "$R/etc/atm-agent/config.yaml"
		check "new packaged default offered as config.yaml.dpkg-dist" grep -q "^# $ver2: a changed packaged default" "$R/etc/atm-agent/config.yaml.dpkg-dist"
		check "store.key kept" test "$(sum "$R/etc/atm-agent/store.key")" = "$key"
		check "healthy after the upgrade" healthz
		;;
	*-remove.sh)
		check "agent stopped by the removal" agent_gone
		check "binary gone" test ! -e "$R/usr/bin/atm-agent"
		check "config, key and database kept" test -f "$R/etc/atm-agent/config.yaml" -a -f "$R/etc/atm-agent/store.key" -a -f "$R/var/lib/atm-agent/agent.db"
		check "package state config-files" test "$(in_root dpkg-query -W -f='${db:Status-Status}' atm-agent)" = config-files
		check "db check passes with the new key" "$BIN" db check --db "$R/var/lib/atm-agent/agent.db" --key-file "$R/etc/atm-agent/store.key"
		check "db check fails with the old key" sh -c "! '$BIN' db check --db '$R/var/lib/atm-agent/agent.db' --key-file '$W/old.key'"
		check "every template encrypted" sh -c "'$BIN' db stats --db '$R/var/lib/atm-agent/agent.db' | grep -q '\"templates_plain\": 0'"
		check "no unit link left" test ! -e "$R/etc/systemd/system/multi-user.target.wants/$UNIT" -a ! -L "$R/etc/systemd/system/multi-user.target.wants/$UNIT"
		;;
	*-purge.sh)
		st=$(in_root dpkg-query -W -f='${db:Status-Status}' atm-agent 2>/dev/null || true)
		check "package purged (status \"$st\")" test -z "$st" -o "$st" = not-installed
		check "user atm-agent kept" in_root getent passwd atm-agent
		check "nothing of the agent runs" agent_gone
		check "purge says the device key goes" grep -q 'with the device key' "$W/step.log"
		;;
	esac
done
aptroot_done
