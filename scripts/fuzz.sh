#!/usr/bin/env bash
# fuzz.sh - build the libFuzzer harnesses of tests/fuzz/ with clang, ASan and
# UBSan (SHOAL_FUZZ=ON) and run each for a given time on a copy of its seed
# corpus (docs/fuzzing.md).
#
#   scripts/fuzz.sh                   # every harness, 60 s each
#   scripts/fuzz.sh --time 600 codec  # one harness, 10 minutes
#
# Fails when a harness reports anything: a crash, a failed CHECK, an ASan,
# UBSan or LeakSanitizer report, a timeout or running out of memory. Prints
# the executions of each harness. Installs clang and the -dev packages when
# they are missing, like setup.sh (as root, or through sudo).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
all="msg codec secagg ckpt idx"

usage() {
	cat <<EOF
usage: scripts/fuzz.sh [--time SECONDS] [--jobs N] [--seeds] [HARNESS...]

Builds the libFuzzer harnesses with clang (ASan + UBSan) in BUILD_DIR and runs
each HARNESS (default: all of: $all) for SECONDS (default 60) on a copy of
tests/fuzz/corpus/HARNESS. Exits 1 if any harness reports a crash, a failed
check, a sanitizer report, a leak, a timeout or running out of memory.

  --time SECONDS  how long each harness runs (libFuzzer -max_total_time)
  --jobs N        harnesses running at once (default 1)
  --seeds         rewrite tests/fuzz/corpus/ with fuzz_seeds (the real
                  encoders) instead of fuzzing
  -h, --help      this text

Environment: BUILD_DIR (default build-fuzz), FUZZ_WORK (where the corpora,
logs and crash inputs go; default BUILD_DIR/fuzz-work, emptied first),
FUZZ_ARGS (more libFuzzer options, e.g. -seed=1).
EOF
}

say() { printf 'fuzz: %s\n' "$*" >&2; }
die() { printf 'fuzz: error: %s\n' "$*" >&2; exit 2; }

secs=60 jobs=1 seeds=0 names=()
while [ $# -gt 0 ]; do
	case "$1" in
	--time) [ $# -ge 2 ] || die "--time needs a number of seconds"; secs=$2; shift 2 ;;
	--time=*) secs=${1#--time=}; shift ;;
	--jobs) [ $# -ge 2 ] || die "--jobs needs a number"; jobs=$2; shift 2 ;;
	--jobs=*) jobs=${1#--jobs=}; shift ;;
	--seeds) seeds=1; shift ;;
	-h | --help) usage; exit 0 ;;
	-*) usage >&2; exit 2 ;;
	*) names+=("$1"); shift ;;
	esac
done
case "$secs" in '' | *[!0-9]*) die "--time takes whole seconds, not '$secs'" ;; esac
case "$jobs" in '' | *[!0-9]* | 0) die "--jobs takes a positive number, not '$jobs'" ;; esac
[ ${#names[@]} -gt 0 ] || read -r -a names <<<"$all"
for h in "${names[@]}"; do
	case " $all " in *" $h "*) ;; *) die "no harness '$h' (harnesses: $all)" ;; esac
done

build_dir=${BUILD_DIR:-build-fuzz}
case "$build_dir" in /*) ;; *) build_dir="$root/$build_dir" ;; esac
work=${FUZZ_WORK:-$build_dir/fuzz-work}

as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"
	elif command -v sudo >/dev/null; then sudo "$@"
	else die "need root to run '$*': install sudo or run this script as root"; fi
}

# 1. clang with its libFuzzer runtime, and the libraries -----------------------
packages="clang libclang-rt-dev cmake pkg-config libsodium-dev libnng-dev libmsgpack-dev
libcmocka-dev libopenblas-dev libjansson-dev"
missing=""
for p in $packages; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	say "installing:$missing"
	as_root apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
command -v clang >/dev/null || die "clang is not on PATH after installing it"

# 2. Build ------------------------------------------------------------------------
if [ -f "$build_dir/CMakeCache.txt" ] &&
	! grep -q '^SHOAL_FUZZ:BOOL=ON' "$build_dir/CMakeCache.txt"; then
	die "$build_dir is not a SHOAL_FUZZ=ON build: set BUILD_DIR to another folder"
fi
CC=clang cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHOAL_FUZZ=ON \
	>/dev/null
targets=()
if [ "$seeds" = 1 ]; then
	targets=(fuzz_seeds)
else
	for h in "${names[@]}"; do targets+=("fuzz_$h"); done
fi
cmake --build "$build_dir" -j"$(nproc)" --target "${targets[@]}" -- --no-print-directory \
	>/dev/null || {
	cmake --build "$build_dir" -j1 --target "${targets[@]}" 2>&1 | tail -40
	die "build failed (see above)"
}

if [ "$seeds" = 1 ]; then
	rm -rf "$root/tests/fuzz/corpus"
	"$build_dir/fuzz_seeds" "$root/tests/fuzz/corpus"
	exit 0
fi

# 3. Run ---------------------------------------------------------------------------
rm -rf "$work"
mkdir -p "$work"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# run_one NAME: fuzz NAME; its verdict goes to $work/NAME/result.
run_one() {
	local h=$1 dir="$work/$1" dict=() rc=0
	mkdir -p "$dir/corpus"
	if [ -d "$root/tests/fuzz/corpus/$h" ]; then
		cp "$root/tests/fuzz/corpus/$h"/* "$dir/corpus/"
	fi
	[ -f "$root/tests/fuzz/$h.dict" ] && dict=(-dict="$root/tests/fuzz/$h.dict")
	# -timeout: one input running longer is a hang; -rss_limit_mb: a blow-up
	(cd "$dir" && "$build_dir/fuzz_$h" -max_total_time="$secs" -print_final_stats=1 \
		-timeout=60 -rss_limit_mb=4096 -artifact_prefix="$dir/" "${dict[@]}" \
		${FUZZ_ARGS:-} "$dir/corpus" >"$dir/log" 2>&1) || rc=$?
	local execs
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
	local bad=""
	[ "$rc" -eq 0 ] || bad="exit status $rc"
	if grep -qE 'ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)|runtime error:|CHECK failed' \
		"$dir/log"; then
		bad=${bad:-sanitizer report}
	fi
	[ -n "$execs" ] || bad=${bad:-no final statistics}
	printf '%s %s %s\n' "$h" "${execs:-0}" "${bad:-clean}" >"$dir/result"
}

say "running ${names[*]} for ${secs} s each, $jobs at a time; logs in $work"
running=0
for h in "${names[@]}"; do
	run_one "$h" &
	running=$((running + 1))
	if [ "$running" -ge "$jobs" ]; then
		wait -n || true
		running=$((running - 1))
	fi
done
wait

status=0
printf '%-8s %14s  %s\n' harness executions result
for h in "${names[@]}"; do
	read -r name execs verdict <"$work/$h/result"
	printf '%-8s %14s  %s\n' "$name" "$execs" "$verdict"
	if [ "$verdict" != clean ]; then
		status=1
		say "$h failed: last lines of $work/$h/log:"
		tail -30 "$work/$h/log" >&2
		ls "$work/$h"/crash-* "$work/$h"/leak-* "$work/$h"/timeout-* "$work/$h"/oom-* \
			2>/dev/null | sed 's/^/fuzz: input: /' >&2 || true
	fi
done
exit $status
