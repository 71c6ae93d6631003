#!/bin/bash
# Fully static atm-agent: a minimal static OpenCV built from Debian 12's own
# source package (cached outside git), then `go build -buildmode=pie` linked
# with -static-pie: a static position-independent executable (no INTERP, no
# shared library) that the kernel loads at a random address. Every archive
# linked must be position independent: OpenCV's own (ENABLE_PIC, below) and
# Debian's libstdc++, libc (rcrt1.o), protobuf, png, jpeg and zlib archives
# (Debian's gcc builds PIE by default); a non-PIC object fails the link.
# Run from the repository root.
#   ARCH          amd64 (default) or arm64 (cross, gcc-aarch64-linux-gnu)
#   OUT           default build/atm-agent-static (amd64), build/atm-agent-static-arm64
#   ATM_CACHE_DIR default ~/.cache/atm-agent; holds opencv-src/, opencv-static-<arch>/
#                 and (arm64) sysroot-arm64-static/
#   OPENCV_SRC_VERSION  Debian source version (default: bookworm's candidate)
#   JOBS          make -j for OpenCV (default 2; the build runs under nice -n 10)
#
# OpenCV modules: what the agent calls (core, imgproc, imgcodecs, videoio,
# dnn, objdetect) plus what gocv v0.31's C++ bindings reference (calib3d,
# features2d, flann, highgui without a GUI backend, photo, video): gocv
# compiles all of its .cpp files into the package, so every symbol they use
# must resolve. Debian's source has no 3rdparty/ (dfsg), so jpeg, png, zlib
# and protobuf come from Debian's own static archives (-dev packages).
# Lost against Debian's shared OpenCV: ffmpeg/gstreamer (RTSP), TIFF, WebP,
# JPEG 2000, OpenEXR, OpenCL, LAPACK, Eigen. V4L2 and MJPEG remain.
# The install is keyed by source version + arch + cmake flags: changing a
# flag here builds a new one beside the old (delete old keys by hand).
set -euo pipefail
ARCH=${ARCH:-amd64}
CACHE=$(realpath -m "${ATM_CACHE_DIR:-$HOME/.cache/atm-agent}")
JOBS=${JOBS:-2}
VERSION=${VERSION:-$(sh scripts/version.sh)}
case "$ARCH" in
amd64) OUT=${OUT:-build/atm-agent-static} TRIPLET=x86_64-linux-gnu ;;
arm64) OUT=${OUT:-build/atm-agent-static-arm64} TRIPLET=aarch64-linux-gnu ;;
*) echo "build-static: ARCH must be amd64 or arm64" >&2; exit 2 ;;
esac
log() { echo "build-static[$ARCH]: $*" >&2; }

# --- tools and Debian packages (idempotent; apt only when something is missing)
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v dpkg-source >/dev/null || need+=(dpkg-dev)
[ -f /usr/include/google/protobuf/stubs/common.h ] || need+=(libprotobuf-dev)
for p in libjpeg62-turbo-dev libpng-dev zlib1g-dev; do
	dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need+=("$p")
done
if [ "$ARCH" = arm64 ]; then
	command -v aarch64-linux-gnu-g++ >/dev/null || need+=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu)
	command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
