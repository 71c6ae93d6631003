#!/bin/bash
# Build the atm-agent, atm-tools and atm-fleet .debs with nfpm from the
# binaries (make build) and the converted models (make models). Run from the repository
# root (make deb). The atm-fleet .deb alone, without the agent's OpenCV build,
# the models or the demo photos: build-deb-fleet.sh (make deb-fleet).
#   DEB_VERSION     package version (default: scripts/version.sh, what the
#                   binaries say; they must agree)
#   DEB_ARCH        amd64 (default) or arm64 (binaries from make build-arm64)
#   DEB_BIN         the agent binary to package (default build/atm-agent, or
#                   build/atm-agent-arm64); a static one gets no library Depends
#   DEB_TOOLS_BIN   the tools binary (default build/atm-tools or
#                   build/atm-tools-arm64; with an explicit DEB_BIN only when set)
#   DEB_FLEET_BIN   the fleet service's binary (default build/atm-fleet or
#                   build/atm-fleet-arm64; with an explicit DEB_BIN only when set)
#   DEB_DEPENDS     runtime dependencies (default: dpkg-shlibdeps on the amd64
#                   binary; for arm64 the same, after checking that the arm64
#                   binary needs no shared library the amd64 one does not)
#   DEB_MAINTAINER  Maintainer field (default: DEBFULLNAME <DEBEMAIL>, else git's
#                   user.name <user.email>, as dch does, else HEAD's author)
#   DEB_OUT         output file (default build/atm-agent_<version>_<arch>.deb)
#   DEB_TOOLS_OUT   output file (default build/atm-tools_<version>_<arch>.deb)
#   DEB_FLEET_OUT   output file (default build/atm-fleet_<version>_<arch>.deb)
set -euo pipefail
NFPM="go run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2"
BIN=build/atm-agent   # native: prints the default config, man page, completions; dpkg-shlibdeps
TOOLS=build/atm-tools # native: copies the shipped models
MODELS=build/models
PHOTOS=build/src/face-api/demo
export DEB_ARCH=${DEB_ARCH:-amd64}
explicit_bin=${DEB_BIN:+y}
case "$DEB_ARCH" in
amd64) DEB_BIN=${DEB_BIN:-$BIN}; tools_default=$TOOLS; fleet_default=build/atm-fleet ;;
arm64) DEB_BIN=${DEB_BIN:-build/atm-agent-arm64}; tools_default=build/atm-tools-arm64; fleet_default=build/atm-fleet-arm64 ;;
*) echo "build-deb: DEB_ARCH $DEB_ARCH unsupported" >&2; exit 1 ;;
esac
if [ -z "${DEB_TOOLS_BIN:-}" ] && [ -z "$explicit_bin" ]; then
	DEB_TOOLS_BIN=$tools_default
fi
if [ -z "${DEB_FLEET_BIN:-}" ] && [ -z "$explicit_bin" ]; then
	DEB_FLEET_BIN=$fleet_default
fi
export DEB_BIN DEB_TOOLS_BIN=${DEB_TOOLS_BIN:-} DEB_FLEET_BIN=${DEB_FLEET_BIN:-}

# shellcheck source=scripts/packaging/debmeta.sh
. "$(dirname "$0")/debmeta.sh"
maintainer

for f in "$BIN" "$TOOLS" "$DEB_BIN" ${DEB_TOOLS_BIN:+"$DEB_TOOLS_BIN"} "$MODELS/manifest.yaml" "$PHOTOS/sample1.jpg"; do
	[ -e "$f" ] || { echo "build-deb: $f missing (make build models)" >&2; exit 1; }
done

# scripts/version.sh, the same string `make build` links into the binaries.
DEB_VERSION=${DEB_VERSION:-$(sh scripts/version.sh)}
export DEB_VERSION
# The package and the binaries it ships must say the same version.
got=$("$BIN" --version)
[ "$got" = "atm-agent $DEB_VERSION" ] ||
	{ echo "build-deb: $BIN --version says '$got', the package would be $DEB_VERSION (make build VERSION=$DEB_VERSION)" >&2; exit 1; }

