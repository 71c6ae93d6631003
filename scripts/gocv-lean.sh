#!/usr/bin/env bash
# Prepares `go build -modfile=DIR/go.mod` for the shipped binaries: DIR/gocv
# is the pinned gocv module (the version go.mod requires, from the module
# cache, checked against go.sum by `go mod verify`) without the C++ wrappers
# of the OpenCV modules neither binary calls, and DIR/go.mod is the project's
# go.mod with a replace to it. gocv compiles every wrapper into its package,
# so without this the binaries link libopencv_highgui (whose Debian package
# pulls Qt), photo, features2d, video and objdetect although nothing calls
# them (docs/packaging.md). Tests build with the untouched module.
# Usage: scripts/gocv-lean.sh [DIR]   (default build/gocv-lean)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build/gocv-lean}
src=$(go mod download -json gocv.io/x/gocv | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$src" ] || { echo "gocv-lean: gocv.io/x/gocv not in the module cache" >&2; exit 1; }
go mod verify >/dev/null
tmp="$dir.tmp"
rm -rf "$tmp"
mkdir -p "$tmp"
cp -r "$src" "$tmp/gocv"
chmod -R u+w "$tmp/gocv"
(
	cd "$tmp/gocv"
	# The wrappers dropped, one OpenCV module each (a build that needs one
	# of them fails to compile, naming the missing gocv function).
	rm -f highgui* photo* features2d* objdetect* svd* video.go video.cpp video.h
	rm -f ./*_test.go
)
cp go.mod go.sum "$tmp/"
printf '\nreplace gocv.io/x/gocv => ./%s/gocv\n' "$dir" >>"$tmp/go.mod"
rm -rf "$dir"
mv "$tmp" "$dir"
echo "$dir/go.mod"
