#!/usr/bin/env bash
# The command-line tool as a user runs it, whole processes, against the
# library it wraps and against redis-cli, in one run on this machine; prints
# one table (docs/PERFORMANCE.md, "The command line").
#
#   bench/cli_bench.sh                 # 64 MiB and 1 GiB, build-bench
#   bench/cli_bench.sh build 64M       # another build directory, sizes
#
# Rows, each over TCP loopback to an h5depotd this script starts (its lane
# on the port after its gRPC port, as deployed):
#   put FILE / get -o FILE / get | cat   whole-process time and peak RSS
#       (get -o into a new file, and over an existing one),
#       warm (a running server that held the image before: median of 15
#       rounds up to 256 MiB, of 7 above)
#       and cold (a fresh server for each: one run); beside them the
#       library's push and fetch of the same bytes as bench/run.sh
#       measures them (h5depot_bench's cases: the C++ client, one connection,
#       warm buffers), one measurement in each round of CLI commands, and
#       the ratio of the two rates. Beside the gets into a file, `cp` of
#       the image's file (already in the page cache) into a new file and
#       over an existing one: what the destination costs any program that
#       writes or replaces a file (ext4 writes a replacing file's data back
#       first).
#   get of a 4 KiB image       median of 100 whole processes, against
#       `redis-cli GET` of the same bytes from a redis-server started here,
#       the two alternating.
#   --version                  median of 30: the start-up alone.
#
# Needs (Debian): python3 with python3-h5py, redis-server, redis-tools,
# as deploy/setup.sh installs; a Release build with the CLI and the
# benchmark (cmake -DCMAKE_BUILD_TYPE=Release -DH5DEPOT_BUILD_BENCH=ON,
# ninja h5depotd h5depot h5depot_bench). Files go to a temporary directory under /tmp, removed at
# the end; every server listens on loopback only and is stopped at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build=${1:-build-bench}
sizes=${2:-64M,1G}
for need in "$build/server/h5depotd" "$build/client/h5depot" \
  "$build/bench/h5depot_bench"; do
  [ -e "$need" ] || {
    echo "cli_bench.sh: $need is missing; build it first (see the top of this script)" >&2
    exit 1
  }
done
for program in redis-server redis-cli /usr/bin/python3; do
  command -v "$program" >/dev/null || {
    echo "cli_bench.sh: $program is missing (deploy/setup.sh installs it)" >&2
    exit 1
  }
