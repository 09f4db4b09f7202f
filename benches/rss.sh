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
. "$here/shared/origin.sh"
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
