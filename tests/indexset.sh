#!/usr/bin/env bash
# indexset.sh - shoal-bench indexset (bench/indexset.c) keeps its books:
# - at --ratio 1 every coordinate is sent and no residual is kept, so
#   --select client, shared and none do the same arithmetic and must print
#   the same accuracy after 3 rounds;
# - at --ratio 0.01 the selection matters: client and shared must each
#   differ from none, and from each other.
#
#   tests/indexset.sh BUILD_DIR
#
# Environment: SHOAL_DATA_DIR (MNIST, default data/ beside the tests).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:?usage: indexset.sh BUILD_DIR}
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
data=${SHOAL_DATA_DIR:-$root/data}

# The indexset_accuracy value of one run.
acc() {
	"$bin/shoal-bench" indexset --rounds 3 --target 1 --data-dir "$data" "$@" 2>/dev/null |
		sed -n 's/.*"bench": "indexset_accuracy".*"value": \([0-9.eE+-]*\).*/\1/p'
}
fail() { echo "indexset.sh: FAIL: $*" >&2; exit 1; }

none=$(acc --select none)
[ -n "$none" ] || fail "no indexset_accuracy line from --select none"
for m in client shared; do
	a=$(acc --select "$m" --ratio 1)
	[ "$a" = "$none" ] || fail "--select $m --ratio 1 gives $a, --select none $none"
done
c=$(acc --select client --ratio 0.01)
s=$(acc --select shared --ratio 0.01)
[ -n "$c" ] && [ -n "$s" ] || fail "no indexset_accuracy line at --ratio 0.01"
[ "$c" != "$none" ] || fail "--select client --ratio 0.01 equals dense ($c)"
[ "$s" != "$none" ] || fail "--select shared --ratio 0.01 equals dense ($s)"
[ "$c" != "$s" ] || fail "client and shared selection agree at --ratio 0.01 ($c)"
echo "indexset.sh: ok (dense $none; ratio 0.01: client $c, shared $s)"
