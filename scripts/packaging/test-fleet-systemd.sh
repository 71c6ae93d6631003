#!/bin/bash
# The atm-fleet package under Debian's real systemd: a copy of the clean
# Debian 12 root of test-apt.sh (scripts/packaging/aptroot.sh) boots
# systemd as its PID 1 (systemd-nspawn, with a network of its own), the .deb
# is installed there with dpkg, and systemd runs the unit as on a server:
# postinst enables it and leaves it stopped while no user is listed; with a
# user it starts as a dynamic user with its credentials, no capabilities and
# its system-call filter, answers /healthz and a sign-in over HTTP, keeps
# its store across a crash and the restart systemd makes; systemctl reload
# rereads the users file in the same process (a removed user's session
# refused, a broken or group-writable file refused and logged); a users file
# others may write is refused by the unit's root check and the retries end
# at the start limit; with commands on, the key through LoadCredential=,
# an upgrade restarts it on the new binary; purge takes the unit, the
# secrets and the store. What
# test-deb-fleet.sh does with its systemctl stand-in on the build machine,
# done by systemd itself. Needs root and systemd-container.
#   scripts/packaging/test-fleet-systemd.sh [DEB]   (default: the newest
#   build/atm-fleet_*_amd64.deb)
#   ROOT_CACHE: scripts/packaging/aptroot.sh
set -euo pipefail
TEST=test-fleet-systemd
APTROOT_REPO=no
. "$(dirname "$0")/aptroot.sh"
DEB=${1:-$(ls -t build/atm-fleet_*_amd64.deb 2>/dev/null | head -1)}
[ -f "$DEB" ] || { log "no .deb (make deb-fleet)"; exit 1; }
UNIT=atm-fleet.service
B=http://127.0.0.1:8080 # the packaged web.listen, inside the container
J='Accept: application/json'

aptroot_setup
aptroot_enter
check "curl in the root" in_root sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends curl'
cp "$DEB" "$R/root/atm-fleet.deb"
aptroot_boot --private-network

prop_is() { # prop_is PROPERTY VALUE (else the value is shown)
	local v; v=$(prop "$1"); [ "$v" = "$2" ] || { echo "$1=$v"; return 1; }
}
stopped() { ! in_sys systemctl is-active -q $UNIT; }
healthy() { in_sys curl -fsS "$B/healthz" >/dev/null; }
state_is() { test "$(prop ActiveState)/$(prop SubState)" = "$1"; }
running_again() { # running_again OLD_PID RESTARTS: a new main process that answers
	local p; p=$(main_pid) || return 1
	[ "$p" != "$1" ] && [ "$(prop NRestarts)" = "$2" ] && state_is active/running && healthy
}

echo "== install (dpkg -i, postinst under systemd)"
install_deb() { in_sys dpkg -i /root/atm-fleet.deb >"$W/install" 2>&1 || { cat "$W/install"; return 1; }; }
check "dpkg -i atm-fleet" install_deb
check "the unit is enabled" test "$(in_sys systemctl is-enabled $UNIT)" = enabled
check "not started while users.yaml lists no user" state_is inactive/dead
check "install says so" grep -q 'enabled, not started' "$W/install"

echo "== a user, start"
pw="correct horse battery"
hash=$(printf '%s\n' "$pw" | in_sys atm-fleet passwd)
echo "  - {name: ana, role: admin, password_hash: \"$hash\"}" >>"$R/etc/atm-fleet/users.yaml"
check "systemctl start" in_sys systemctl start $UNIT
check "active and answering /healthz" wait_for 20 healthy
uid=$(prop UID)
check "a dynamic user (uid $uid in 61184-65519)" test "$uid" -ge 61184 -a "$uid" -le 65519
check "the seccomp filter is on (Seccomp: 2)" status_has '^Seccomp:[[:space:]]*2$'
check "no new privileges" status_has '^NoNewPrivs:[[:space:]]*1$'
for c in CapEff CapPrm CapBnd; do
	check "no capabilities: $c" status_has "^$c:[[:space:]]*0000000000000000$"
done
for c in users.yaml session.key; do
	check "credential $c: 0400, the service's" test "$(in_sys stat -c '%a %u' /run/credentials/$UNIT/$c)" = "400 $uid"
done
check "the store in the private state directory, the service's, 0600" \
	test "$(in_sys stat -c '%a %u' /var/lib/private/atm-fleet/fleet.db)" = "600 $uid"
check "/var/lib/atm-fleet is systemd's link to it" test "$(in_sys readlink /var/lib/atm-fleet)" = private/atm-fleet
exposure=$(exposure)
echo "info systemd-analyze security $UNIT: exposure $exposure"
check "exposure level $exposure below 2.0" awk -v e="${exposure:-99}" 'BEGIN { exit !(e < 2.0) }'

