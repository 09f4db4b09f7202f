# The set-up benches/ab.sh, benches/versus.sh and benches/rss.sh share
# (source it after setting `here` to the benches directory): a work
# directory removed on exit with every process group in `pids` killed,
# `port` and `wait_port`, the cost measurements' configs
# (benches/shared/configs.sh, every limit on) in $work with ports
# $origin, $gw and $admin, and the nginx origin running; `wrk_run` and
# `median` for the runs of ab.sh and versus.sh.
command -v nginx > /dev/null || { echo "needs nginx (Debian package nginx)" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2> /dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null && return 0; sleep 0.1; done; echo "nothing on port $1" >&2; exit 1; }
origin=$(port); gw=$(port); admin=$(port)
. "$here/shared/configs.sh"
cost_configs "$work" "$origin" "$gw" "$admin" on
setsid nginx -c "$work/origin.conf" -p "$work" & pids+=($!)
disown
wait_port "$origin"

# One measured run: `wrk_run NAME PORT COMMAND...` starts COMMAND as a
# fresh process group, waits for PORT, warms up for 1 s, then runs
# `wrk -t1 -c64 -d${secs}s --latency` with the 1 000 clients of
# clients.lua; stops the group and prints `NAME req/s p99 RSS` (resident
# memory at the end, MiB), also appended to $work/runs.
wrk_run() {
  local name=$1 p=$2
  shift 2
  setsid "$@" > "$work/$name.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_port "$p"
  wrk -t1 -c64 -d1s -s "$here/clients.lua" "http://127.0.0.1:$p/" > /dev/null
  wrk -t1 -c64 -d"${secs:?}s" --latency -s "$here/clients.lua" "http://127.0.0.1:$p/" > "$work/wrk.txt"
  local rss
  rss=$(awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$pid/status" 2> /dev/null || echo "?")
  kill -TERM -- "-$pid" 2> /dev/null || true
  wait "$pid" 2> /dev/null || true
  echo "$name $(awk '/^Requests\/sec/ { print $2 }' "$work/wrk.txt") $(awk '$1 == "99%" { print $2 }' "$work/wrk.txt") ${rss}MiB" | tee -a "$work/runs"
  # The port is free again before the next run takes it.
  sleep 0.3
}
# The median req/s of NAME's runs in $work/runs (of an even count, the
# mean of the middle two).
median() { awk -v w="$1" '$1 == w { print $2 }' "$work/runs" | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
