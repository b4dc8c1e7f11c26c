#!/bin/sh
# Scale's example job type `test` 1.0.0: copy the first READ_LENGTH bytes of INPUT_TEXT to
# OUTPUT_DIR/output_text.txt and report the input's size as the JSON output total_input.
# Exit 1 (a data error): the input is empty. Exit 2 (a job error): READ_LENGTH is negative.
input="$1"
length="$2"
out="$3"
echo "connecting to $DB_HOST"
[ -n "$DB_PASS" ] || { echo "no DB_PASS" >&2; exit 3; }
[ -s "$input" ] || { echo "empty input" >&2; exit 1; }
case "$length" in -*) echo "negative length" >&2; exit 2;; esac
head -c "$length" "$input" > "$out/output_text.txt"
printf '{"TOTAL_INPUT": %d}\n' "$(wc -c < "$input")" > "$out/seed.outputs.json"
