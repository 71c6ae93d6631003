#!/bin/bash
# Install test of the atm-fleet .deb on THIS machine (root): install, files,
# modes and owners, the secrets postinst makes, the unit's enablement; the
# service run as its unit runs it (systemctl-standin.sh: dynamic user,
# credentials directory, ExecStartPre), refusing to run without a user, then
# with a user from `atm-fleet passwd`: /healthz and a sign-in over HTTP;
# upgrade over itself keeps the edited conffile, the secrets, the store and
# the signed-in session; remove keeps them; purge deletes them and the
# enablement. Cleans up after itself. systemd is not PID 1 here, so
# postinst neither starts nor restarts the service: the test does it with
# the stand-in where systemd would (docs/packaging.md "Install test").
#   scripts/packaging/test-deb-fleet.sh [DEB]   (default: the newest
#   build/atm-fleet_*_amd64.deb)
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "test-deb-fleet: needs root (dpkg -i)" >&2; exit 1; }
DEB=${1:-$(ls -t build/atm-fleet_*_amd64.deb 2>/dev/null | head -1)}
[ -f "$DEB" ] || { echo "test-deb-fleet: no .deb (make deb)" >&2; exit 1; }
DEB=$(realpath "$DEB")
STANDIN=$(realpath "$(dirname "$0")/systemctl-standin.sh")
command -v curl >/dev/null || { echo "test-deb-fleet: needs curl (scripts/setup.sh)" >&2; exit 1; }
if dpkg-query -W -f='${Status}' atm-fleet 2>/dev/null | grep -qv not-installed; then
	echo "test-deb-fleet: atm-fleet is already installed here; not touching it" >&2
	exit 1
fi
wants=/etc/systemd/system/multi-user.target.wants
for p in /etc/atm-fleet /var/lib/atm-fleet /var/lib/private/atm-fleet "$wants/atm-fleet.service" \
	/run/credentials/atm-fleet.service /run/standin/atm-fleet.service.pid; do
	[ ! -e "$p" ] && [ ! -L "$p" ] || { echo "test-deb-fleet: $p exists; not touching it" >&2; exit 1; }
done

