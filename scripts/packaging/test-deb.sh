#!/bin/bash
# Install test of the atm-agent .deb on THIS machine (root): install, files,
# user, permissions, unit verify, config and models checks; upgrade to a
# bumped version keeps visit data and the edited conffile; remove keeps config
# and data; purge deletes them. Cleans up (purge, and the atm-agent user and
# gpio group if this test created them).
#   scripts/packaging/test-deb.sh [DEB [TOOLS_DEB]]   (default: the newest
#   build/atm-agent_*_amd64.deb and build/atm-tools_*_amd64.deb)
# The commands are run from a scratch directory, not the checkout, as an
# operator would: installed defaults, --help of every command, demo.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "test-deb: needs root (dpkg -i)" >&2; exit 1; }
DEB=${1:-$(ls -t build/atm-agent_*_amd64.deb 2>/dev/null | head -1)}
TDEB=${2:-$(ls -t build/atm-tools_*_amd64.deb 2>/dev/null | head -1)}
[ -f "$DEB" ] && [ -f "$TDEB" ] || { echo "test-deb: no .deb (make deb)" >&2; exit 1; }
DEB=$(realpath "$DEB") TDEB=$(realpath "$TDEB")
for p in atm-agent atm-tools; do
	if dpkg-query -W -f='${Status}' $p 2>/dev/null | grep -qv not-installed; then
		echo "test-deb: $p is already installed here; not touching it" >&2
		exit 1
	fi
done
for p in /etc/atm-agent /var/lib/atm-agent /etc/systemd/system/multi-user.target.wants/atm-agent.service; do
	[ ! -e "$p" ] && [ ! -L "$p" ] || { echo "test-deb: $p exists; not touching it" >&2; exit 1; }
done

