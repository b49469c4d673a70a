#!/usr/bin/env bash
# System calls per request: a handler that answers at once (`/open`) and one that is pending
# once before answering (`/later`, as a handler waiting on a store), bare axum and through the
# faultline stack, each traced with `strace -f -c` over N and 2N keep-alive requests; the
# difference between the two runs, divided by N, is what one request costs (startup cancels
# out).
# Usage: bench/strace.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}
ADDR=127.0.0.1:8094
if ! command -v strace >/dev/null; then
  apt-get update -qq && apt-get install -y -qq strace >/dev/null
fi
cargo build --release -q -p faultline-cli --example stack_200
out=$(mktemp -d)

# Runs the server in mode $1 under strace for $2 requests to path $4; writes the summary to $3.
traced() {
  strace -f -c -o "$3" target/release/examples/stack_200 "$1" "$ADDR" &
  local tracer=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://$ADDR/open" && break; sleep 0.1; done
  # curl's URL globbing sends them all on one connection.
  curl -s -o /dev/null "http://$ADDR$4?n=[1-$2]"
  kill -TERM "$(pgrep -P "$tracer")" || true
  wait "$tracer" || true
}

# calls per syscall name from a summary file
calls() { awk '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" { print $NF, $4 }' "$1"; }

for path in /open /later; do
  for mode in bare faultline; do
    traced "$mode" "$N" "$out/$mode.1" "$path"
    traced "$mode" "$((2 * N))" "$out/$mode.2" "$path"
    echo "== $mode, GET $path: system calls per request (over $N extra requests)"
    join <(calls "$out/$mode.1" | sort) <(calls "$out/$mode.2" | sort) -a2 -e0 -o 0,1.2,2.2 |
      awk -v n="$N" '{ d = ($3 - $2) / n; if (d > 0.001) printf "  %-16s %.3f\n", $1, d; total += d }
                     END { printf "  %-16s %.3f\n", "total", total }'
  done
done
