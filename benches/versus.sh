#!/usr/bin/env bash
# nginx (proxy_pass, keep-alive to the origin), bare Pingora (the floor)
# and the gateway, in interleaved rounds on the same origin: each a fresh
# process, `wrk -t1 -c64` for SECONDS after a 1 s warm-up, the cost
# bench's "all limits on, admitting" config and 1 000 clients (every
# eighth request to the capped upstream); medians and ratios to nginx.
# A shorter check than `cargo bench --bench cost` (no callgrind, no
# binding run) for two given builds. Needs nginx and wrk.
#
#   benches/versus.sh FLOODGATE FLOOR [ROUNDS] [SECONDS]   (default 3 rounds of 5 s)
#
# e.g. the release builds as they ship:
#   cargo build --release --bin floodgate && cargo build --release --example floor
#   benches/versus.sh target/release/floodgate target/release/examples/floor
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
fg=$(realpath -e -- "${1:?usage: benches/versus.sh FLOODGATE FLOOR [ROUNDS] [SECONDS]}")
floor=$(realpath -e -- "${2:?usage: benches/versus.sh FLOODGATE FLOOR [ROUNDS] [SECONDS]}")
rounds=${3:-3}
secs=${4:-5}
command -v wrk > /dev/null || { echo "needs wrk (Debian package wrk)" >&2; exit 1; }
. "$here/shared/origin.sh"
px=$(port)
mkdir -p "$work/px"
cat > "$work/px/nginx.conf" << NGINX
worker_processes 1; daemon off; master_process off; pid $work/px/nginx.pid; error_log $work/px/error.log error;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $work/px; proxy_temp_path $work/px; fastcgi_temp_path $work/px; uwsgi_temp_path $work/px; scgi_temp_path $work/px;
  upstream origin { server 127.0.0.1:$origin; keepalive 256; }
  server { listen 127.0.0.1:$px; keepalive_requests 100000;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header X-Forwarded-For \$remote_addr; } } }
NGINX
for _ in $(seq 1 "$rounds"); do
  wrk_run nginx "$px" nginx -c "$work/px/nginx.conf" -p "$work/px"
  wrk_run floor "$gw" "$floor" "127.0.0.1:$gw" "127.0.0.1:$origin"
  wrk_run floodgate "$gw" "$fg" --conf "$work/floodgate.toml"
done
n=$(median nginx); f=$(median floor); g=$(median floodgate)
echo "medians (req/s): nginx $n, floor $f, floodgate $g"
awk -v n="$n" -v f="$f" -v g="$g" 'BEGIN { printf "floor / nginx %.2f, floodgate / nginx %.2f, floodgate / floor %.2f\n", f / n, g / n, g / f }'
