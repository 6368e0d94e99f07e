#!/usr/bin/env bash
# paper.sh - reproduce the MNIST tables of McMahan et al. 2017 ("Communication-
# Efficient Learning of Deep Networks from Decentralized Data", Table 2) with
# shoal-sim, and write the result into docs/RESULTS.md (between the
# "paper:begin/end" markers) with one accuracy-vs-round plot per cell.
#
# Usage: bench/paper.sh [CELL...]    CELL: 2nn-iid 2nn-noniid cnn-iid cnn-noniid
#        cnn-iid-m cnn-iid-long (default: all six; cnn-iid-m is cnn-iid with
#        server momentum; cnn-iid-long is plain FedAvg at a constant lr, run
#        past the paper's 20 rounds until it reaches 99%). Env: BUILD_DIR (default build), MAX_ROUNDS_CNN_NONIID
#        (cap for the slowest cell, default 150), THREADS (default nproc).
# Setup per the paper: 100 clients, C = 0.1 (10 per round), IID = 600
# examples each, non-IID = 200 label-sorted shards of 300, 2 per client.
# Each run stops at the target accuracy (--target-accuracy) or its cap.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"
build=${BUILD_DIR:-$root/build}
sim=$build/shoal-sim
out=$root/docs/results
threads=${THREADS:-$(nproc)}
[ -x "$sim" ] || { echo "paper.sh: $sim not found: run scripts/setup.sh first" >&2; exit 1; }
command -v gnuplot >/dev/null || {
	echo "paper.sh: installing gnuplot-nox for the plots" >&2
	if [ "$(id -u)" -eq 0 ]; then apt-get install -y -qq gnuplot-nox >/dev/null
	else sudo apt-get install -y -qq gnuplot-nox >/dev/null; fi
}
mkdir -p "$out"

# cell: model E B lr lr_decay partition target paper_rounds cap server
# (round r trains with lr * lr_decay^(r-1); server: fedavg, or
# fedavgm:BETA:ETA for server momentum BETA and server learning rate ETA)
declare -A CELL=(
	[2nn-iid]="2nn 1 10 0.1 1 iid 0.97 87 300 fedavg"
	[2nn-noniid]="2nn 1 10 0.1 1 shards 0.97 664 1000 fedavg"
	[cnn-iid]="cnn 5 10 0.15 0.9 iid 0.99 20 20 fedavg"
	[cnn-iid-m]="cnn 5 10 0.1 0.95 iid 0.99 20 20 fedavgm:0.5:1.5"
	[cnn-iid-long]="cnn 5 10 0.1 1 iid 0.99 20 40 fedavg"
	[cnn-noniid]="cnn 5 10 0.15 0.99 shards 0.99 229 ${MAX_ROUNDS_CNN_NONIID:-150} fedavg"
)
ALL=(2nn-iid 2nn-noniid cnn-iid cnn-iid-m cnn-iid-long cnn-noniid)
cells=("$@")
[ ${#cells[@]} -gt 0 ] || cells=("${ALL[@]}")

# shoal-sim flags for a cell's server field.
server_flags() {
	case $1 in
	fedavg) ;;
	fedavgm:*:*)
		IFS=: read -r _ beta eta <<<"$1"
		echo "--server-opt fedavgm --server-beta1 $beta --server-lr $eta" ;;
	*) echo "paper.sh: bad server field '$1'" >&2; exit 2 ;;
	esac
}

# First round whose accuracy reaches $2 in metrics file $1, or "-".
rounds_to() {
	awk -v t="$2" '{
		match($0, /"round":[0-9]+/); r = substr($0, RSTART + 8, RLENGTH - 8)
		match($0, /"accuracy":[0-9.eE+-]+/); a = substr($0, RSTART + 11, RLENGTH - 11)
		if (a + 0 >= t + 0) { print r; found = 1; exit }
	} END { if (!found) print "-" }' "$1"
}
last_field() { # last value of key $2 in metrics file $1
	tail -n 1 "$1" | sed -E "s/.*\"$2\":([0-9.eE+-]+).*/\1/"
}

