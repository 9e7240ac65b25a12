#!/usr/bin/env bash
# Measures h5depot's data path against its peers on this machine and prints
# one table (docs/PERFORMANCE.md explains it). Builds what it needs first.
#
#   bench/run.sh                      # sizes 4 KiB, 1 MiB, 64 MiB, 1 GiB
#   bench/run.sh --sizes=4K,1M,64M    # quicker
#
# Options after the script name go to h5depot_bench: --sizes=LIST,
# --min-seconds=S (per measurement), --small-seconds=S, --time-limit=S,
# --grpc-only (clients move image bytes over gRPC, not the data lane).
# Environment: BUILD_DIR (default build-bench, a Release build).
#
# Needs (Debian): iperf3 redis-server redis-tools libhiredis-dev, as
# deploy/setup.sh installs. Everything it starts listens on loopback only
# and is stopped when it ends; the whole run is bounded by --time-limit
# (default 30 minutes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

for tool in iperf3 redis-server redis-benchmark pkg-config; do
  command -v "$tool" >/dev/null || {
    echo "run.sh: $tool is missing; run deploy/setup.sh" >&2
    exit 1
  }
done
pkg-config --exists hiredis || {
  echo "run.sh: libhiredis-dev is missing; run deploy/setup.sh" >&2
  exit 1
}

build=${BUILD_DIR:-build-bench}
if [[ ! -f $build/build.ninja ]]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DH5DEPOT_BUILD_TESTS=OFF >/dev/null
fi
ninja -C "$build" -j2 h5depot_bench h5depotd >/dev/null

exec timeout --kill-after=30 2000 "$build/bench/h5depot_bench" \
  --h5depotd="$build/server/h5depotd" "$@"
