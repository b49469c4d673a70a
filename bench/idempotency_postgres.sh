#!/usr/bin/env bash
# Load benchmark of idempotency keys with the records in PostgreSQL (`serve --database-url`),
# driven by wrk on loopback, each pair interleaved in the same run:
#   1. POST /v1/chatbots with a fresh Idempotency-Key each time  vs  the same POST without a key;
#   2. a replay (POST with a key already answered)               vs  GET /v1/chatbots/{id}.
# The chatbots stay in the SQLite file; a throw-away PostgreSQL database is created and dropped.
# Usage: bench/idempotency_postgres.sh [seconds per round] [rounds]
# Env: PG (default postgres://postgres@127.0.0.1:5432), the server to create the database on.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_ROUND=${1:-10}
ROUNDS=${2:-3}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
ADDR=127.0.0.1:8097

if ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
cargo build --release -q -p faultline-cli --bin faultline

dir=$(mktemp -d)
dbname=faultline_bench_$$
psql "$PG/postgres" -qc "CREATE DATABASE $dbname"
cleanup() {
  kill "${pid:-}" 2>/dev/null || true
  wait "${pid:-}" 2>/dev/null || true
  psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $dbname WITH (FORCE)" || true
  rm -rf "$dir"
}
trap cleanup EXIT
export RUST_LOG=${RUST_LOG:-info}
target/release/faultline serve --addr "$ADDR" --db "$dir/bench.db" --database-url "$PG/$dbname" \
  >"$dir/serve.out" 2>"$dir/serve.log" &
pid=$!
for _ in $(seq 100); do grep -q '^export KEY=' "$dir/serve.out" 2>/dev/null && break; sleep 0.1; done
KEY=$(sed -n 's/^export KEY=//p' "$dir/serve.out")
[ -n "$KEY" ] || { echo "serve did not start"; cat "$dir/serve.log"; exit 1; }
body='{"name":"bench","status":"active"}'
# The replayed key is answered once here; the same response comes back for the whole run.
id=$(curl -s -X POST "http://$ADDR/v1/chatbots" -H "authorization: Bearer $KEY" \
  -H 'content-type: application/json' -H 'idempotency-key: bench-replayed' -d "$body" |
  sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
[ -n "$id" ] || { echo "could not create a chatbot"; exit 1; }
replayed=$(curl -s -D - -o /dev/null -X POST "http://$ADDR/v1/chatbots" -H "authorization: Bearer $KEY" \
  -H 'content-type: application/json' -H 'idempotency-key: bench-replayed' -d "$body" | tr -d '\r' |
  sed -n 's/^idempotent-replayed: //Ip')
[ "$replayed" = "true" ] || { echo "the second POST was not a replay"; exit 1; }

cat >"$dir/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["content-type"] = "application/json"
wrk.headers["authorization"] = "Bearer $KEY"
LUA
cat >"$dir/fresh.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["content-type"] = "application/json"
wrk.headers["authorization"] = "Bearer $KEY"
local prefix = tostring(os.time()) .. "-" .. tostring(math.random(1, 1000000000))
local n = 0
request = function()
  n = n + 1
  wrk.headers["idempotency-key"] = prefix .. "-" .. n
  return wrk.format()
end
LUA
cat >"$dir/replay.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["content-type"] = "application/json"
wrk.headers["authorization"] = "Bearer $KEY"
wrk.headers["idempotency-key"] = "bench-replayed"
LUA

# One wrk thread: on a 2-core machine, a second one would take the server's core.
rate() { wrk -t1 -c32 -d"${SECONDS_PER_ROUND}s" "$@" | awk '/Requests\/sec/ {print $2}'; }
sum() { echo "$1 + $2" | bc -l; }
fresh_t=0; post_t=0; replay_t=0; get_t=0
for round in $(seq "$ROUNDS"); do
  f=$(rate -s "$dir/fresh.lua" "http://$ADDR/v1/chatbots")
  p=$(rate -s "$dir/post.lua" "http://$ADDR/v1/chatbots")
  r=$(rate -s "$dir/replay.lua" "http://$ADDR/v1/chatbots")
  g=$(rate -H "authorization: Bearer $KEY" "http://$ADDR/v1/chatbots/$id")
  echo "round $round: keyed POST ${f}, plain POST ${p}, replay ${r}, GET ${g} req/s"
  fresh_t=$(sum "$fresh_t" "$f"); post_t=$(sum "$post_t" "$p")
  replay_t=$(sum "$replay_t" "$r"); get_t=$(sum "$get_t" "$g")
done
printf 'mean: keyed POST %.0f req/s, plain POST %.0f req/s, ratio %.3f (target >= 0.5)\n' \
  "$(echo "$fresh_t / $ROUNDS" | bc -l)" "$(echo "$post_t / $ROUNDS" | bc -l)" "$(echo "$fresh_t / $post_t" | bc -l)"
printf 'mean: replay %.0f req/s, GET %.0f req/s, ratio %.3f (target >= 0.8)\n' \
  "$(echo "$replay_t / $ROUNDS" | bc -l)" "$(echo "$get_t / $ROUNDS" | bc -l)" "$(echo "$replay_t / $get_t" | bc -l)"
