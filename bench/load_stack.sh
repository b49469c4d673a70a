#!/usr/bin/env bash
# Load benchmark of the whole stack on a 200 (issue 8's wrk target): `GET /bots` answering a
# small JSON body through the faultline stack as `faultline serve` runs it (the contract
# listener, request ids, an API key on a cache hit, in-memory limits: two rates and a
# concurrency limit) against bare axum serving the same handler; both log at info to a file.
# Driven by wrk on loopback, interleaved; also reports p99 and the server's CPU per request.
# Usage: bench/load_stack.sh [seconds per round] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
SECONDS_PER_ROUND=${1:-10}
ROUNDS=${2:-3}
FULL=127.0.0.1:8091
BARE=127.0.0.1:8090

if ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
cargo build --release -q -p faultline-cli --example stack_200

dir=$(mktemp -d)
export RUST_LOG=${RUST_LOG:-info}
target/release/examples/stack_200 faultline_key_limits "$FULL" >"$dir/full.out" 2>"$dir/full.log" &
full_pid=$!
target/release/examples/stack_200 bare "$BARE" >/dev/null 2>"$dir/bare.log" &
bare_pid=$!
trap 'kill $full_pid $bare_pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do grep -q '^export KEY=' "$dir/full.out" 2>/dev/null && break; sleep 0.1; done
KEY=$(sed -n 's/^export KEY=//p' "$dir/full.out")
for _ in $(seq 50); do curl -sf -o /dev/null "http://$BARE/bots" && break; sleep 0.1; done
status=$(curl -s -o /dev/null -w '%{http_code}' "http://$FULL/bots" -H "authorization: Bearer $KEY")
[ "$status" = 200 ] || { echo "the faultline server answered $status"; exit 1; }

ratios=(); full_cpus=(); bare_cpus=(); full_total=0; bare_total=0
for round in $(seq "$ROUNDS"); do
  read -r f fp fc <<<"$(wrk_rate $full_pid -H "authorization: Bearer $KEY" "http://$FULL/bots")"
  read -r b bp bc_ <<<"$(wrk_rate $bare_pid "http://$BARE/bots")"
  r=$(echo "$f / $b" | bc -l)
  echo "round $round: faultline ${f} req/s (p99 ${fp} ms, ${fc} us CPU/req), bare axum ${b} req/s (p99 ${bp} ms, ${bc_} us CPU/req), ratio ${r:0:5}"
  ratios+=("$r"); full_cpus+=("$fc"); bare_cpus+=("$bc_")
  full_total=$(echo "$full_total + $f" | bc -l); bare_total=$(echo "$bare_total + $b" | bc -l)
done
fcpu=$(median "${full_cpus[@]}"); bcpu=$(median "${bare_cpus[@]}")
printf 'faultline %.0f req/s, bare axum %.0f req/s (means): ratio %.3f (target >= 0.85); median of rounds %.3f\n' \
  "$(echo "$full_total / $ROUNDS" | bc -l)" "$(echo "$bare_total / $ROUNDS" | bc -l)" \
  "$(echo "$full_total / $bare_total" | bc -l)" "$(median "${ratios[@]}")"
printf 'median server CPU per request: faultline %s us, bare axum %s us, bare / faultline %.3f\n' \
  "$fcpu" "$bcpu" "$(echo "$bcpu / $fcpu" | bc -l)"
