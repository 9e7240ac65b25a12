#!/usr/bin/env bash
# Streams against Redis Streams and files in /dev/shm announced with
# inotify, in one run on this machine: one writer, 1 and 4 readers in one
# reader group, steps of 4 KiB, 1 MiB and 64 MiB, on the same host (Unix
# sockets; the /dev/shm handoff) and over TCP loopback. Prints one table
# (docs/PERFORMANCE.md, "Streams").
#
#   bench/stream_bench.sh                 # every size
#   bench/stream_bench.sh 4K 1M           # some
#
# Environment: BUILD_DIR (default build-bench, a Release build);
# H5DEPOTD_FLAGS, more flags for the h5depotd under test.
# Needs (Debian): redis-server libhiredis-dev python3-h5py, as
# deploy/setup.sh installs. Everything listens on loopback or in a
# private directory, and is stopped at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v redis-server >/dev/null || {
  echo "stream_bench.sh: redis-server is missing (deploy/setup.sh installs it)" >&2
  exit 1
}
build=${BUILD_DIR:-build-bench}
if [[ ! -f $build/build.ninja ]]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DH5DEPOT_BUILD_TESTS=OFF >/dev/null
fi
ninja -C "$build" -j2 stream_bench h5depotd >/dev/null
sizes=("$@")
((${#sizes[@]} > 0)) || sizes=(4K 1M 64M)

work=$(mktemp -d /tmp/h5depot-stream-bench.XXXXXX)
shm=$(mktemp -d /dev/shm/h5depot-stream-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work" "$shm"
}
trap cleanup EXIT

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
port=$(free_port)
"$build/server/h5depotd" --listen="127.0.0.1:$port" --unix="$work/h5depotd.sock" \
  --max-memory=8G --max-image-size=1G ${H5DEPOTD_FLAGS:-} >"$work/h5depotd.log" 2>&1 &
pids+=($!)
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --unixsocket "$work/redis.sock" \
  --save "" --appendonly no --proto-max-bulk-len 1gb >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  [[ -S $work/h5depotd.sock && -S $work/redis.sock ]] && break
  sleep 0.1
done

bytes_of() {  # 4K -> 4096
  local n=${1%[KMG]} unit=${1: -1}
  case $unit in K) echo $((n << 10)) ;; M) echo $((n << 20)) ;; G) echo $((n << 30)) ;; *) echo "$1" ;; esac
}
steps_for() {  # about 200 MiB per case, at least 48 steps, at most 3000
  # (a stream runs long: 48 steps spread a writer's first fills of its
  # step buffers, pages met once, as a long stream does)
  local bytes=$1 steps=$(((200 << 20) / $1))
  ((steps < 48)) && steps=48
  ((steps > 3000)) && steps=3000
  echo $steps
}
rate() {  # OUTPUT KEY
  sed -n "s/^$2=//p" <<<"$1"
}

printf '%-7s %-3s %-9s | %12s %9s | %12s %9s | %8s | %12s %8s\n' \
  size R path "h5depot st/s" "GB/s" "Redis st/s" "GB/s" "vs Redis" "shm st/s" "vs shm"
for size in "${sizes[@]}"; do
  bytes=$(bytes_of "$size")
  image=$work/image-$size.h5
  /usr/bin/python3 - "$image" "$bytes" <<'PY'
import sys, h5py, numpy as np
path, size = sys.argv[1], int(sys.argv[2])
with h5py.File(path, "w") as f:
    f.create_dataset("d", data=np.random.default_rng(1).integers(0, 255, max(size - 2048, 1), dtype=np.uint8))
PY
  steps=$(steps_for "$bytes")
  for readers in 1 4; do
    for path in same-host tcp; do
      if [[ $path == same-host ]]; then
        ours=$("$build/bench/stream_bench" --peer=h5depot --target="unix:$work/h5depotd.sock" \
          --image="$image" --steps="$steps" --readers="$readers")
        theirs=$("$build/bench/stream_bench" --peer=redis --redis-socket="$work/redis.sock" \
          --image="$image" --steps="$steps" --readers="$readers")
        files=$("$build/bench/stream_bench" --peer=shm --shm-dir="$shm" \
          --image="$image" --steps="$steps" --readers="$readers")
      else
        ours=$("$build/bench/stream_bench" --peer=h5depot --target="127.0.0.1:$port" \
          --image="$image" --steps="$steps" --readers="$readers")
        theirs=$("$build/bench/stream_bench" --peer=redis --redis-port="$redis_port" \
          --image="$image" --steps="$steps" --readers="$readers")
        files=""
      fi
      o=$(rate "$ours" steps_per_second) ob=$(rate "$ours" bytes_per_second)
      t=$(rate "$theirs" steps_per_second) tb=$(rate "$theirs" bytes_per_second)
      if [[ -n $files ]]; then
        f=$(rate "$files" steps_per_second)
        fshm=$(awk -v f="$f" 'BEGIN{printf "%.0f", f}')
        vs_shm=$(awk -v o="$o" -v f="$f" 'BEGIN{printf "%.2fx", o/f}')
      else
        fshm=- vs_shm=-
      fi
      awk -v size="$size" -v r="$readers" -v path="$path" -v o="$o" -v ob="$ob" \
        -v t="$t" -v tb="$tb" -v fshm="$fshm" -v vs="$vs_shm" 'BEGIN{
        printf "%-7s %-3s %-9s | %12.0f %9.2f | %12.0f %9.2f | %7.2fx | %12s %8s\n",
          size, r, path, o, ob/1e9, t, tb/1e9, o/t, fshm, vs}'
    done
  done
done
