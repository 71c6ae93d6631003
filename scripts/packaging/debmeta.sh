# shellcheck shell=bash
# Package metadata shared by build-deb.sh and build-deb-fleet.sh (sourced).

# maintainer: sets and exports DEB_MAINTAINER unless set: DEBFULLNAME
# <DEBEMAIL>, else git's user.name <user.email>, as dch does, else (a
# fresh clone without git identity) HEAD's author.
maintainer() {
	if [ -z "${DEB_MAINTAINER:-}" ]; then
		local name email
		name=${DEBFULLNAME:-$(git config user.name || git log -1 --format=%an)}
		email=${DEBEMAIL:-$(git config user.email || git log -1 --format=%ae)}
		[ -n "$name" ] && [ -n "$email" ] ||
			{ echo "$(basename "$0"): set DEB_MAINTAINER='Name <email>' (or DEBFULLNAME and DEBEMAIL)" >&2; exit 1; }
		DEB_MAINTAINER="$name <$email>"
	fi
	export DEB_MAINTAINER
}

# changelog PKG: build/deb/PKG/changelog.gz for DEB_VERSION and
# DEB_MAINTAINER (a native package: the version has no Debian revision):
# this version's entry lists the commits since the previous tag (at most
# 20), wrapped at 78 columns as lintian wants.
changelog() {
	local pkg=$1 prev range
	prev=$(git describe --tags --abbrev=0 HEAD^ 2>/dev/null || true)
	range=${prev:+$prev..}HEAD
	{
		echo "$pkg ($DEB_VERSION) unstable; urgency=medium"
		echo
		git log --no-merges -n 20 --format='%s' "$range" | while IFS= read -r subj; do
			echo "$subj" | fold -s -w 72 | sed '1s/^/  * /; 2,$s/^/    /'
		done
		echo
		echo " -- $DEB_MAINTAINER  $(git log -1 --format=%cd --date=rfc2822 HEAD)"
	} | sed 's/[[:space:]]*$//' | gzip -9n >"build/deb/$pkg/changelog.gz"
}
