#!/bin/bash
# Build the atm-agent .deb with nfpm from the binary (make build) and the
# converted models (make models). Run from the repository root (make deb).
#   DEB_VERSION  package version (default: from git, see below)
#   DEB_ARCH     amd64 (default; the only one with dpkg-shlibdeps here)
#   DEB_DEPENDS  runtime dependencies (default: dpkg-shlibdeps on the binary)
#   DEB_OUT      output file (default build/atm-agent_<version>_<arch>.deb)
set -euo pipefail
NFPM="go run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2"
BIN=build/atm-agent
MODELS=build/models

for f in "$BIN" "$MODELS/manifest.yaml"; do
	[ -e "$f" ] || { echo "build-deb: $f missing (make build models)" >&2; exit 1; }
done

# Debian versions must start with a digit: a tag vX.Y.Z gives X.Y.Z, any
# other commit 0.0.0~git<commit time>.<hash> (sorts before 0.0.0 and by time).
if [ -z "${DEB_VERSION:-}" ]; then
	if tag=$(git describe --tags --exact-match 2>/dev/null) && [[ $tag =~ ^v[0-9] ]]; then
		DEB_VERSION=${tag#v}
	else
		DEB_VERSION="0.0.0~git$(git log -1 --format=%cd --date=format:%Y%m%d%H%M%S).$(git rev-parse --short HEAD)"
	fi
	git diff --quiet HEAD 2>/dev/null || DEB_VERSION+="+dirty"
fi
export DEB_VERSION
export DEB_ARCH=${DEB_ARCH:-amd64}

mkdir -p build/deb
"$BIN" config default >build/deb/config.yaml
"$BIN" config check build/deb/config.yaml >/dev/null

if [ -z "${DEB_DEPENDS:-}" ]; then
	[ "$DEB_ARCH" = amd64 ] || { echo "build-deb: set DEB_DEPENDS for $DEB_ARCH" >&2; exit 1; }
	# dpkg-shlibdeps needs a debian/control naming the package.
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	mkdir "$tmp/debian"
	printf 'Source: atm-agent\n\nPackage: atm-agent\nArchitecture: %s\n' "$DEB_ARCH" >"$tmp/debian/control"
	bin=$(realpath "$BIN")
	DEB_DEPENDS=$(cd "$tmp" && dpkg-shlibdeps -O "$bin" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
	[ -n "$DEB_DEPENDS" ] || { echo "build-deb: dpkg-shlibdeps found no dependencies" >&2; exit 1; }
fi
export DEB_DEPENDS

if [ -z "${DEB_OUT:-}" ]; then
	rm -f build/atm-agent_*_"$DEB_ARCH".deb # keep only the newest in build/
fi
out=${DEB_OUT:-build/atm-agent_${DEB_VERSION}_${DEB_ARCH}.deb}
rm -f "$out"
$NFPM package --config packaging/nfpm.yaml --packager deb --target "$out" >&2
echo "$out"
