#!/bin/bash
# atm-fleet from the signed apt repository (make test-apt-fleet), as a fleet
# operator installs it on a server, in a clean Debian 12 root of ARCH
# (scripts/packaging/aptroot.sh; for arm64 the root's programs, the fleet
# service included, run under qemu through binfmt_misc): add the
# repository with its key, `apt-get install atm-fleet`, the files and
# secrets postinst makes; a user from `atm-fleet passwd`; the service run
# from the packaged config, reading the secrets where the unit's
# credentials would be (/etc/atm-fleet), answers /healthz and a program's
# sign-in; `apt-get upgrade` to a newer build whose packaged config changed
# keeps the edited config, the secrets and the store; purge deletes them.
# systemd is not PID 1 in a chroot: the unit itself is tested by make
# test-fleet-systemd. Needs root.
#   ARCH, APT_REPO, APT_GNUPG, ROOT_CACHE: scripts/packaging/aptroot.sh
set -euo pipefail
TEST=test-apt-fleet
. "$(dirname "$0")/aptroot.sh"
aptroot_setup
aptroot_enter
publish "$REPO"
aptroot_sources
ver=$(repo_version atm-fleet)
[ -n "$ver" ] || { log "$REPO holds no $ARCH atm-fleet"; exit 1; }
J='Accept: application/json'

echo "== $ARCH: apt-get install atm-fleet $ver"
check "apt-get update (repository signature checked)" in_root apt-get update
check "apt-get install atm-fleet" in_root apt-get install -y --no-install-recommends atm-fleet
check "installed version is $ver" test "$(in_root dpkg-query -W -f='${Version}' atm-fleet)" = "$ver"
check "architecture is $ARCH" test "$(in_root dpkg-query -W -f='${Architecture}' atm-fleet)" = "$ARCH"
check "atm-fleet version" test "$(in_root atm-fleet version)" = "atm-fleet $ver"
for f in users.yaml session.key; do
	check "postinst made /etc/atm-fleet/$f, root 0600" test "$(stat -c '%a %U' "$R/etc/atm-fleet/$f")" = "600 root"
done
check "no user yet: users check refuses the file" sh -c "! chroot '$R' atm-fleet users check /etc/atm-fleet/users.yaml"

echo "== $ARCH: a user; the service from the packaged config"
pw="correct horse battery"
hash=$(printf '%s\n' "$pw" | in_root atm-fleet passwd)
[[ $hash == '$2a$12$'* ]] && ok "atm-fleet passwd prints a bcrypt hash (cost 12)" || bad "atm-fleet passwd printed '$hash'"
echo "  - {name: ana, role: analyst, password_hash: \"$hash\"}" >>"$R/etc/atm-fleet/users.yaml"
check "users check: 1 user" sh -c "chroot '$R' atm-fleet users check /etc/atm-fleet/users.yaml | grep -q ': 1 user(s)$'"
# An operator's edit the upgrade must keep: the port (a free one; the
# root shares the host's network).
port=
for _ in $(seq 50); do
	p=$((20000 + RANDOM % 20000))
	if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port=$p; break; fi
done
[ -n "$port" ] || { log "no free port"; exit 1; }
sed -i "s|^    listen: 127.0.0.1:8080\$|    listen: 127.0.0.1:$port|" "$R/etc/atm-fleet/config.yaml"
check "config edit (listen 127.0.0.1:$port)" grep -q "^    listen: 127.0.0.1:$port\$" "$R/etc/atm-fleet/config.yaml"
B=http://127.0.0.1:$port
mkdir -p -m 0700 "$R/var/lib/atm-fleet"
# serve: the packaged config with the unit's credentials read from their
# sources, in the background ($fleet).
fleet=
serve() {
	sed 's|/run/credentials/atm-fleet.service/|/etc/atm-fleet/|' "$R/etc/atm-fleet/config.yaml" >"$R/root/direct.yaml"
	chroot "$R" env -i PATH=/usr/sbin:/usr/bin LC_ALL=C.UTF-8 atm-fleet run --config /root/direct.yaml >>"$W/run.log" 2>&1 &
	fleet=$!
	bgpids=("$fleet")
	wait_for 60 curl -fsS -o /dev/null "$B/healthz"
}
stop() { kill -TERM "$fleet" && wait "$fleet"; }
check "atm-fleet run answers /healthz" serve
jar=$W/jar
csrf=$(curl -fsS -c "$jar" -H "$J" "$B/login" | sed -n 's/.*"csrf": *"\([^"]*\)".*/\1/p')
check "GET /login gives a sign-in token" test -n "$csrf"
code=$(curl -sS -o "$W/signin" -w '%{http_code}' -b "$jar" -c "$jar" -H "$J" --data-urlencode "csrf=$csrf" \
	--data-urlencode user=ana --data-urlencode "password=$pw" "$B/login")
check "sign-in as ana (200, role analyst)" sh -c "test '$code' = 200 && grep -Eq '\"role\": *\"analyst\"' '$W/signin'"
check "GET /api/v1/devices with the cookie (200)" test "$(curl -sS -o /dev/null -w '%{http_code}' -b "$jar" -H "$J" "$B/api/v1/devices")" = 200
check "stops on SIGTERM (exit 0)" stop
bgpids=()
check "the store was written" test -s "$R/var/lib/atm-fleet/fleet.db"
users=$(sum "$R/etc/atm-fleet/users.yaml")
key=$(sum "$R/etc/atm-fleet/session.key")

ver2="$ver+aptfleet1"
upgrade_checks atm-fleet "$ver2" "^    listen: 127.0.0.1:$port\$"
check "users file kept" test "$(sum "$R/etc/atm-fleet/users.yaml")" = "$users"
check "session key kept" test "$(sum "$R/etc/atm-fleet/session.key")" = "$key"
check "served again after the upgrade" serve
check "the session signed in before the upgrade still works" \
	test "$(curl -sS -o /dev/null -w '%{http_code}' -b "$jar" -H "$J" "$B/api/v1/session")" = 200
check "stops on SIGTERM (exit 0)" stop
bgpids=()

echo "== $ARCH: apt-get purge"
check "apt-get purge atm-fleet" in_root apt-get purge -y atm-fleet
check "binary gone" test ! -e "$R/usr/bin/atm-fleet"
check "/etc/atm-fleet gone (config, users, key)" test ! -e "$R/etc/atm-fleet"
check "/var/lib/atm-fleet gone (store)" test ! -e "$R/var/lib/atm-fleet"
aptroot_done
