#!/usr/bin/env bash
# Benchmark of issue 10: authenticated `GET /v1/chatbots/{id}` (release build, wrk on loopback)
#   A. two `serve` processes on one PostgreSQL database (reference data + idempotency) and one
#      Redis (limits), wrk against each at once (half the connections each; the figure is the
#      sum of the two, the p99 the worse of the two);
#   B. one `serve` process on SQLite with in-memory limits.
# Limits are on in both, with a bench catalog whose enterprise tier is raised so that nothing
# is refused (every answer must be a 200: wrk's non-2xx count is checked).
# Keys live where each side keeps everything: PostgreSQL for A, the SQLite file for B.
# Needs PostgreSQL (BENCH_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432) and Redis
# (BENCH_REDIS_URL, default redis://127.0.0.1:6379); creates and drops its own database and
# Redis prefix.
# Usage: bench/reference_data.sh [seconds per round] [rounds] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${2:-3}
CONNS=${3:-32}
PG=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
REDIS=${BENCH_REDIS_URL:-redis://127.0.0.1:6379}
A1=127.0.0.1:8191; A2=127.0.0.1:8192; B=127.0.0.1:8193
DBNAME=faultline_bench_$$
PREFIX=fltbench-$$

cargo build --release -q -p faultline-cli --bin faultline
bin=target/release/faultline
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DBNAME" >/dev/null 2>&1 || true
  redis-cli -u "$REDIS" --scan --pattern "{$PREFIX:*" 2>/dev/null | xargs -r redis-cli -u "$REDIS" DEL >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
psql "$PG/postgres" -qc "CREATE DATABASE $DBNAME" >/dev/null

# The chatbots catalog with the enterprise tier raised far beyond what wrk can send.
catalog=$dir/bench.toml
sed -E 's/enterprise = [0-9]+ \}/enterprise = 10000000 }/' examples/catalogs/chatbots.toml >"$catalog"

export RUST_LOG=${RUST_LOG:-warn}
key_for() { # store flag, its value, org
  local key
  key=$("$bin" keys create "$1" "$2" --org "$3" --scopes all)
  "$bin" orgs set-tier "$1" "$2" "$3" enterprise >/dev/null
  echo "$key"
}
wait_up() { for _ in $(seq 100); do curl -s -o /dev/null "http://$1/healthz" && return 0; sleep 0.1; done; echo "no server on $1"; exit 1; }
make_bot() { # addr key
  curl -s -X POST "http://$1/v1/chatbots" -H "authorization: Bearer $2" \
    -H 'content-type: application/json' -d '{"name":"bench","status":"active"}' |
    sed -n 's/.*"id":"\([^"]*\)".*/\1/p'
}

# A: PostgreSQL + Redis, two instances.
for addr in $A1 $A2; do
  FAULTLINE_REDIS_PREFIX=$PREFIX "$bin" serve --addr "$addr" --db "$dir/keys-a.db" --catalog "$catalog" \
    --database-url "$PG/$DBNAME" --redis-url "$REDIS" >"$dir/a-$addr.out" 2>&1 &
  pids+=($!)
done
wait_up $A1; wait_up $A2
KEY_A=$(key_for --database-url "$PG/$DBNAME" bench)
ID_A=$(make_bot $A1 "$KEY_A")
[ -n "$ID_A" ] || { echo "could not create a chatbot on PostgreSQL"; cat "$dir"/a-*.out; exit 1; }
# B: SQLite, in-memory limits, one instance.
KEY_B=$(key_for --db "$dir/b.db" bench)
"$bin" serve --addr "$B" --db "$dir/b.db" --catalog "$catalog" >"$dir/b.out" 2>&1 &
pids+=($!)
wait_up $B
ID_B=$(make_bot $B "$KEY_B")
[ -n "$ID_B" ] || { echo "could not create a chatbot on SQLite"; exit 1; }
for addr in $A1 $A2; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/v1/chatbots/$ID_A" -H "authorization: Bearer $KEY_A")
  [ "$code" = 200 ] || { echo "instance $addr answers $code"; exit 1; }
done

# wrk with its latency distribution; prints "req/s p99_ms non2xx".
run() { # connections url key
  wrk -t1 -c"$1" -d"${SECS}s" --latency -H "authorization: Bearer $3" "$2" | awk '
    /Requests\/sec/ {rps=$2}
    /^ +99%/ {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; p99=v}
    /Non-2xx/ {bad=$NF}
    END {printf "%s %s %s\n", rps, p99, (bad==""?0:bad)}'
}
a_total=0; b_total=0
for round in $(seq "$ROUNDS"); do
  half=$((CONNS / 2))
  run $half "http://$A1/v1/chatbots/$ID_A" "$KEY_A" >"$dir/r1" &
  w1=$!
  run $half "http://$A2/v1/chatbots/$ID_A" "$KEY_A" >"$dir/r2" &
  w2=$!
  wait "$w1" "$w2"
  read -r r1 p1 n1 <"$dir/r1"; read -r r2 p2 n2 <"$dir/r2"
  a=$(echo "$r1 + $r2" | bc -l); ap=$(echo "if ($p1 > $p2) $p1 else $p2" | bc -l)
  read -r b bp bn < <(run "$CONNS" "http://$B/v1/chatbots/$ID_B" "$KEY_B")
  [ "$n1" = 0 ] && [ "$n2" = 0 ] && [ "$bn" = 0 ] || { echo "non-2xx answers: $n1 $n2 $bn"; exit 1; }
  printf 'round %s: A (2 x PostgreSQL+Redis) %.0f req/s p99 %.2f ms | B (1 x SQLite, memory limits) %.0f req/s p99 %.2f ms\n' \
    "$round" "$a" "$ap" "$b" "$bp"
  a_total=$(echo "$a_total + $a" | bc -l); b_total=$(echo "$b_total + $b" | bc -l)
done
printf 'mean: A %.0f req/s, B %.0f req/s, ratio A/B %.3f\n' \
  "$(echo "$a_total / $ROUNDS" | bc -l)" "$(echo "$b_total / $ROUNDS" | bc -l)" "$(echo "$a_total / $b_total" | bc -l)"
