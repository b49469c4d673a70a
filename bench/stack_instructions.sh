#!/usr/bin/env bash
# Instructions per request of each case of the stack bench (crates/faultline-axum/benches/
# stack.rs), counted by callgrind: each case runs N and 2N times, and the difference divided by
# N is one request (set-up cancels out; the last count is the bench process, not a child). N is
# 10,000 by default: with 2,000, single cases moved by up to 2,000 instructions per request
# between runs (cause not found). Unlike wall-clock figures, these do not depend on the
# load of the machine; the ratio is bare axum's count over the case's.
# Usage: bench/stack_instructions.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
N=${1:-10000}
bin=$(stack_bench_binary)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
count() { # instructions of case $1 run $2 times
  STACK_COUNT="$1:$2" valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$bin" --bench \
    >/dev/null 2>"$out/log"
  sed -n "s/.*Collected : \([0-9]*\).*/\1/p" "$out/log" | tail -1
}
per() { echo "($(count "$1" "$((2 * N))") - $(count "$1" "$N")) / $N" | bc; }
for log in no_log info_log; do
  b200=$(per "$log/200/bare_axum"); b404=$(per "$log/404/bare_axum")
  for case in 200/bare_axum 200/faultline 200/faultline_with_key 200/faultline_with_key_and_limits 404/bare_axum 404/faultline; do
    case $case in 200/bare_axum) i=$b200 ;; 404/bare_axum) i=$b404 ;; *) i=$(per "$log/$case") ;; esac
    base=$b200; [[ $case == 404/* ]] && base=$b404
    printf '%-8s %-34s %7d instructions  %.2fx bare axum\n' "$log" "$case" "$i" "$(echo "$base / $i" | bc -l)"
  done
done