unit=atm-fleet.service
tmp=$(mktemp -d)
had_standin_dirs=$( [ -d /run/standin ] && [ -d /var/log/standin ] && echo y || echo n)
had_private=$( [ -d /var/lib/private ] && echo y || echo n)
had_creds=$( [ -d /run/credentials ] && echo y || echo n)
cleanup() {
	"$STANDIN" stop $unit >/dev/null 2>&1 || true
	dpkg --purge atm-fleet >/dev/null 2>&1 || true
	rm -f "$wants/$unit" /etc/atm-fleet/ca.pem /etc/systemd/system/$unit
	rm -rf /run/credentials/$unit
	rmdir /etc/atm-fleet 2>/dev/null || true
	rm -f /run/standin/$unit.* /var/log/standin/$unit.log
	if [ "$had_standin_dirs" = n ]; then rmdir /run/standin /var/log/standin 2>/dev/null || true; fi
	if [ "$had_private" = n ]; then rmdir /var/lib/private 2>/dev/null || true; fi
	if [ "$had_creds" = n ]; then rmdir /run/credentials 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT

# ok, bad, check, perm, sum, bumped_copy
# shellcheck source=scripts/packaging/testlib.sh
. "$(dirname "$0")/testlib.sh"
log() { cat /var/log/standin/$unit.log 2>/dev/null; }
# The service is down within 5 s (it exits at start when it refuses).
goes_down() {
	for _ in $(seq 50); do "$STANDIN" is-active -q $unit || return 0; sleep 0.1; done
	return 1
}

# A free loopback port for web.listen (the default 8080 may be taken).
port=
for _ in $(seq 50); do
	p=$((20000 + RANDOM % 20000))
	if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port=$p; break; fi
done
[ -n "$port" ] || { echo "test-deb-fleet: no free port" >&2; exit 1; }
B=http://127.0.0.1:$port
J='Accept: application/json'

# A bumped copy of the same package for the upgrade step, whose packaged
# config differs: with the operator's edit, dpkg has a conffile question.
ver=$(dpkg-deb -f "$DEB" Version)
ver2="$ver+upgradetest"
bumped_copy "$DEB" "$tmp/upgrade.deb" etc/atm-fleet/config.yaml

echo "== install $ver"
dpkg -i "$DEB" </dev/null >"$tmp/install" 2>&1 && ok "dpkg -i" || bad "dpkg -i: $(tail -c 400 "$tmp/install")"
check "install says it is not started without a user" grep -q 'enabled, not started: /etc/atm-fleet/users.yaml lists no user yet' "$tmp/install"
check "  ... and what to do: atm-fleet passwd, users.yaml, systemctl restart" \
	sh -c "grep -q 'atm-fleet passwd' '$tmp/install' && grep -q 'editor /etc/atm-fleet/users.yaml' '$tmp/install' && grep -q 'systemctl restart atm-fleet' '$tmp/install'"
check "install prints no warning" sh -c "! grep -Eq 'WARNING|NOTE' '$tmp/install'"
check "  ... and the dashboard's address (atm-fleet config get)" grep -qF 'answers on http://127.0.0.1:8080/' "$tmp/install"
perm /usr/bin/atm-fleet 755 root:root
perm /lib/systemd/system/$unit 644 root:root
perm /etc/atm-fleet 755 root:root
perm /etc/atm-fleet/config.yaml 644 root:root
perm /etc/atm-fleet/session.key 600 root:root
perm /etc/atm-fleet/users.yaml 600 root:root
for f in /usr/share/man/man1/atm-fleet.1.gz /usr/share/doc/atm-fleet/copyright /usr/share/doc/atm-fleet/changelog.gz \
	/usr/share/doc/atm-fleet/fleet.md /usr/share/doc/atm-fleet/openapi/fleet.yaml /usr/share/lintian/overrides/atm-fleet; do
	perm "$f" 644 root:root
done
check "session.key: 48 random bytes in base64" test "$(base64 -d /etc/atm-fleet/session.key | wc -c)" = 48
check "config.yaml is a conffile" sh -c "dpkg-query -W -f='\${Conffiles}' atm-fleet | grep -q ' /etc/atm-fleet/config.yaml '"
check "session.key and users.yaml are not package files" sh -c "! dpkg -L atm-fleet | grep -Eq 'session.key|users.yaml'"
check "no Depends (pure Go)" test -z "$(dpkg-query -W -f='${Depends}' atm-fleet)"
check "the unit is enabled (multi-user.target.wants)" test "$(readlink "$wants/$unit")" = /lib/systemd/system/$unit
out=$(systemd-analyze verify /lib/systemd/system/$unit 2>&1) && [ -z "$out" ] &&
	ok "systemd-analyze verify: no output" || bad "systemd-analyze verify: $out"
check "packaged config: store in the state directory" grep -q '^    path: /var/lib/atm-fleet/fleet.db$' /etc/atm-fleet/config.yaml
check "packaged config: users file and session key as credentials" \
	sh -c "grep -q '^    users_file: /run/credentials/$unit/users.yaml\$' /etc/atm-fleet/config.yaml && grep -q '^    session_key_file: /run/credentials/$unit/session.key\$' /etc/atm-fleet/config.yaml"
check "the unit loads both credentials" \
	sh -c "grep -q '^LoadCredential=users.yaml:/etc/atm-fleet/users.yaml\$' /lib/systemd/system/$unit && grep -q '^LoadCredential=session.key:/etc/atm-fleet/session.key\$' /lib/systemd/system/$unit"
here=$PWD
cd "$tmp"
check "atm-fleet version is the package's" test "$(atm-fleet version)" = "atm-fleet $ver"
check "config check (installed config)" atm-fleet config check /etc/atm-fleet/config.yaml
check "man page" sh -c "zcat /usr/share/man/man1/atm-fleet.1.gz | grep -q '^.SH \"EXIT STATUS\"'"
if command -v man >/dev/null; then
	out=$(LC_ALL=C.UTF-8 man --warnings -E UTF-8 -l -Tutf8 -Z /usr/share/man/man1/atm-fleet.1.gz 2>&1 >/dev/null) && [ -z "$out" ] &&
		ok "man --warnings: none" || bad "man --warnings: $out"
fi
check "--help lists manpage" sh -c "atm-fleet --help | grep -q 'atm-fleet manpage'"
cd "$here"

echo "== start without a user"
# The operator's edits: a free port, and no broker to reach (the test does
# not need one: ingest retries, the web side serves).
sed -i "s|^    listen: 127.0.0.1:8080\$|    listen: 127.0.0.1:$port|; s|^        - tcp://127.0.0.1:1883\$|        - tcp://127.0.0.1:9|" /etc/atm-fleet/config.yaml
check "config edit" grep -q "listen: 127.0.0.1:$port" /etc/atm-fleet/config.yaml
"$STANDIN" start $unit >"$tmp/start0" 2>&1 || true
check "the service refuses to run without a user" goes_down
check "  ... at the unit's root check of its credentials' sources (ExecStartPre=+), saying why" \
	sh -c "grep -q 'ExecStartPre=+/usr/bin/atm-fleet config check --credentials-from' '$tmp/start0' && grep -q '/etc/atm-fleet/users.yaml.*users file: no users' /var/log/standin/$unit.log"
# run itself refuses it too, with 78 (RestartPreventExitStatus=), and the
# unit's start limit stops the retries of a failing ExecStartPre=.
run_rc() { timeout 10 atm-fleet run --config "$1" >"$tmp/run.out" 2>&1; echo $?; }
sed 's|/run/credentials/atm-fleet.service/|/etc/atm-fleet/|' /etc/atm-fleet/config.yaml >"$tmp/direct.yaml"
check "  ... run exits 78 without a user (RestartPreventExitStatus=78)" \
	sh -c "test \"\$(timeout 10 atm-fleet run --config '$tmp/direct.yaml' >/dev/null 2>&1; echo \$?)\" = 78 && grep -q '^RestartPreventExitStatus=78\$' /lib/systemd/system/$unit"
check "  ... the unit has a start limit (StartLimitBurst=)" grep -q '^StartLimitBurst=' /lib/systemd/system/$unit

echo "== add a user, start"
pw="correct horse battery"
hash=$(printf '%s\n' "$pw" | atm-fleet passwd)
[[ $hash == '$2a$12$'* ]] && ok "atm-fleet passwd prints a bcrypt hash (cost 12)" || bad "atm-fleet passwd printed '$hash'"
# The installed file's commented examples, uncommented with a real hash, are
# a valid users file (every role, a scoped user).
sed -E -e 's/^#(  - \{name)/\1/' -e "s|\\\$2a\\\$12\\\$\\.\\.\\.|$hash|" /etc/atm-fleet/users.yaml >"$tmp/examples.yaml"
chmod 600 "$tmp/examples.yaml"
check "users.yaml's examples, uncommented, pass users check (3 users, one scoped)" \
	sh -c "atm-fleet users check '$tmp/examples.yaml' >'$tmp/ex.out' 2>&1 && grep -q ': 3 user(s)\$' '$tmp/ex.out' && grep -q 'vic: viewer, sites lisbon-01, porto-' '$tmp/ex.out'"
echo "  - {name: ana, role: admin, password_hash: \"$hash\"}" >>/etc/atm-fleet/users.yaml
perm /etc/atm-fleet/users.yaml 600 root:root
: >/var/log/standin/$unit.log
check "systemctl start (stand-in: ExecStartPre, dynamic user, credentials)" "$STANDIN" start $unit
up=n
for _ in $(seq 100); do
	if curl -fsS "$B/healthz" >"$tmp/health" 2>/dev/null; then up=y; break; fi
	sleep 0.1
done
[ $up = y ] && ok "/healthz answers 200 within 10 s" || bad "/healthz: no answer; log: $(log | tail -5)"
check "/healthz says ok" grep -q '"ok":true' "$tmp/health"
pid=$(cat /run/standin/$unit.pid)
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
check "runs as a dynamic user (uid $uid in 61184-65519), not root" test "$uid" -ge 61184 -a "$uid" -le 65519
check "  ... with no_new_privs and no capabilities" sh -c "grep -q '^NoNewPrivs:[[:space:]]*1' /proc/$pid/status && grep -q '^CapBnd:[[:space:]]*0*\$' /proc/$pid/status"
check "credentials: 0400 copies owned by the service's user" sh -c "test \"\$(stat -c '%a %u' /run/credentials/$unit/users.yaml)\" = '400 $uid' && test \"\$(stat -c '%a %u' /run/credentials/$unit/session.key)\" = '400 $uid'"
check "store /var/lib/atm-fleet/fleet.db: the service's, 0600 (UMask=0077)" test "$(stat -c '%a %u' /var/lib/atm-fleet/fleet.db)" = "600 $uid"
check "state directory 0700 (StateDirectoryMode=)" test "$(stat -c '%a %u' /var/lib/atm-fleet)" = "700 $uid"

# Sign in as a program does (docs/fleet.md "JSON API").
jar=$tmp/jar
csrf=$(curl -fsS -c "$jar" -H "$J" "$B/login" | sed -n 's/.*"csrf": *"\([^"]*\)".*/\1/p')
check "GET /login gives a sign-in token" test -n "$csrf"
code=$(curl -sS -o "$tmp/bad" -w '%{http_code}' -b "$jar" -c "$jar" -H "$J" --data-urlencode "csrf=$csrf" \
	--data-urlencode user=ana --data-urlencode "password=wrong password" "$B/login")
check "a wrong password is refused (401)" test "$code" = 401
code=$(curl -sS -o "$tmp/signin" -w '%{http_code}' -b "$jar" -c "$jar" -H "$J" --data-urlencode "csrf=$csrf" \
	--data-urlencode user=ana --data-urlencode "password=$pw" "$B/login")
check "sign-in as ana (200, role admin)" sh -c "test '$code' = 200 && grep -Eq '\"role\": *\"admin\"' '$tmp/signin'"
check "GET /api/v1/session with the cookie (200)" test "$(curl -sS -o /dev/null -w '%{http_code}' -b "$jar" -H "$J" "$B/api/v1/session")" = 200
check "GET /api/v1/devices with the cookie (200)" test "$(curl -sS -o /dev/null -w '%{http_code}' -b "$jar" -H "$J" "$B/api/v1/devices")" = 200
check "GET /api/v1/devices without it (401)" test "$(curl -sS -o /dev/null -w '%{http_code}' -H "$J" "$B/api/v1/devices")" = 401
check "systemctl stop (stand-in)" "$STANDIN" stop $unit
check "the service is down" goes_down

echo "== the unit checks the credentials' sources, not systemd's copies"
cp -p /etc/atm-fleet/users.yaml "$tmp/users.keep"
cp -p /etc/atm-fleet/session.key "$tmp/key.keep"
chown nobody:nogroup /etc/atm-fleet/users.yaml /etc/atm-fleet/session.key
chmod 0666 /etc/atm-fleet/users.yaml /etc/atm-fleet/session.key
: >/var/log/standin/$unit.log
check "start with users.yaml and session.key owned by nobody, 0666: refused" sh -c "! '$STANDIN' start $unit"
check "  ... naming the source file and the fix" grep -q 'users file /etc/atm-fleet/users.yaml: owned by uid 65534.*run: chown root /etc/atm-fleet/users.yaml' /var/log/standin/$unit.log
chown root:root /etc/atm-fleet/users.yaml /etc/atm-fleet/session.key
chmod 0644 /etc/atm-fleet/session.key
chmod 0600 /etc/atm-fleet/users.yaml
: >/var/log/standin/$unit.log
check "start with session.key 0644: refused" sh -c "! '$STANDIN' start $unit && grep -q 'session key /etc/atm-fleet/session.key: permissions 0644 are too open' /var/log/standin/$unit.log"
cp -p "$tmp/users.keep" /etc/atm-fleet/users.yaml
cp -p "$tmp/key.keep" /etc/atm-fleet/session.key
goes_down || true

echo "== files run would fail on: config check refuses them, run exits 78"
for bad in "s|^        ca_file: .*|        ca_file: /nonexistent/ca.pem|" "s|^    listen: .*|    listen: 127.0.0.1:18181x|"; do
	sed "$bad" "$tmp/direct.yaml" >"$tmp/bad.yaml"
	check "config check refuses ($bad)" sh -c "! atm-fleet config check '$tmp/bad.yaml'"
	check "  ... run exits 78" test "$(run_rc "$tmp/bad.yaml")" = 78
done
key=$(sum /etc/atm-fleet/session.key)
users=$(sum /etc/atm-fleet/users.yaml)
db=$(sum /var/lib/atm-fleet/fleet.db)

echo "== upgrade to $ver2"
dpkg -i --force-confdef --force-confold "$tmp/upgrade.deb" </dev/null >"$tmp/upgrade" 2>&1 &&
	ok "dpkg -i (upgrade, changed default config, no prompt)" || bad "upgrade: $(tail -c 400 "$tmp/upgrade")"
check "installed version is $ver2" test "$(dpkg-query -W -f='${Version}' atm-fleet)" = "$ver2"
check "config edit kept" grep -q "listen: 127.0.0.1:$port" /etc/atm-fleet/config.yaml
check "new default offered as config.yaml.dpkg-dist" grep -q "^# $ver2: a changed packaged default" /etc/atm-fleet/config.yaml.dpkg-dist
check "session.key kept" test "$(sum /etc/atm-fleet/session.key)" = "$key"
check "users.yaml kept" test "$(sum /etc/atm-fleet/users.yaml)" = "$users"
check "store kept" test "$(sum /var/lib/atm-fleet/fleet.db)" = "$db"
check "upgrade with a user: no 'not started' message" sh -c "! grep -q 'not started' '$tmp/upgrade'"
check "still enabled" test -L "$wants/$unit"
perm /etc/atm-fleet/session.key 600 root:root
perm /etc/atm-fleet/users.yaml 600 root:root
check "systemctl start after the upgrade" "$STANDIN" start $unit
up=n
for _ in $(seq 100); do curl -fsS "$B/healthz" >/dev/null 2>&1 && { up=y; break; }; sleep 0.1; done
[ $up = y ] && ok "/healthz after the upgrade" || bad "/healthz after the upgrade: $(log | tail -5)"
check "the session signed in before the upgrade is still valid (key and store kept)" \
	test "$(curl -sS -o /dev/null -w '%{http_code}' -b "$jar" -H "$J" "$B/api/v1/session")" = 200
check "systemctl stop" "$STANDIN" stop $unit
goes_down || bad "the service did not stop"
db=$(sum /var/lib/atm-fleet/fleet.db)

# An operator's `systemctl disable` survives an upgrade.
"$STANDIN" disable $unit >/dev/null
check "reinstall after systemctl disable" dpkg -i "$tmp/upgrade.deb" </dev/null
check "  ... stays disabled" test ! -L "$wants/$unit"
"$STANDIN" enable $unit >/dev/null
# A kept config the new version refuses: the reinstall says so.
sed -i 's/^log_level: info$/log_level: loud/' /etc/atm-fleet/config.yaml
dpkg -i "$tmp/upgrade.deb" </dev/null >"$tmp/reinst" 2>&1 && ok "reinstall with a config that fails its check" || bad "reinstall: $(tail -c 400 "$tmp/reinst")"
check "  ... warns that the config fails its check" grep -q 'WARNING: /etc/atm-fleet/config.yaml fails this version.s check' "$tmp/reinst"
sed -i 's/^log_level: loud$/log_level: info/' /etc/atm-fleet/config.yaml
# An empty or too short key (a power cut between postinst's write and the
# disk) is replaced; a key readable by others gets its mode back; the
# users file is never rewritten.
: >/etc/atm-fleet/session.key
check "reinstall over an empty session.key" dpkg -i "$tmp/upgrade.deb" </dev/null
check "  ... a new key" test "$(base64 -d /etc/atm-fleet/session.key | wc -c)" = 48
printf 'x\n' >/etc/atm-fleet/session.key
dpkg -i "$tmp/upgrade.deb" </dev/null >"$tmp/short" 2>&1 && ok "reinstall over a 1-byte session.key" || bad "reinstall: $(tail -c 400 "$tmp/short")"
check "  ... a new key, and says so" sh -c "test \"\$(base64 -d /etc/atm-fleet/session.key | wc -c)\" = 48 && grep -q 'held 1 bytes, fewer than the 32' '$tmp/short'"
# A unit copied by hand hides the packaged one: the reinstall says so.
cp /lib/systemd/system/$unit /etc/systemd/system/$unit
dpkg -i "$tmp/upgrade.deb" </dev/null >"$tmp/hidden" 2>&1 || true
rm -f /etc/systemd/system/$unit
check "reinstall warns about /etc/systemd/system/$unit" grep -q "WARNING: /etc/systemd/system/$unit .*hides the packaged" "$tmp/hidden"
chmod 0644 /etc/atm-fleet/session.key /etc/atm-fleet/users.yaml
check "reinstall over secrets readable by others" dpkg -i "$tmp/upgrade.deb" </dev/null
perm /etc/atm-fleet/session.key 600 root:root
perm /etc/atm-fleet/users.yaml 640 root:root
check "users.yaml never rewritten" test "$(sum /etc/atm-fleet/users.yaml)" = "$users"

echo "== remove"
check "dpkg --remove" dpkg --remove atm-fleet </dev/null
check "binary gone" test ! -e /usr/bin/atm-fleet
check "unit gone" test ! -e /lib/systemd/system/$unit
check "status config-files" test "$(dpkg-query -W -f='${db:Status-Status}' atm-fleet)" = config-files
check "config kept" grep -q "listen: 127.0.0.1:$port" /etc/atm-fleet/config.yaml
check "users.yaml kept" test "$(sum /etc/atm-fleet/users.yaml)" = "$users"
check "session.key kept" test -s /etc/atm-fleet/session.key
check "store kept" test "$(sum /var/lib/atm-fleet/fleet.db)" = "$db"

echo "== purge"
# The store where systemd keeps a dynamic user's state: the directory in
# /var/lib/private, /var/lib/atm-fleet a link to it (the stand-in makes it
# in place). And a file of the operator's own in /etc/atm-fleet.
install -d -m 0700 /var/lib/private
mv /var/lib/atm-fleet /var/lib/private/atm-fleet
ln -s private/atm-fleet /var/lib/atm-fleet
echo "operator's CA" >/etc/atm-fleet/ca.pem
# The session key on a volume of the operator's, linked from /etc/atm-fleet.
mkdir "$tmp/keyvol"
mv /etc/atm-fleet/session.key "$tmp/keyvol/session.key"
ln -s "$tmp/keyvol/session.key" /etc/atm-fleet/session.key
dpkg --purge atm-fleet </dev/null >"$tmp/purge" 2>&1 && ok "dpkg --purge" || bad "dpkg --purge: $(cat "$tmp/purge")"
check "purge says it deletes the session key's link, the users file and the store" \
	sh -c "grep -q 'deleting the link /etc/atm-fleet/session.key; kept its target' '$tmp/purge' && grep -q 'deleting the users file' '$tmp/purge' && grep -q 'deleting the fleet store' '$tmp/purge'"
check "the link's target (the operator's key volume) kept" test -s "$tmp/keyvol/session.key"
check "secrets gone" test ! -e /etc/atm-fleet/session.key -a ! -e /etc/atm-fleet/users.yaml
check "config.yaml and its .dpkg-dist gone" test ! -e /etc/atm-fleet/config.yaml -a ! -e /etc/atm-fleet/config.yaml.dpkg-dist
check "the operator's file kept, and said so" sh -c "test -f /etc/atm-fleet/ca.pem && grep -q 'kept /etc/atm-fleet.*ca.pem' '$tmp/purge'"
check "/var/lib/atm-fleet gone (the link)" test ! -e /var/lib/atm-fleet -a ! -L /var/lib/atm-fleet
check "/var/lib/private/atm-fleet gone" test ! -e /var/lib/private/atm-fleet
check "the enable link gone" test ! -L "$wants/$unit"
check "deb-systemd-helper's state gone" test ! -e /var/lib/systemd/deb-systemd-helper-enabled/$unit.dsh-also
check "package unknown to dpkg" sh -c "! dpkg-query -W atm-fleet >/dev/null 2>&1 || dpkg-query -W -f='\${db:Status-Status}' atm-fleet | grep -q not-installed"

echo "== /etc/atm-fleet writable by others, planted files"
install -d -m 0775 -o nobody -g nogroup /etc/atm-fleet
dpkg -i "$DEB" </dev/null >"$tmp/planted" 2>&1 && bad "dpkg -i into a directory nobody can write: configured" ||
	ok "dpkg -i into a directory nobody owns, group-writable: not configured"
check "  ... saying why and what to do" grep -q 'ERROR: /etc/atm-fleet must be a directory owned by root and not writable by group or others' "$tmp/planted"
check "  ... nothing made in it" test ! -e /etc/atm-fleet/session.key -a ! -e /etc/atm-fleet/users.yaml
chown root:root /etc/atm-fleet
chmod 0755 /etc/atm-fleet
# What nobody planted while it could: a users file and a link for root
# to write the key through.
echo "victim" >"$tmp/victim"
chmod 0600 "$tmp/victim"
printf 'users:\n  - {name: mallory, role: admin, password_hash: "%s"}\n' "$hash" >/etc/atm-fleet/users.yaml
chown nobody:nogroup /etc/atm-fleet/users.yaml
ln -s "$tmp/victim" /etc/atm-fleet/session.key.new
chown -h nobody:nogroup /etc/atm-fleet/session.key.new
dpkg --configure atm-fleet </dev/null >"$tmp/planted" 2>&1 && ok "dpkg --configure once the directory is root's" || bad "configure: $(tail -c 400 "$tmp/planted")"
check "  ... the planted users file is not adopted (still nobody's), and said so" \
	sh -c "test \"\$(stat -c %U /etc/atm-fleet/users.yaml)\" = nobody && grep -q 'WARNING: /etc/atm-fleet/users.yaml is not a file owned by root' '$tmp/planted'"
check "  ... not started (no 'not started: ... no user' steps for a refused file)" sh -c "! grep -q 'lists no user yet' '$tmp/planted'"
check "  ... nothing written through the planted link" test "$(cat "$tmp/victim")" = victim
check "  ... the key is a new file of root's, 0600" sh -c "test ! -L /etc/atm-fleet/session.key && test \"\$(stat -c '%a %U' /etc/atm-fleet/session.key)\" = '600 root'"
: >/var/log/standin/$unit.log
check "  ... and the unit refuses the planted users file" sh -c "! '$STANDIN' start $unit && grep -q 'owned by uid 65534' /var/log/standin/$unit.log"
"$STANDIN" stop $unit >/dev/null 2>&1 || true
dpkg --purge atm-fleet </dev/null >/dev/null 2>&1
check "purge: the planted link gone, the victim kept" sh -c "test ! -L /etc/atm-fleet/session.key.new && test \"\$(cat '$tmp/victim')\" = victim"

if [ "$fails" -gt 0 ]; then
	echo "test-deb-fleet: $fails check(s) failed"
	exit 1
fi
echo "test-deb-fleet: all checks passed"
