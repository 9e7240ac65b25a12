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
# Needs (Debian): iperf3 redis-server redis-tools libhiredis-dev openssl,
# as deploy/setup.sh installs; checked up front. Everything it starts listens on loopback only
# and is stopped when it ends; the whole run is bounded by --time-limit
# (default 30 minutes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Every peer and tool it runs, checked before anything is built or started,
# each with the Debian package that provides it.
missing=0
need() {  # need PROGRAM PACKAGE
  command -v "$1" >/dev/null || {
    echo "run.sh: $1 is missing (Debian package $2; deploy/setup.sh installs it)" >&2
    missing=1
  }
}
need iperf3 iperf3
need redis-server redis-server
need redis-benchmark redis-tools
need openssl openssl
need pkg-config pkg-config
need cmake cmake
need ninja ninja-build
if command -v pkg-config >/dev/null && ! pkg-config --exists hiredis; then
  echo "run.sh: the hiredis C library is missing (Debian package libhiredis-dev; deploy/setup.sh installs it)" >&2
  missing=1
fi
((missing == 0)) || exit 1

build=${BUILD_DIR:-build-bench}
if [[ ! -f $build/build.ninja ]]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DH5DEPOT_BUILD_TESTS=OFF >/dev/null
fi
ninja -C "$build" -j2 h5depot_bench h5depotd >/dev/null

exec timeout --kill-after=30 2000 "$build/bench/h5depot_bench" \
  --h5depotd="$build/server/h5depotd" "$@"
