# lib.sh - what the bench scripts share (sourced, after they set $root).

# results_section NAME FILE: FILE holds a section of docs/RESULTS.md, from
# a line starting "<!-- NAME:begin" to the line "<!-- NAME:end -->". It
# replaces the section of that name, or is appended when there is none
# (to a new RESULTS.md with its heading when there is no file yet).
results_section() {
	local name=$1 file=$2 results=$root/docs/RESULTS.md

	[ -f "$results" ] || printf '# Results\n\nMeasured on this project'"'"'s 2-core machine; each section says which command wrote it.\n' >"$results"
	if grep -q "^<!-- $name:begin" "$results"; then
		awk -v f="$file" -v b="<!-- $name:begin" -v e="<!-- $name:end -->" '
			index($0, b) == 1 { while ((getline l < f) > 0) print l; skip = 1; next }
			index($0, e) == 1 { skip = 0; next }
			!skip { print }' "$results" >"$results.tmp" && mv "$results.tmp" "$results"
	else
		printf '\n' >>"$results"
		cat "$file" >>"$results"
	fi
	echo "$(basename "$0"): wrote docs/RESULTS.md" >&2
}

# virtual_time_curve JSONL: "virtual_s accuracy", one line per metrics
# line, for gnuplot.
virtual_time_curve() {
	awk '{ match($0, /"virtual_s":[0-9.eE+-]+/); t = substr($0, RSTART + 12, RLENGTH - 12)
	       match($0, /"accuracy":[0-9.eE+-]+/); a = substr($0, RSTART + 11, RLENGTH - 11)
	       print t, a }' "$1"
}

# plot_lines PREFIX COLS CONFIG...: gnuplot's plot list of the curves
# $out/PREFIX-CONFIG.dat that exist (columns COLS, e.g. 1:2), each titled
# with field 2 (the label) of $out/PREFIX-CONFIG.row.
plot_lines() {
	local prefix=$1 cols=$2 c label plot=""

	shift 2
	for c in "$@"; do
		[ -f "$out/$prefix-$c.dat" ] || continue
		label=$(cut -d'|' -f2 "$out/$prefix-$c.row")
		plot="$plot${plot:+, }'$out/$prefix-$c.dat' using $cols with lines lw 2 title '$label'"
	done
	printf '%s' "$plot"
}
