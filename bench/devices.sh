#!/usr/bin/env bash
# devices.sh - what the device mix does to a federation in virtual time:
# shoal-sim with --devices on the 2NN / IID cell (100 clients, 10 a round,
# E = 1, B = 10, lr 0.1, top-1% q8 updates), run to 95% test accuracy for
# several mixes (docs/devices.md). Writes docs/results/devices-*.jsonl|log,
# a plot of accuracy against virtual time, and the "devices:begin/end"
# section of docs/RESULTS.md.
#
# Usage: bench/devices.sh [CONFIG...]   (default: all of them)
#   CONFIG: fast mixed mixed-over slow phones
# Env: BUILD_DIR (default build), MAX_ROUNDS (default 200), THREADS.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"
sim=${BUILD_DIR:-$root/build}/shoal-sim
out=$root/docs/results
max=${MAX_ROUNDS:-200}
threads=${THREADS:-$(nproc)}
[ -x "$sim" ] || { echo "devices.sh: $sim not found: run scripts/setup.sh first" >&2; exit 1; }
command -v gnuplot >/dev/null || {
	echo "devices.sh: installing gnuplot-nox for the plot" >&2
	if [ "$(id -u)" -eq 0 ]; then apt-get install -y -qq gnuplot-nox >/dev/null
	else sudo apt-get install -y -qq gnuplot-nox >/dev/null; fi
}
mkdir -p "$out"

# config: --devices value, extra flags (- for none), label. (--avail-aware
# changes nothing here: these runs last minutes, the built-in devices' on
# periods hours.)
declare -A CFG=(
	[fast]="laptop:0.5,pi5:0.5 - laptops and Pi 5s (half each)"
	[mixed]="pi4:0.5,laptop:0.2,phone-low:0.3 - README mix: Pi 4 50%, laptop 20%, low-end phone 30%"
	[slow]="pi-zero-2w - Pi Zero 2 W only"
	[phones]="phone-low:0.5,phone-high:0.5 - phones only (half low-end)"
	[mixed-over]="pi4:0.5,laptop:0.2,phone-low:0.3 --over-select=1.3 README mix, over-selecting 1.3x (13 selected, first 10 kept)"
)
order=(fast mixed mixed-over slow phones)
cfgs=("$@")
[ ${#cfgs[@]} -gt 0 ] || cfgs=("${order[@]}")

for c in "${cfgs[@]}"; do
	[ -n "${CFG[$c]:-}" ] || { echo "devices.sh: unknown config '$c'" >&2; exit 2; }
	read -r mix extra label <<<"${CFG[$c]}"
	[ "$extra" = - ] && extra=""
	echo "devices.sh: $c ($label)" >&2
	# shellcheck disable=SC2086
	"$sim" --model 2nn --clients 100 --clients-per-round 10 --partition iid --epochs 1 \
		--batch 10 --lr 0.1 --rounds "$max" --target-accuracy 0.95 --devices "$mix" $extra \
		--threads "$threads" --seed 1 --data-dir "$root/data" --quiet \
		--metrics "$out/devices-$c.jsonl" 2>"$out/devices-$c.log"
	vt=$(sed -n 's/^virtual time: \([0-9.]*\) s.*/\1/p' "$out/devices-$c.log")
	to=$(sed -n 's/.*, \([0-9.]*\) s to reach accuracy.*/\1/p' "$out/devices-$c.log")
	failed=$(sed -n 's/^dropouts: \([0-9]*\) failed mid-round, \([0-9]*\) went offline/\1/p' "$out/devices-$c.log")
	offline=$(sed -n 's/^dropouts: \([0-9]*\) failed mid-round, \([0-9]*\) went offline/\2/p' "$out/devices-$c.log")
	rounds=$(wc -l <"$out/devices-$c.jsonl")
	acc=$(tail -n 1 "$out/devices-$c.jsonl" | sed -n 's/.*"accuracy":\([0-9.]*\).*/\1/p')
	# mean round length in virtual seconds
	mean=$(awk -v t="$vt" -v n="$rounds" 'BEGIN { if (n > 0) printf "%.2f", t / n; else print "-" }')
	up=$(awk '{ match($0, /"bytes_up":[0-9]+/); s += substr($0, RSTART + 11, RLENGTH - 11) } END { print s }' "$out/devices-$c.jsonl")
	printf '%s|%s|%s|%s|%s|%s|%s|%s|%s\n' "$c" "$label" "${to:--}" "$rounds" "$mean" "$failed" \
		"$offline" "$up" "$acc" >"$out/devices-$c.row"
	virtual_time_curve "$out/devices-$c.jsonl" >"$out/devices-$c.dat"
done

plot=$(plot_lines devices 1:2 "${order[@]}")
gnuplot -e "set terminal pngcairo size 760,440; set output '$out/devices.png';
	set title '2NN, IID, 100 clients, 10 a round, E=1, B=10, top-1% q8';
	set xlabel 'virtual time (s)'; set ylabel 'test accuracy'; set grid; set key bottom right;
	set logscale x; set yrange [0.8:1]; plot $plot"

section=$(mktemp)
{
	echo "<!-- devices:begin (written by bench/devices.sh; do not edit by hand) -->"
	echo "## Device mixes in virtual time"
	echo
	echo "\`shoal-sim --devices MIX\` (docs/devices.md): 2NN, IID, 100 clients, 10 a"
	echo "round, E = 1, B = 10, lr 0.1, top-1% q8 updates, seed 1; a round starts with"
	echo "10 waiting clients and ends when they have reported, or at 600 virtual"
	echo "seconds; runs stop at 95% test accuracy (cap $max rounds). Virtual time"
	echo "counts each client's download, training and upload on its device, and the"
	echo "time clients spend unavailable. Command: \`bench/devices.sh\` ($(date -u +%Y-%m-%d))."
	echo
	echo "| mix | virtual s to 95% | rounds | mean virtual s a round | failed mid-round | went offline | uplink bytes | final accuracy |"
	echo "|---|---|---|---|---|---|---|---|"
	for c in "${order[@]}"; do
		[ -f "$out/devices-$c.row" ] || continue
		IFS='|' read -r _ label to n mean failed offline up acc <"$out/devices-$c.row"
		echo "| $label | $to | $n | $mean | $failed | $offline | $up | $acc |"
	done
	echo
	echo "\"-\": 95% was not reached in the rounds run. Curves: \`docs/results/devices-*.jsonl\`."
	echo
	echo "![accuracy against virtual time](results/devices.png)"
	echo "<!-- devices:end -->"
} >"$section"
results_section devices "$section"
rm -f "$section"
