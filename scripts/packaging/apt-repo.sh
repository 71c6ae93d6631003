#!/bin/bash
# Build a signed apt repository (reprepro) holding the atm-agent packages
# (atm-agent, atm-tools, atm-fleet):
# what a fleet operator mirrors or serves to thousands of kiosks, so that
# `apt install atm-agent` and `apt upgrade` work like for any Debian package.
# Run from the repository root (make apt-repo).
#   APT_REPO    output directory (default build/apt-repo)
#   APT_GNUPG   GnuPG home holding the signing key (default build/apt-gnupg;
#               a throw-away test key is created there when it holds none:
#               a real repository is signed with the bank's own key, see
#               docs/packaging.md "apt repository")
#   APT_SUITE   distribution codename (default bookworm)
#   DEBS        packages to add (default: the newest build/atm-agent_*_ARCH.deb,
#               build/atm-tools_*_ARCH.deb and build/atm-fleet_*_ARCH.deb of
#               amd64 and arm64 that exist)
# The repository's public key is written beside it as
# atm-agent-archive-keyring.gpg (binary, for a sources entry's Signed-By).
set -euo pipefail
REPO=$(realpath -m "${APT_REPO:-build/apt-repo}")
export GNUPGHOME=$(realpath -m "${APT_GNUPG:-build/apt-gnupg}")
SUITE=${APT_SUITE:-bookworm}
log() { echo "apt-repo: $*" >&2; }

for t in reprepro gpg; do
	command -v "$t" >/dev/null || { log "$t missing: apt-get install reprepro gnupg"; exit 1; }
done
if [ -z "${DEBS:-}" ]; then
	DEBS=
	for p in atm-agent atm-tools atm-fleet; do
		for a in amd64 arm64; do
			d=$(ls -t build/"$p"_*_"$a".deb 2>/dev/null | head -1 || true)
			[ -n "$d" ] && DEBS="$DEBS $d"
		done
	done
fi
[ -n "${DEBS// /}" ] || { log "no package to add (make deb, make deb-arm64)"; exit 1; }

mkdir -p "$GNUPGHOME"
chmod 700 "$GNUPGHOME"
if ! gpg --batch --list-secret-keys 2>/dev/null | grep -q sec; then
	log "creating a throw-away signing key in $GNUPGHOME (test only)"
	gpg --batch --quiet --passphrase '' --quick-gen-key \
		"atm-agent test repository <apt-test@atm-agent.invalid>" ed25519 sign 1y
fi
fpr=$(gpg --batch --with-colons --list-secret-keys | awk -F: '/^fpr:/ {print $10; exit}')

# Every architecture the packages exist for; the repository is rebuilt from
# scratch so that it holds exactly DEBS.
archs=$(for d in $DEBS; do dpkg-deb -f "$d" Architecture; done | sort -u | paste -sd' ')
rm -rf "$REPO"
mkdir -p "$REPO/conf"
cat >"$REPO/conf/distributions" <<EOF
Origin: atm-agent
Label: atm-agent
Codename: $SUITE
Architectures: $archs
Components: main
Description: atm-agent packages
SignWith: $fpr
EOF
for d in $DEBS; do
	reprepro --silent -b "$REPO" includedeb "$SUITE" "$d"
done
gpg --batch --export "$fpr" >"$REPO/atm-agent-archive-keyring.gpg"
reprepro -b "$REPO" list "$SUITE" >&2
log "signed by $fpr; sources entry:"
cat >&2 <<EOF
    Types: deb
    URIs: file://$REPO
    Suites: $SUITE
    Components: main
    Signed-By: /usr/share/keyrings/atm-agent-archive-keyring.gpg
EOF
echo "$REPO"
