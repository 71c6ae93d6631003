#!/bin/bash
# Build the atm-fleet .deb with nfpm from build/atm-fleet (pure Go): needs
# only Go and the repository, not the agent's OpenCV build, the models or
# the demo photos (make deb-fleet; build-deb.sh runs it for make deb). Run
# from the repository root.
#   DEB_VERSION     package version (default: scripts/version.sh; the binary
#                   must say the same)
#   DEB_ARCH        amd64 (default) or arm64
#   DEB_FLEET_BIN   the binary to package (default build/atm-fleet, or
#                   build/atm-fleet-arm64)
#   DEB_MAINTAINER  Maintainer field (default as build-deb.sh)
#   DEB_FLEET_OUT   output file (default build/atm-fleet_<version>_<arch>.deb;
#                   without it, older ones of that arch are removed)
set -euo pipefail
NFPM="go run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2"
FLEET=build/atm-fleet # native: prints the default config and man page
export DEB_ARCH=${DEB_ARCH:-amd64}
case "$DEB_ARCH" in
amd64) DEB_FLEET_BIN=${DEB_FLEET_BIN:-$FLEET} ;;
arm64) DEB_FLEET_BIN=${DEB_FLEET_BIN:-build/atm-fleet-arm64} ;;
*) echo "build-deb-fleet: DEB_ARCH $DEB_ARCH unsupported" >&2; exit 1 ;;
esac
export DEB_FLEET_BIN
# shellcheck source=scripts/packaging/debmeta.sh
. "$(dirname "$0")/debmeta.sh"
maintainer
for f in "$FLEET" "$DEB_FLEET_BIN"; do
	[ -e "$f" ] || { echo "build-deb-fleet: $f missing (make build-fleet)" >&2; exit 1; }
done
DEB_VERSION=${DEB_VERSION:-$(sh scripts/version.sh)}
export DEB_VERSION
got=$("$FLEET" version)
[ "$got" = "atm-fleet $DEB_VERSION" ] ||
	{ echo "build-deb-fleet: $FLEET version says '$got', the package would be $DEB_VERSION (make build-fleet VERSION=$DEB_VERSION)" >&2; exit 1; }

rm -rf build/deb/atm-fleet
mkdir -p build/deb/atm-fleet
changelog atm-fleet
"$FLEET" manpage | gzip -9n >build/deb/atm-fleet/atm-fleet.1.gz

# The config as the package installs it: the store in the unit's
# StateDirectory, the users file and the session key read from the copies
# systemd hands the service (the unit's LoadCredential=; postinst makes the
# sources in /etc/atm-fleet), a client id that is not the build machine's
# name. docs/fleet.md "Install".
creds=/run/credentials/atm-fleet.service
{
	echo "# atm-fleet configuration (docs/fleet.md, /usr/share/doc/atm-fleet/fleet.md)."
	echo "# Every key with its default: atm-fleet config default. Check: atm-fleet config check FILE."
	echo "# The users file and the session key are /etc/atm-fleet/users.yaml and"
	echo "# /etc/atm-fleet/session.key (root, 0600); systemd hands the service a copy of"
	echo "# each under $creds/ (the unit's LoadCredential=)."
	"$FLEET" config default | sed \
		-e "s|^\(    client_id:\) .*|\1 atm-fleet   # stable per instance (the broker keeps its session under it): one per instance when scaling out|" \
		-e "s|^\(    users_file:\) .*|\1 $creds/users.yaml|" \
		-e "s|^\(    session_key_file:\) .*|\1 $creds/session.key|"
} >build/deb/atm-fleet/config.yaml
for want in "    path: /var/lib/atm-fleet/fleet.db" "    client_id: atm-fleet " "    users_file: $creds/users.yaml" "    session_key_file: $creds/session.key"; do
	grep -qF -- "$want" build/deb/atm-fleet/config.yaml ||
		{ echo "build-deb-fleet: the packaged config lacks '$want'" >&2; exit 1; }
done
# Durations as people write them: 720h, not yaml's 720h0m0s.
grep -qx "    history: 720h" build/deb/atm-fleet/config.yaml ||
	{ echo "build-deb-fleet: the packaged config writes retention.history otherwise than 720h" >&2; exit 1; }
"$FLEET" config check build/deb/atm-fleet/config.yaml >/dev/null

# Pure Go (CGO_ENABLED=0): a PIE with the program interpreter and no NEEDED
# library, checked as "dynamic" as in make build (lintian's hardening-no-pie).
bash scripts/packaging/check-pie.sh dynamic "$DEB_FLEET_BIN" >&2

if [ -z "${DEB_FLEET_OUT:-}" ]; then
	rm -f build/atm-fleet_*_"$DEB_ARCH".deb # keep only the newest in build/
fi
fout=${DEB_FLEET_OUT:-build/atm-fleet_${DEB_VERSION}_${DEB_ARCH}.deb}
rm -f "$fout"
$NFPM package --config scripts/packaging/nfpm-fleet.yaml --packager deb --target "$fout" >&2
echo "$fout"
