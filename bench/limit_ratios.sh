#!/usr/bin/env bash
# The limit bench (crates/faultline-axum/benches/limit.rs), then its ratios from the same run:
# faultline's one-policy decision against governor's keyed check (target <= 1.2x), and two
# policies against one (target <= 2x).
# Usage: bench/limit_ratios.sh [extra criterion args]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -q -p faultline-axum --features limit --bench limit -- "$@" >/dev/null
dir=target/criterion/limit
mean() { # nanoseconds per decision, criterion's mean estimate
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["mean"]["point_estimate"])' \
    "$dir/$1/new/estimates.json"
}
gov=$(mean governor_keyed_one_policy); one=$(mean faultline_memory_one_policy); two=$(mean faultline_memory_two_policies)
printf 'governor keyed, one policy   %8.1f ns\n' "$gov"
printf 'faultline, one policy        %8.1f ns  %.2fx governor\n' "$one" "$(echo "$one / $gov" | bc -l)"
printf 'faultline, two policies      %8.1f ns  %.2fx one policy\n' "$two" "$(echo "$two / $one" | bc -l)"
