# The origin and the gateway config of the cost measurements, shared by
# scripts/callgrind and benches/ab.sh (source it, then call it):
#
#   cost_configs DIR ORIGIN_PORT GATEWAY_PORT ADMIN_PORT [on|off]
#
# writes DIR/origin.conf (nginx, `return 200` with the cost bench's small
# JSON body) and DIR/floodgate.toml (one worker, access log off; with
# `on`, the default, every limit on and admitting: the cost bench's "all
# limits on, admitting" config; `off` is its "no limits" config).
cost_configs() {
  local dir=$1 origin=$2 gw=$3 admin=$4 limits=${5:-on}
cat > "$dir/origin.conf" <<NGINX
worker_processes 1; daemon off; master_process off; pid $dir/nginx.pid; error_log $dir/error.log error;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir; uwsgi_temp_path $dir; scgi_temp_path $dir;
  default_type application/json;
  server { listen 127.0.0.1:$origin; keepalive_requests 100000; location / { return 200 '{"ok":true,"from":"origin"}'; } } }
NGINX
cat > "$dir/floodgate.toml" <<TOML
[server]
listen = ["127.0.0.1:$gw"]
admin_listen = "127.0.0.1:$admin"
threads = 1
access_log = false
watch_config = false

[[upstreams]]
name = "origin"
backends = ["127.0.0.1:$origin"]

[[upstreams]]
name = "capped"
backends = ["127.0.0.1:$origin"]
max_connections = 100000

[[routes]]
name = "capped"
path_prefix = "/capped"
upstream = "capped"

[[routes]]
name = "main"
path_prefix = "/"
upstream = "origin"

TOML
if [ "$limits" != off ]; then
    cat >> "$dir/floodgate.toml" <<TOML

[clients]
window = "60s"
default = { rpm = 4000000, tpm = 100000000 }

[backpressure]
enabled = true
min_window = 1000
max_window = 1000
TOML
fi
}
