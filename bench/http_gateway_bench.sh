#!/usr/bin/env bash
# h5depotd's HTTP gateway against nginx serving the same image files from
# /dev/shm, in one run on this machine; prints one table
# (docs/PERFORMANCE.md, "HTTP gateway").
#
#   bench/http_gateway_bench.sh                 # build-bench, 5 rounds
#   bench/http_gateway_bench.sh build 3         # another build directory, rounds
#   LOAD_SECONDS=5 ROS3_ROUNDS=3 bench/http_gateway_bench.sh   (the defaults)
#
# One h5depotd (--http-listen on a free loopback port, images pushed with
# the CLI) and one nginx (its own config and prefix in the temporary
# directory, in the foreground, one worker process per CPU, sendfile on,
# access_log off, keepalive_requests 1000000, open_file_cache) whose root
# is the directory in /dev/shm holding the same files. Rows, each
# alternating which server goes first from round to round, so that a slow
# spell of the shared machine falls on both; figures are medians of the rounds:
#   GET of a 1 GiB image   curl -s -o /dev/null, one connection, its
#       %{speed_download} in MB/s (10^6 bytes/s); ROUNDS rounds.
#   GET of a 4 KiB image   a 4096-byte HDF5 file, whole, requested by
#       bench/http_load from 16 threads, each with one keep-alive
#       connection, one request at a time, for LOAD_SECONDS; requests/s,
#       ROUNDS rounds.
#   ROS3 read of 256 MiB   h5py (driver="ros3") opens the image's URL and
#       reads its contiguous 256 MiB float64 dataset into an array
#       allocated once (read_direct), then closes it; ROS3_ROUNDS rounds.
# The ratio is the gateway's rate over nginx's: above 1 is faster.
#
# Needs (Debian): nginx-light, curl, python3-h5py (with HDF5's ROS3 driver,
# as Debian builds it), as deploy/setup.sh installs; a Release build of the
# server, the CLI and the load generator (cmake -DCMAKE_BUILD_TYPE=Release,
# then cmake --build BUILD_DIR -t h5depotd h5depot http_load). Files go to
# a temporary directory in /dev/shm, removed at the end; both servers
# listen on loopback only and are stopped at the end, on Ctrl-C or on
# error.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build=${1:-build-bench}
rounds=${2:-5}
load_seconds=${LOAD_SECONDS:-5}
ros3_rounds=${ROS3_ROUNDS:-3}

missing=0
for need in "$build/server/h5depotd" "$build/client/h5depot" "$build/bench/http_load"; do
  [ -x "$need" ] || {
    echo "http_gateway_bench.sh: $need is missing (build it: cmake --build $build -j2 -t h5depotd h5depot http_load)" >&2
    missing=1
  }
done
nginx=$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true)
if [ -z "$nginx" ]; then
  echo "http_gateway_bench.sh: nginx is missing (Debian package nginx-light; deploy/setup.sh installs it)" >&2
  missing=1
fi
command -v curl >/dev/null || {
  echo "http_gateway_bench.sh: curl is missing (Debian package curl)" >&2
  missing=1
}
/usr/bin/python3 -c 'import h5py; assert "ros3" in h5py.registered_drivers()' 2>/dev/null || {
  echo "http_gateway_bench.sh: Debian's python3-h5py, with its ROS3 driver, is missing (deploy/setup.sh installs it)" >&2
  missing=1
}
[ "$missing" = 0 ] || exit 1
build=$(cd "$build" && pwd)

