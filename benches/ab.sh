#!/usr/bin/env bash
# Two builds of the gateway against each other, in alternated runs on the
# same origin: throughput, p99 and resident memory at the end of each run,
# then each build's median throughput. A build may be a script that sets
# the environment and `exec`s the gateway (its process is the one measured).
# One worker, the cost bench's "all limits on, admitting" config, 1 000
# clients (every eighth request to the capped upstream), nginx `return 200`
# as the origin. Needs nginx and wrk (scripts/setup --bench).
#
#   benches/ab.sh BIN_A BIN_B [ROUNDS] [SECONDS]     (default: 6 rounds of 5 s)
#
# e.g. the code layout of scripts/ordered-cc against a plain link:
#   cargo build --release --bin floodgate && cp target/release/floodgate /tmp/ordered
#   touch src/main.rs && FLOODGATE_LINK_ORDER=off cargo build --release --bin floodgate
#   benches/ab.sh target/release/floodgate /tmp/ordered
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
a=${1:?usage: benches/ab.sh BIN_A BIN_B [ROUNDS] [SECONDS]}
b=${2:?usage: benches/ab.sh BIN_A BIN_B [ROUNDS] [SECONDS]}
rounds=${3:-6}
secs=${4:-5}
command -v wrk > /dev/null || { echo "needs wrk (Debian package wrk)" >&2; exit 1; }
. "$here/shared/origin.sh"

# One run of one build: a fresh process, 1 s of warm-up, then SECONDS.
run() {
  setsid "$1" --conf "$work/floodgate.toml" > "$work/gateway.log" 2>&1 &
  local pid=$!
  wait_port "$gw"
  wrk -t1 -c64 -d1s -s "$here/clients.lua" "http://127.0.0.1:$gw/" > /dev/null
  wrk -t1 -c64 -d"${secs}s" --latency -s "$here/clients.lua" "http://127.0.0.1:$gw/" > "$work/wrk.txt"
  # Resident memory at the end of the run (MiB).
  local rss
  rss=$(awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$pid/status" 2> /dev/null || echo "?")
  kill -TERM -- "-$pid" 2> /dev/null || true
  wait "$pid" 2> /dev/null || true
  local rps p99
  rps=$(awk '/^Requests\/sec/ { print $2 }' "$work/wrk.txt")
  p99=$(awk '$1 == "99%" { print $2 }' "$work/wrk.txt")
  echo "$2 $rps $p99 ${rss}MiB"
}
for _ in $(seq 1 "$rounds"); do
  run "$a" A | tee -a "$work/runs"
  run "$b" B | tee -a "$work/runs"
done
median() { awk -v w="$1" '$1 == w { print $2 }' "$work/runs" | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ma=$(median A); mb=$(median B)
echo "A $a: median $ma req/s"
echo "B $b: median $mb req/s"
awk -v a="$ma" -v b="$mb" 'BEGIN { printf "B / A: %.3f\n", b / a }'