# Sign in as a program does (docs/fleet.md "JSON API").
jar=/root/jar
csrf=$(in_sys curl -fsS -c $jar -H "$J" "$B/login" | sed -n 's/.*"csrf": *"\([^"]*\)".*/\1/p')
check "GET /login gives a sign-in token" test -n "$csrf"
sign_in() {
	in_sys curl -fsS -b $jar -c $jar -H "$J" --data-urlencode "csrf=$csrf" --data-urlencode user=ana \
		--data-urlencode "password=$pw" "$B/login" | grep -Eq '"role": *"admin"'
}
check "sign-in as ana (role admin)" sign_in
check "GET /api/v1/devices signed in" in_sys curl -fsS -o /dev/null -b $jar -H "$J" "$B/api/v1/devices"

echo "== a crash"
n=$(prop NRestarts)
p=$(main_pid)
check "systemctl kill -s KILL (pid $p)" in_sys systemctl kill -s KILL --kill-whom=main $UNIT
check "restarted by systemd after RestartSec=5s, answering again" wait_for 30 running_again "$p" $((n + 1))
check "the session survives the restart (store and session key kept)" in_sys curl -fsS -o /dev/null -b $jar -H "$J" "$B/api/v1/session"

echo "== systemctl reload: the users file again, same process"
# As an operator edits it: lou added, reload, signed in; lou removed,
# reload: lou's session refused, ana's kept, the main process the same.
session_code() { in_sys curl -s -o /dev/null -w '%{http_code}' -b "$1" -H "$J" "$B/api/v1/session"; } # session_code JAR
users_ok=$(cat "$R/etc/atm-fleet/users.yaml")
echo "  - {name: lou, role: analyst, password_hash: \"$hash\"}" >>"$R/etc/atm-fleet/users.yaml"
p=$(main_pid)
n=$(prop NRestarts)
check "systemctl reload (lou added)" in_sys systemctl reload $UNIT
louJar=/root/jar-lou
sign_in_lou() {
	local t
	t=$(in_sys curl -fsS -c $louJar -H "$J" "$B/login" | sed -n 's/.*"csrf": *"\([^"]*\)".*/\1/p')
	in_sys curl -fsS -b $louJar -c $louJar -H "$J" --data-urlencode "csrf=$t" --data-urlencode user=lou \
		--data-urlencode "password=$pw" "$B/login" | grep -Eq '"role": *"analyst"'
}
check "  ... lou signs in (role analyst)" wait_for 10 sign_in_lou
printf '%s\n' "$users_ok" >"$R/etc/atm-fleet/users.yaml"
check "systemctl reload (lou removed)" in_sys systemctl reload $UNIT
check "  ... lou's session refused (401)" wait_for 10 sh -c "[ \"\$(nsenter -t $ct -a curl -s -o /dev/null -w '%{http_code}' -b $louJar -H '$J' $B/api/v1/session)\" = 401 ]"
check "  ... ana's session still works" test "$(session_code $jar)" = 200
check "  ... the same main process (pid $p), no restart" test "$(main_pid)/$(prop NRestarts)" = "$p/$n"
check "  ... the journal says who was removed" wait_for 10 journal_has 'users file reloaded.*removed=\[lou\]'
echo "users: [" >"$R/etc/atm-fleet/users.yaml" # broken YAML
check "a broken users.yaml: systemctl reload fails" sh -c "! nsenter -t $ct -a systemctl reload $UNIT"
check "  ... the journal names the file and its line, the service keeps its users" \
	wait_for 10 journal_has 'users file not reloaded.*/etc/atm-fleet/users.yaml.*line'
check "  ... the service active, the same process" test "$(prop ActiveState)/$(main_pid)/$(prop NRestarts)" = "active/$p/$n"
check "  ... ana's session still works" test "$(session_code $jar)" = 200
check "  ... /healthz says the last reload failed" sh -c "nsenter -t $ct -a curl -fsS $B/healthz | grep -q '\"last_reload_ok\": *false'"
printf '%s\n' "$users_ok" >"$R/etc/atm-fleet/users.yaml"
chmod 0666 "$R/etc/atm-fleet/users.yaml"
check "a users.yaml others may write: systemctl reload fails" sh -c "! nsenter -t $ct -a systemctl reload $UNIT"
check "  ... refused by the service too, with the chmod of the source" \
	wait_for 10 journal_has 'permissions 0666 are too open.*chmod 0644 /etc/atm-fleet/users.yaml'
chmod 0600 "$R/etc/atm-fleet/users.yaml"
check "fixed: systemctl reload puts it in force" in_sys systemctl reload $UNIT
check "  ... /healthz says so" wait_for 10 sh -c "nsenter -t $ct -a curl -fsS $B/healthz | grep -q '\"last_reload_ok\": *true'"

