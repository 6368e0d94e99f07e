#!/usr/bin/env bash
# cross_e2e.sh - mixed-architecture rounds on loopback TCP: an x86-64
# shoal-server, one aarch64 shoal-client (the static cross build, run by
# qemu-aarch64) and one x86-64 shoal-client. Logistic regression, top-k 10%
# 8-bit updates, secure aggregation (SecAgg: both clients mask, the server
# only unmasks the sum), ROUNDS rounds (default 3). Client identity as
# docs/raspberry-pi.md sets it up: the server admits only listed or
# enrolled keys and every request is signed; the aarch64 client's key,
# printed with --show-key from its --state-dir, is on the --allowlist, and
# the x86 client enrolls with a one-time --enroll-token.
#
#   tests/cross_e2e.sh [X86_BUILD [ARM_BUILD]]    # default: build build-arm64
#
# Checks:
#  0. the aarch64 client's --show-key prints 64 hex digits and the server
#     logs both admissions (allowlist, token);
#  1. every process exits 0; both clients trained and had every update
#     accepted in every round; the aarch64 client, run with the flags of
#     docs/raspberry-pi.md, saved its residual in --state-dir; the metrics
#     show ROUNDS rounds, none
#     abandoned, 2 updates each, and the test accuracy of the last round is
#     at least MIN_ACC (default 0.6: on a shared 10% of the coordinates a
#     round, logistic regression is at about 0.71 after 3 rounds; chance is
#     0.1);
#  2. the aarch64 client's model matches an x86 client's: the aarch64 client
#     records each local training (--dump-train: the task with its shuffling
#     seed, the global model it received, the model it trained) and the x86
#     shoal-client replays each record on the same partition (--replay). The
#     trained models must agree to within REL_TOL (default 1e-4) in
#     ||x86 - arm|| / ||arm - global||, the L2 distance relative to the
#     update the client computed, and within ABS_TOL (default 1e-5) in every
#     coordinate. The two builds run the same SGD in float32 with different
#     matrix products (x86 OpenBLAS or SSE, aarch64 NEON with fused
#     multiply-adds), so they agree to rounding, not bit for bit; measured
#     differences are printed: about 5e-7 relative and 5e-7 absolute for
#     x86 OpenBLAS against aarch64 NEON; replaying on another partition of
#     the same size gives 0.17 relative.
# The update the aarch64 client sends is its trained model's delta through
# the integer codecs and masks, which the unit tests check under qemu.
# Temp dir and logs kept on failure (KEEP=1: always).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
x86=${1:-build}
arm=${2:-build-arm64}
case "$x86" in /*) ;; *) x86="$root/$x86" ;; esac
case "$arm" in /*) ;; *) arm="$root/$arm" ;; esac
rounds=${ROUNDS:-3}
min_acc=${MIN_ACC:-0.6}
rel_tol=${REL_TOL:-1e-4}
abs_tol=${ABS_TOL:-1e-5}
data=${SHOAL_DATA_DIR:-$root/data}
qemu=${QEMU:-qemu-aarch64}
limit=${TIMEOUT_S:-600} # whole run

fail() {
	printf 'cross_e2e: FAIL: %s\n' "$*" >&2
	for f in "$tmp"/*.log; do
		[ -f "$f" ] && { printf -- '--- %s (tail)\n' "${f##*/}" >&2; tail -15 "$f" >&2; }
	done
	printf 'cross_e2e: logs kept in %s\n' "$tmp" >&2
	trap - EXIT
	kill_all
	echo "0 passed, 1 failed"
	exit 1
}
kill_all() { for p in ${pids:-}; do kill "$p" 2>/dev/null || true; done; }

for f in "$x86/shoal-server" "$x86/shoal-client" "$arm/shoal-client"; do
	[ -x "$f" ] || { echo "cross_e2e: $f is missing: build it first (scripts/cross.sh)" >&2; exit 1; }
done
file -b "$arm/shoal-client" | grep -q "ARM aarch64.*statically linked" ||
	{ echo "cross_e2e: $arm/shoal-client is not a static aarch64 program" >&2; exit 1; }
