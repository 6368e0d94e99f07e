# lib.sh - what the bench scripts share (sourced, after they set $root).

# results_section NAME FILE: FILE holds a section of docs/RESULTS.md, from
# a line starting "<!-- NAME:begin" to the line "<!-- NAME:end -->". It
# replaces the section of that name, or is appended when there is none.
results_section() {
	local name=$1 file=$2 results=$root/docs/RESULTS.md

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
