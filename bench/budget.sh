#!/usr/bin/env bash
# budget.sh - time-budgeted local work in virtual time (PROTOCOL.md section
# 17): shoal-sim on the 2NN / IID cell of bench/devices.sh (100 clients, 10
# a round, B = 10, lr 0.1, top-1% q8 updates) with E = 5, so that training
# dominates a slow device's round, run to 95% test accuracy on two slow
# mixes, each without a budget, with --local-budget and FedAvg weighting,
# and with --local-budget and FedNova. Writes docs/results/budget-*.jsonl|log
# and the "budget:begin/end" section of docs/RESULTS.md.
#
# Usage: bench/budget.sh [MIX...]   (default: all: zero nofail readme)
# Env: BUILD_DIR (default build), MAX_ROUNDS (default 200), THREADS.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"
sim=${BUILD_DIR:-$root/build}/shoal-sim
out=$root/docs/results
max=${MAX_ROUNDS:-200}
threads=${THREADS:-$(nproc)}
[ -x "$sim" ] || { echo "budget.sh: $sim not found: run scripts/setup.sh first" >&2; exit 1; }
mkdir -p "$out"

# The built-in profiles fail mid-round now and then (1-10% a round), and a
# failed client holds its round until it restarts and declines (10 s):
# the "nofail" mix is the first one with failures off, to show the budget's
# own effect.
cat >"$out/budget-nofail.json" <<'JSON'
{ "pi-zero-2w-nofail": { "base": "pi-zero-2w", "fail": 0 },
  "laptop-nofail": { "base": "laptop", "fail": 0 } }
JSON
# mix name, --devices value, budget in seconds, label
mixes=(
	"zero|pi-zero-2w:0.5,laptop:0.5|0.5|Pi Zero 2 W 50%, laptop 50%"
	"nofail|pi-zero-2w-nofail:0.5,laptop-nofail:0.5|0.5|the same, no mid-round failures"
	"readme|pi4:0.5,laptop:0.2,phone-low:0.3|0.3|README mix: Pi 4 50%, laptop 20%, low-end phone 30%"
)
only=("$@") # mix names to run (default: all); the table holds every row on file
# run name, extra flags
modes=(
	"none|"
	"fedavg|--budget-aggregation fedavg"
	"fednova|--budget-aggregation fednova"
)

for mx in "${mixes[@]}"; do
	IFS='|' read -r mname mix budget mlabel <<<"$mx"
	if [ ${#only[@]} -gt 0 ] && ! printf '%s\n' "${only[@]}" | grep -qx "$mname"; then
		continue
	fi
	for md in "${modes[@]}"; do
		IFS='|' read -r mode extra <<<"$md"
		b=""
		[ "$mode" = none ] || b="--local-budget $budget"
		f="$out/budget-$mname-$mode"
		echo "budget.sh: $mname $mode" >&2
		# shellcheck disable=SC2086
		"$sim" --model 2nn --clients 100 --clients-per-round 10 --partition iid --epochs 5 \
			--batch 10 --lr 0.1 --rounds "$max" --target-accuracy 0.95 --devices "$mix" \
			--device-file "$out/budget-nofail.json" \
			$b $extra --threads "$threads" --seed 1 --data-dir "$root/data" --quiet \
			--metrics "$f.jsonl" 2>"$f.log"
		to=$(sed -n 's/.*, \([0-9.]*\) s to reach accuracy.*/\1/p' "$f.log")
		n=$(wc -l <"$f.jsonl")
		vt=$(sed -n 's/^virtual time: \([0-9.]*\) s.*/\1/p' "$f.log")
		mean=$(awk -v t="$vt" -v n="$n" 'BEGIN { if (n > 0) printf "%.2f", t / n; else print "-" }')
		tau=$(awk '{ if (match($0, /"tau_eff":[0-9.eE+-]+/)) { s += substr($0, RSTART + 10, RLENGTH - 10); k++ } }
		           END { if (k > 0) printf "%.0f", s / k; else print "-" }' "$f.jsonl")
		acc=$(tail -n 1 "$f.jsonl" | sed -n 's/.*"accuracy":\([0-9.]*\).*/\1/p')
		case $mode in
		none) what="no budget (E = 5 for all)" ;;
		fedavg) what="--local-budget $budget, FedAvg weighting" ;;
		fednova) what="--local-budget $budget, FedNova" ;;
		esac
		failed=$(sed -n 's/^dropouts: \([0-9]*\) failed mid-round.*/\1/p' "$f.log")
		echo "| $mlabel | $what | ${to:--} | $n | $mean | $tau | $failed | $acc |" >"$f.row"
	done
done

section=$(mktemp)
{
	echo "<!-- budget:begin (written by bench/budget.sh; do not edit by hand) -->"
	echo "## Time-budgeted local work (FedNova)"
	echo
	echo "\`shoal-sim --local-budget SEC\` (PROTOCOL.md section 17): 2NN, IID, 100"
	echo "clients, 10 a round, E = 5 (300 local steps of B = 10 on 600 examples),"
	echo "lr 0.1, top-1% q8 updates, seed 1, runs stop at 95% test accuracy (cap"
	echo "$max rounds). With a budget each client does the steps that fit SEC of"
	echo "training on its device (sim/device.h), at least 1 and at most 300."
	echo "Command: \`bench/budget.sh\` ($(date -u +%Y-%m-%d))."
	echo
	echo "| mix | local work | virtual s to 95% | rounds | mean virtual s a round | mean tau_eff | failed mid-round | final accuracy |"
	echo "|---|---|---|---|---|---|---|---|"
	for mx in "${mixes[@]}"; do
		for md in "${modes[@]}"; do
			f="$out/budget-${mx%%|*}-${md%%|*}.row"
			[ -f "$f" ] && cat "$f"
		done
	done
	echo
	echo "\"-\": 95% was not reached in the rounds run, or no budget (tau_eff). Curves:"
	echo "\`docs/results/budget-*.jsonl\`."
	echo "<!-- budget:end -->"
} >"$section"
results_section budget "$section"
rm -f "$section"
