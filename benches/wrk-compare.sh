#!/usr/bin/env bash
# Quick throughput/latency comparison on loopback, one worker each:
#   upstream direct  vs  nginx proxy_pass  vs  floodgate
# The upstream is nginx answering a small static body. Needs nginx and wrk
# (scripts/setup --bench installs them) and a release build of floodgate.
#
#   benches/wrk-compare.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-64}
bin=target/release/floodgate
[ -x "$bin" ] || cargo build --release --bin floodgate
command -v nginx >/dev/null || { echo "needs nginx (Debian package nginx)"; exit 1; }
command -v wrk >/dev/null || { echo "needs wrk (Debian package wrk)"; exit 1; }

work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; sleep 0.2; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port); NGX=$(port); FG=$(port); ADM=$(port)

nginx_conf() { # $1 = name, $2 = server block
cat > "$work/$1.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/$1.nginx.pid;
error_log $work/$1.error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream up { server 127.0.0.1:$UP; keepalive 256; }
  $2
}
NGINX
}
nginx_conf upstream "server { listen 127.0.0.1:$UP; location / { return 200 '{\"ok\":true}'; } }"
nginx_conf proxy "server { listen 127.0.0.1:$NGX; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header X-Forwarded-For \$remote_addr; } }"
nginx -c "$work/upstream.conf" -p "$work" & echo $! > "$work/upstream.pid"
nginx -c "$work/proxy.conf" -p "$work" & echo $! > "$work/proxy.pid"
cat > "$work/floodgate.toml" <<TOML
[server]
listen = ["127.0.0.1:$FG"]
admin_listen = "127.0.0.1:$ADM"
threads = 1
access_log = false
[[upstreams]]
name = "up"
backends = ["127.0.0.1:$UP"]
[[routes]]
path_prefix = "/"
upstream = "up"
TOML
RUST_LOG=warn "$bin" --conf "$work/floodgate.toml" 2>"$work/fg.log" & echo $! > "$work/fg.pid"
sleep 1

run() { # $1 label, $2 port
  local out
  out=$(wrk -t1 -c"$conns" -d"${secs}s" --latency "http://127.0.0.1:$2/" 2>&1)
  local rps p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  printf '%-18s %12s req/s   p99 %s\n' "$1" "$rps" "$p99"
  echo "$rps" > "$work/$1.rps"
}
echo "wrk -t1 -c$conns -d${secs}s, one worker each, $(nproc) cores"
run upstream-direct "$UP"
run nginx-proxy "$NGX"
run floodgate "$FG"
python3 - "$work" <<'PY'
import sys, pathlib
w = pathlib.Path(sys.argv[1])
r = {p.stem: float(p.read_text()) for p in w.glob("*.rps")}
print(f"floodgate / nginx-proxy = {r['floodgate']/r['nginx-proxy']:.2f}x, floodgate / direct = {r['floodgate']/r['upstream-direct']:.2f}x")
PY
