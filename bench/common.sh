# Shell pieces the bench scripts share; sourced, not run.

# The server process's CPU time so far, in clock ticks (user + system, from /proc).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# Runs wrk (one thread, 32 connections, SECONDS_PER_ROUND seconds; wrk's arguments follow the
# pid) against the server of pid $1 and prints "<requests per second> <p99 latency in ms>
# <server CPU microseconds per request>". One wrk thread: on a 2-core machine, a second one
# would take the server's core. The CPU time is the server process's own: unlike the rate,
# other work on the machine hardly moves it. Fails on any non-2xx answer.
wrk_rate() {
  local pid=$1; shift
  local before; before=$(cpu_ticks "$pid")
  local out; out=$(wrk -t1 -c32 -d"${SECONDS_PER_ROUND}s" --latency "$@")
  local ticks=$(($(cpu_ticks "$pid") - before))
  if grep -q 'Non-2xx' <<<"$out"; then echo "non-2xx answers: $out" >&2; return 1; fi
  awk -v ticks="$ticks" -v hz="$(getconf CLK_TCK)" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /requests in/ { n = $1 } /Requests\/sec/ { rps = $2 } $1 == "99%" { p99 = ms($2) }
    END { printf "%s %s %.2f\n", rps, p99, ticks / hz * 1e6 / n }' <<<"$out"
}

# The median of the numbers given as arguments.
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# The path of the `stack` criterion bench binary of faultline-axum (with limits), built.
stack_bench_binary() {
  cargo bench -q -p faultline-axum --features limit --bench stack --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "stack" and m.get("executable"):
        print(m["executable"])'
}
