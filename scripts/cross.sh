#!/usr/bin/env bash
# cross.sh - the Raspberry Pi build: install Debian's cross compiler, the
# target's multiarch -dev packages and qemu-user, build statically linked
# shoal programs and unit tests with cmake/ARCH.cmake, and run the tests
# under qemu-user (docs/raspberry-pi.md).
#
#   scripts/cross.sh            # aarch64 (Pi 3/4/5, 64-bit OS) into build-arm64
#
# (armhf, the 32-bit Raspberry Pi OS, is not built: docs/raspberry-pi.md.)
# Idempotent, like setup.sh: installs only what is missing and rebuilds
# incrementally. Debian ships no static libcmocka.a, so the tests' cmocka is
# built once from Debian's own source package (apt-get source, with a
# private apt state under BUILD_DIR/deps: the system's apt sources are left
# as they are) into BUILD_DIR/deps.
# Environment: BUILD_DIR (default build-arm64), SHOAL_BLAS=ON
# to link the target's OpenBLAS instead of the portable GEMM, SHOAL_STATIC=OFF
# for programs linked against the distribution's shared libraries (for a Pi
# that installs them with apt; qemu finds the arm64 loader and libraries in
# the multiarch folders),
# SHOAL_WERROR (default ON when CI=true), JOBS (default: nproc),
# CROSS_TEST=0 to build without running the tests, CROSS_TESTS=all to run
# every test (default quick: see step 5), CTEST_ARGS (e.g. -R gemm).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
arch=${1:-aarch64}
case "$arch" in
aarch64 | arm64)
	arch=aarch64 debarch=arm64 triplet=aarch64-linux-gnu qemu=qemu-aarch64
	default_build=build-arm64 ;;
*)
	echo "usage: $0 [aarch64]" >&2
	exit 2 ;;
