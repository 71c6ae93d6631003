#!/bin/sh
# The one version string of a build: what `atm-agent --version`,
# `atm-tools --version` and the .deb's Version field say (make build,
# scripts/packaging/build-deb.sh, build-arm64.sh, build-static.sh).
# A tag vX.Y.Z on HEAD gives X.Y.Z; any other commit
# 0.0.0~git<commit time>.<hash> (Debian versions start with a digit; `~`
# sorts before the first release; commit time orders snapshots); +dirty for
# a modified tree. Outside a git checkout: 0.0.0~dev.
if ! git rev-parse --git-dir >/dev/null 2>&1; then
	echo 0.0.0~dev
	exit 0
fi
if tag=$(git describe --tags --exact-match 2>/dev/null) && [ "${tag#v[0-9]}" != "$tag" ]; then
	v=${tag#v}
else
	v="0.0.0~git$(git log -1 --format=%cd --date=format:%Y%m%d%H%M%S).$(git rev-parse --short HEAD)"
fi
git diff --quiet HEAD 2>/dev/null || v="$v+dirty"
echo "$v"
