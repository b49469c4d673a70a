#!/usr/bin/env bash
# CPU time per request of each case of the stack bench (crates/faultline-axum/benches/
# stack.rs, STACK_COUNT mode): the time the bench thread itself ran, so that other processes on
# a shared machine hardly move it (wall-clock figures do). Cases run interleaved, ROUNDS times;
# the ratio is bare axum's median over the case's median.
# Usage: bench/stack_cpu.sh [requests per run] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
N=${1:-200000}
ROUNDS=${2:-7}
bin=$(stack_bench_binary)
cases="200/bare_axum 200/faultline 200/faultline_with_key 200/faultline_with_key_and_limits 404/bare_axum 404/faultline"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for _ in $(seq "$ROUNDS"); do
  for log in no_log info_log; do
    for case in $cases; do
      STACK_COUNT="$log/$case:$N" "$bin" --bench >>"$out/${log}_${case//\//_}"
    done
  done
done
for log in no_log info_log; do
  b200=$(median $(cat "$out/${log}_200_bare_axum")); b404=$(median $(cat "$out/${log}_404_bare_axum"))
  for case in $cases; do
    t=$(median $(cat "$out/${log}_${case//\//_}"))
    base=$b200; [[ $case == 404/* ]] && base=$b404
    printf '%-8s %-34s %7.0f ns CPU  %.2fx bare axum  (runs: %s)\n' "$log" "$case" "$t" "$(echo "$base / $t" | bc -l)" \
      "$(sort -g "$out/${log}_${case//\//_}" | tr '\n' ' ')"
  done
done
