#!/bin/bash
# The project's own tests on arm64, under qemu-aarch64-static (pre-release
# step; too slow for `make test`). Run from the repository root after
# `make models`.
#  1. `go test` of PKGS cross-compiled against Debian's arm64 OpenCV
#     (scripts/packaging/build-arm64.sh's sysroot), run with
#     -exec "qemu-aarch64-static -L build/sysroot-arm64"; the cgo vision
#     tests with -tags matprofile, as `make test-vision` does natively.
#  2. An end-to-end agent run on replayed media with the arm64 binary
#     (scripts/packaging/compare-arch.sh: batch clustering and a replayed visit run
#     through `atm-agent run`), decisions compared with the native binary.
#     internal/e2e/ itself cannot run under qemu: its TestMain builds and execs a
#     native agent (and this machine has no binfmt_misc for arm64).
#   PKGS     default "./agent/vision/ ./agent/ ./agent/identity/" (not ./store/: its crash
#            and disk-full tests re-exec the test binary, which needs binfmt_misc)
#   SYSROOT  default build/sysroot-arm64
#   NATIVE   native binary for step 2 (default build/atm-agent: `make build`)
#   SKIP_E2E=1 skips step 2
set -euo pipefail
SYSROOT=$(realpath -m "${SYSROOT:-build/sysroot-arm64}")
PKGS=${PKGS:-./agent/vision/ ./agent/ ./agent/identity/}
ML=usr/lib/aarch64-linux-gnu
log() { echo "test-arm64: $*" >&2; }

if ! command -v qemu-aarch64-static >/dev/null; then
	[ "$(id -u)" = 0 ] || { log "apt-get install qemu-user-static (as root)"; exit 1; }
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static >&2
fi
[ -f build/models/manifest.yaml ] || { log "build/models missing: make models"; exit 1; }
# Creates the sysroot once and builds build/atm-agent-arm64.
SYSROOT=$SYSROOT bash scripts/packaging/build-arm64.sh >/dev/null

export CGO_ENABLED=1 GOOS=linux GOARCH=arm64
export CC=aarch64-linux-gnu-gcc CXX=aarch64-linux-gnu-g++
export PKG_CONFIG_SYSROOT_DIR="$SYSROOT"
export PKG_CONFIG_LIBDIR="$SYSROOT/$ML/pkgconfig:$SYSROOT/usr/share/pkgconfig"
export CGO_CFLAGS="--sysroot=$SYSROOT" CGO_CXXFLAGS="--sysroot=$SYSROOT"
export CGO_LDFLAGS="--sysroot=$SYSROOT -Wl,-rpath-link,$SYSROOT/$ML -Wl,-rpath-link,$SYSROOT/lib/aarch64-linux-gnu -Wl,-rpath-link,$SYSROOT/$ML/blas -Wl,-rpath-link,$SYSROOT/$ML/lapack"
export ATM_MODELS_DIR=$PWD/build/models ATM_MODEL_SRC=$PWD/build/src
log "go test $PKGS under qemu-aarch64-static -L $SYSROOT"
# shellcheck disable=SC2086
go test -count=1 -tags matprofile -timeout 60m -exec "qemu-aarch64-static -L $SYSROOT" $PKGS

if [ "${SKIP_E2E:-}" != 1 ]; then
	unset GOOS GOARCH CC CXX PKG_CONFIG_SYSROOT_DIR PKG_CONFIG_LIBDIR CGO_CFLAGS CGO_CXXFLAGS CGO_LDFLAGS
	NATIVE=${NATIVE:-build/atm-agent} ARM64=build/atm-agent-arm64 QEMU_LD=$SYSROOT bash scripts/packaging/compare-arch.sh
fi
log "PASS"
