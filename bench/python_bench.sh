#!/usr/bin/env bash
# The Python package's fetch + open against the C++ client's, and against
# h5py opening the same file from /dev/shm, in one run on this machine;
# prints one table (docs/PERFORMANCE.md, "Python").
#
#   bench/python_bench.sh                 # 64 MiB and 1 GiB, build-bench
#   bench/python_bench.sh build 64M       # another build directory, sizes
#
# Each row is the median of seven rounds; each round times, one after the
# other, the C++ client (h5depot_bench's fetch_open case: Client::Fetch,
# then OpenFileImage, one lookup, H5Fclose; five calls at least, their
# median), Python's `Client.open` with the same lookup and close, and h5py
# opening the file in /dev/shm with the same lookup, so that a slow spell
# of the shared machine falls on all three. Over TCP loopback and over the
# server's Unix socket, where a fetched image is a mapping of the server's
# memory.
#
# Needs (Debian): python3-h5py, as deploy/setup.sh installs; a Release
# build with the benchmark and the Python package (cmake
# -DCMAKE_BUILD_TYPE=Release, ninja h5depotd h5depot_bench
# h5depot_python_native). Files go to /dev/shm and a temporary directory,
# removed at the end; the server listens on loopback and a socket in that
# directory and is stopped at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build=${1:-build-bench}
sizes=${2:-64M,1G}
for need in "$build/server/h5depotd" "$build/bench/h5depot_bench" \
  "$build/python/h5depot/__init__.py"; do
  [ -e "$need" ] || {
    echo "python_bench.sh: $need is missing; build it first (see the top of this script)" >&2
    exit 1
  }
done
work=$(mktemp -d /tmp/h5depot-python-bench.XXXXXX)
shm=$(mktemp -d /dev/shm/h5depot-python-bench.XXXXXX)
trap 'rm -rf "$work" "$shm"' EXIT

exec env PYTHONPATH="$build/python:$PWD/bench" /usr/bin/python3 - "$build" "$work" "$shm" "$sizes" <<'PY'
import statistics, subprocess, sys, time

import h5py
import numpy as np

import bench_support
import h5depot

build, work, shm, sizes = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")

server, tcp_target = bench_support.start_server(build, f"--unix={work}/h5depotd.sock")
targets = {"TCP": tcp_target, "Unix socket": f"unix:{work}/h5depotd.sock"}

def cxx_fetch_open(target, image_id):
    out = subprocess.run(
        [f"{build}/bench/h5depot_bench", "--case=fetch_open", f"--target={target}",
         f"--id={image_id}", "--min-seconds=0"],
        check=True, capture_output=True, text=True).stdout
    return float(dict(line.split("=", 1) for line in out.split())["seconds"])

def python_fetch_open(depot, image_id):
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        with depot.open(image_id) as f:
            assert "payload" in f
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)

def h5py_shm_open(path):
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        with h5py.File(path, "r") as f:
            assert "payload" in f
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)

print("| size | transport | C++ fetch+open | Python fetch+open | Python / C++ (time) | h5py open from /dev/shm |")
print("|---|---|---|---|---|---|")
for size in sizes:
    n = int(size[:-1]) << {"K": 10, "M": 20, "G": 30}[size[-1]]
    path = f"{shm}/{size}.h5"
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("payload", (n - 4096,), dtype=np.uint8)
        piece = np.arange(16 << 20, dtype=np.uint64).astype(np.uint8)
        for at in range(0, n - 4096, len(piece)):
            dataset[at:at + len(piece)] = piece[:min(len(piece), n - 4096 - at)]
    image_id = f"bench/python/{size}"
    with h5depot.Client(targets["TCP"]) as depot:
        depot.push(image_id, path)
    for name, target in targets.items():
        cxx, python, local = [], [], []
        with h5depot.Client(target) as depot:
            python_fetch_open(depot, image_id)  # warm buffers, as the C++ case has
            for _ in range(7):
                cxx.append(cxx_fetch_open(target, image_id))
                python.append(python_fetch_open(depot, image_id))
                local.append(h5py_shm_open(path))
        cxx, python, local = (statistics.median(x) for x in (cxx, python, local))
        print(f"| {size} | {name} | {cxx * 1e3:.2f} ms | {python * 1e3:.2f} ms |"
              f" {python / cxx:.2f}x | {local * 1e3:.2f} ms |", flush=True)
bench_support.stop(server)
PY
