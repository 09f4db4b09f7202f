#!/usr/bin/env bash
# Resident memory of the gateway after N distinct clients, one request each
# on one keep-alive connection, on the cost bench's "all limits on,
# admitting" config (one worker, shipped table sizes), nginx `return 200`
# as the origin. Prints RSS and the part of it on transparent huge pages,
# from /proc/PID/smaps_rollup, one second after the last answer. Needs
# nginx (scripts/setup --bench).
#
#   benches/rss.sh BIN [N]      (default: 1000 clients)
#
# e.g. benches/rss.sh target/release/floodgate 100
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:?usage: benches/rss.sh BIN [N]}
n=${2:-1000}
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
setsid "$bin" --conf "$work/floodgate.toml" > "$work/gateway.log" 2>&1 & pids+=($!)
disown
gp=${pids[1]}
wait_port "$gw"
python3 - "$gw" "$n" <<'PY'
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
for i in range(n):
    s.sendall(f"GET / HTTP/1.1\r\nHost: x\r\nX-Client-ID: c{i}\r\n\r\n".encode())
    buf = b""
    while b"origin" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("the gateway closed the connection")
        buf += chunk
PY
sleep 1
awk -v n="$n" '/^Rss/ { r = $2 } /^AnonHugePages/ { h = $2 } END { printf "%d clients: RSS %d MiB, of it huge pages %d MiB\n", n, r / 1024, h / 1024 }' "/proc/$gp/smaps_rollup"