for c in "${cells[@]}"; do
	[ -n "${CELL[$c]:-}" ] || { echo "paper.sh: unknown cell '$c'" >&2; exit 2; }
	read -r model E B lr decay part target paper cap server <<<"${CELL[$c]}"
	sflags=$(server_flags "$server")
	echo "paper.sh: $c: $model E=$E B=$B lr=$lr decay=$decay $server $part, target $target (paper: $paper rounds, cap $cap)" >&2
	start=$(date +%s.%N)
	# shellcheck disable=SC2086 # sflags is a list of flags
	"$sim" --model "$model" --clients 100 --clients-per-round 10 --partition "$part" \
		--epochs "$E" --batch "$B" --lr "$lr" --lr-decay "$decay" --rounds "$cap" $sflags \
		--target-accuracy "$target" --compress none --downlink full \
		--threads "$threads" --seed 1 --data-dir "$root/data" --metrics "$out/paper-$c.jsonl" \
		2> >(tee "$out/paper-$c.log" | grep -E '^round [0-9]+/[0-9]+' | awk 'NR % 10 == 0' >&2)
	end=$(date +%s.%N)
	n=$(wc -l <"$out/paper-$c.jsonl")
	printf '%s %s %s %s %s %s %s %s %s %s %s %s %s\n' "$c" "$model" "$E" "$B" "$lr" "$decay" "$server" "$target" "$paper" \
		"$(rounds_to "$out/paper-$c.jsonl" "$target")" "$n" \
		"$(last_field "$out/paper-$c.jsonl" accuracy)" \
		"$(awk -v s="$start" -v e="$end" -v n="$n" 'BEGIN { printf "%.2f", (e - s) / n }')" \
		>"$out/paper-$c.row"
	awk '{ match($0, /"round":[0-9]+/); r = substr($0, RSTART + 8, RLENGTH - 8)
	       match($0, /"accuracy":[0-9.eE+-]+/); print r, substr($0, RSTART + 11, RLENGTH - 11) }' \
		"$out/paper-$c.jsonl" >"$out/paper-$c.dat"
	gnuplot -e "
		set terminal pngcairo size 640,400; set output '$out/paper-$c.png';
		set title '$c: $model, E=$E, B=$B, lr=$lr (decay $decay), $server, C=0.1';
		set xlabel 'round'; set ylabel 'test accuracy'; set grid; set key bottom right;
		set yrange [0.8:1];
		plot '$out/paper-$c.dat' using 1:2 with lines lw 2 title 'shoal',
		     $target with lines dt 2 title 'target $target (paper: $paper rounds)'"
done

# The table, from every cell that has a row (runs of other invocations too).
section=$(mktemp)
{
	echo "<!-- paper:begin (written by bench/paper.sh; do not edit by hand) -->"
	echo "## FedAvg on MNIST against McMahan et al. 2017"
	echo
	echo "100 clients, C = 0.1 (10 per round), seed 1; IID: 600 examples per client;"
	echo "non-IID: 200 label-sorted shards of 300, 2 per client. Rounds to reach the"
	echo "target test accuracy, next to the paper's FedAvg numbers (Table 2)."
	echo "Command: \`bench/paper.sh\` on $(nproc) cores ($(date -u +%Y-%m-%d))."
	echo
	echo "| cell | model | E | B | lr | lr decay | server | target | paper rounds | shoal rounds | rounds run | final accuracy | wall s/round |"
	echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
	for c in "${ALL[@]}"; do
		[ -f "$out/paper-$c.row" ] || continue
		read -r cc model E B lr decay server target paper got n acc spr <"$out/paper-$c.row"
		echo "| $cc | $model | $E | $B | $lr | $decay | $server | $target | $paper | $got | $n | $acc | $spr |"
	done
	echo
	echo "\"-\" in *shoal rounds*: the target was not reached within the rounds run."
	echo "Round r uses the learning rate lr * decay^(r-1); plain local SGD and dense"
	echo "updates (\`--compress none --downlink full\`), as in the paper. *server*:"
	echo "fedavg is the paper's FedAvg; fedavgm:BETA:ETA is FedAvg with server momentum"
	echo "BETA and server learning rate ETA (\`--server-opt fedavgm --server-beta1 BETA"
	echo "--server-lr ETA\`), which is not in the paper's table."
	echo "Curves (metrics JSON lines) and plots are in \`docs/results/paper-*\`."
	echo
	for c in "${ALL[@]}"; do
		[ -f "$out/paper-$c.png" ] && echo "![$c](results/paper-$c.png)"
	done
	echo "<!-- paper:end -->"
} >"$section"
results_section paper "$section"
rm -f "$section"
