#!/bin/bash
# Build the atm-agent .deb with nfpm from the binary (make build) and the
# converted models (make models). Run from the repository root (make deb).
#   DEB_VERSION  package version (default: from git, see below)
#   DEB_ARCH     amd64 (default) or arm64 (binary from make build-arm64)
#   DEB_BIN      the binary to package (default build/atm-agent, or
#                build/atm-agent-arm64); a static one gets no library Depends
#   DEB_DEPENDS  runtime dependencies (default: dpkg-shlibdeps on the amd64
#                binary; for arm64 the same, after checking that the arm64
#                binary needs no shared library the amd64 one does not)
#   DEB_OUT      output file (default build/atm-agent_<version>_<arch>.deb)
set -euo pipefail
NFPM="go run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2"
BIN=build/atm-agent # native: prints the default config, dpkg-shlibdeps
MODELS=build/models
export DEB_ARCH=${DEB_ARCH:-amd64}
case "$DEB_ARCH" in
amd64) DEB_BIN=${DEB_BIN:-$BIN} ;;
arm64) DEB_BIN=${DEB_BIN:-build/atm-agent-arm64} ;;
*) echo "build-deb: DEB_ARCH $DEB_ARCH unsupported" >&2; exit 1 ;;
esac
export DEB_BIN

for f in "$BIN" "$DEB_BIN" "$MODELS/manifest.yaml"; do
	[ -e "$f" ] || { echo "build-deb: $f missing (make build models)" >&2; exit 1; }
done

# scripts/version.sh, the same string `make build` links into the binaries.
DEB_VERSION=${DEB_VERSION:-$(sh scripts/version.sh)}
export DEB_VERSION
# The package and the binaries it ships must say the same version.
got=$("$BIN" --version)
[ "$got" = "atm-agent $DEB_VERSION" ] ||
	{ echo "build-deb: $BIN --version says '$got', the package would be $DEB_VERSION (make build VERSION=$DEB_VERSION)" >&2; exit 1; }

mkdir -p build/deb
"$BIN" config default >build/deb/config.yaml
# Templates are encrypted at rest in the package: postinst creates
# /etc/atm-agent/store.key and the unit passes it as the credential store-key
# (LoadCredential=). docs/security.md "Templates at rest".
sed -i 's|^  key_file: "" .*$|  key_file: credential:store-key   # templates encrypted at rest (/etc/atm-agent/store.key via the unit'"'"'s LoadCredential=)|' build/deb/config.yaml
grep -q '^  key_file: credential:store-key ' build/deb/config.yaml ||
	{ echo "build-deb: could not set store.key_file in the packaged config" >&2; exit 1; }
"$BIN" config check build/deb/config.yaml >/dev/null

# A statically linked binary (make static / static-arm64) needs no library.
if [ -z "${DEB_DEPENDS:-}" ] && file -b "$DEB_BIN" | grep -q 'statically linked'; then
	DEB_DEPENDS=none
fi
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

if [ -z "${DEB_OUT:-}" ]; then
	rm -f build/atm-agent_*_"$DEB_ARCH".deb # keep only the newest in build/
fi
out=${DEB_OUT:-build/atm-agent_${DEB_VERSION}_${DEB_ARCH}.deb}
rm -f "$out"
$NFPM package --config scripts/packaging/nfpm.yaml --packager deb --target "$out" >&2
echo "$out"
