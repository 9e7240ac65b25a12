#!/usr/bin/env bash
# What --snapshot-dir costs: a snapshot of a store holding 4 GiB against
# dd writing the same bytes to the same disk in the same run, and the time
# a restart takes to bring the 4 GiB back; prints one table
# (docs/PERFORMANCE.md, "Snapshots").
#
#   bench/snapshot_bench.sh                  # build-bench, 4 GiB, /var/tmp, 3
#   bench/snapshot_bench.sh build 1 /data 5  # another build, GiB, disk, rounds
#
# The store holds GiB x 4 images of 256 MiB, pushed with the CLI. The
# snapshot is asked for with SIGUSR1 and timed from the signal to the
# server's report line, the last snapshot's files removed first so that it
# writes every image; dd writes the same number of bytes in 256 MiB blocks
# and fsyncs (conv=fsync), as the snapshot does. Each starts after a sync,
# in alternating order, for some rounds; the medians are shown. The restart is
# timed from starting h5depotd to its last start-up line, with the files
# in the page cache (just written) and, where this user may drop the
# cache (root), from the disk.
#
# Needs (Debian): python3-h5py, as deploy/setup.sh installs; a Release
# build (cmake -DCMAKE_BUILD_TYPE=Release, ninja h5depotd h5depot); free
# space of twice the store in DIR. Files go to a temporary directory
# there, removed at the end; the server listens on loopback and is stopped
# at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build=${1:-build-bench}
gib=${2:-4}
disk=${3:-/var/tmp}
rounds=${4:-3}
for need in "$build/server/h5depotd" "$build/client/h5depot"; do
  [ -e "$need" ] || {
    echo "snapshot_bench.sh: $need is missing; build it first (see the top of this script)" >&2
    exit 1
  }
done
/usr/bin/python3 -c 'import h5py' 2>/dev/null || {
  echo "snapshot_bench.sh: needs python3-h5py (apt-get install python3-h5py)" >&2
  exit 1
}
work=$(mktemp -d "$disk/h5depot-snapshot-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

exec env PYTHONPATH="$PWD/bench" /usr/bin/python3 - "$build" "$work" "$gib" "$rounds" <<'PY'
import os, re, signal, statistics, subprocess, sys, time

import h5py
import numpy as np

from bench_support import free_port_pair

build, work, gib, rounds = (sys.argv[1], sys.argv[2], int(sys.argv[3]),
                             int(sys.argv[4]))
image = f"{work}/image.h5"
with h5py.File(image, "w") as f:
    f.create_dataset("data", data=np.random.default_rng(1).integers(
        0, 255, size=256 << 20, dtype=np.uint8))
image_bytes = os.path.getsize(image)
count = gib * 4
total = count * image_bytes
snapshots = f"{work}/snapshots"


def start():
    """h5depotd on the snapshot directory; (process, target, seconds to
    its last start-up line)."""
    port = free_port_pair()
    began = time.monotonic()
    server = subprocess.Popen(
        [f"{build}/server/h5depotd", f"--listen=127.0.0.1:{port}",
         f"--max-memory={gib * 2 + 2}G", f"--snapshot-dir={snapshots}",
         "--snapshot-interval=0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in server.stdout:
        if line.startswith("h5depotd holds"):
            break
    return server, f"127.0.0.1:{port}", time.monotonic() - began


def stop(server):
    server.terminate()
    server.wait()


def drop_page_cache():
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def dd_seconds():
    subprocess.run(["sync"], check=True)
    out = subprocess.run(
        ["dd", "if=/dev/zero", f"of={work}/dd.bin", f"bs={image_bytes}",
         f"count={count}", "conv=fsync"], check=True, capture_output=True,
        text=True).stderr
    os.remove(f"{work}/dd.bin")
    return float(re.search(r"copied, ([0-9.]+) s", out).group(1))


def snapshot_seconds(server):
    """A snapshot that writes every image: the files of the last one are
    removed first, as if every image were new."""
    for name in os.listdir(f"{snapshots}/images"):
        os.remove(f"{snapshots}/images/{name}")
    subprocess.run(["sync"], check=True)
    began = time.monotonic()
    server.send_signal(signal.SIGUSR1)
    for line in server.stdout:
        if line.startswith("h5depotd snapshot"):
            break
    if "failed" in line:
        sys.exit(f"snapshot_bench.sh: {line.strip()}")
    return time.monotonic() - began


server, target, _ = start()
snapshot_runs, dd_runs = [], []
try:
    for i in range(count):
        subprocess.run([f"{build}/client/h5depot", f"--server={target}",
                        "put", image, "--id", f"bench/{i}"],
                       check=True, capture_output=True)
    # Alternating, so that a slow spell of a shared disk falls on both.
    for round_number in range(rounds):
        if round_number % 2:
            dd_runs.append(dd_seconds())
            snapshot_runs.append(snapshot_seconds(server))
        else:
            snapshot_runs.append(snapshot_seconds(server))
            dd_runs.append(dd_seconds())
finally:
    stop(server)
snapshot_seconds = statistics.median(snapshot_runs)
dd_seconds = statistics.median(dd_runs)

server, _, warm_seconds = start()
stop(server)
cold_seconds = None
if drop_page_cache():
    server, _, cold_seconds = start()
    stop(server)

gb = total / 1e9
print(f"{count} images of {image_bytes / (1 << 20):.0f} MiB, "
      f"{total / (1 << 30):.2f} GiB, on {work}")
print(f"medians of {rounds} rounds (snapshot: "
      f"{', '.join(f'{t:.2f}' for t in snapshot_runs)} s; dd: "
      f"{', '.join(f'{t:.2f}' for t in dd_runs)} s)")
print("| what | time | rate | against dd |")
print("|---|---|---|---|")
print(f"| snapshot (SIGUSR1 to report) | {snapshot_seconds:.2f} s | "
      f"{gb / snapshot_seconds:.2f} GB/s | "
      f"{dd_seconds / snapshot_seconds:.2f}x |")
print(f"| dd bs=256M conv=fsync | {dd_seconds:.2f} s | "
      f"{gb / dd_seconds:.2f} GB/s | 1x |")
print(f"| restart, files in the page cache | {warm_seconds:.2f} s | "
      f"{gb / warm_seconds:.2f} GB/s | |")
if cold_seconds is not None:
    print(f"| restart, from the disk | {cold_seconds:.2f} s | "
          f"{gb / cold_seconds:.2f} GB/s | |")
else:
    print("| restart, from the disk | not measured: only root may drop "
          "the page cache | | |")
PY