had_user=$(getent passwd atm-agent >/dev/null && echo y || echo n)
had_gpio=$(getent group gpio >/dev/null && echo y || echo n)
tmp=$(mktemp -d)
cleanup() {
	dpkg --purge atm-tools >/dev/null 2>&1 || true
	dpkg --purge atm-agent >/dev/null 2>&1 || true
	rm -f /etc/systemd/system/multi-user.target.wants/atm-agent.service
	if [ "$had_user" = n ] && getent passwd atm-agent >/dev/null; then deluser --quiet --system atm-agent >/dev/null 2>&1 || true; fi
	if [ "$had_user" = n ] && getent group atm-agent >/dev/null; then delgroup --quiet --system atm-agent >/dev/null 2>&1 || true; fi
	if [ "$had_gpio" = n ] && getent group gpio >/dev/null; then delgroup --quiet --system gpio >/dev/null 2>&1 || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT

# ok, bad, check, perm, sum, bumped_copy
# shellcheck source=scripts/packaging/testlib.sh
. "$(dirname "$0")/testlib.sh"

# A bumped copy of the same package for the upgrade step, whose packaged
# config differs (a release with a changed default): with the operator's
# edit, dpkg has a conffile question to answer.
ver=$(dpkg-deb -f "$DEB" Version)
ver2="$ver+upgradetest"
bumped_copy "$DEB" "$tmp/upgrade.deb" etc/atm-agent/config.yaml

echo "== install $ver"
check "dpkg -i" dpkg -i "$DEB" </dev/null
perm /usr/bin/atm-agent 755 root:root
perm /usr/lib/atm-agent/models 755 root:root
perm /usr/lib/atm-agent/models/manifest.yaml 644 root:root
perm /lib/systemd/system/atm-agent.service 644 root:root
perm /etc/atm-agent 750 root:atm-agent
perm /etc/atm-agent/config.yaml 640 root:atm-agent
perm /etc/atm-agent/store.key 600 root:root
perm /var/lib/atm-agent 700 atm-agent:atm-agent
perm /var/lib/atm-agent/device.key 600 atm-agent:atm-agent
check "device-key show as atm-agent" sh -c "runuser -u atm-agent -- atm-agent device-key show | grep -q '^fingerprint: SHA256:'"
check "the device key unreadable by another local user" sh -c "! runuser -u nobody -- cat /var/lib/atm-agent/device.key 2>/dev/null"
check "store.key is 32 bytes" test "$(stat -c %s /etc/atm-agent/store.key)" = 32
check "config.yaml is a conffile" sh -c "dpkg-query -W -f='\${Conffiles}' atm-agent | grep -q ' /etc/atm-agent/config.yaml '"
IFS=: read -r _ _ uid _ _ home shell < <(getent passwd atm-agent)
check "atm-agent is a system user ($uid, $home, $shell)" test "$uid" -lt 1000 -a "$home" = /var/lib/atm-agent -a "$shell" = /usr/sbin/nologin
check "group atm-agent exists" getent group atm-agent
check "group gpio exists (unit SupplementaryGroups)" getent group gpio
check "Depends lists OpenCV dnn" sh -c "dpkg-query -W -f='\${Depends}' atm-agent | grep -q libopencv-dnn406"
out=$(systemd-analyze verify /lib/systemd/system/atm-agent.service 2>&1) && [ -z "$out" ] &&
	ok "systemd-analyze verify: no output" || bad "systemd-analyze verify: $out"
check "config check as atm-agent" runuser -u atm-agent -- atm-agent config check /etc/atm-agent/config.yaml
check "templates encrypted at rest by default" grep -q '^  key_file: credential:store-key ' /etc/atm-agent/config.yaml
check "models verify --dir" atm-agent models verify --dir /usr/lib/atm-agent/models
perm /usr/share/atm-agent/prometheus/atm-agent.rules.yml 644 root:root
perm /usr/share/atm-agent/grafana/dashboards/atm-agent.json 644 root:root
perm /usr/share/atm-agent/grafana/provisioning/atm-agent.yaml 644 root:root
perm /usr/share/atm-agent/node-red/atm-agent-flow.json 644 root:root
if command -v promtool >/dev/null; then
	check "promtool check rules (installed rules)" promtool check rules /usr/share/atm-agent/prometheus/atm-agent.rules.yml
fi
check "dpkg -i atm-tools" dpkg -i "$TDEB" </dev/null
perm /usr/bin/atm-tools 755 root:root
for f in /usr/share/man/man1/atm-agent.1.gz /usr/share/man/man1/atm-tools.1.gz \
	/usr/share/bash-completion/completions/atm-agent /usr/share/zsh/vendor-completions/_atm-agent \
	/usr/share/fish/vendor_completions.d/atm-agent.fish /usr/share/bash-completion/completions/atm-tools \
	/usr/share/doc/atm-agent/copyright /usr/share/doc/atm-agent/changelog.gz /usr/share/doc/atm-tools/copyright \
	/usr/share/atm-tools/demo/sample1.jpg; do
	perm "$f" 644 root:root
done
# Built against gocv without the wrappers nothing calls (scripts/gocv-lean.sh):
# no highgui (Qt), photo, features2d, video or objdetect in either package.
echo "info OpenCV packages in Depends: $(dpkg-query -W -f='${Depends}' atm-agent | grep -o 'libopencv-[a-z0-9]*' | tr '\n' ' ')"
for pkg in atm-agent atm-tools; do
	check "$pkg Depends: no highgui, photo, features2d, video, objdetect" \
		sh -c "! dpkg-query -W -f='\${Depends}' $pkg | grep -Eq 'libopencv-(highgui|photo|features2d|video|objdetect)406'"
done
check "shipped models are the pipeline's (4 models)" test "$(grep -c '^  - name:' /usr/lib/atm-agent/models/manifest.yaml)" = 4
for pkg in atm-agent atm-tools; do
	echo "info $pkg: Installed-Size $(dpkg-query -W -f='${Installed-Size}' $pkg) KiB; files $(dpkg -L $pkg | while read -r f; do [ -f "$f" ] && [ ! -L "$f" ] && stat -c %s "$f"; done | awk '{s += $1} END {print s}') bytes"
done

# As an operator: from a directory that is not the checkout, no path flags.
here=$PWD
cd "$tmp"
check "atm-agent --version is the package's" test "$(atm-agent --version)" = "atm-agent $ver"
check "atm-tools --version is the package's" test "$(atm-tools --version)" = "atm-tools $ver"
check "config check (default file) as atm-agent" runuser -u atm-agent -- atm-agent config check
check "models verify (installed models)" atm-agent models verify
check "man page atm-agent" sh -c "zcat /usr/share/man/man1/atm-agent.1.gz | grep -q '^.SH \"EXIT STATUS\"'"
check "bash completion" bash -c 'source /usr/share/bash-completion/completions/atm-agent; COMP_WORDS=(atm-agent db ""); COMP_CWORD=2; _atm_agent; [[ " ${COMPREPLY[*]} " == *" check "* ]]'
# --help of every command the man pages list, and of every group.
n=0
for b in atm-agent atm-tools; do
	while read -r cmd; do
		for args in "$cmd --help" "help $cmd"; do
			# shellcheck disable=SC2086
			out=$($b $args 2>"$tmp/err") && [ -z "$(cat "$tmp/err")" ] && [[ $out == "usage: $b "* ]] ||
				bad "$b $args: exit $?, $(head -c 200 "$tmp/err")"
			n=$((n + 1))
		done
		g=${cmd% *}
		if [ "$g" != "$cmd" ]; then
			$b $g --help >/dev/null 2>&1 || bad "$b $g --help"
		fi
	done < <(zcat "/usr/share/man/man1/$b.1.gz" | sed -n 's/^\.SS "\(.*\)"$/\1/p' | sed 's/\\-/-/g')
done
[ "$n" -gt 40 ] && ok "--help and help X of every command: $n runs" || bad "only $n help runs"
check "atm-tools demo (installed models and photos)" atm-tools demo --duration 2s --db "$tmp/demo.db"
grep -q "lost 0" "$tmp/out" && ok "demo: every visit stored" || bad "demo: $(tail -5 "$tmp/out")"
cd "$here"

# Visit data and an operator's config edit that the upgrade must keep.
head -c 4096 /dev/urandom >/var/lib/atm-agent/agent.db
chown atm-agent:atm-agent /var/lib/atm-agent/agent.db
chmod 0600 /var/lib/atm-agent/agent.db
sed -i 's/^  id: atm-0001 /  id: atm-test /' /etc/atm-agent/config.yaml
check "config edit" grep -q 'id: atm-test' /etc/atm-agent/config.yaml
db=$(sum /var/lib/atm-agent/agent.db)
key=$(sum /etc/atm-agent/store.key)
devkey=$(sum /var/lib/atm-agent/device.key)

# An operator's `systemctl enable` (the link it makes; no systemd here):
# purge must remove it.
wants=/etc/systemd/system/multi-user.target.wants
mkdir -p "$wants"
ln -s /lib/systemd/system/atm-agent.service "$wants/atm-agent.service"

echo "== upgrade to $ver2"
# Unattended, as docs/operations.md step 6: keep the edited config, the new
# default beside it; no prompt (stdin closed).
check "dpkg -i (upgrade, changed default config, no prompt)" dpkg -i --force-confdef --force-confold "$tmp/upgrade.deb" </dev/null
check "installed version is $ver2" test "$(dpkg-query -W -f='${Version}' atm-agent)" = "$ver2"
check "visit data kept" test "$(sum /var/lib/atm-agent/agent.db)" = "$db"
check "config edit kept" grep -q 'id: atm-test' /etc/atm-agent/config.yaml
check "new default offered as config.yaml.dpkg-dist" grep -q "^# $ver2: a changed packaged default" /etc/atm-agent/config.yaml.dpkg-dist
check "store.key kept" test "$(sum /etc/atm-agent/store.key)" = "$key"
check "device key kept" test "$(sum /var/lib/atm-agent/device.key)" = "$devkey"
perm /var/lib/atm-agent 700 atm-agent:atm-agent
perm /var/lib/atm-agent/agent.db 600 atm-agent:atm-agent
perm /etc/atm-agent/config.yaml 640 root:atm-agent
check "config check after upgrade" runuser -u atm-agent -- atm-agent config check /etc/atm-agent/config.yaml
# A kept config the new version refuses: the upgrade says so.
sed -i 's/^  burst_frames: 5 /  burst_frame: 5 /' /etc/atm-agent/config.yaml
dpkg -i "$tmp/upgrade.deb" </dev/null >"$tmp/reinst" 2>&1 && ok "reinstall same version (idempotent postinst)" || bad "reinstall: $(tail -c 400 "$tmp/reinst")"
check "reinstall warns that the kept config fails its check" grep -q 'WARNING: /etc/atm-agent/config.yaml fails this version.s check.*' "$tmp/reinst"
check "  ... naming the key and line" grep -q 'line [0-9]*: camera.burst_frame: unknown key' "$tmp/reinst"
sed -i 's/^  burst_frame: 5 /  burst_frames: 5 /' /etc/atm-agent/config.yaml
check "config check after the fix" runuser -u atm-agent -- atm-agent config check /etc/atm-agent/config.yaml
check "visit data kept after reinstall" test "$(sum /var/lib/atm-agent/agent.db)" = "$db"

# A power cut between postinst's write of the key and the disk leaves an
# empty store.key: it sealed nothing, and the next configure replaces it.
cp -p /etc/atm-agent/store.key "$tmp/key.bak"
: >/etc/atm-agent/store.key
check "reinstall over an empty store.key" dpkg -i "$tmp/upgrade.deb" </dev/null
check "an empty store.key is replaced by a new 32-byte key" test "$(stat -c %s /etc/atm-agent/store.key)" = 32
perm /etc/atm-agent/store.key 600 root:root
cp -p "$tmp/key.bak" /etc/atm-agent/store.key

# A key on its own volume, linked, the volume not mounted during an
# upgrade: the link is kept (a new key over it locked the store for good).
mkdir -p "$tmp/keyvol" && cp -p "$tmp/key.bak" "$tmp/keyvol/store.key"
rm /etc/atm-agent/store.key && ln -s "$tmp/keyvol/store.key" /etc/atm-agent/store.key
mv "$tmp/keyvol" "$tmp/keyvol.unmounted"
dpkg -i "$tmp/upgrade.deb" </dev/null >"$tmp/keylink" 2>&1 && ok "reinstall with the key's link dangling" || bad "reinstall: $(tail -c 400 "$tmp/keylink")"
check "the dangling key link is kept" test -L /etc/atm-agent/store.key
check "  ... and said so" grep -q 'store.key is a link to .* missing or empty: kept' "$tmp/keylink"
mv "$tmp/keyvol.unmounted" "$tmp/keyvol"
check "  ... the key behind it unchanged" test "$(sum /etc/atm-agent/store.key)" = "$key"
rm /etc/atm-agent/store.key && cp -p "$tmp/key.bak" /etc/atm-agent/store.key
# A key left readable by others is given back its mode.
chmod 0644 /etc/atm-agent/store.key && chown atm-agent /etc/atm-agent/store.key
check "reinstall over a key readable by others" dpkg -i "$tmp/upgrade.deb" </dev/null
perm /etc/atm-agent/store.key 600 root:root

echo "== remove"
check "dpkg --remove atm-tools" dpkg --remove atm-tools </dev/null
check "dpkg --remove" dpkg --remove atm-agent </dev/null
check "binary gone" test ! -e /usr/bin/atm-agent
check "models gone" test ! -e /usr/lib/atm-agent
check "unit gone" test ! -e /lib/systemd/system/atm-agent.service
check "status config-files" test "$(dpkg-query -W -f='${db:Status-Status}' atm-agent)" = config-files
check "config kept" grep -q 'id: atm-test' /etc/atm-agent/config.yaml
check "store.key kept" test "$(sum /etc/atm-agent/store.key)" = "$key"
check "visit data kept" test "$(sum /var/lib/atm-agent/agent.db)" = "$db"

echo "== purge"
dpkg --purge atm-tools >/dev/null 2>&1 || true
# The state directory moved to another disk with a link in its place, as
# operators do: purge deletes the data at the link's target (it removed
# the link and left the database).
mkdir -p "$tmp/data"
cp -a /var/lib/atm-agent "$tmp/data/atm-agent"
rm -rf /var/lib/atm-agent && ln -s "$tmp/data/atm-agent" /var/lib/atm-agent
# A key rotation stopped between `db rekey` and its `mv` (docs/operations.md).
(umask 077 && head -c 32 /dev/urandom >/etc/atm-agent/store.key.new)
dpkg --purge atm-agent </dev/null >"$tmp/purge" 2>&1 && ok "dpkg --purge" || bad "dpkg --purge: $(cat "$tmp/purge")"
check "purge says it deletes the visit data" grep -q 'deleting the visit database' "$tmp/purge"
check "/etc/atm-agent gone" test ! -e /etc/atm-agent
check "/var/lib/atm-agent gone" test ! -e /var/lib/atm-agent -a ! -L /var/lib/atm-agent
check "the visit data at the link's target gone" test ! -e "$tmp/data/atm-agent/agent.db"
check "the operator's enable link gone" test ! -L "$wants/atm-agent.service"
check "package unknown to dpkg" sh -c "! dpkg-query -W atm-agent >/dev/null 2>&1 || dpkg-query -W -f='\${db:Status-Status}' atm-agent | grep -q not-installed"

if [ "$fails" -gt 0 ]; then
	echo "test-deb: $fails check(s) failed"
	exit 1
fi
echo "test-deb: all checks passed"
