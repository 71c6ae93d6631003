#!/usr/bin/env bash
# apt-install.sh PKG...: installs those of the named Debian packages that are
# missing, idempotently: when all are installed it does nothing and needs no
# network. Run as root (or with sudo available). Used by scripts/setup.sh and
# the packaging scripts that need tools of their own.
set -euo pipefail
missing=()
for p in "$@"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -gt 0 ] || exit 0
echo "installing apt packages: ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
