#!/usr/bin/env bash
# What a cluster target costs: the same operations through a direct target
# and through cluster targets, in one run on this machine; prints one table
# (docs/PERFORMANCE.md, "Clusters").
#
#   bench/cluster_bench.sh                 # build-bench, 5 rounds
#   bench/cluster_bench.sh build 3         # another build directory, rounds
#
# Three h5depotd on loopback, A, B and C. The overhead of placement is
# measured on one server: "A" direct against "cluster:A" (the same server
# behind a one-member cluster target). The cost of a second copy is
# measured on all three: cluster:A,B,C with replicas=1 against replicas=2.
# Cases are h5depot_bench's: small_ops (16 threads, each with its own
# client, pushing then fetching their own 4 KiB id for 2 s each) and
# push/fetch of a 64 MiB image (the median of at least 1 s of repeats).
# Each round runs every target in turn, rotating which goes first, so that
# a slow spell of the shared machine falls on all; figures are medians of
# the rounds.
#
# Needs (Debian): python3-h5py, as deploy/setup.sh installs; a Release
# build with the benchmark (cmake -DCMAKE_BUILD_TYPE=Release, ninja
# h5depotd h5depot_bench). Files go to a temporary directory, removed at
# the end; the servers listen on loopback and are stopped at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build=${1:-build-bench}
rounds=${2:-5}
for need in "$build/server/h5depotd" "$build/bench/h5depot_bench"; do
  [ -e "$need" ] || {
    echo "cluster_bench.sh: $need is missing; build it first (see the top of this script)" >&2
    exit 1
  }
done
/usr/bin/python3 -c 'import h5py' 2>/dev/null || {
  echo "cluster_bench.sh: needs python3-h5py (apt-get install python3-h5py)" >&2
  exit 1
}
work=$(mktemp -d /tmp/h5depot-cluster-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

exec env PYTHONPATH="$PWD/bench" /usr/bin/python3 - "$build" "$work" "$rounds" <<'PY'
import statistics, subprocess, sys

import h5py
import numpy as np

from bench_support import start_server, stop

build, work, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
bench = f"{build}/bench/h5depot_bench"
small = f"{work}/small.h5"
with h5py.File(small, "w") as f:
    f["data"] = np.arange(256, dtype=np.int64)  # a file of about 4 KiB
large = f"{work}/large.h5"
subprocess.run([bench, "--case=make_image", f"--out={large}",
                f"--size={64 << 20}"], check=True, capture_output=True)
large_mib = len(open(large, "rb").read()) / (1 << 20)


def values(args):
    out = subprocess.run([bench, *args], check=True, capture_output=True,
                         text=True).stdout
    return dict((k, float(v)) for k, v in
                (line.split("=") for line in out.split()))


def small_ops(target):
    got = values(["--case=small_ops", f"--target={target}",
                  f"--image={small}", "--clients=16", "--seconds=2"])
    return got["push_ops"], got["fetch_ops"]


def large_ops(target):
    common = [f"--target={target}", f"--image={large}", "--id=bench/large",
              "--min-seconds=1"]
    push = values(["--case=push", *common])["seconds"]
    fetch = values(["--case=fetch", *common])["seconds"]
    return large_mib / push, large_mib / fetch


servers = [start_server(build) for _ in range(3)]
a, b, c = (tcp for _, tcp in servers)
targets = {
    "direct": a,
    "cluster:A": f"cluster:{a}",
    "R=1": f"cluster:{a},{b},{c}?replicas=1",
    "R=2": f"cluster:{a},{b},{c}?replicas=2",
}
try:
    results = {name: {"small": ([], []), "large": ([], [])}
               for name in targets}
    for round_number in range(rounds):
        order = list(targets)
        shift = round_number % len(order)
        for name in order[shift:] + order[:shift]:
            for kind, run in (("small", small_ops), ("large", large_ops)):
                push, fetch = run(targets[name])
                results[name][kind][0].append(push)
                results[name][kind][1].append(fetch)
    med = {name: {kind: [statistics.median(v) for v in pair]
                  for kind, pair in by_kind.items()}
           for name, by_kind in results.items()}
    print(f"Cluster targets, median of {rounds} rounds (4 KiB: ops/s with "
          f"16 clients; {large_mib:.0f} MiB: MiB/s, one client)")
    print("| comparison | case | operation | baseline | cluster | ratio |")
    print("|---|---|---|---|---|---|")
    for label, base, other in (
            ("cluster:A / A direct (placement overhead)", "direct",
             "cluster:A"),
            ("replicas=2 / replicas=1 (3 servers)", "R=1", "R=2")):
        for kind, case in (("small", "4 KiB"), ("large", "64 MiB")):
            for index, operation in ((0, "push"), (1, "fetch")):
                x = med[base][kind][index]
                y = med[other][kind][index]
                print(f"| {label} | {case} | {operation} | {x:,.0f} | "
                      f"{y:,.0f} | {y / x:.3f}x |")
finally:
    for process, _ in servers:
        stop(process)
PY
