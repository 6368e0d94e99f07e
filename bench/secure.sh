#!/usr/bin/env bash
# secure.sh - what secure aggregation costs in rounds: rounds to 97% test
# accuracy on the 2NN / pathological non-IID cell (100 clients, C = 0.1,
# E = 1, B = 10, lr 0.1) for plain top-k compressed training and for secure
# rounds on a shared index set (PROTOCOL.md section 13.8). Writes
# docs/results/secure-*.jsonl|dat|row, a plot of accuracy against rounds,
# and the "secure:begin/end" section of docs/RESULTS.md.
#
# Usage: bench/secure.sh [CONFIG...]   (default: all of them)
#   CONFIG: plain-topk01 sec-full-topk01 sec-plus-topk01 sec-full-topk10 sec-full-none
# Env: BUILD_DIR (default build), MAX_ROUNDS (default 600), THREADS.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"
sim=${BUILD_DIR:-$root/build}/shoal-sim
out=$root/docs/results
max=${MAX_ROUNDS:-600}
threads=${THREADS:-$(nproc)}
[ -x "$sim" ] || { echo "secure.sh: $sim not found: run scripts/setup.sh first" >&2; exit 1; }
command -v gnuplot >/dev/null || {
	echo "secure.sh: installing gnuplot-nox for the plot" >&2
	if [ "$(id -u)" -eq 0 ]; then apt-get install -y -qq gnuplot-nox >/dev/null
	else sudo apt-get install -y -qq gnuplot-nox >/dev/null; fi
}
mkdir -p "$out"

# config: --secagg, --compress, label
declare -A CFG=(
	[plain-topk01]="off topk:0.01,q8 plain: per-client top-k 1%, q8, error feedback"
	[sec-full-topk01]="full topk:0.01,q8 SecAgg (every pair): shared index set 1%"
	[sec-plus-topk01]="plus topk:0.01,q8 SecAgg+ (8 neighbours): shared index set 1%"
	[sec-full-topk10]="full topk:0.1,q8 SecAgg: shared index set 10%"
	[sec-full-none]="full none SecAgg: every coordinate, 8-bit levels"
)
order=(plain-topk01 sec-full-topk01 sec-plus-topk01 sec-full-topk10 sec-full-none)
cfgs=("$@")
[ ${#cfgs[@]} -gt 0 ] || cfgs=("${order[@]}")

for c in "${cfgs[@]}"; do
	[ -n "${CFG[$c]:-}" ] || { echo "secure.sh: unknown config '$c'" >&2; exit 2; }
	read -r mode spec label <<<"${CFG[$c]}"
	echo "secure.sh: $c ($label, cap $max rounds)" >&2
	"$sim" --model 2nn --clients 100 --clients-per-round 10 --partition shards --epochs 1 \
		--batch 10 --lr 0.1 --rounds "$max" --target-accuracy 0.97 --compress "$spec" \
		--secagg "$mode" --error-feedback on --threads "$threads" --seed 1 \
		--data-dir "$root/data" --quiet --metrics "$out/secure-$c.jsonl" 2>"$out/secure-$c.log"
	# round, cumulative uplink bytes, accuracy
	awk '{ match($0, /"round":[0-9]+/); r = substr($0, RSTART + 8, RLENGTH - 8)
	       match($0, /"accuracy":[0-9.eE+-]+/); a = substr($0, RSTART + 11, RLENGTH - 11)
	       match($0, /"bytes_up":[0-9]+/); up += substr($0, RSTART + 11, RLENGTH - 11)
	       print r, up, a }' "$out/secure-$c.jsonl" >"$out/secure-$c.dat"
	read -r n up acc <<<"$(tail -n 1 "$out/secure-$c.dat")"
	reached=$(awk '$3 >= 0.97 { print $1; exit }' "$out/secure-$c.dat")
	best=$(awk 'BEGIN { b = 0 } $3 > b { b = $3 } END { print b }' "$out/secure-$c.dat")
	printf '%s|%s|%s|%s|%s|%s|%s\n' "$c" "$label" "${reached:--}" "$n" "$up" "$acc" "$best" \
		>"$out/secure-$c.row"
done

plot=$(plot_lines secure 1:3 "${order[@]}")
gnuplot -e "set terminal pngcairo size 760,440; set output '$out/secure.png';
	set title '2NN, pathological non-IID, 100 clients, C=0.1, E=1, B=10';
	set xlabel 'round'; set ylabel 'test accuracy'; set grid; set key bottom right;
	set yrange [0.5:1]; plot $plot"

base=$(cut -d'|' -f3 "$out/secure-plain-topk01.row" 2>/dev/null || echo -)
section=$(mktemp)
{
	echo "<!-- secure:begin (written by bench/secure.sh; do not edit by hand) -->"
	echo "## Secure aggregation: rounds"
	echo
	echo "2NN, pathological non-IID (200 shards of 300), 100 clients, C = 0.1, E = 1,"
	echo "B = 10, lr 0.1, seed 1, error feedback on; runs stop at 97% test accuracy"
	echo "(cap $max rounds). Secure rounds mask a shared index set (half the largest"
	echo "coordinates of the last public model change, half seeded random) at a shared"
	echo "adaptive scale; plain rounds send each client's own top-k."
	echo "Command: \`bench/secure.sh\` ($(date -u +%Y-%m-%d))."
	echo
	echo "| configuration | rounds to 97% | ratio to plain top-k | rounds run | uplink bytes | final accuracy | best accuracy |"
	echo "|---|---|---|---|---|---|---|"
	for c in "${order[@]}"; do
		[ -f "$out/secure-$c.row" ] || continue
		IFS='|' read -r _ label reached n up acc best <"$out/secure-$c.row"
		ratio=$(awk -v a="$reached" -v b="$base" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }')
		echo "| $label | $reached | $ratio | $n | $up | $acc | $best |"
	done
	echo
	echo "\"-\": 97% was not reached in the rounds run. Curves: \`docs/results/secure-*.jsonl\`."
	echo
	echo "![accuracy against rounds](results/secure.png)"
	echo "<!-- secure:end -->"
} >"$section"
results_section secure "$section"
rm -f "$section"
