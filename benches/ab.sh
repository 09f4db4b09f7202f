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

# Alternated runs, each a fresh process: 1 s of warm-up, then SECONDS.
for _ in $(seq 1 "$rounds"); do
  wrk_run A "$gw" "$a" --conf "$work/floodgate.toml"
  wrk_run B "$gw" "$b" --conf "$work/floodgate.toml"
done
ma=$(median A); mb=$(median B)
echo "A $a: median $ma req/s"
echo "B $b: median $mb req/s"
awk -v a="$ma" -v b="$mb" 'BEGIN { printf "B / A: %.3f\n", b / a }'
