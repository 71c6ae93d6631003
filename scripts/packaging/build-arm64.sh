#!/bin/bash
# Cross-build build/atm-agent-arm64 against Debian 12's arm64 OpenCV in a
# sysroot (libopencv-dev:arm64 cannot be co-installed with the amd64 one).
# Needs: mmdebstrap gcc-aarch64-linux-gnu g++-aarch64-linux-gnu (installed when missing, scripts/apt-install.sh)
# (qemu-user-static to run the result). Run from the repository root.
#   SYSROOT  default build/sysroot-arm64 (~1.1 GB, created once, reused)
set -euo pipefail
SYSROOT=$(realpath -m "${SYSROOT:-build/sysroot-arm64}")
VERSION=${VERSION:-$(sh scripts/version.sh)}
OUT=${OUT:-build/atm-agent-arm64}
ML=usr/lib/aarch64-linux-gnu

# The cross compilers and the sysroot's tools, from Debian's archive.
bash "$(dirname "$0")/../apt-install.sh" mmdebstrap gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user-static

if [ ! -f "$SYSROOT/.complete" ]; then
	rm -rf "$SYSROOT"
	mmdebstrap --variant=extract --architectures=arm64 \
		--include=libopencv-dev,libc6-dev,libstdc++-12-dev \
		bookworm "$SYSROOT" \
		"deb http://deb.debian.org/debian bookworm main" \
		"deb http://deb.debian.org/debian bookworm-updates main" \
		"deb http://deb.debian.org/debian-security bookworm-security main"
	# The extract variant runs no maintainer scripts, so the
	# update-alternatives links for BLAS/LAPACK are missing.
	for l in blas/libblas.so.3 lapack/liblapack.so.3; do
		[ -e "$SYSROOT/$ML/${l#*/}" ] || ln -sf "$l" "$SYSROOT/$ML/${l#*/}"
	done
	touch "$SYSROOT/.complete"
fi

export CGO_ENABLED=1 GOOS=linux GOARCH=arm64
export CC=aarch64-linux-gnu-gcc CXX=aarch64-linux-gnu-g++
export PKG_CONFIG_SYSROOT_DIR="$SYSROOT"
export PKG_CONFIG_LIBDIR="$SYSROOT/$ML/pkgconfig:$SYSROOT/usr/share/pkgconfig"
export CGO_CFLAGS="--sysroot=$SYSROOT"
export CGO_CXXFLAGS="--sysroot=$SYSROOT"
export CGO_LDFLAGS="--sysroot=$SYSROOT -Wl,-rpath-link,$SYSROOT/$ML -Wl,-rpath-link,$SYSROOT/lib/aarch64-linux-gnu -Wl,-rpath-link,$SYSROOT/$ML/blas -Wl,-rpath-link,$SYSROOT/$ML/lapack"
# gocv without the wrappers nothing calls (no highgui/Qt), as `make build`.
# A position-independent executable, as `make build` (lintian's
# hardening-no-pie): Go builds linux/arm64 as a plain executable unless asked;
# cgo links it with the cross gcc, which gets -pie.
lean=$(bash scripts/gocv-lean.sh)
LDFLAGS="-s -w -X main.version=$VERSION -X github.com/periocular/atm-agent/internal/cli.Version=$VERSION"
go build -modfile="$lean" -trimpath -buildmode=pie -ldflags "$LDFLAGS" -o "$OUT" ./cmd/atm-agent
# The offline tools (cluster, used by compare-arch.sh) beside it.
go build -modfile="$lean" -trimpath -buildmode=pie -ldflags "$LDFLAGS" -o "${OUT/atm-agent/atm-tools}" ./cmd/atm-tools
# The fleet service: pure Go (no cgo, no sysroot), a PIE too.
CGO_ENABLED=0 go build -trimpath -buildmode=pie -ldflags "$LDFLAGS" -o "${OUT/atm-agent/atm-fleet}" ./cmd/atm-fleet
bash scripts/packaging/check-pie.sh dynamic "$OUT" "${OUT/atm-agent/atm-tools}" "${OUT/atm-agent/atm-fleet}" >&2
echo "$OUT"
