#!/usr/bin/env bash
# async.sh - asynchronous buffered aggregation (FedBuff, --async K) against
# synchronous rounds on the README's device mix, in virtual time: shoal-sim
# on the 2NN / IID cell (100 clients, E = 1, B = 10, lr 0.1, the default
# top-1% q8 updates and q8 downlink), run to 97% test accuracy. Writes
# docs/results/async-*.jsonl|log, a plot of accuracy against virtual time,
# and the "async:begin/end" section of docs/RESULTS.md.
#
# Usage: bench/async.sh [CONFIG...]   (default: all of them)
#   CONFIG: sync sync5 sync-over async10 async5 async5-c20
# Env: BUILD_DIR (default build), MAX_UPDATES (default 4000: the cap on
# aggregated client updates, rounds = MAX_UPDATES / updates a round),
# THREADS.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"
sim=${BUILD_DIR:-$root/build}/shoal-sim
out=$root/docs/results
max_updates=${MAX_UPDATES:-4000}
threads=${THREADS:-$(nproc)}
mix=pi4:0.5,laptop:0.2,phone-low:0.3
[ -x "$sim" ] || { echo "async.sh: $sim not found: run scripts/setup.sh first" >&2; exit 1; }
command -v gnuplot >/dev/null || {
	echo "async.sh: installing gnuplot-nox for the plot" >&2
	if [ "$(id -u)" -eq 0 ]; then apt-get install -y -qq gnuplot-nox >/dev/null
	else sudo apt-get install -y -qq gnuplot-nox >/dev/null; fi
}
mkdir -p "$out"

