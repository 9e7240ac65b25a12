#!/usr/bin/env bash
# What --metrics-listen costs: 4 KiB push and fetch ops/s with 16 clients
# against a server with metrics and one without, in one run on this
# machine; prints one table (docs/PERFORMANCE.md, "Metrics").
#
#   bench/metrics_bench.sh                 # build-bench, 9 rounds
#   bench/metrics_bench.sh build 5         # another build directory, rounds
#
# Each round runs h5depot_bench's small_ops case (16 threads, each with its
# own client, pushing then fetching their own id for 2 s each) against
# three servers in turn, rotating which goes first, so that a slow spell of
# the shared machine falls on all: one without metrics, one with, and a
# second one without, the control, whose ratio to the first is the noise
# floor of the comparison (two identical servers); each figure is the
# median of its rounds. The server with metrics is scraped over HTTP after each of
# its rounds, as Prometheus would, and the calls it counted are checked
# against the round's. Over TCP loopback (the data lane) and the Unix
# socket.
#
# Needs (Debian): python3-h5py, as deploy/setup.sh installs; a Release
# build with the benchmark (cmake -DCMAKE_BUILD_TYPE=Release, ninja
# h5depotd h5depot_bench). Files go to a temporary directory, removed at
# the end; the servers listen on loopback and sockets in that directory and
# are stopped at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build=${1:-build-bench}
rounds=${2:-9}
for need in "$build/server/h5depotd" "$build/bench/h5depot_bench"; do
  [ -e "$need" ] || {
    echo "metrics_bench.sh: $need is missing; build it first (see the top of this script)" >&2
    exit 1
  }
done
/usr/bin/python3 -c 'import h5py' 2>/dev/null || {
  echo "metrics_bench.sh: needs python3-h5py (apt-get install python3-h5py)" >&2
  exit 1
}
work=$(mktemp -d /tmp/h5depot-metrics-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

exec env PYTHONPATH="$PWD/bench" /usr/bin/python3 - "$build" "$work" "$rounds" <<'PY'
import re, statistics, subprocess, sys, urllib.request

import h5py
import numpy as np

from bench_support import free_port_pair, start_server, stop

build, work, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
small = f"{work}/small.h5"
with h5py.File(small, "w") as f:
    f["data"] = np.arange(256, dtype=np.int64)  # a file of about 4 KiB
size = len(open(small, "rb").read())


def small_ops(target, grpc_only):
    out = subprocess.run(
        [f"{build}/bench/h5depot_bench", "--case=small_ops",
         f"--target={target}", f"--image={small}", "--clients=16",
         "--seconds=2", *(["--grpc-only"] if grpc_only else [])],
        check=True, capture_output=True, text=True).stdout
    values = dict(line.split("=") for line in out.split())
    return float(values["push_ops"]), float(values["fetch_ops"])


def counted_calls(port):
    """Sum of h5depot_calls_total over every series, from /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read()
    return sum(float(m) for m in re.findall(
        rb"^h5depot_calls_total\{[^}]*\} (\S+)$", text, re.M))


metrics_port = free_port_pair()
servers = {}  # name: (process, TCP target, Unix socket target)
for name, flags in (("without", []), ("control", []),
                    ("with", [f"--metrics-listen=127.0.0.1:{metrics_port}"])):
    process, tcp = start_server(build, f"--unix={work}/{name}.sock", *flags)
    servers[name] = (process, tcp, f"unix:{work}/{name}.sock")
try:
    print(f"4 KiB ops/s with 16 clients ({size} bytes; median of {rounds} "
          f"rounds of 2 s per operation)")
    print("| transport | operation | without metrics | with metrics | "
          "with / without | control / without |")
    print("|---|---|---|---|---|---|")
    for transport, target_index, grpc_only in (
            ("TCP (data lane)", 1, False), ("Unix socket", 2, False),
            ("TCP, gRPC only", 1, True)):
        results = {name: ([], []) for name in servers}
        for round_number in range(rounds):
            order = list(servers)
            shift = round_number % len(order)
            for name in order[shift:] + order[:shift]:
                before = counted_calls(metrics_port) if name == "with" else 0
                push, fetch = small_ops(servers[name][target_index], grpc_only)
                results[name][0].append(push)
                results[name][1].append(fetch)
                if name == "with" and counted_calls(metrics_port) <= before:
                    sys.exit("metrics_bench.sh: the server counted no calls")
        for index, operation in ((0, "push"), (1, "fetch")):
            median = {name: statistics.median(values[index])
                      for name, values in results.items()}
            without = median["without"]
            print(f"| {transport} | {operation} | {without:,.0f} | "
                  f"{median['with']:,.0f} | {median['with'] / without:.3f}x | "
                  f"{median['control'] / without:.3f}x |")
finally:
    for process, _, _ in servers.values():
        stop(process)
PY
