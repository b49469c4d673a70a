#!/usr/bin/env bash
# Instructions per request of served HTTP (callgrind, server side only), for the load benches'
# pairs: they repeat from run to run where wall-clock and CPU figures swing on a shared host.
#   read:  `faultline serve` GET /v1/chatbots/{id} with a key vs examples/bare_chatbot (the
#          same SQLite statement), as bench/load_get.sh runs them;
#   stack: examples/stack_200 GET /bots in each mode (bench/load_stack.sh's pair and the
#          steps between).
# Each server runs under valgrind; N sequential keep-alive requests are counted after a
# warm-up (callgrind_control zeroes the counters, then dumps them). Kernel work is not counted.
# Usage: bench/served_instructions.sh [N]; KEEP=DIR keeps each server's callgrind output there
# (for callgrind_annotate), ONLY=read or ONLY=stack runs one part.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}
# Binaries from CARGO_TARGET_DIR when set (e.g. a build with line tables, for KEEP). The
# script builds them there itself, so export the profile too, or it rebuilds without them:
#   CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_TARGET_DIR=../target-prof KEEP=cg ...
T=${CARGO_TARGET_DIR:-target}
if ! command -v valgrind >/dev/null; then
  apt-get update -qq && apt-get install -y -qq valgrind >/dev/null
fi
cargo build --release -q -p faultline-cli --bin faultline --example bare_chatbot --example stack_200
dir=$(mktemp -d)
trap 'pkill -f "valgrind.*--callgrind-out-file=$dir" 2>/dev/null || true; rm -rf "$dir"' EXIT
ADDR=127.0.0.1:8059

# N keep-alive GETs of $1 (path) with the optional key $2, from Python's http.client.
requests() {
  python3 - "$ADDR" "$1" "$2" "$3" <<'PY'
import http.client, sys
addr, path, n, key = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
host, port = addr.split(":")
conn = http.client.HTTPConnection(host, int(port))
headers = {"authorization": "Bearer " + key} if key else {}
for _ in range(n):
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"{path} answered {response.status}")
PY
}

# Runs the server command "$@" under callgrind, sends N requests to $PATH_ with the key $KEY_
# (empty: none; unset: the `export KEY=` line the server prints), prints instructions per
# request.
measure() {
  local name=$1; shift
  valgrind --tool=callgrind --callgrind-out-file="$dir/$name.%p" "$@" >"$dir/$name.out" 2>/dev/null &
  for _ in $(seq 200); do curl -s -o /dev/null "http://$ADDR/" && break; sleep 0.2; done
  local key=${KEY_-$(sed -n 's/^export KEY=//p' "$dir/$name.out")}
  requests "$PATH_" 200 "$key"
  callgrind_control -z >/dev/null 2>&1
  requests "$PATH_" "$N" "$key"
  callgrind_control -d >/dev/null 2>&1
  sleep 1
  pkill -f "valgrind.*--callgrind-out-file=$dir/$name" || true
  sleep 1
  local total
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$(ls "$dir/$name".*.1 | head -1)" "$KEEP/$name.callgrind"; fi
  total=$(callgrind_annotate "$(ls "$dir/$name".*.1 | head -1)" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
  echo $((total / N))
}

export RUST_LOG=info
if [ "${ONLY:-read}" = read ]; then
# The read pair: a database with one chatbot, made by `faultline serve` itself.
"$T"/release/faultline serve --no-limits --addr "$ADDR" --db "$dir/bench.db" >"$dir/setup.out" 2>/dev/null &
setup=$!
for _ in $(seq 100); do grep -q '^export KEY=' "$dir/setup.out" 2>/dev/null && break; sleep 0.1; done
KEY=$(sed -n 's/^export KEY=//p' "$dir/setup.out")
id=$(curl -s -X POST "http://$ADDR/v1/chatbots" -H "authorization: Bearer $KEY" \
  -H 'content-type: application/json' -d '{"name":"bench","status":"active"}' |
  sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
kill $setup; wait $setup 2>/dev/null || true
[ -n "$id" ] || { echo "could not create a chatbot"; exit 1; }

full=$(PATH_=/v1/chatbots/$id KEY_=$KEY measure read_faultline "$T"/release/faultline serve --no-limits --addr "$ADDR" --db "$dir/bench.db")
bare=$(PATH_=/v1/chatbots/$id KEY_= measure read_bare "$T"/release/examples/bare_chatbot "$ADDR" "$dir/bench.db")
printf 'read  %-24s %7d instructions per request\n' "faultline serve" "$full"
printf 'read  %-24s %7d instructions per request  (bare / faultline %.3f)\n' "bare axum" "$bare" "$(echo "$bare / $full" | bc -l)"
fi
if [ "${ONLY:-stack}" = stack ]; then
base=
for mode in bare bare_with_limit_headers faultline faultline_key faultline_key_limits; do
  n=$(PATH_=/bots measure "stack_$mode" "$T"/release/examples/stack_200 "$mode" "$ADDR")
  base=${base:-$n}
  printf 'stack %-24s %7d instructions per request  (bare / this %.3f)\n' "$mode" "$n" "$(echo "$base / $n" | bc -l)"
done
fi
