#!/usr/bin/env bash
# Load benchmark: a 404 envelope through the full faultline stack (the reference server)
# against a bare axum handler returning a fixed JSON 404, driven by wrk on loopback in one run.
# Usage: bench/load.sh [seconds per round] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_ROUND=${1:-10}
ROUNDS=${2:-3}
FULL=127.0.0.1:8092
BARE=127.0.0.1:8093

if ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
cargo build --release -q -p faultline-cli --bin faultline --example bare_404

db=$(mktemp -d)/bench.db
# Both servers log at warn: a log line per request would measure the terminal, not the stack.
export RUST_LOG=warn
target/release/faultline serve --addr "$FULL" --db "$db" >/dev/null 2>&1 &
full_pid=$!
target/release/examples/bare_404 "$BARE" >/dev/null 2>&1 &
bare_pid=$!
trap 'kill $full_pid $bare_pid 2>/dev/null || true' EXIT
for addr in $FULL $BARE; do
  for _ in $(seq 50); do curl -s -o /dev/null "http://$addr/v1/nope" && break; sleep 0.1; done
done
# One wrk thread: on a 2-core machine, a second one would take the server's core.
rate() { wrk -t1 -c32 -d"${SECONDS_PER_ROUND}s" "http://$1/v1/nope" | awk '/Requests\/sec/ {print $2}'; }
full_total=0; bare_total=0
for round in $(seq "$ROUNDS"); do
  # Interleave the two so that noise from the shared machine hits both alike.
  f=$(rate $FULL); b=$(rate $BARE)
  echo "round $round: faultline ${f} req/s, bare axum ${b} req/s"
  full_total=$(echo "$full_total + $f" | bc -l); bare_total=$(echo "$bare_total + $b" | bc -l)
done
printf 'mean: faultline %.0f req/s, bare axum %.0f req/s, ratio %.3f\n' \
  "$(echo "$full_total / $ROUNDS" | bc -l)" "$(echo "$bare_total / $ROUNDS" | bc -l)" "$(echo "$full_total / $bare_total" | bc -l)"
