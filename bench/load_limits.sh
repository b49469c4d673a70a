#!/usr/bin/env bash
# Load benchmark of limits: the reference API's authenticated `GET /v1/chatbots` with the
# catalog's limits on (in memory: key and org rates, org concurrency, a monthly quota) against
# the same server with `--no-limits`, driven by wrk on loopback, interleaved in one run.
# The limits come from a bench copy of the chatbots catalog whose [limits] section keeps the
# same policies with numbers no benchmark reaches, so every request is admitted and counted.
# Usage: bench/load_limits.sh [seconds per round] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_ROUND=${1:-10}
ROUNDS=${2:-3}
ON=127.0.0.1:8097
OFF=127.0.0.1:8098

if ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
cargo build --release -q -p faultline-cli --bin faultline

dir=$(mktemp -d)
catalog=$dir/bench.toml
sed '/^# ---- Limits/,$d' examples/catalogs/chatbots.toml >"$catalog"
cat >>"$catalog" <<'TOML'
[limits]
tiers = ["free"]
legacy_headers = true

[[limits.policies]]
name = "org_per_minute"
counts = "requests"
per = "org"
window = "1m"
limit = 50000000

[[limits.policies]]
name = "org_in_flight"
counts = "concurrent"
per = "org"
limit = 100000

[[limits.policies]]
name = "key_per_minute"
counts = "requests"
per = "key"
window = "1m"
limit = 50000000

[[limits.policies]]
name = "monthly_requests"
counts = "requests"
per = "org"
period = "month"
limit = 1000000000
TOML
export RUST_LOG=warn
target/release/faultline serve --addr "$ON" --db "$dir/on.db" --catalog "$catalog" >"$dir/on.out" 2>&1 &
on_pid=$!
target/release/faultline serve --no-limits --addr "$OFF" --db "$dir/off.db" --catalog "$catalog" >"$dir/off.out" 2>&1 &
off_pid=$!
trap 'kill $on_pid $off_pid 2>/dev/null || true; rm -rf "$dir"' EXIT
key() { for _ in $(seq 100); do grep -q '^export KEY=' "$1" 2>/dev/null && break; sleep 0.1; done; sed -n 's/^export KEY=//p' "$1"; }
KEY_ON=$(key "$dir/on.out"); KEY_OFF=$(key "$dir/off.out")
curl -sf -o /dev/null -D - "http://$ON/v1/chatbots" -H "authorization: Bearer $KEY_ON" | grep -i '^ratelimit:' \
  || { echo "no RateLimit header with limits on"; exit 1; }
curl -sf -o /dev/null "http://$OFF/v1/chatbots" -H "authorization: Bearer $KEY_OFF"

# One wrk thread: on a 2-core machine, a second one would take the server's core.
rate() { wrk -t1 -c32 -d"${SECONDS_PER_ROUND}s" -H "authorization: Bearer $2" "http://$1/v1/chatbots" | awk '/Requests\/sec/ {print $2}'; }
on_total=0; off_total=0
for round in $(seq "$ROUNDS"); do
  on=$(rate $ON "$KEY_ON"); off=$(rate $OFF "$KEY_OFF")
  echo "round $round: limits on ${on} req/s, limits off ${off} req/s"
  on_total=$(echo "$on_total + $on" | bc -l); off_total=$(echo "$off_total + $off" | bc -l)
done
printf 'mean: limits on %.0f req/s, off %.0f req/s, ratio %.3f\n' \
  "$(echo "$on_total / $ROUNDS" | bc -l)" "$(echo "$off_total / $ROUNDS" | bc -l)" "$(echo "$on_total / $off_total" | bc -l)"
