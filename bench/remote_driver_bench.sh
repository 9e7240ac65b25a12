#!/bin/sh
# The remote driver against HDF5's ROS3 driver, reading the same 256 MiB
# file: from h5depotd over loopback TCP, and from nginx over loopback HTTP.
# Starts both servers on free ports under a temporary directory, runs
# remote_driver_bench, and stops them again.
#
#   bench/remote_driver_bench.sh [BUILD_DIR] [REPEAT]
#   H5DEPOTD_FLAGS=--nodata-lane bench/remote_driver_bench.sh ...
#   H5DEPOT_VIA=unix bench/remote_driver_bench.sh ...   (same host)
#
# Needs nginx (Debian: nginx-light) and python3, as deploy/setup.sh
# installs, and a build with remote_driver_bench and h5depotd; all checked
# before anything starts.
set -eu

# A peer missing is named with its Debian package at once, not found out
# later as an HTTP error deep in ROS3's stack.
missing=0
nginx=$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true)
if [ -z "$nginx" ]; then
  echo "remote_driver_bench.sh: nginx is missing (Debian package nginx-light; deploy/setup.sh installs it)" >&2
  missing=1
fi
if ! command -v python3 >/dev/null; then
  echo "remote_driver_bench.sh: python3 is missing (Debian package python3)" >&2
  missing=1
fi
build=$(cd "${1:-build}" && pwd) || exit 1
for program in server/h5depotd bench/remote_driver_bench; do
  if [ ! -x "$build/$program" ]; then
    echo "remote_driver_bench.sh: $build/$program is missing (build it: cmake --build $build -t $(basename "$program"))" >&2
    missing=1
  fi
done
[ "$missing" = 0 ] || exit 1
repeat=${2:-5}
work=$(mktemp -d "${TMPDIR:-/tmp}/h5depot-bench.XXXXXX")
# nginx workers may run as another user (nobody, when started as root).
chmod 755 "$work"
nginx_pid=""
depot_pid=""

cleanup() {
  [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null || true
  [ -n "$depot_pid" ] && kill "$depot_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A free port whose next port is free too: h5depotd's gRPC port, its data
# lane then listening on the next one, as in deploy/ (where clients on the
# server's host find the lane without asking).
free_port_pair() {
  python3 -c '
import socket
while True:
    first = socket.socket(); first.bind(("127.0.0.1", 0))
    port = first.getsockname()[1]
    if port >= 65535: continue
    second = socket.socket()
    try:
        second.bind(("127.0.0.1", port + 1))
    except OSError:
        continue
    print(port)
    break'
}

# nginx: serve $work/www on 127.0.0.1, logging one line per request ending
# in the body bytes sent, in the foreground with unprivileged paths.
http_port=$(free_port)
mkdir -p "$work/www" "$work/nginx"
cat > "$work/nginx/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 64; }
http {
  log_format bench '\$request_method \$status \$body_bytes_sent';
  access_log $work/nginx/access.log bench;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  sendfile on;
  keepalive_requests 100000;
  server {
    listen 127.0.0.1:$http_port;
    root $work/www;
  }
}
CONF
"$nginx" -p "$work/nginx" -c "$work/nginx/nginx.conf" &
nginx_pid=$!

# h5depotd on a free loopback port (its lane on the next one, as deployed);
# it prints its address once ready.
# H5DEPOTD_FLAGS: more flags for it (--nodata-lane: the driver's reads over
# gRPC, as against a server without a lane).
# H5DEPOT_VIA=unix: the driver reaches it over a Unix socket instead, as a
# job on the server's host does (its base generation then maps the
# server's memory).
via=${H5DEPOT_VIA:-tcp}
unix_flag=""
[ "$via" = unix ] && unix_flag="--unix=$work/h5depotd.sock"
depot_port=$(free_port_pair)
# shellcheck disable=SC2086
"$build/server/h5depotd" --listen=127.0.0.1:"$depot_port" $unix_flag ${H5DEPOTD_FLAGS:-} > "$work/h5depotd.out" &
depot_pid=$!
target=""
for _ in $(seq 1 100); do
  if [ "$via" = unix ]; then
    target=$(sed -n 's/^h5depotd listening on \(unix:.*\)/\1/p' "$work/h5depotd.out" | head -n 1)
  else
    target=$(sed -n 's/^h5depotd listening on //p' "$work/h5depotd.out" | head -n 1)
  fi
  [ -n "$target" ] && break
  sleep 0.1
done
[ -n "$target" ] || { echo "h5depotd did not start" >&2; exit 1; }

"$build/bench/remote_driver_bench" \
  --file="$work/www/bench.h5" \
  --target="$target" \
  --url="http://127.0.0.1:$http_port/bench.h5" \
  --access-log="$work/nginx/access.log" \
  --repeat="$repeat"