work=$(mktemp -d /dev/shm/h5depot-http-bench.XXXXXX)
# nginx's workers run as another user (nobody) when started as root.
chmod 755 "$work"
nginx_pid=""
depot_pid=""
cleanup() {
  if [ -n "$nginx_pid" ]; then kill "$nginx_pid" 2>/dev/null || true; fi
  if [ -n "$depot_pid" ]; then kill "$depot_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The images, in /dev/shm: the 1 GiB one (incompressible bytes), the
# 4096-byte one, and the 256 MiB float64 dataset for ROS3, each one
# contiguous dataset.
/usr/bin/python3 - "$work" <<'PY'
import os, sys
import h5py
import numpy as np

work = sys.argv[1]
pattern = np.random.default_rng(1).integers(0, 256, 1 << 20, dtype=np.uint8)
with h5py.File(f"{work}/big.h5", "w") as f:
    n = (1 << 30) - 2048  # the file's own structures take the rest of 1 GiB
    d = f.create_dataset("d", (n,), dtype=np.uint8)
    for at in range(0, n, 1 << 20):
        d[at:at + min(1 << 20, n - at)] = pattern[:min(1 << 20, n - at)]
with h5py.File(f"{work}/small.h5", "w") as f:
    f["data"] = np.arange(256, dtype=np.int64)  # a file of 4096 bytes
with h5py.File(f"{work}/ros3.h5", "w") as f:
    n = (256 << 20) // 8
    d = f.create_dataset("d", (n,), dtype=np.float64)  # contiguous
    step = 1 << 22
    for at in range(0, n, step):
        d[at:at + step] = np.arange(at, at + step, dtype=np.float64)
for name in ("big.h5", "small.h5", "ros3.h5"):
    os.chmod(f"{work}/{name}", 0o644)
PY

free_port() {
  /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# nginx: $work as its root, in the foreground with its own prefix.
nginx_port=$(free_port)
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<CONF
daemon off;
worker_processes $(nproc);
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  default_type application/x-hdf5;
  sendfile on;
  keepalive_requests 1000000;
  # Tuned as a serving peer would be: files stay open between requests.
  open_file_cache max=64 inactive=60s;
  open_file_cache_valid 60s;
  server {
    listen 127.0.0.1:$nginx_port;
    root $work;
  }
}
CONF
"$nginx" -p "$work/nginx" -c "$work/nginx/nginx.conf" &
nginx_pid=$!

# h5depotd: gRPC, its lane and the gateway on free loopback ports; it
# prints "h5depotd holds ..." last, once ready.
"$build/server/h5depotd" --listen=127.0.0.1:0 --http-listen=127.0.0.1:0 \
  > "$work/h5depotd.out" 2> "$work/h5depotd.err" &
depot_pid=$!
for _ in $(seq 1 100); do
  grep -q '^h5depotd holds' "$work/h5depotd.out" && break
  kill -0 "$depot_pid" 2>/dev/null || break
  sleep 0.1
done
grep -q '^h5depotd holds' "$work/h5depotd.out" || {
  echo "http_gateway_bench.sh: h5depotd did not start:" >&2
  cat "$work/h5depotd.err" >&2
  exit 1
}
target=$(sed -n 's/^h5depotd listening on \(127\.0\.0\.1:[0-9]*\)$/\1/p' "$work/h5depotd.out")
gateway=$(sed -n 's|^h5depotd HTTP gateway on \(http://127\.0\.0\.1:[0-9]*/v1/images\)$|\1|p' \
  "$work/h5depotd.out")
if [ -z "$target" ] || [ -z "$gateway" ]; then
  echo "http_gateway_bench.sh: no gRPC or HTTP address in h5depotd's output" >&2
  exit 1
fi
for name in big small ros3; do
  "$build/client/h5depot" --server="$target" put "$work/$name.h5" --id "$name" >/dev/null
done
for _ in $(seq 1 100); do
  curl -s -o /dev/null "http://127.0.0.1:$nginx_port/small.h5" && break
  sleep 0.1
done

# Both serve the same bytes (and both have read them once).
for name in big small ros3; do
  for url in "$gateway/$name" "http://127.0.0.1:$nginx_port/$name.h5"; do
    curl -sf "$url" | cmp -s - "$work/$name.h5" || {
      echo "http_gateway_bench.sh: $url is not $name.h5's bytes" >&2
      exit 1
    }
  done
done

/usr/bin/python3 - "$build" "$work" "$gateway" "http://127.0.0.1:$nginx_port" \
  "$rounds" "$load_seconds" "$ros3_rounds" "$("$nginx" -v 2>&1)" <<'PY'
import os, statistics, subprocess, sys, time

import h5py
import numpy as np

(build, work, gateway, nginx, rounds, load_seconds, ros3_rounds,
 nginx_version) = sys.argv[1:]
rounds, ros3_rounds = int(rounds), int(ros3_rounds)
urls = {
    "gateway": {name: f"{gateway}/{name}" for name in ("big", "small", "ros3")},
    "nginx": {name: f"{nginx}/{name}.h5" for name in ("big", "small", "ros3")},
}
sizes = {name: os.path.getsize(f"{work}/{name}.h5") for name in ("big", "small", "ros3")}


def interleaved(count, measure):
    """{server: [values]} of `count` rounds, the first server alternating."""
    values = {"gateway": [], "nginx": []}
    for round_number in range(count):
        order = ["gateway", "nginx"] if round_number % 2 == 0 else ["nginx", "gateway"]
        for server in order:
            values[server].append(measure(server))
        print(f"  round {round_number + 1}: gateway {values['gateway'][-1]:,.1f}, "
              f"nginx {values['nginx'][-1]:,.1f}", file=sys.stderr, flush=True)
    return values


def curl_get(server):
    """MB/s of one curl GET of the 1 GiB image."""
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w",
         "%{speed_download} %{size_download} %{http_code}", urls[server]["big"]],
        check=True, capture_output=True, text=True).stdout.split()
    if out[2] != "200" or int(out[1]) != sizes["big"]:
        sys.exit(f"http_gateway_bench.sh: GET {urls[server]['big']}: {out}")
    return float(out[0]) / 1e6


