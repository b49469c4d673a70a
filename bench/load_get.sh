#!/usr/bin/env bash
# Load benchmark of a successful read: `GET /v1/chatbots/{id}` with an API key through the whole
# faultline stack (`faultline serve`, release) against bare axum reading the same row from the
# same SQLite file with the same pool (examples/bare_chatbot.rs), driven by wrk on loopback.
# Usage: bench/load_get.sh [seconds per round] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
SECONDS_PER_ROUND=${1:-10}
ROUNDS=${2:-3}
FULL=127.0.0.1:8095
BARE=127.0.0.1:8096

if ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
cargo build --release -q -p faultline-cli --bin faultline --example bare_chatbot

dir=$(mktemp -d)
db=$dir/bench.db
export RUST_LOG=${RUST_LOG:-info}
# The reference server with its default logging (info, to a file: a terminal would be measured).
# Without limits: this compares the stack with bare axum (bench/load_limits.sh measures limits).
target/release/faultline serve --no-limits --addr "$FULL" --db "$db" >"$dir/serve.out" 2>"$dir/serve.log" &
full_pid=$!
trap 'kill $full_pid ${bare_pid:-} 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do grep -q '^export KEY=' "$dir/serve.out" 2>/dev/null && break; sleep 0.1; done
KEY=$(sed -n 's/^export KEY=//p' "$dir/serve.out")
id=$(curl -s -X POST "http://$FULL/v1/chatbots" -H "authorization: Bearer $KEY" \
  -H 'content-type: application/json' -d '{"name":"bench","status":"active"}' |
  sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
[ -n "$id" ] || { echo "could not create a chatbot"; exit 1; }
target/release/examples/bare_chatbot "$BARE" "$db" >/dev/null 2>&1 &
bare_pid=$!
for _ in $(seq 50); do curl -sf -o /dev/null "http://$BARE/v1/chatbots/$id" && break; sleep 0.1; done
curl -sf -o /dev/null "http://$FULL/v1/chatbots/$id" -H "authorization: Bearer $KEY"

full_total=0; bare_total=0; full_p99s=(); bare_p99s=(); full_cpus=(); bare_cpus=()
for round in $(seq "$ROUNDS"); do
  # Interleaved, so that noise from the shared machine hits both alike.
  read -r f fp fc <<<"$(wrk_rate $full_pid -H "authorization: Bearer $KEY" "http://$FULL/v1/chatbots/$id")"
  read -r b bp bc_ <<<"$(wrk_rate $bare_pid "http://$BARE/v1/chatbots/$id")"
  echo "round $round: faultline ${f} req/s (p99 ${fp} ms, ${fc} us CPU/req), bare axum ${b} req/s (p99 ${bp} ms, ${bc_} us CPU/req), ratio $(echo "$f / $b" | bc -l | cut -c1-5)"
  full_total=$(echo "$full_total + $f" | bc -l); bare_total=$(echo "$bare_total + $b" | bc -l)
  full_p99s+=("$fp"); bare_p99s+=("$bp"); full_cpus+=("$fc"); bare_cpus+=("$bc_")
done
fcpu=$(median "${full_cpus[@]}"); bcpu=$(median "${bare_cpus[@]}")
printf 'mean: faultline %.0f req/s, bare axum %.0f req/s, ratio %.3f; median p99: faultline %s ms, bare axum %s ms\n' \
  "$(echo "$full_total / $ROUNDS" | bc -l)" "$(echo "$bare_total / $ROUNDS" | bc -l)" "$(echo "$full_total / $bare_total" | bc -l)" \
  "$(median "${full_p99s[@]}")" "$(median "${bare_p99s[@]}")"
printf 'median server CPU per request: faultline %s us, bare axum %s us, bare / faultline %.3f\n' \
  "$fcpu" "$bcpu" "$(echo "$bcpu / $fcpu" | bc -l)"