done
/usr/bin/python3 -c 'import h5py' 2>/dev/null || {
  echo "cli_bench.sh: Debian's python3-h5py is missing (deploy/setup.sh installs it)" >&2
  exit 1
}
work=$(mktemp -d /tmp/h5depot-cli-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The images: HDF5 files of about each size, made by h5py in a process of
# their own (the measuring process stays small: a child's peak RSS counts
# what it inherited from its parent at fork).
/usr/bin/python3 - "$work" "$sizes" <<'PY'
import sys
import h5py
import numpy as np

work, sizes = sys.argv[1], sys.argv[2].split(",")
pattern = np.random.default_rng(1).integers(0, 256, 1 << 20, dtype=np.uint8)
def make(name, data_bytes):
    with h5py.File(f"{work}/{name}", "w") as f:
        d = f.create_dataset("d", (data_bytes,), dtype=np.uint8)
        for at in range(0, data_bytes, 1 << 20):
            n = min(1 << 20, data_bytes - at)
            d[at:at + n] = pattern[:n]
make("small.h5", 2048)
for size in sizes:
    n = int(size[:-1]) << {"K": 10, "M": 20, "G": 30}[size[-1]]
    make(f"{size}.h5", n - 4096)
PY

exec env PYTHONPATH="$PWD/bench" /usr/bin/python3 - "$build" "$work" "$sizes" <<'PY'
import os, statistics, subprocess, sys, time

import bench_support

build, work, sizes = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
cli = f"{build}/client/h5depot"
devnull = open(os.devnull, "wb")

def start_server():
    return bench_support.start_server(build)

stop = bench_support.stop

def run(args, shell=False):
    """Seconds and peak RSS (MiB) of one whole process (or shell pipeline)."""
    start = time.perf_counter()
    child = subprocess.Popen(args, shell=shell, stdout=devnull)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        sys.exit(f"cli_bench.sh: {args} failed ({status})")
    return seconds, usage.ru_maxrss / 1024

def library(case, target, image_id, path):
    """Median seconds of the library's push or fetch of `path`'s bytes, as
    bench/run.sh measures it (h5depot_bench: the C++ client, one
    connection, warm buffers, five calls at least), in a process of its own
    so that its calls interleave with the CLI's."""
    out = subprocess.run(
        [f"{build}/bench/h5depot_bench", f"--case={case}", f"--target={target}",
         f"--id={image_id}", f"--image={path}", "--min-seconds=0"],
        check=True, capture_output=True, text=True).stdout
    return float(dict(line.split("=", 1) for line in out.split())["seconds"])

def rate(nbytes, seconds):
    return nbytes / seconds / 1e9

def row(name, nbytes, runs, peer):
    seconds = statistics.median(r[0] for r in runs)
    peak = max(r[1] for r in runs)
    line = (f"| {name} | {seconds * 1e3:.1f} ms | {rate(nbytes, seconds):.2f} GB/s"
            f" | {peak:.0f} MiB |")
    if peer is not None:
        line += (f" {peer * 1e3:.1f} ms | {rate(nbytes, peer):.2f} GB/s |"
                 f" {peer / seconds:.2f}x |")
    else:
        line += " | | |"
    print(line, flush=True)

print("| row | CLI | CLI rate | CLI peak RSS | library | library rate | CLI / library |")
print("|---|---|---|---|---|---|---|")
for size in sizes:
    path = f"{work}/{size}.h5"
    nbytes = os.path.getsize(path)
    image_id = f"bench/{size}"
    put = [cli, "--server", None, "put", path, "--id", image_id]
    get_file = [cli, "--server", None, "get", image_id, "-o", f"{work}/copy.h5"]
    # Warm: one server that held the image already. Each round makes one
    # library call and the CLI commands it is compared with, one after the
    # other, so that a slow spell of this shared machine falls on both.
    server, target = start_server()
    put[2] = get_file[2] = target
    run(put)
    lib_push, lib_fetch = [], []
    warm_put, warm_get, warm_get_new, warm_pipe = [], [], [], []
    warm_cp, warm_cp_new = [], []
    pipe = f"'{cli}' --server {target} get {image_id} | cat > /dev/null"
    # Whole processes vary more than the library's loop: more rounds where
    # they are cheap.
    for _ in range(15 if nbytes <= 256 << 20 else 7):
        # Its own id: the library's case deletes a large image before each
        # push, so that the server never holds two.
        lib_push.append(library("push", target, f"{image_id}/library", path))
        # Deleted first (untimed), as the library's case does with a large
        # image: the push then lands in memory the server already touched.
        run([cli, "--server", target, "rm", image_id])
        warm_put.append(run(put))
        lib_fetch.append(library("fetch", target, f"{image_id}/library", path))
        # Into a new file, as a job fetching an image usually writes; then
        # over that file, which also pays for the file system's flush of the
        # new file's data when a rename replaces an existing file (ext4's
        # auto_da_alloc), a cost of the destination, not of the transfer.
        # Each followed by an untimed sync: the kernel writes the file back
        # after the command exits, and that writeback, on the same two
        # CPUs, would otherwise fall on the next command's time.
        if os.path.exists(f"{work}/copy.h5"):
            os.unlink(f"{work}/copy.h5")
        warm_get_new.append(run(get_file))
        os.sync()
        warm_get.append(run(get_file))
        os.sync()
        # The destination's own cost, for comparison: cp of the image's
        # file (in the page cache) over the same existing file pays the
        # same flush (ext4 does it at the close of a truncated file).
        warm_cp.append(run(["cp", path, f"{work}/copy.h5"]))
        os.sync()
        # And into a new file: what writing the bytes into the page cache
        # costs by itself, the part of a get -o NEW_FILE that the library's
        # fetch into memory does not do.
        os.unlink(f"{work}/copy.h5")
        os.sync()
        warm_cp_new.append(run(["cp", path, f"{work}/copy.h5"]))
        os.sync()
        warm_pipe.append(run(pipe, shell=True))
    stop(server)
    lib_push = statistics.median(lib_push)
    lib_fetch = statistics.median(lib_fetch)
    row(f"put {size} (warm)", nbytes, warm_put, lib_push)
    row(f"get -o NEW_FILE {size} (warm)", nbytes, warm_get_new, lib_fetch)
    row(f"get -o FILE {size} (warm, replacing it)", nbytes, warm_get, lib_fetch)
    row(f"get \\| cat {size} (warm)", nbytes, warm_pipe, lib_fetch)
    row(f"cp FILE into a new file {size} (warm; a peer, not the CLI)",
        nbytes, warm_cp_new, lib_fetch)
    row(f"cp FILE over an existing file {size} (warm; a peer, not the CLI)",
        nbytes, warm_cp, lib_fetch)
    # Cold: a fresh server for each command (its memory untouched).
    cold = {}
    for name in ("put", "get -o FILE", "get | cat"):
        server, target = start_server()
        put[2] = get_file[2] = target
        if name == "put":
            cold[name] = [run(put)]
        else:
            run(put)
            if name == "get -o FILE":
                os.unlink(f"{work}/copy.h5")
                cold[name] = [run(get_file)]
            else:
                cold[name] = [run(f"'{cli}' --server {target} get {image_id} | cat > /dev/null", shell=True)]
        stop(server)
    for name, runs in cold.items():
        row(f"{name.replace('|', chr(92) + '|')} {size} (cold)", nbytes, runs, None)

# Small images and start-up, against redis-cli.
server, target = start_server()
redis_port = bench_support.free_port_pair()
redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "",
                          "--appendonly", "no", "--bind", "127.0.0.1"],
                         stdout=devnull, stderr=devnull)
small = f"{work}/small.h5"
run([cli, "--server", target, "put", small, "--id", "small"])
for _ in range(100):
    try:
        subprocess.run(["redis-cli", "-p", str(redis_port), "-x", "SET", "small"],
                       stdin=open(small, "rb"), stdout=devnull, stderr=devnull, check=True)
        break
    except subprocess.CalledProcessError:
        time.sleep(0.05)
# Alternating, so that a slow spell of the machine falls on both.
get_small_runs, redis_get_runs = [], []
for _ in range(100):
    get_small_runs.append(run([cli, "--server", target, "get", "small", "-o", "-"])[0])
    redis_get_runs.append(run(["redis-cli", "-p", str(redis_port), "GET", "small"])[0])
get_small = statistics.median(get_small_runs) * 1e3
redis_get = statistics.median(redis_get_runs) * 1e3
version = statistics.median(run([cli, "--version"])[0] for _ in range(30)) * 1e3
redis.terminate(); redis.wait(); stop(server)
print()
print("| row | h5depot | redis-cli | h5depot / redis-cli (speed) |")
print("|---|---|---|---|")
print(f"| get of a {os.path.getsize(small)}-byte image, whole process (median of 100) |"
      f" {get_small:.1f} ms | {redis_get:.1f} ms | {redis_get / get_small:.2f}x |")
print(f"| h5depot --version (median of 30) | {version:.1f} ms | | |")
PY