failures = {"gateway": 0, "nginx": 0}


def small_load(server):
    """Requests/s of 16 keep-alive connections GETting the 4 KiB image."""
    out = subprocess.run(
        [f"{build}/bench/http_load", f"--url={urls[server]['small']}",
         "--connections=16", f"--seconds={load_seconds}",
         f"--expect-bytes={sizes['small']}"],
        check=True, capture_output=True, text=True).stdout
    values = dict(line.split("=") for line in out.split())
    failures[server] += int(values["failures"])
    return float(values["requests_per_second"])


ros3_bytes = (256 << 20)
out = np.empty(ros3_bytes // 8, dtype=np.float64)
out.fill(-1)  # its pages faulted in before any round
expected = np.arange(0, out.size, 4099, dtype=np.float64)
ros3_seconds = {"gateway": [], "nginx": []}


def ros3_read(server):
    """MB/s of h5py opening the URL with ROS3 and reading the dataset."""
    out.fill(-1)
    start = time.perf_counter()
    with h5py.File(urls[server]["ros3"], "r", driver="ros3") as f:
        f["d"].read_direct(out)
    seconds = time.perf_counter() - start
    if not np.array_equal(out[::4099], expected):
        sys.exit(f"http_gateway_bench.sh: ROS3 read of {urls[server]['ros3']} is wrong")
    ros3_seconds[server].append(seconds)
    return ros3_bytes / seconds / 1e6


print(f"GET of {sizes['big']:,} bytes, curl:", file=sys.stderr)
big = interleaved(rounds, curl_get)
print(f"GET of {sizes['small']:,} bytes, 16 connections, {load_seconds} s:", file=sys.stderr)
small = interleaved(rounds, small_load)
print("ROS3 open + read of 256 MiB:", file=sys.stderr)
ros3 = interleaved(ros3_rounds, ros3_read)

median = statistics.median
print(f"h5depotd HTTP gateway against {nginx_version.split(': ')[-1]} "
      f"({os.cpu_count()} worker processes, sendfile), the same files in "
      f"/dev/shm, loopback, {os.cpu_count()} cores; rounds interleaved, medians.")
print("| row | h5depot gateway | nginx | gateway / nginx | target |")
print("|---|---|---|---|---|")
g, n = median(big["gateway"]), median(big["nginx"])
print(f"| GET 1 GiB image ({sizes['big']:,} bytes), curl, one connection "
      f"(median of {rounds}) | {g:,.0f} MB/s | {n:,.0f} MB/s | {g / n:.2f}x | 1x |")
g, n = median(small["gateway"]), median(small["nginx"])
print(f"| GET 4 KiB image (a {sizes['small']:,}-byte HDF5 file, whole), 16 "
      f"keep-alive connections, {load_seconds} s (median of {rounds}) | "
      f"{g:,.0f} req/s | {n:,.0f} req/s | {g / n:.2f}x | 0.8x |")
g, n = median(ros3["gateway"]), median(ros3["nginx"])
gs, ns = median(ros3_seconds["gateway"]), median(ros3_seconds["nginx"])
print(f"| h5py ROS3: open + read a 256 MiB float64 dataset (median of "
      f"{ros3_rounds}) | {g:,.0f} MB/s ({gs * 1e3:.0f} ms) | {n:,.0f} MB/s "
      f"({ns * 1e3:.0f} ms) | {g / n:.2f}x | |")
print(f"Failed requests in the 4 KiB rows: gateway {failures['gateway']}, "
      f"nginx {failures['nginx']}.")
PY
