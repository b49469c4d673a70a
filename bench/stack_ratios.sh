#!/usr/bin/env bash
# In-process stack benchmark (criterion, crates/faultline-axum/benches/stack.rs), then the
# throughput of each faultline case as a fraction of bare axum's in the same run.
# Usage: bench/stack_ratios.sh [extra criterion args]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -q -p faultline-axum --features limit --bench stack -- "$@" >/dev/null
dir=target/criterion/stack
mean() { # nanoseconds per request, criterion's mean estimate
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["mean"]["point_estimate"])' \
    "$dir/$1/new/estimates.json"
}
for log in no_log info_log; do
  b200=$(mean "${log}_200_bare_axum"); b404=$(mean "${log}_404_bare_axum")
  for case in 200_bare_axum 200_faultline 200_faultline_with_key 200_faultline_with_key_and_limits 404_bare_axum 404_faultline; do
    t=$(mean "${log}_${case}")
    base=$b200; [[ $case == 404_* ]] && base=$b404
    printf '%-8s %-24s %8.0f ns  %.2fx bare axum\n' "$log" "$case" "$t" "$(echo "$base / $t" | bc -l)"
  done
done
