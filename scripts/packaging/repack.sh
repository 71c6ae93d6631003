# shellcheck shell=bash
# Sourced by testlib.sh and aptroot.sh (the install tests' upgrades).
# repack_deb DEB OUT CONFFILE VERSION SCRATCH: DEB repacked as VERSION into
# OUT, its packaged CONFFILE (a path without the leading /) with a line
# more, as in a release whose default config changed: with the operator's
# edit, dpkg has a conffile question to answer. SCRATCH is a directory the
# package is unpacked in (removed after).
repack_deb() {
	local deb=$1 out=$2 conf=$3 v=$4 d=$5/pkg
	rm -rf "$d"
	dpkg-deb -R "$deb" "$d"
	sed -i "s/^Version: .*/Version: $v/" "$d/DEBIAN/control"
	echo "# $v: a changed packaged default" >>"$d/$conf"
	sed -i "s|^[0-9a-f]*  $conf\$|$(md5sum <"$d/$conf" | cut -d' ' -f1)  $conf|" "$d/DEBIAN/md5sums"
	dpkg-deb -Zgzip -z1 -b "$d" "$out" >/dev/null
	rm -rf "$d"
}
