#!/usr/bin/env bash
# mpi_e2e.sh - shoal-sim under mpirun (docs/mpi.md) gives the results of one
# process: a small heterogeneous population (40 clients, a device mix) run
# without mpirun and with mpirun -np 1 and -np 2 writes byte-identical
# metrics files and ends with the same final model hash.
#
#   tests/mpi_e2e.sh BUILD_DIR CASE
#
# CASE (ctest runs each as mpi.CASE):
#   compress  --compress topk:0.1,q8, 4 rounds: one process, -np 1, -np 2
#   secagg    --secagg plus, 3 rounds: one process, -np 2
#   abort     rank 0 cannot open its --metrics file: the run ends at once
#             (MPI_Abort, exit status not 0) with the error, instead of
#             leaving rank 1 waiting
# Exit status 77 (ctest: skipped) when shoal-sim has no MPI built in or
# mpirun is missing. Environment: SHOAL_DATA_DIR (MNIST, default data/
# beside the tests), MPIRUN (default mpirun), MPIRUN_FLAGS (default
# --oversubscribe: the test runs 2 ranks whatever the core count), KEEP=1
# keeps the temp dir, TIMEOUT_S (default 300) bounds each run. As root,
# Open MPI also needs OMPI_ALLOW_RUN_AS_ROOT=1 and
# OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 (ctest sets them).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:?usage: mpi_e2e.sh BUILD_DIR compress|secagg|abort}
case_=${2:?usage: mpi_e2e.sh BUILD_DIR compress|secagg|abort}
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
data=${SHOAL_DATA_DIR:-$root/data}
limit=${TIMEOUT_S:-300}
mpirun=${MPIRUN:-mpirun}
read -r -a mpiflags <<<"${MPIRUN_FLAGS:---oversubscribe}"
sim="$bin/shoal-sim"

fail() {
	printf 'mpi_e2e %s: FAIL: %s\n' "$case_" "$*" >&2
	for f in "$tmp"/*.err; do
		[ -s "$f" ] && { printf -- '--- %s (tail)\n' "${f##*/}" >&2; tail -15 "$f" >&2; }
	done
	printf 'mpi_e2e: files kept in %s\n' "$tmp" >&2
	trap - EXIT
	exit 1
}

[ -x "$sim" ] || { echo "mpi_e2e: $sim is missing: build first" >&2; exit 1; }
help=$("$sim" --help) # not piped to grep -q: pipefail would see SIGPIPE
if ! grep -q '^MPI: built in' <<<"$help"; then
	echo "mpi_e2e: shoal-sim has no MPI built in (SHOAL_MPI, docs/mpi.md): skipped"
	exit 77
fi
command -v "$mpirun" >/dev/null ||
	{ echo "mpi_e2e: no $mpirun (apt-get install openmpi-bin): skipped"; exit 77; }
[ -f "$data/train-images-idx3-ubyte" ] ||
	{ echo "mpi_e2e: no MNIST in $data (scripts/setup.sh fetches it)" >&2; exit 1; }

# Sanitizer build: LeakSanitizer would report Open MPI's own allocations.
# They are suppressed by library name (tests/lsan-openmpi.supp), which needs
# whole stacks (Open MPI has no frame pointers: fast_unwind_on_malloc=0)
# and its components kept loaded so that their names resolve (Open MPI's
# disable_dlclose). Programs without ASan ignore these variables.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}fast_unwind_on_malloc=0"
export LSAN_OPTIONS="${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$root/tests/lsan-openmpi.supp:print_suppressions=0"
export OMPI_MCA_mca_base_component_disable_dlclose=1

tmp=$(mktemp -d /tmp/shoal-mpi-e2e.XXXXXX)
trap '[ "${KEEP:-0}" = 1 ] || rm -rf "$tmp"' EXIT

common=(--data-dir "$data" --clients 40 --clients-per-round 8 --seed 7 --threads 1 --quiet
	--devices pi4:0.5,laptop:0.2,phone-low:0.3)

# run NAME NP ARGS...: NP 0 runs shoal-sim without mpirun; writes NAME.jsonl
# and NAME.err and fails unless the run exits 0.
run() {
	local name=$1 np=$2
	shift 2
	local cmd=("$sim" "${common[@]}" "$@" --metrics "$tmp/$name.jsonl")
	[ "$np" -gt 0 ] && cmd=("$mpirun" "${mpiflags[@]}" -np "$np" "${cmd[@]}")
	timeout "$limit" "${cmd[@]}" >"$tmp/$name.out" 2>"$tmp/$name.err" ||
		fail "$name: exit status $? from: ${cmd[*]}"
}

hash_of() {
	sed -n 's/^final model blake2b: //p' "$tmp/$1.err"
}

# same REF NAME: NAME's metrics and final model are REF's.
same() {
	cmp -s "$tmp/$1.jsonl" "$tmp/$2.jsonl" || fail "$2.jsonl differs from $1.jsonl"
	[ -n "$(hash_of "$1")" ] || fail "$1: no final model hash"
	[ "$(hash_of "$1")" = "$(hash_of "$2")" ] ||
		fail "$2: final model $(hash_of "$2"), not $(hash_of "$1")"
	[ "$(grep -c '^final model' "$tmp/$2.err")" = 1 ] ||
		fail "$2: the summary is not printed exactly once (rank 0 only)"
}

case "$case_" in
compress)
	flags=(--rounds 4 --compress topk:0.1,q8)
	run one 0 "${flags[@]}"
	[ "$(wc -l <"$tmp/one.jsonl")" = 4 ] || fail "one.jsonl has not 4 rounds"
	run np1 1 "${flags[@]}"
	run np2 2 "${flags[@]}"
	same one np1
	same one np2
	;;
secagg)
	flags=(--rounds 3 --secagg plus)
	run one 0 "${flags[@]}"
	run np2 2 "${flags[@]}"
	same one np2
	;;
abort)
	st=0
	timeout "$limit" "$mpirun" "${mpiflags[@]}" -np 2 "$sim" "${common[@]}" --rounds 2 \
		--metrics "$tmp/no-such-dir/m.jsonl" >"$tmp/abort.out" 2>"$tmp/abort.err" || st=$?
	[ "$st" -ne 0 ] || fail "the run exited 0 without its metrics file"
	[ "$st" -ne 124 ] || fail "the run hung (timeout after $limit s)"
	grep -q "cannot open metrics file" "$tmp/abort.err" || fail "no error about the metrics file"
	grep -q "stopping every rank" "$tmp/abort.err" || fail "no word of stopping the ranks"
	;;
*)
	echo "mpi_e2e: unknown case '$case_' (compress, secagg or abort)" >&2
	exit 2
	;;
esac
echo "mpi_e2e $case_: ok"
