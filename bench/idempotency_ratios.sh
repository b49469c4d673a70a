#!/usr/bin/env bash
# Idempotency keys on the reference API, in process (criterion,
# crates/faultline-cli/benches/idempotency.rs): a keyed POST /v1/chatbots with a fresh key
# against the same POST without a key (target >= 0.5x), and a replay against a plain
# GET /v1/chatbots/{id} (target >= 0.8x), as throughput ratios of one run.
# Usage: bench/idempotency_ratios.sh [store] [extra criterion args]
#   store: sqlite (default; records in the app's SQLite file), memory, or postgres (needs
#   FAULTLINE_TEST_POSTGRES_URL, e.g. postgres://postgres@127.0.0.1:5432). Other engines add
#   their name to FAULTLINE_BENCH_IDEMPOTENCY in the bench.
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-sqlite}
shift || true
FAULTLINE_BENCH_IDEMPOTENCY=$store cargo bench -q -p faultline-cli --bench idempotency -- "$@" >/dev/null
dir=target/criterion/idempotency_$store
mean() { # nanoseconds per request, criterion's mean estimate
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["mean"]["point_estimate"])' \
    "$dir/$1/new/estimates.json"
}
plain=$(mean post_without_key); keyed=$(mean post_fresh_key)
get=$(mean get_by_id); replay=$(mean post_replay)
printf '%-8s %-18s %9.0f ns\n' "$store" post_without_key "$plain"
printf '%-8s %-18s %9.0f ns  %.2fx the POST without a key (target >= 0.5)\n' "$store" post_fresh_key "$keyed" "$(echo "$plain / $keyed" | bc -l)"
printf '%-8s %-18s %9.0f ns\n' "$store" get_by_id "$get"
printf '%-8s %-18s %9.0f ns  %.2fx the GET by id (target >= 0.8)\n' "$store" post_replay "$replay" "$(echo "$get / $replay" | bc -l)"
