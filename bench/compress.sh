#!/usr/bin/env bash
# compress.sh - rounds to 97% test accuracy and uplink bytes of compressed
# updates against uncompressed training, on the 2NN / pathological non-IID
# cell of McMahan et al. 2017 (100 clients, C = 0.1, E = 1, B = 10, lr 0.1).
# Writes docs/results/compress-*.jsonl, a plot of accuracy against
# cumulative uplink bytes, and the "compress:begin/end" section of
# docs/RESULTS.md.
#
# Usage: bench/compress.sh [CONFIG...]   (default: all of them)
#   CONFIG: none topk01-ef topk01-noef topk001-ef randk01 topk01q4-ef
# Env: BUILD_DIR (default build), MAX_ROUNDS (default 1000), THREADS.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"
sim=${BUILD_DIR:-$root/build}/shoal-sim
out=$root/docs/results
max=${MAX_ROUNDS:-1000}
threads=${THREADS:-$(nproc)}
[ -x "$sim" ] || { echo "compress.sh: $sim not found: run scripts/setup.sh first" >&2; exit 1; }
command -v gnuplot >/dev/null || {
	echo "compress.sh: installing gnuplot-nox for the plot" >&2
	if [ "$(id -u)" -eq 0 ]; then apt-get install -y -qq gnuplot-nox >/dev/null
	else sudo apt-get install -y -qq gnuplot-nox >/dev/null; fi
}
mkdir -p "$out"

# config: --compress value, --error-feedback, round cap (0: MAX_ROUNDS), label.
# Rand-k is unbiased (kept values are rescaled by 1/p), so it runs without
# error feedback: the residual of a rescaled value is not a contraction and
# feeding it back diverges (measured: chance accuracy by round 80).
declare -A CFG=(
	[none]="none on 0 uncompressed (float32)"
	[topk01-ef]="topk:0.01,q8 on 0 topk:0.01,q8 + error feedback"
	[topk01-noef]="topk:0.01,q8 off 0 topk:0.01,q8, no error feedback"
	[topk001-ef]="topk:0.001,q8 on 0 topk:0.001,q8 + error feedback"
	[randk01]="randk:0.01,q8 off 300 randk:0.01,q8 (unbiased, no error feedback)"
	[topk01q4-ef]="topk:0.01,q4 on 0 topk:0.01,q4 + error feedback"
)
order=(none topk01-ef topk01-noef topk001-ef randk01 topk01q4-ef)
cfgs=("$@")
[ ${#cfgs[@]} -gt 0 ] || cfgs=("${order[@]}")

for c in "${cfgs[@]}"; do
	[ -n "${CFG[$c]:-}" ] || { echo "compress.sh: unknown config '$c'" >&2; exit 2; }
	read -r spec ef cap label <<<"${CFG[$c]}"
	[ "$cap" -gt 0 ] || cap=$max
	echo "compress.sh: $c ($label, cap $cap rounds)" >&2
	"$sim" --model 2nn --clients 100 --clients-per-round 10 --partition shards --epochs 1 \
		--batch 10 --lr 0.1 --rounds "$cap" --target-accuracy 0.97 --compress "$spec" \
		--error-feedback "$ef" --threads "$threads" --seed 1 --data-dir "$root/data" \
		--quiet --metrics "$out/compress-$c.jsonl" 2>"$out/compress-$c.log"
	# round, cumulative uplink bytes, accuracy
	awk '{ match($0, /"round":[0-9]+/); r = substr($0, RSTART + 8, RLENGTH - 8)
	       match($0, /"accuracy":[0-9.eE+-]+/); a = substr($0, RSTART + 11, RLENGTH - 11)
	       match($0, /"bytes_up":[0-9]+/); up += substr($0, RSTART + 11, RLENGTH - 11)
	       print r, up, a }' "$out/compress-$c.jsonl" >"$out/compress-$c.dat"
	last=$(tail -n 1 "$out/compress-$c.dat")
	read -r n up acc <<<"$last"
	reached=$(awk '$3 >= 0.97 { print $1; exit }' "$out/compress-$c.dat")
	printf '%s|%s|%s|%s|%s|%s\n' "$c" "$label" "${reached:--}" "$n" "$up" "$acc" >"$out/compress-$c.row"
done

# Plot every config that has data.
plot=$(plot_lines compress 2:3 "${order[@]}")
gnuplot -e "set terminal pngcairo size 760,440; set output '$out/compress.png';
	set title '2NN, pathological non-IID, 100 clients, C=0.1, E=1, B=10';
	set xlabel 'cumulative uplink bytes'; set ylabel 'test accuracy'; set logscale x;
	set grid; set key top left; set yrange [0.8:1]; plot $plot"

base_rounds=$(cut -d'|' -f3 "$out/compress-none.row" 2>/dev/null || echo -)
base_up=$(cut -d'|' -f5 "$out/compress-none.row" 2>/dev/null || echo 0)
section=$(mktemp)
{
	echo "<!-- compress:begin (written by bench/compress.sh; do not edit by hand) -->"
	echo "## Compressed updates"
	echo
	echo "2NN, pathological non-IID (200 shards of 300), 100 clients, C = 0.1, E = 1,"
	echo "B = 10, lr 0.1, seed 1, runs stop at 97% test accuracy (cap $max rounds; rand-k 300)."
	echo "Rand-k runs without error feedback (it is unbiased; with it, it diverges)."
	echo "Uplink bytes are the real UPDATE message payloads, summed over the rounds"
	echo "run. Downlink: q8 model deltas for clients that hold the previous model."
	echo "Command: \`bench/compress.sh\` ($(date -u +%Y-%m-%d))."
	echo
	echo "| configuration | rounds to 97% | ratio to uncompressed | rounds run | uplink bytes | uplink reduction | final accuracy |"
	echo "|---|---|---|---|---|---|---|"
	for c in "${order[@]}"; do
		[ -f "$out/compress-$c.row" ] || continue
		IFS='|' read -r _ label reached n up acc <"$out/compress-$c.row"
		ratio=$(awk -v a="$reached" -v b="$base_rounds" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }')
		red=$(awk -v a="$up" -v b="$base_up" 'BEGIN { if (a == 0 || b == 0) print "-"; else printf "%.0fx", b / a }')
		echo "| $label | $reached | $ratio | $n | $up | $red | $acc |"
	done
	echo
	echo "\"-\": 97% was not reached in the rounds run. Curves: \`docs/results/compress-*.jsonl\`."
	echo
	echo "![accuracy against cumulative uplink bytes](results/compress.png)"
	echo "<!-- compress:end -->"
} >"$section"
results_section compress "$section"
rm -f "$section"