# config: updates a round, extra flags, label.
declare -A CFG=(
	[sync]="10 - synchronous: 10 selected a round, all must report"
	[sync5]="5 --clients-per-round=5 synchronous: 5 selected a round"
	[sync-over]="10 --over-select=1.3 synchronous, over-selecting 1.3x (13 selected, first 10 kept)"
	[async10]="10 --async=10 asynchronous: K = 10, C = 10 training at once"
	[async5]="5 --async=5 asynchronous: K = 5, C = 10"
	[async5-c20]="5 --async=5,--concurrency=20 asynchronous: K = 5, C = 20"
)
order=(sync sync5 sync-over async10 async5 async5-c20)
cfgs=("$@")
[ ${#cfgs[@]} -gt 0 ] || cfgs=("${order[@]}")

# first line of $1 (jsonl) whose accuracy reaches $2: "virtual_s round
# updates tasks bytes_up bytes_down" summed up to it, or "-" fields.
reach() {
	awk -v want="$2" '
		function num(k,   r) { if (!match($0, "\"" k "\":[0-9.eE+-]+")) return 0
			r = substr($0, RSTART + length(k) + 3, RLENGTH - length(k) - 3); return r + 0 }
		{ upd += num("clients"); tasks += num("selected"); up += num("bytes_up"); down += num("bytes_down")
		  if (num("accuracy") >= want) { printf "%.1f %d %d %d %d %d\n", num("virtual_s"), num("round"), upd, tasks, up, down; found = 1; exit } }
		END { if (!found) print "- - - - - -" }' "$1"
}

for c in "${cfgs[@]}"; do
	[ -n "${CFG[$c]:-}" ] || { echo "async.sh: unknown config '$c'" >&2; exit 2; }
	read -r per extra label <<<"${CFG[$c]}"
	[ "$extra" = - ] && extra=""
	rounds=$((max_updates / per))
	echo "async.sh: $c ($label)" >&2
	# shellcheck disable=SC2086
	"$sim" --model 2nn --clients 100 --clients-per-round 10 --partition iid --epochs 1 \
		--batch 10 --lr 0.1 --rounds "$rounds" --target-accuracy 0.97 --devices "$mix" \
		${extra//,/ } --threads "$threads" --seed 1 --data-dir "$root/data" --quiet \
		--metrics "$out/async-$c.jsonl" 2>"$out/async-$c.log"
	read -r t95 _ _ _ up95 down95 <<<"$(reach "$out/async-$c.jsonl" 0.95)"
	read -r t97 r97 u97 k97 up97 down97 <<<"$(reach "$out/async-$c.jsonl" 0.97)"
	hash=$(sed -n 's/^final model blake2b: //p' "$out/async-$c.log")
	tau=$(awk '{ if (match($0, /"staleness":[0-9.eE+-]+/)) { s += substr($0, RSTART + 12, RLENGTH - 12); n++ } }
		END { if (n > 0) printf "%.2f", s / n; else print "-" }' "$out/async-$c.jsonl")
	printf '%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s\n' "$c" "$label" "$t95" "$t97" "$r97" \
		"$u97" "$k97" "$up95" "$down95" "$up97" "$down97" "$tau" "${hash:0:16}" \
		"${extra//,/ }" >"$out/async-$c.row"
	virtual_time_curve "$out/async-$c.jsonl" >"$out/async-$c.dat"
done

plot=$(plot_lines async 1:2 "${order[@]}")
gnuplot -e "set terminal pngcairo size 760,560; set output '$out/async.png';
	set title 'README mix, 2NN, IID, 100 clients, E=1, B=10, top-1% q8';
	set xlabel 'virtual time (s)'; set ylabel 'test accuracy'; set grid; set key below left Left reverse;
	set logscale x; set yrange [0.8:1]; plot $plot"

section=$(mktemp)
{
	echo "<!-- async:begin (written by bench/async.sh; do not edit by hand) -->"
	echo "## Asynchronous (FedBuff) against synchronous rounds"
	echo
	echo "\`shoal-sim --devices $mix\` (the README mix): 2NN, IID, 100"
	echo "clients, E = 1, B = 10, lr 0.1, top-1% q8 updates with error feedback, q8"
	echo "downlink, server FedAvg (eta 1), seed 1, runs stop at 97% test accuracy (cap"
	echo "$max_updates aggregated updates). Synchronous: 10 clients a round, deadline 600"
	echo "virtual seconds. Asynchronous (\`--async K\`, PROTOCOL.md section 18): C"
	echo "clients train at once, every K updates make a round, weighted"
	echo "1/sqrt(1+staleness), max staleness 20. *updates*: client updates aggregated"
	echo "up to 97%; *tasks*: TASKs sent (updates plus work lost to failures and"
	echo "refusals). Bytes are the message payloads summed up to the round that reached"
	echo "the target. Command: \`bench/async.sh\` ($(date -u +%Y-%m-%d)); each row is"
	echo "\`shoal-sim --model 2nn --clients 100 --clients-per-round 10 --partition iid"
	echo "--epochs 1 --batch 10 --lr 0.1 --rounds R --target-accuracy 0.97 --devices"
	echo "$mix --seed 1\` plus the row's flags, which come later and win (R ="
	echo "$max_updates / updates a round)."
	echo
	echo "| configuration | flags | virtual s to 95% | virtual s to 97% | rounds to 97% | updates | tasks | bytes up to 95% | bytes down to 95% | bytes up to 97% | bytes down to 97% | mean staleness |"
	echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
	for c in "${order[@]}"; do
		[ -f "$out/async-$c.row" ] || continue
		IFS='|' read -r _ label t95 t97 r97 u97 k97 up95 down95 up97 down97 tau _ flags <"$out/async-$c.row"
		echo "| $label | \`${flags:-none}\` | $t95 | $t97 | $r97 | $u97 | $k97 | $up95 | $down95 | $up97 | $down97 | $tau |"
	done
	echo
	echo "\"-\": not reached. Curves: \`docs/results/async-*.jsonl\`."
	echo
	echo "![accuracy against virtual time](results/async.png)"
	echo "<!-- async:end -->"
} >"$section"
results_section async "$section"
rm -f "$section"