esac
build_dir=${BUILD_DIR:-$default_build}
case "$build_dir" in /*) ;; *) build_dir="$root/$build_dir" ;; esac
blas=${SHOAL_BLAS:-OFF}
static=${SHOAL_STATIC:-ON}
werror=${SHOAL_WERROR:-$([ "${CI:-}" = true ] && echo ON || echo OFF)}
jobs=${JOBS:-$(nproc)}

say() { printf 'cross: %s\n' "$*" >&2; }
die() { printf 'cross: error: %s\n' "$*" >&2; exit 1; }

as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"
	elif command -v sudo >/dev/null; then sudo "$@"
	else die "need root to run '$*': install sudo or run this script as root"; fi
}

# 1. Debian packages -----------------------------------------------------------
host_pkgs="gcc-$triplet qemu-user cmake pkg-config xz-utils"
target_pkgs="libc6-dev libsodium-dev libnng-dev libmbedtls-dev libmsgpack-dev
libcmocka-dev libjansson-dev"
[ "$blas" = ON ] && target_pkgs="$target_pkgs libopenblas-dev"
missing=""
for p in $host_pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
for p in $target_pkgs; do
	dpkg-query -W -f='${Status}' "$p:$debarch" 2>/dev/null | grep -q "ok installed" ||
		missing="$missing $p:$debarch"
done
if [ -n "$missing" ]; then
	if ! dpkg --print-foreign-architectures | grep -qx "$debarch"; then
		say "adding the $debarch architecture to dpkg"
		as_root dpkg --add-architecture "$debarch"
	fi
	say "installing:$missing"
	# A mirror caught mid-sync fails one index and apt then keeps every
	# index of that suite old; the install below says what that breaks.
	as_root apt-get update -qq || say "apt-get update reported errors; trying the install anyway"
	# Multi-Arch: same packages (linux-libc-dev, libssl3, ...) must have one
	# version on both architectures: apt upgrades the host's copy to match.
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null ||
		die "could not install the $debarch packages:$missing"
else
	say "Debian packages: all present"
fi

# 2. MNIST (the tests read data/): setup.sh fetches and verifies it -----------
if ! [ -f "$root/data/train-images-idx3-ubyte" ] || ! [ -f "$root/data/t10k-labels-idx1-ubyte" ]; then
	say "no MNIST in data/: running scripts/setup.sh (it also builds the host build/)"
	"$root/scripts/setup.sh"
fi

# 3. A static cmocka for the tests ---------------------------------------------
deps="$build_dir/deps"
if [ "$static" = ON ] && ! [ -f "/usr/lib/$triplet/libcmocka.a" ] && ! [ -f "$deps/lib/libcmocka.a" ]; then
	say "building a static cmocka for $arch from Debian's source package"
	apt_opts=(-o "Dir::Etc::SourceList=$deps/apt/sources.list" -o "Dir::Etc::SourceParts=$deps/apt/none"
		-o "Dir::State::Lists=$deps/apt/lists" -o "Dir::Cache=$deps/apt/cache"
		-o "Debug::NoDropPrivs=true" -o "APT::Sandbox::User=root")
	rm -rf "$deps/apt" "$deps/src"
	mkdir -p "$deps/apt/lists/partial" "$deps/apt/cache/archives/partial" "$deps/apt/none" \
		"$deps/src" "$deps/lib" "$deps/include"
	echo "deb-src http://deb.debian.org/debian bookworm main" >"$deps/apt/sources.list"
	apt-get -qq "${apt_opts[@]}" update || die "cannot read Debian's source index"
	(cd "$deps/src" && apt-get -qq "${apt_opts[@]}" source --download-only cmocka >/dev/null) ||
		die "apt-get source cmocka failed"
	# apt checked these files against the signed source index.
	tar -xf "$(find "$deps/src" -maxdepth 1 -name 'cmocka_*.orig.tar.*' ! -name '*.asc' | head -1)" \
		-C "$deps/src"
	src=$(find "$deps/src" -maxdepth 1 -type d -name 'cmocka-*' | head -1)
	cmake -S "$src" -B "$deps/src/build" -DCMAKE_TOOLCHAIN_FILE="$root/cmake/$arch.cmake" \
		-DCMAKE_BUILD_TYPE=Release -DWITH_STATIC_LIB=ON -DWITH_EXAMPLES=OFF \
		-DUNIT_TESTING=OFF >/dev/null
	cmake --build "$deps/src/build" --target cmocka-static -j"$jobs" >/dev/null
	cp "$(find "$deps/src/build" -name 'libcmocka-static.a' | head -1)" "$deps/lib/libcmocka.a"
	cp "$src/include/cmocka.h" "$deps/include/"
	rm -rf "$deps/apt"
	say "static cmocka in ${deps#$root/}/lib"
fi

# 4. Build ---------------------------------------------------------------------
cmake -S "$root" -B "$build_dir" -DCMAKE_TOOLCHAIN_FILE="$root/cmake/$arch.cmake" \
	-DCMAKE_PREFIX_PATH="$deps" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHOAL_BLAS="$blas" \
	-DSHOAL_STATIC="$static" -DSHOAL_WERROR="$werror" >/dev/null
# (The linker's warning that getaddrinfo in a static program needs the
# target's glibc at run time is expected: docs/raspberry-pi.md.)
cmake --build "$build_dir" -j"$jobs" -- --no-print-directory >"$build_dir/build.log" 2>&1 ||
	{ cmake --build "$build_dir" -j1 2>&1 | tail -40; die "build failed (see above)"; }
linkage=$([ "$static" = ON ] && echo "statically linked" || echo "dynamically linked")
file -b "$build_dir/shoal-client" | grep -q "$linkage" ||
	die "$build_dir/shoal-client is not $linkage: $(file -b "$build_dir/shoal-client")"
say "built in ${build_dir#$root/} ($arch, $linkage, blas=$blas, werror=$werror):" \
	"shoal-client $(stat -c %s "$build_dir/shoal-client.stripped") bytes stripped"

# 5. Unit tests under qemu-user ------------------------------------------------
# CROSS_TESTS=quick (the default) runs every unit test of every module and
# leaves out only what trains whole federations or full-size CNNs for
# minutes under emulation (e2e, sim, loop, the checkpoint resume runs, CNN
# training at full size, 2NN evaluation of the whole test set at two batch
# sizes: 500-600 s each here under qemu). Those run natively in the host
# build, and tests/cross_e2e.sh runs real rounds with the aarch64 client.
# The CNN's gradient check, distributed DP's rounds and the full-disk
# checkpoint test do run. CROSS_TESTS=all runs every test.
quick_exclude='^(e2e|sim|loop)\.|^ckpt\.(core_resume|e2e_sigkill)|^model\.test_(cnn_training|cnn_chunked|evaluate_chunking)'
if [ "${CROSS_TEST:-1}" != 0 ]; then
	sel=()
	[ "${CROSS_TESTS:-quick}" = all ] || sel=(-E "$quick_exclude")
	say "running the $arch unit tests under $qemu (${CROSS_TESTS:-quick})"
	# shellcheck disable=SC2086
	ctest --test-dir "$build_dir" -j"$jobs" --output-on-failure "${sel[@]}" ${CTEST_ARGS:-}
fi