rm -rf build/deb
mkdir -p build/deb/atm-agent build/deb/atm-tools build/deb/demo
# Only the models the default pipeline runs; the rest come with
# `atm-tools models build`. They must pass the same check as on the box.
"$TOOLS" models ship --dir "$MODELS" --out build/deb/models >&2
"$BIN" models verify --dir build/deb/models >&2
chmod 0644 build/deb/models/*
install -m 0644 "$PHOTOS"/*.jpg build/deb/demo/

# Man pages and completions, generated from the command definitions (the
# native binaries: the arm64 ones have the same commands).
for b in atm-agent atm-tools; do
	"build/$b" manpage | gzip -9n >"build/deb/$b/$b.1.gz"
	for sh in bash zsh fish; do
		"build/$b" completion "$sh" >"build/deb/$b/completion.$sh"
	done
done

# changelog.gz (scripts/packaging/debmeta.sh).
changelog atm-agent
changelog atm-tools

"$BIN" config default >build/deb/config.yaml
# Templates are encrypted at rest in the package: postinst creates
# /etc/atm-agent/store.key and the unit passes it as the credential store-key
# (LoadCredential=). docs/security.md "Templates at rest".
sed -i 's|^  key_file: "" .*$|  key_file: credential:store-key   # templates encrypted at rest (/etc/atm-agent/store.key via the unit'"'"'s LoadCredential=)|' build/deb/config.yaml
grep -q '^  key_file: credential:store-key ' build/deb/config.yaml ||
	{ echo "build-deb: could not set store.key_file in the packaged config" >&2; exit 1; }
"$BIN" config check build/deb/config.yaml >/dev/null

# A static binary (make static / static-arm64: no program interpreter; `file`
# says "static-pie linked") needs no library.
static() { ! readelf -lW "$1" | grep -q 'Requesting program interpreter'; }
if [ -z "${DEB_DEPENDS:-}" ] && static "$DEB_BIN"; then
	DEB_DEPENDS=none
fi
# Every packaged binary is a position-independent executable (lintian's
# hardening-no-pie; docs/packaging.md "lintian"): a build that lost PIE fails
# here instead of shipping.
# (The fleet service's: build-deb-fleet.sh.)
for b in "$DEB_BIN" ${DEB_TOOLS_BIN:+"$DEB_TOOLS_BIN"}; do
	if static "$b"; then kind=static; else kind=dynamic; fi
	bash scripts/packaging/check-pie.sh "$kind" "$b" >&2
done
if [ -z "${DEB_DEPENDS:-}" ]; then
	# There is no arm64 dpkg database to run dpkg-shlibdeps against; the
	# package names are the same on every architecture, so the amd64 result
	# holds if the arm64 binary needs no other library.
	if [ "$DEB_ARCH" = arm64 ]; then
		extra=$(comm -23 <(aarch64-linux-gnu-readelf -d "$DEB_BIN" | awk '/NEEDED/ {print $5}' | sort) \
			<(readelf -d "$BIN" | awk '/NEEDED/ {print $5}' | sort))
		[ -z "$extra" ] || { echo "build-deb: arm64 binary needs $extra beyond amd64; set DEB_DEPENDS" >&2; exit 1; }
	fi
	# dpkg-shlibdeps needs a debian/control naming the package.
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	mkdir "$tmp/debian"
	printf 'Source: atm-agent\n\nPackage: atm-agent\nArchitecture: amd64\n' >"$tmp/debian/control"
	bin=$(realpath "$BIN")
	DEB_DEPENDS=$(cd "$tmp" && dpkg-shlibdeps -O "$bin" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
	[ -n "$DEB_DEPENDS" ] || { echo "build-deb: dpkg-shlibdeps found no dependencies" >&2; exit 1; }
fi
[ "$DEB_DEPENDS" = none ] && DEB_DEPENDS=
export DEB_DEPENDS
# atm-tools links the same OpenCV libraries (it checks the same way).
if [ -n "$DEB_TOOLS_BIN" ] && [ -z "${DEB_TOOLS_DEPENDS:-}" ]; then
	if [ "$DEB_ARCH" = arm64 ]; then
		extra=$(comm -23 <(aarch64-linux-gnu-readelf -d "$DEB_TOOLS_BIN" | awk '/NEEDED/ {print $5}' | sort) \
			<(readelf -d "$TOOLS" | awk '/NEEDED/ {print $5}' | sort))
		[ -z "$extra" ] || { echo "build-deb: arm64 atm-tools needs $extra beyond amd64; set DEB_TOOLS_DEPENDS" >&2; exit 1; }
	fi
	ttmp=$(mktemp -d)
	mkdir "$ttmp/debian"
	printf 'Source: atm-agent\n\nPackage: atm-tools\nArchitecture: amd64\n' >"$ttmp/debian/control"
	tbin=$(realpath "$TOOLS")
	DEB_TOOLS_DEPENDS=$(cd "$ttmp" && dpkg-shlibdeps -O "$tbin" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
	rm -rf "$ttmp"
	[ -n "$DEB_TOOLS_DEPENDS" ] || { echo "build-deb: dpkg-shlibdeps found no dependencies for atm-tools" >&2; exit 1; }
fi
export DEB_TOOLS_DEPENDS=${DEB_TOOLS_DEPENDS:-}

if [ -z "${DEB_OUT:-}" ]; then
	rm -f build/atm-agent_*_"$DEB_ARCH".deb build/atm-tools_*_"$DEB_ARCH".deb # keep only the newest in build/
fi
out=${DEB_OUT:-build/atm-agent_${DEB_VERSION}_${DEB_ARCH}.deb}
rm -f "$out"
$NFPM package --config scripts/packaging/nfpm.yaml --packager deb --target "$out" >&2
echo "$out"
if [ -n "$DEB_TOOLS_BIN" ]; then
	tout=${DEB_TOOLS_OUT:-build/atm-tools_${DEB_VERSION}_${DEB_ARCH}.deb}
	rm -f "$tout"
	$NFPM package --config scripts/packaging/nfpm-tools.yaml --packager deb --target "$tout" >&2
	echo "$tout"
fi
# The fleet service's package (pure Go): build-deb-fleet.sh, which also
# runs alone (make deb-fleet).
if [ -n "$DEB_FLEET_BIN" ]; then
	bash scripts/packaging/build-deb-fleet.sh
fi
