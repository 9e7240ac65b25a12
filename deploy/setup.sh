#!/usr/bin/env bash
# Installs the Debian 12 packages h5depot needs to build, test and benchmark.
# Idempotent: installs only the packages that are missing, and runs
# `apt-get update` only when there is something to install. Works as root,
# or as a user who may use sudo.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libhdf5-dev libxxhash-dev libgtest-dev libssl-dev
  # h5depotd's --metrics-listen: the Prometheus text format over HTTP.
  prometheus-cpp-dev
  # h5depotd's HTTP endpoints (--http-listen): libmicrohttpd, and GnuTLS,
  # its TLS, for HTTPS.
  libmicrohttpd-dev libgnutls28-dev
  python3-h5py python3-numpy
  # tests/kubernetes_manifests_test.py: reading deploy/kubernetes/'s YAML.
  python3-yaml
  # The Python package (python/): its module's build and its tests.
  python3-dev pybind11-dev python3-pybind11 python3-pytest
  # The Fortran module (fortran/); HDF5's Fortran modules come with
  # libhdf5-dev.
  gfortran
  # deploy/test.sh's ThreadSanitizer pass: GCC 12's TSan runtime.
  libtsan2
  # deploy/test.sh's lock annotation pass: clang's -Wthread-safety.
  clang-14
  # deploy/fuzz.sh (and test.sh's fuzz phase): libFuzzer and clang's
  # sanitizer runtimes.
  libclang-rt-14-dev
  # deploy/test.sh with H5DEPOT_LOAD_REPEAT: the CPU load beside the suite.
  stress-ng
  # tests/fork_test.cc: the stacks of a child that hung, to name the lock.
  gdb
  # bench/run.sh: its peers (iperf3, Redis with redis-benchmark) and the C
  # Redis client it measures them with.
  iperf3 redis-server redis-tools libhiredis-dev
  # bench/run.sh's TLS rows: their certificates.
  openssl
  # bench/remote_driver_bench.sh: the HTTP server ROS3 reads from.
  nginx-light
  # The web console's browser test (console/tests/): a headless Chromium.
  chromium
)
# The web console's build (deploy/build-console.sh): Node.js and npm, from
# Debian unless the machine has them already (from Debian or elsewhere).
command -v node >/dev/null || PACKAGES+=(nodejs)
command -v npm >/dev/null || PACKAGES+=(npm)

installed() {
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

missing=()
for package in "${PACKAGES[@]}"; do
  installed "$package" || missing+=("$package")
done
if ((${#missing[@]} == 0)); then
  echo "setup: all ${#PACKAGES[@]} required packages are installed"
  exit 0
fi

as_root=()
if ((EUID != 0)); then
  if ! command -v sudo >/dev/null; then
    echo "setup: missing packages: ${missing[*]}" >&2
    echo "setup: run this script as root, or install sudo" >&2
    exit 1
  fi
  as_root=(sudo)
fi

echo "setup: installing ${missing[*]}"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q "${missing[@]}"
