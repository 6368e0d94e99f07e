#!/usr/bin/env bash
# dp.sh - test accuracy under differential privacy (issue 6): MNIST, 1,000
# clients (IID, 60 examples each), Poisson sampling q = 0.1, delta = 1e-5,
# logistic regression, the same rounds for every cell; epsilon in {1, 4, 8}
# for central DP (server adds Gaussian noise) and distributed DP (clients
# add discrete Gaussian noise under SecAgg+), next to the non-private run.
# Distributed DP runs with both accountants: "bound" (the default: Kairouz
# et al. with Zhu and Wang's general subsampling bound) and "gaussian" (the
# sum's noise accounted as central DP's Gaussian; see server/dp.h).
# Writes docs/results/dp-*.jsonl|log|row and the "dp:begin/end" section of
# docs/RESULTS.md.
#
# Usage: bench/dp.sh [CELL...]   (default: all of them)
#        bench/dp.sh --report      (only rewrite the section from the rows)
#   CELL: none central-1 central-4 central-8 dist-1 dist-4 dist-8
#         distg-1 distg-4 distg-8
# Env: BUILD_DIR (default build), ROUNDS (default 100), CLIP (default 0.5),
#      THREADS (default nproc).
# Took 16 minutes on the 2-core machine while other jobs shared it: ~20 s a
# central or non-private cell, ~150 s a distributed one (SecAgg+ of ~100
# clients and 8192 discrete Gaussian samples per client and round).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"
sim=${BUILD_DIR:-$root/build}/shoal-sim
out=$root/docs/results
rounds=${ROUNDS:-100}
clip=${CLIP:-0.5}
threads=${THREADS:-$(nproc)}
tmin=75 # P(Binomial(1000, 0.1) < 75) = 0.27%: a round rarely has too few
[ -x "$sim" ] || { echo "dp.sh: $sim not found: run scripts/setup.sh first" >&2; exit 1; }
mkdir -p "$out"

# cell: mode (none|central|distributed) epsilon accounting label
declare -A CELL=(
	[none]="none - - non-private"
	[central-1]="central 1 - central"
	[central-4]="central 4 - central"
	[central-8]="central 8 - central"
	[dist-1]="distributed 1 bound distributed"
	[dist-4]="distributed 4 bound distributed"
	[dist-8]="distributed 8 bound distributed"
	[distg-1]="distributed 1 gaussian distributed"
	[distg-4]="distributed 4 gaussian distributed"
	[distg-8]="distributed 8 gaussian distributed"
)
order=(none central-1 central-4 central-8 dist-1 dist-4 dist-8 distg-1 distg-4 distg-8)
cells=("$@")
[ ${#cells[@]} -gt 0 ] || cells=("${order[@]}")
[ "${cells[0]}" != --report ] || cells=()

common=(--model logreg --clients 1000 --partition iid --sampling poisson --sample-rate 0.1
	--epochs 5 --batch 10 --lr 0.1 --rounds "$rounds" --compress none --downlink full
	--threads "$threads" --seed 1 --data-dir "$root/data")

for c in ${cells[@]+"${cells[@]}"}; do
	[ -n "${CELL[$c]:-}" ] || { echo "dp.sh: unknown cell '$c'" >&2; exit 2; }
	read -r mode eps acct label <<<"${CELL[$c]}"
	args=()
	case $mode in
	central) args=(--dp central --clip "$clip" --target-epsilon "$eps" --delta 1e-5) ;;
	distributed) args=(--secagg plus --dp distributed --clip "$clip" --target-epsilon "$eps"
		--delta 1e-5 --dp-min-clients "$tmin" --dp-accounting "$acct") ;;
	esac
	echo "dp.sh: $c ($label${acct:+, $acct}, $rounds rounds)" >&2
	"$sim" "${common[@]}" "${args[@]}" --metrics "$out/dp-$c.jsonl" 2>"$out/dp-$c.log"
	acc=$(sed -n 's/^final test accuracy: \([0-9.]*\).*/\1/p' "$out/dp-$c.log")
	wall=$(sed -n 's/^wall time: \([0-9.]*\) s.*/\1/p' "$out/dp-$c.log")
	spent=$(sed -n 's/^privacy: epsilon \([0-9.]*\).*/\1/p' "$out/dp-$c.log")
	z=$(sed -n 's/.* DP: .*noise multiplier \([0-9.e+-]*\).*/\1/p' "$out/dp-$c.log" | head -n 1)
	done_=$(sed -n 's/^rounds: \([0-9]*\) completed, \([0-9]*\) abandoned.*/\1 \2/p' "$out/dp-$c.log")
	read -r completed abandoned <<<"$done_"
	printf '%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s\n' "$c" "$label" "$acct" "$eps" "${spent:--}" \
		"${z:--}" "$acc" "$completed" "$abandoned" "$wall" \
		"$([ "$mode" = distributed ] && echo "$tmin" || echo -)" >"$out/dp-$c.row"
done

section=$(mktemp)
{
	echo "<!-- dp:begin (written by bench/dp.sh; do not edit by hand) -->"
	echo "## Differential privacy"
	echo
	echo "MNIST, logistic regression, 1,000 clients (IID, 60 examples each), Poisson"
	echo "sampling q = 0.1 (about 100 clients a round), E = 5, B = 10, lr 0.1, FedAvg,"
	echo "$rounds rounds, seed 1, delta = 1e-5, clip C = $clip (L2, per client update),"
	echo "noise multiplier z calibrated so that the $rounds rounds spend the target epsilon"
	echo "(\`--target-epsilon\`). Central: the server clips and adds N(0, (zC)^2) to the"
	echo "sum (PROTOCOL.md 14.1). Distributed: SecAgg+, each client clips the shared"
	echo "coordinates, rotates, rounds and adds discrete Gaussian noise sized so that"
	echo "$tmin clients carry z C (\`--dp-min-clients $tmin\`; fewer in a round aborts it);"
	echo "the server divides by q n as in central DP (PROTOCOL.md 14.2). Accounting"
	echo "*bound*: Kairouz et al. 2021 with Zhu and Wang's general Poisson subsampling"
	echo "bound (a proof for the discrete noise; the default); *gaussian*: the sum's"
	echo "noise accounted as the subsampled Gaussian of central DP (assumes the removal"
	echo "direction behaves as for Gaussian noise). Command: \`bench/dp.sh\` on 2 cores"
	echo "($(date -u +%Y-%m-%d))."
	echo
	echo "| DP | accounting | target epsilon | epsilon spent | z | clients' noise sized for | rounds (abandoned) | final accuracy | wall s |"
	echo "|---|---|---|---|---|---|---|---|---|"
	for c in "${order[@]}"; do
		[ -f "$out/dp-$c.row" ] || continue
		IFS='|' read -r _ label acct eps spent z acc completed abandoned wall tm <"$out/dp-$c.row"
		[ "$acct" = - ] && acct=""
		echo "| $label | ${acct:--} | $eps | $spent | $z | $tm | $rounds ($abandoned) | $acc | $wall |"
	done
	echo
	echo "z: the calibrated noise multiplier (noise stddev on the sum / C; distributed:"
	echo "for $tmin clients, so a round with n > $tmin clients carries sqrt(n/$tmin) times"
	echo "more). Epsilon spent: what the server's accountant reports after the last"
	echo "round. wall s: the run's wall time, measured while other jobs shared the"
	echo "machine. Per-round metrics (accuracy, epsilon): \`docs/results/dp-*.jsonl\`."
	echo "<!-- dp:end -->"
} >"$section"
results_section dp "$section"
rm -f "$section"