command -v "$qemu" >/dev/null || { echo "cross_e2e: $qemu is missing (apt-get install qemu-user)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/shoal-cross-e2e.XXXXXX)
pids=""
trap 'kill_all; [ "${KEEP:-0}" = 1 ] || rm -rf "$tmp"' EXIT

# A free loopback port: nothing answers on it.
port=""
for _ in $(seq 1 50); do
	p=$((20000 + RANDOM % 30000))
	if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port=$p; break; fi
done
[ -n "$port" ] || fail "no free port"
url="tcp://127.0.0.1:$port"

common=(--model logreg --data-dir "$data")
# Identity (docs/raspberry-pi.md, "Client identity"): the Pi's key on the
# allowlist, a one-time token for the other client.
key=$("$qemu" "$arm/shoal-client" --state-dir "$tmp/arm-state" --show-key) ||
	fail "aarch64 shoal-client --show-key failed"
[[ "$key" =~ ^[0-9a-f]{64}$ ]] || fail "--show-key printed '$key', not 64 hex digits"
echo "$key  # pi-arm64" >"$tmp/allowlist"
token=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
echo "$token" >"$tmp/tokens"
"$x86/shoal-server" --listen "$url" "${common[@]}" --rounds "$rounds" --clients-per-round 2 \
	--min-clients 2 --min-reports 2 --round-timeout 300 --lr 0.05 --seed 7 \
	--compress topk:0.1,q8 --secagg full --secagg-dropout 0 --linger 3000 \
	--allowlist "$tmp/allowlist" --enroll-tokens "$tmp/tokens" \
	--metrics "$tmp/metrics.jsonl" \
	>"$tmp/server.out" 2>"$tmp/server.log" &
server=$!
pids="$server"
"$qemu" "$arm/shoal-client" --connect "$url" "${common[@]}" --partition 0/2 --seed 7 \
	--name pi-arm64 --state-dir "$tmp/arm-state" --dump-train "$tmp/arm" \
	>"$tmp/arm.out" 2>"$tmp/arm.log" &
armc=$!
"$x86/shoal-client" --connect "$url" "${common[@]}" --partition 1/2 --seed 7 \
	--name x86-64 --state-dir "$tmp/x86-state" --enroll-token "$token" \
	>"$tmp/x86.out" 2>"$tmp/x86.log" &
x86c=$!
pids="$server $armc $x86c"

# Wait for all three, or kill them at the limit; a server that fails ends
# the test at once (its clients would retry forever).
deadline=$((SECONDS + limit))
server_st=""
for p in $pids; do
	while kill -0 "$p" 2>/dev/null; do
		[ $SECONDS -lt $deadline ] || fail "still running after ${limit}s"
		if [ -z "$server_st" ] && ! kill -0 "$server" 2>/dev/null; then
			server_st=0; wait "$server" || server_st=$?
			[ "$server_st" -eq 0 ] || fail "shoal-server exited $server_st"
		fi
		sleep 0.5
	done
done
[ -n "$server_st" ] || { server_st=0; wait "$server" || server_st=$?; }
[ "$server_st" -eq 0 ] || fail "shoal-server exited $server_st"
st=0; wait "$armc" || st=$?; [ $st -eq 0 ] || fail "aarch64 shoal-client exited $st"
st=0; wait "$x86c" || st=$?; [ $st -eq 0 ] || fail "x86 shoal-client exited $st"
pids=""

# 0. Admission: the server names how each client got in.
grep -q 'pi-arm64' "$tmp/server.log" || fail "the server log does not mention pi-arm64"
grep -qi 'token' "$tmp/server.log" || fail "the server did not log the token enrolment"

# 1. Rounds, updates, accuracy.
want="rounds_trained=$rounds updates_acked=$rounds updates_late=0"
grep -q "$want" "$tmp/arm.out" || fail "aarch64 client: $(cat "$tmp/arm.out") (want $want)"
grep -q "$want" "$tmp/x86.out" || fail "x86 client: $(cat "$tmp/x86.out") (want $want)"
[ -s "$tmp/arm-state/residual" ] || fail "the aarch64 client saved no residual in --state-dir"
n=$(grep -c '"round"' "$tmp/metrics.jsonl" || true)
[ "$n" -eq "$rounds" ] || fail "metrics hold $n rounds, want $rounds"
grep -q '"abandoned":true' "$tmp/metrics.jsonl" && fail "a round was abandoned"
[ "$(grep -c '"clients":2,' "$tmp/metrics.jsonl" || true)" -eq "$rounds" ] ||
	fail "not every round aggregated 2 updates"
acc=$(tail -1 "$tmp/metrics.jsonl" | sed -E 's/.*"accuracy":([0-9.eE+-]+).*/\1/')
awk -v a="$acc" -v m="$min_acc" 'BEGIN { exit !(a >= m) }' ||
	fail "final accuracy $acc < $min_acc"
echo "cross_e2e: $rounds secure rounds, x86 server + aarch64 (qemu) and x86 clients, accuracy $acc"

# 2. The aarch64 client's training against the x86 replay of it.
worst_rel=0
for r in $(seq 1 "$rounds"); do
	rec="$tmp/arm/round-$r.train"
	[ -f "$rec" ] || fail "no training record $rec"
	line=$("$x86/shoal-client" --replay "$rec" "${common[@]}" --partition 0/2 --seed 7 -q) ||
		fail "replay of round $r failed"
	echo "cross_e2e: round $r: aarch64 vs x86: $line"
	rel=$(sed -E 's/.*rel_l2_update_diff=([^ ]+).*/\1/' <<<"$line")
	abs=$(sed -E 's/.*max_abs_diff=([^ ]+).*/\1/' <<<"$line")
	awk -v r="$rel" -v a="$abs" -v rt="$rel_tol" -v at="$abs_tol" \
		'BEGIN { exit !(r <= rt && a <= at) }' ||
		fail "round $r: trained models differ by $rel relative (tolerance $rel_tol), $abs max (tolerance $abs_tol)"
	worst_rel=$(awk -v r="$rel" -v w="$worst_rel" 'BEGIN { print (r > w ? r : w) }')
done
echo "cross_e2e: aarch64 training matches x86 within ${worst_rel} relative (tolerance $rel_tol)"
echo "1 passed, 0 failed"
