# The set-up benches/ab.sh and benches/rss.sh share (source it after
# setting `here` to the benches directory): a work directory removed on
# exit with every process group in `pids` killed, `port` and `wait_port`,
# the cost measurements' configs (benches/shared/configs.sh, every limit
# on) in $work with ports $origin, $gw and $admin, and the nginx origin
# running.
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