echo "== a users file others may write"
chmod 0666 "$R/etc/atm-fleet/users.yaml"
in_sys systemctl restart $UNIT >/dev/null 2>&1 || true
t0=$SECONDS
check "refused by the root check of the sources, retries end at the start limit" wait_for 90 state_is failed/failed
echo "info failed for good after $((SECONDS - t0)) s, $(prop NRestarts) restarts in all"
check "  ... the journal says the start limit ended them" wait_for 10 journal_has 'Start request repeated too quickly'
check "  ... and names the file" wait_for 10 journal_has /etc/atm-fleet/users.yaml
n=$(prop NRestarts)
sleep 6
check "  ... no restart after it (RestartSec=5s passed)" prop_is NRestarts "$n"
chmod 0600 "$R/etc/atm-fleet/users.yaml"
in_sys systemctl reset-failed $UNIT
check "fixed: systemctl restart starts it" in_sys systemctl restart $UNIT
check "  ... answering" wait_for 20 healthy

echo "== commands on, the key through LoadCredential=, then an upgrade"
# As docs/fleet.md "Setting it up" has it: root's 0600 key in
# /etc/atm-fleet, a drop-in's LoadCredential=, the config naming the copy.
# Root's plain config check and postinst's skip the copy (the dynamic
# user's, present only while the service runs) and the unit's root check
# reads its source; the upgrade then restarts the service on the new
# binary (before, postinst's check refused the copy and the old process
# ran on: /proc/PID/exe "(deleted)").
(umask 077; openssl genpkey -algorithm ed25519 -out "$R/etc/atm-fleet/command.key")
mkdir -p "$R/etc/systemd/system/$UNIT.d"
printf '[Service]\nLoadCredential=command.key:/etc/atm-fleet/command.key\n' >"$R/etc/systemd/system/$UNIT.d/command-key.conf"
sed -i -e '/^commands:/,/^[a-z]/ s|^\(  *enabled:\) false|\1 true|' \
	-e "s|^\(  *private_key_file:\) .*|\1 /run/credentials/$UNIT/command.key|" "$R/etc/atm-fleet/config.yaml"
check "the config has commands on, naming the copy" grep -q "private_key_file: /run/credentials/$UNIT/command.key" "$R/etc/atm-fleet/config.yaml"
in_sys systemctl daemon-reload
check "systemctl restart with commands on" in_sys systemctl restart $UNIT
check "  ... answering" wait_for 20 healthy
uid=$(prop UID)
check "  ... credential command.key: 0400, the service's" test "$(in_sys stat -c '%a %u' /run/credentials/$UNIT/command.key)" = "400 $uid"
check "root's config check passes while it runs (the copy is not read)" in_sys atm-fleet config check /etc/atm-fleet/config.yaml
check "  ... and with --credentials-from (the source)" in_sys atm-fleet config check --credentials-from /etc/atm-fleet /etc/atm-fleet/config.yaml
repack_deb "$DEB" "$R/root/atm-fleet-new.deb" etc/atm-fleet/config.yaml "$(dpkg-deb -f "$DEB" Version)+up1" "$W"
p=$(main_pid)
upgrade() {
	in_sys dpkg -i --force-confdef --force-confold /root/atm-fleet-new.deb >"$W/upgrade" 2>&1 || { cat "$W/upgrade"; return 1; }
}
check "upgrade (dpkg -i, kept config)" upgrade
check "  ... postinst warns of nothing" sh -c "! grep -E 'WARNING|fails' '$W/upgrade' || { cat '$W/upgrade'; exit 1; }"
new_main() { local q; q=$(main_pid) && [ "$q" != "$p" ] && state_is active/running && healthy; }
check "  ... restarted (pid $p replaced), answering" wait_for 20 new_main
exe_new() { local x; x=$(in_sys readlink "/proc/$(main_pid)/exe"); [ "$x" = /usr/bin/atm-fleet ] || { echo "exe: $x"; return 1; }; }
check "  ... running the new binary (/proc/MAINPID/exe not deleted)" exe_new

echo "== purge"
purge() { in_sys dpkg --purge atm-fleet >"$W/purge" 2>&1 || { cat "$W/purge"; return 1; }; }
check "dpkg --purge atm-fleet" purge
check "stopped" stopped
check "  ... says it keeps the operator's command.key" grep -q 'command.key' "$W/purge"
check "  ... which alone is left in /etc/atm-fleet" test "$(ls -A "$R/etc/atm-fleet")" = command.key
rm -r "$R/etc/atm-fleet" "$R/etc/systemd/system/$UNIT.d"
check "unit, config, secrets and store gone" sh -c "for f in /lib/systemd/system/$UNIT /etc/atm-fleet /var/lib/private/atm-fleet /var/lib/atm-fleet; do test ! -e '$R'\$f -a ! -L '$R'\$f || exit 1; done"
check "not enabled any more" test ! -L "$R/etc/systemd/system/multi-user.target.wants/$UNIT"
aptroot_done