fi
if [ ${#need[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || { log "missing packages, run as root or install: ${need[*]}"; exit 1; }
	log "apt-get install ${need[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2
fi

# --- OpenCV source from Debian (needs a deb-src line for bookworm)
SRCLIST=/etc/apt/sources.list.d/atm-agent-bookworm-src.sources
if ! apt-cache showsrc opencv 2>/dev/null | grep -q '^Version:'; then
	[ "$(id -u)" = 0 ] || { log "no deb-src for opencv; as root add $SRCLIST (see docs/packaging.md)"; exit 1; }
	log "adding $SRCLIST"
	cat >"$SRCLIST" <<'EOF'
# Added by atm-agent scripts/packaging/build-static.sh (apt-get source opencv).
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
	apt-get update -q >&2
fi
SRCVER=${OPENCV_SRC_VERSION:-$(apt-cache showsrc opencv | awk '/^Version:/{print $2}' | sort -V | tail -1)}
SRCROOT=$CACHE/opencv-src/$SRCVER
SRC=$SRCROOT/src
if [ ! -f "$SRCROOT/.complete" ]; then
	log "apt-get source opencv=$SRCVER"
	rm -rf "$SRCROOT" && mkdir -p "$SRCROOT"
	(cd "$SRCROOT" && apt-get source -q --download-only "opencv=$SRCVER" >&2 &&
		dpkg-source -x ./*.dsc src >&2) # applies Debian's patches
	touch "$SRCROOT/.complete"
fi

# --- arm64: a small sysroot with Debian's arm64 static archives
ML=usr/lib/$TRIPLET
CMAKE_TC=()
if [ "$ARCH" = arm64 ]; then
	SYSROOT=$CACHE/sysroot-arm64-static
	if [ ! -f "$SYSROOT/.complete" ]; then
		log "mmdebstrap $SYSROOT"
		rm -rf "$SYSROOT"
		mmdebstrap --variant=extract --architectures=arm64 \
			--include=libc6-dev,libstdc++-12-dev,libjpeg62-turbo-dev,libpng-dev,zlib1g-dev,libprotobuf-dev,linux-libc-dev \
			bookworm "$SYSROOT" \
			"deb http://deb.debian.org/debian bookworm main" \
			"deb http://deb.debian.org/debian bookworm-updates main" \
			"deb http://deb.debian.org/debian-security bookworm-security main" >&2
		touch "$SYSROOT/.complete"
	fi
	TC=$CACHE/toolchain-arm64.cmake
	cat >"$TC.tmp" <<EOF
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_SYSROOT $SYSROOT)
set(CMAKE_FIND_ROOT_PATH $SYSROOT)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
EOF
	mv "$TC.tmp" "$TC"
	CMAKE_TC=(-DCMAKE_TOOLCHAIN_FILE="$TC")
	PBLIB=$SYSROOT/$ML/libprotobuf.a
	PBINC=$SYSROOT/usr/include
else
	SYSROOT=
	PBLIB=/$ML/libprotobuf.a
	PBINC=/usr/include
fi

# --- the minimal static OpenCV. Changing anything in FLAGS changes the key.
FLAGS=(
	-DCMAKE_BUILD_TYPE=Release
	-DBUILD_SHARED_LIBS=OFF
	-DBUILD_LIST=core,imgproc,imgcodecs,videoio,highgui,dnn,objdetect,calib3d,features2d,flann,photo,video
	-DBUILD_TESTS=OFF -DBUILD_PERF_TESTS=OFF -DBUILD_EXAMPLES=OFF -DBUILD_opencv_apps=OFF
	-DBUILD_DOCS=OFF -DBUILD_JAVA=OFF -DBUILD_opencv_python2=OFF -DBUILD_opencv_python3=OFF
	-DBUILD_ZLIB=OFF -DBUILD_JPEG=OFF -DBUILD_PNG=OFF -DBUILD_TIFF=OFF -DBUILD_WEBP=OFF
	-DBUILD_OPENJPEG=OFF -DBUILD_JASPER=OFF -DBUILD_OPENEXR=OFF -DBUILD_PROTOBUF=OFF
	-DWITH_PROTOBUF=ON -DPROTOBUF_UPDATE_FILES=ON -DProtobuf_PROTOC_EXECUTABLE=/usr/bin/protoc
	-DProtobuf_LIBRARY="$PBLIB" -DProtobuf_INCLUDE_DIR="$PBINC"
	-DWITH_JPEG=ON -DWITH_PNG=ON -DWITH_TIFF=OFF -DWITH_WEBP=OFF -DWITH_OPENJPEG=OFF
	-DWITH_JASPER=OFF -DWITH_OPENEXR=OFF -DWITH_GDAL=OFF -DWITH_GDCM=OFF -DWITH_IMGCODEC_HDR=ON
	-DWITH_V4L=ON -DWITH_FFMPEG=OFF -DWITH_GSTREAMER=OFF -DWITH_1394=OFF -DWITH_GPHOTO2=OFF
	-DWITH_PVAPI=OFF -DWITH_ARAVIS=OFF -DWITH_XIMEA=OFF -DWITH_OPENNI2=OFF -DWITH_MSMF=OFF
	-DVIDEOIO_ENABLE_PLUGINS=OFF -DHIGHGUI_ENABLE_PLUGINS=OFF -DPARALLEL_ENABLE_PLUGINS=OFF
	-DWITH_GTK=OFF -DWITH_QT=OFF -DWITH_OPENGL=OFF -DWITH_VTK=OFF -DWITH_WAYLAND=OFF
	-DWITH_OPENCL=OFF -DWITH_VA=OFF -DWITH_VA_INTEL=OFF -DWITH_CUDA=OFF -DWITH_IPP=OFF
	-DWITH_ITT=OFF -DWITH_TBB=OFF -DWITH_OPENMP=OFF -DWITH_PTHREADS_PF=ON -DWITH_EIGEN=OFF
	-DWITH_LAPACK=OFF -DWITH_QUIRC=OFF -DWITH_ADE=OFF -DWITH_CAROTENE=OFF -DWITH_NGRAPH=OFF
	-DWITH_OPENVX=OFF -DWITH_HALIDE=OFF -DWITH_INF_ENGINE=OFF -DWITH_WEBNN=OFF -DWITH_TIMVX=OFF
	-DOPENCV_DNN_OPENCL=OFF -DENABLE_PRECOMPILED_HEADERS=OFF -DBUILD_INFO_SKIP_TIMESTAMP=ON
	-DOPENCV_GENERATE_PKGCONFIG=OFF -DCMAKE_INSTALL_LIBDIR=lib -DOPENCV_DOWNLOAD_TRIES_LIST=
	-DENABLE_PIC=ON
)
# Debian's architecture baseline for amd64 (debian/rules), so results match
# the distribution's shared OpenCV; runtime dispatch to newer SIMD stays on.
[ "$ARCH" = amd64 ] && FLAGS+=(-DCPU_BASELINE=SSE2 -DCPU_BASELINE_DISABLE=SSE3)
KEY=$(printf '%s\n' "$SRCVER" "$ARCH" "${FLAGS[@]}" "$SYSROOT" | sha256sum | cut -c1-12)
PREFIX=$CACHE/opencv-static-$ARCH/$SRCVER-$KEY
if [ ! -f "$PREFIX/.complete" ]; then
	BLD=$CACHE/opencv-static-$ARCH/build-$KEY
	log "building OpenCV $SRCVER into $PREFIX (nice -n 10, -j$JOBS; ~6-8 min on 2 cores)"
	# An interrupted build resumes in $BLD (make is incremental).
	rm -rf "$PREFIX" && mkdir -p "$BLD"
	(cd "$BLD" && nice -n 10 cmake "${CMAKE_TC[@]}" "${FLAGS[@]}" -DCMAKE_INSTALL_PREFIX="$PREFIX" "$SRC" >cmake.log 2>&1) ||
		{ tail -40 "$BLD/cmake.log" >&2; exit 1; }
	(cd "$BLD" && nice -n 10 make -j"$JOBS" install >make.log 2>&1) ||
		{ grep -E 'error|Error' "$BLD/make.log" | head -40 >&2; exit 1; }
	printf '%s\n' "$SRCVER" "$ARCH" "${FLAGS[@]}" >"$PREFIX/flags.txt"
	rm -rf "$BLD"
	touch "$PREFIX/.complete"
fi

# --- a pkg-config file for the static install. gocv (`pkg-config: opencv4`)
# and agent/vision/threads.go both read it through PKG_CONFIG_LIBDIR, so no build
# tag is needed; link order is dependents first.
LIBDIR=$PREFIX/lib
ODIR=$LIBDIR/opencv4/3rdparty
mods=(objdetect dnn calib3d features2d flann highgui videoio imgcodecs video photo imgproc core)
mkdir -p "$PREFIX/pkgconfig"
{
	echo "Name: OpenCV (static, atm-agent)"
	echo "Description: minimal static OpenCV $SRCVER ($ARCH)"
	echo "Version: ${SRCVER%%+*}"
	echo "Cflags: -I$PREFIX/include/opencv4"
	printf 'Libs: -L%s -L%s' "$LIBDIR" "$ODIR"
	printf ' -lopencv_%s' "${mods[@]}"
	# Debian's static archives; ${ML} is resolved in the sysroot for arm64.
	echo " -lprotobuf -lpng16 -ljpeg -lz -lstdc++ -lm -lpthread -ldl -lrt"
} >"$PREFIX/pkgconfig/opencv4.pc"

# --- go build, fully static and position independent. netgo/osusergo: Go's
# own DNS and user lookup (glibc's NSS cannot be linked statically).
# -buildmode=pie with external linking makes Go pass -pie to the C linker;
# -static-pie then links glibc's rcrt1.o, which relocates the binary itself.
export CGO_ENABLED=1 GOOS=linux GOARCH=$ARCH
export PKG_CONFIG_LIBDIR=$PREFIX/pkgconfig PKG_CONFIG_PATH=
unset PKG_CONFIG_SYSROOT_DIR
if [ "$ARCH" = arm64 ]; then
	export CC=aarch64-linux-gnu-gcc CXX=aarch64-linux-gnu-g++
	export CGO_CFLAGS="--sysroot=$SYSROOT" CGO_CXXFLAGS="--sysroot=$SYSROOT"
	export CGO_LDFLAGS="--sysroot=$SYSROOT -L$SYSROOT/$ML"
else
	export CC=gcc CXX=g++ CGO_CFLAGS= CGO_CXXFLAGS= CGO_LDFLAGS=
fi
LDFLAGS="-s -w -X main.version=$VERSION -X github.com/periocular/atm-agent/internal/cli.Version=$VERSION -linkmode external -extldflags -static-pie"
go build -tags netgo,osusergo -trimpath -buildmode=pie -ldflags "$LDFLAGS" -o "$OUT" ./cmd/atm-agent
# The offline tools (cluster, used by compare-arch.sh) beside it.
go build -tags netgo,osusergo -trimpath -buildmode=pie -ldflags "$LDFLAGS" -o "${OUT/atm-agent/atm-tools}" ./cmd/atm-tools
# A static PIE: ELF type DYN with the PIE flag, and no program interpreter
# and no NEEDED library (scripts/packaging/check-pie.sh).
for b in "$OUT" "${OUT/atm-agent/atm-tools}"; do
	bash scripts/packaging/check-pie.sh static "$b" >&2 || { log "$b is not a static PIE"; exit 1; }
done
log "$(file -b "$OUT" | cut -d, -f1-2), $(stat -c %s "$OUT") bytes, OpenCV $PREFIX"
echo "$OUT"
