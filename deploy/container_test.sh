#!/usr/bin/env bash
# Builds deploy/Containerfile's image from this checkout and runs it the
# protected way its header describes (TLS and tokens from a directory mounted
# at /etc/h5depot), then talks to it with a CLI built on the host:
#
#   deploy/container_test.sh
#
# Phases, each timed (a table at the end):
#   base   a Debian 12 base image, localhost/debian:12, made once with
#          debootstrap (minbase; with the updates and security suites, and
#          upgraded, as Debian's own debian:12 image is) and kept as a
#          tarball in the cache directory; imported only when podman does
#          not have it yet.
#          FROM debian:12 in the Containerfile resolves to it locally; no
#          container registry is contacted (--pull=never).
#   build  podman build of deploy/Containerfile (apt-get inside the build
#          uses the host's network; then a release build of h5depot).
#   run    a throwaway CA, server certificate (for 127.0.0.1 and localhost)
#          and token; the container with both ports published on loopback;
#          then the checks: a real HDF5 file pushed and fetched back
#          byte-identical, over the data lane (its bytes are counted on the
#          client's sockets with strace), and requests without a token,
#          with an unknown token or without TLS refused.
#
# Needs root (debootstrap, rootful podman), the Debian packages podman, runc,
# debootstrap, openssl, strace, iproute2, diffutils and python3-h5py, and
# network access to the Debian mirror. The runtime is runc, with explicit
# ulimits: crun and podman's default ulimits fail on some hosts.
#
# Environment:
#   H5DEPOT_CLI              host-built h5depot CLI (default: build/client/
#                            h5depot in this checkout; deploy/build.sh)
#   H5DEPOT_CONTAINER_CACHE  where the base tarball is kept
#                            (default: /var/tmp/h5depot-container)
#   H5DEPOT_DEBIAN_MIRROR    mirror for debootstrap and the base's apt
#                            sources (default: http://deb.debian.org/debian)
#   H5DEPOT_IMAGE            tag of the image built (default: localhost/h5depot)
#   JOBS                     compile jobs inside the image's build (default:
#                            the CPUs the build sees)
#   H5DEPOT_GRPC_PORT        preferred gRPC port (default 7878; the data lane
#                            is the next one); if either is taken on the
#                            host, the next free pair is used and passed to
#                            the server with --listen and --data-port
#   H5DEPOT_READY_TIMEOUT    seconds to wait for the server (default 60)
#
# Exits 0 when every check passed; otherwise 1, with the reason and the
# container's log. The container and the temporary files are removed on
# exit; the base tarball and the images are kept for the next run.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${H5DEPOT_CONTAINER_CACHE:-/var/tmp/h5depot-container}
mirror=${H5DEPOT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
image=${H5DEPOT_IMAGE:-localhost/h5depot}
cli=${H5DEPOT_CLI:-build/client/h5depot}
[[ $cli == /* ]] || cli=$repo/$cli
preferred_port=${H5DEPOT_GRPC_PORT:-7878}
ready_timeout=${H5DEPOT_READY_TIMEOUT:-60}

base_image=localhost/debian:12
base_tarball=$cache/debian-12-minbase.tar
podman=(podman --runtime runc)
ulimits=(--ulimit nofile=1024:1024 --ulimit nproc=1000:1000)
label=h5depot.container-test

say() { echo "container_test: $*"; }
fail() {
  echo "container_test: FAILED: $*" >&2
  exit 1
}
trap 'echo "container_test: command failed (line $LINENO): $BASH_COMMAND" >&2' ERR

# --- timing ------------------------------------------------------------------
phase_names=()
phase_times=()
phase_start=
phase_begin() {
  phase_start=$EPOCHREALTIME
  say "=== $1 ==="
}
phase_end() {
  phase_names+=("$1")
  phase_times+=("$(awk -v a="$phase_start" -v b="$EPOCHREALTIME" \
    'BEGIN { printf "%.1f", b - a }')")
}
print_times() {
  ((${#phase_names[@]} > 0)) || return 0
  echo
  echo "container_test: phase times"
  printf '  %-10s %10s %9s\n' phase seconds min:s
  local i
  for i in "${!phase_names[@]}"; do
    printf '  %-10s %10s %9s\n' "${phase_names[$i]}" "${phase_times[$i]}" \
      "$(awk -v s="${phase_times[$i]}" \
        'BEGIN { printf "%d:%02d", int(s / 60), int(s) % 60 }')"
  done
}

# --- cleanup -----------------------------------------------------------------
container=
workdir=
cleanup() {
  local status=$?
  trap - ERR
  if [[ -n $container ]]; then
    if ((status != 0)); then
      echo "container_test: --- log of container $container ---" >&2
      "${podman[@]}" logs "$container" >&2 || true
      echo "container_test: --- end of log ---" >&2
    fi
    "${podman[@]}" rm -f -t 0 "$container" >/dev/null 2>&1 || true
  fi
  [[ -z $workdir ]] || rm -rf "$workdir"
  print_times
  if ((status == 0)); then
    say "PASSED"
  else
    echo "container_test: FAILED (exit status $status)" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- tools -------------------------------------------------------------------
((EUID == 0)) || fail "run as root: debootstrap and rootful podman need it"

missing=()
need() {  # COMMAND DEBIAN-PACKAGE
  command -v "$1" >/dev/null 2>&1 || missing+=("$2")
}
need podman podman
need runc runc
need debootstrap debootstrap
need openssl openssl
need strace strace
need ss iproute2
need cmp diffutils
need tar tar
if ! [[ -x /usr/bin/python3 ]] ||
  ! /usr/bin/python3 -c 'import h5py, numpy' 2>/dev/null; then
  missing+=(python3-h5py)
fi
if ((${#missing[@]} > 0)); then
  fail "missing Debian packages: ${missing[*]}" \
    "(apt-get install -y ${missing[*]})"
fi
[[ -x $cli ]] ||
  fail "no h5depot CLI at $cli: build it (deploy/build.sh) or set H5DEPOT_CLI"
say "repository: $repo"
say "CLI: $cli ($("$cli" --version))"
say "podman: $(podman --version), runc: $(runc --version | head -n1)"

# Containers of an earlier run that was killed before its cleanup.
mapfile -t stale < <(podman ps -a -q --filter "label=$label" \
  --filter status=exited --filter status=created)
((${#stale[@]} == 0)) || podman rm -f "${stale[@]}" >/dev/null

workdir=$(mktemp -d /tmp/h5depot-container-test.XXXXXX)

# --- phase 1: the base image -------------------------------------------------
phase_begin "base: $base_image"
if podman image exists "$base_image"; then
  say "$base_image is already in podman's storage: reused"
else
  if [[ -s $base_tarball ]]; then
    say "reusing the debootstrap base $base_tarball"
  else
    say "making the base with debootstrap --variant=minbase bookworm" \
      "($mirror) into $cache"
    mkdir -p "$cache"
    rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror"
    # The apt sources of Debian's own debian:12 image: with updates and
    # security fixes, not only the release debootstrap writes.
    rm -f "$rootfs/etc/apt/sources.list"
    security=${mirror%/debian}/debian-security
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # Current with those fixes, as that image is; without the host's
    # resolver (podman provides the container's).
    chroot "$rootfs" sh -c 'apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive apt-get upgrade -y -q && apt-get clean'
    rm -rf "$rootfs"/var/lib/apt/lists/*
    : >"$rootfs/etc/resolv.conf"
    tar -C "$rootfs" --numeric-owner -cf "$base_tarball.tmp" .
    mv "$base_tarball.tmp" "$base_tarball"
    rm -rf "$rootfs"
  fi
  podman import "$base_tarball" "$base_image"
fi
phase_end base

# --- phase 2: the project's image --------------------------------------------
phase_begin "build: $image from $repo"
(cd "$repo" && "${podman[@]}" build --pull=never --network host \
  "${ulimits[@]}" ${JOBS:+--build-arg "JOBS=$JOBS"} \
  -f deploy/Containerfile -t "$image" .) ||
  fail "podman build failed (its output is above)"
say "image: $(podman image inspect --format '{{.Id}} {{.Size}} bytes' "$image")"
phase_end build

# --- phase 3: run it and check -----------------------------------------------
phase_begin "run: the container, protected, and the checks"

# Ports: the data lane must have the same number inside and outside, since
# the server tells clients its own number; gRPC need not, but keeping both
# the same lets a client on this host find the lane beside the gRPC port.
port_free() {
  [[ -z $(ss -Htan "( sport = :$1 )") ]]
}
grpc_port=
for ((port = preferred_port; port < preferred_port + 200; port += 2)); do
  if port_free "$port" && port_free $((port + 1)); then
    grpc_port=$port
    break
  fi
done
[[ -n $grpc_port ]] ||
  fail "no free port pair on 127.0.0.1 from $preferred_port to $port"
lane_port=$((grpc_port + 1))
server_args=()
if ((grpc_port != 7878)); then
  server_args=("--listen=0.0.0.0:$grpc_port" "--data-port=$lane_port")
fi
if ((${#server_args[@]} > 0)); then
  say "ports: gRPC 127.0.0.1:$grpc_port, data lane 127.0.0.1:$lane_port" \
    "(not the entry point's 7878 and 7879; server flags: ${server_args[*]})"
else
  say "ports: gRPC 127.0.0.1:$grpc_port, data lane 127.0.0.1:$lane_port" \
    "(the entry point's own)"
fi

# The user the image runs as, to give it the key.
image_user=$(podman image inspect --format '{{.Config.User}}' "$image")
[[ $image_user == nobody ]] ||
  fail "the image runs as '$image_user', not nobody as the Containerfile says"
nobody_uid=$("${podman[@]}" run --rm "${ulimits[@]}" --entrypoint id \
  "$image" -u)
nobody_gid=$("${podman[@]}" run --rm "${ulimits[@]}" --entrypoint id \
  "$image" -g)

# A throwaway CA and a server certificate for 127.0.0.1 and localhost, the
# layout the Containerfile expects in /etc/h5depot; the CA's key stays out
# of the mounted directory.
ca=$workdir/ca
conf=$workdir/etc-h5depot
mkdir -p "$ca" "$conf/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$ca/ca.key" -out "$ca/ca.pem" -subj /CN=h5depot-test-ca \
  -days 2 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$conf/tls/server.key" -out "$ca/server.csr" -subj /CN=localhost \
  2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$ca/san.ext"
openssl x509 -req -in "$ca/server.csr" -CA "$ca/ca.pem" -CAkey "$ca/ca.key" \
  -CAcreateserial -days 2 -extfile "$ca/san.ext" \
  -out "$conf/tls/server.crt" 2>/dev/null
openssl verify -CAfile "$ca/ca.pem" "$conf/tls/server.crt" >/dev/null

# A write token for the prefix container-test/, and one the server does not
# know. The auth file holds only the hash.
test_prefix="container-test/"
"$cli" new-token container-test write "$test_prefix" | {
  read -r token
  read -r line
  echo "$line" >"$conf/auth"
  (umask 077 && echo "$token" >"$workdir/token")
}
"$cli" new-token stranger write "$test_prefix" | sed -n 1p \
  >"$workdir/unknown-token"
chmod 0600 "$workdir/unknown-token"

# Readable by the container's user: the key only by it, the rest by all.
chmod 0755 "$conf" "$conf/tls"
chmod 0644 "$conf/tls/server.crt" "$conf/auth"
chown "$nobody_uid:$nobody_gid" "$conf/tls/server.key"
chmod 0400 "$conf/tls/server.key"

container=h5depot-container-test-$$
"${podman[@]}" run -d --name "$container" --label "$label=1" "${ulimits[@]}" \
  -v "$conf:/etc/h5depot:ro" \
  -p "127.0.0.1:$grpc_port:$grpc_port" -p "127.0.0.1:$lane_port:$lane_port" \
  "$image" "${server_args[@]}" >/dev/null
say "container $container started"

export H5DEPOT_SERVER=127.0.0.1:$grpc_port
export H5DEPOT_TLS_CA_FILE=$ca/ca.pem
export H5DEPOT_TOKEN_FILE=$workdir/token
unset H5DEPOT_TOKEN H5DEPOT_TLS H5DEPOT_TLS_CERT_FILE H5DEPOT_TLS_KEY_FILE

# Ready when an authenticated `ls` over TLS answers; fail at once if the
# container stops.
ready_start=$EPOCHREALTIME
deadline=$((SECONDS + ready_timeout))
attempts=0
while :; do
  attempts=$((attempts + 1))
  if "$cli" --connect-timeout=1s --timeout=5s ls >"$workdir/ls.out" \
    2>"$workdir/ls.err"; then
    break
  fi
  state=$(podman inspect --format '{{.State.Status}}' "$container")
  [[ $state == running ]] || fail "the container stopped ($state) before" \
    "it answered: $(cat "$workdir/ls.err")"
  ((SECONDS < deadline)) || fail "the server did not answer within" \
    "${ready_timeout}s ($attempts attempts); last error: $(cat "$workdir/ls.err")"
  sleep 0.2 # between polls only; the loop ends on the server's answer
done
say "server ready after $(awk -v a="$ready_start" -v b="$EPOCHREALTIME" \
  'BEGIN { printf "%.1f", b - a }') s ($attempts attempts of ls over TLS" \
  "with the token)"

user=$(podman top "$container" user | awk 'NR == 2 { print $1 }')
[[ $user == nobody ]] || fail "h5depotd runs as '$user' in the container," \
  "not nobody"
say "h5depotd runs as $user"

# A real HDF5 file, a little over 8 MiB (a lane push of more than 1 MiB
# waits for the server's go-ahead before its bytes).
sample=$workdir/sample.h5
/usr/bin/python3 - "$sample" <<'EOF'
import sys

import h5py
import numpy as np

rng = np.random.default_rng(20251205)
with h5py.File(sys.argv[1], "w") as f:
    f.attrs["purpose"] = "h5depot container test"
    run = f.create_group("run")
    run.create_dataset("samples", data=rng.standard_normal((1024, 1024)))
    run.create_dataset("counts", data=np.arange(100_000, dtype=np.int64),
                       compression="gzip")
EOF
size=$(stat -c %s "$sample")
id=${test_prefix}sample.h5
say "sample HDF5 file: $size bytes, pushed as $id"

# Bytes the CLI moved on its TCP connections to one port of 127.0.0.1, from
# strace -yy files: the syscalls named, their results summed.
socket_bytes() {  # PORT SYSCALL-REGEX TRACE-FILE...
  local port=$1 calls=$2
  shift 2
  awk -v peer="->127.0.0.1:$port]>" -v calls="^($calls)\\\\(" '
    index($0, peer) && $0 ~ calls && $(NF - 1) == "=" && $NF ~ /^[0-9]+$/ {
      sum += $NF
    }
    END { print sum + 0 }' "$@"
}
traced() {  # NAME COMMAND...: COMMAND under strace, into $workdir/trace-NAME.*
  local name=$1
  shift
  strace -ff -qq -yy -s 0 -e signal=none \
    -e trace=connect,read,readv,recvfrom,recvmsg,write,writev,sendto,sendmsg \
    -o "$workdir/trace-$name" "$@"
}
sends='write|writev|sendto|sendmsg'
receives='read|readv|recvfrom|recvmsg'

traced put "$cli" put "$sample" --id "$id" >"$workdir/put.out" ||
  fail "put of $id failed"
say "put: $(tr '\n' ' ' <"$workdir/put.out")"
lane_sent=$(socket_bytes "$lane_port" "$sends" "$workdir"/trace-put.*)
grpc_sent=$(socket_bytes "$grpc_port" "$sends" "$workdir"/trace-put.*)
say "put sent $lane_sent bytes on the data lane (port $lane_port)," \
  "$grpc_sent on gRPC (port $grpc_port)"
((lane_sent >= size)) || fail "the push did not go over the data lane" \
  "($lane_sent bytes sent to port $lane_port for a $size-byte image)"
((grpc_sent < size)) || fail "the push's bytes went over gRPC"

fetched=$workdir/fetched.h5
traced get "$cli" get "$id" -o "$fetched" || fail "get of $id failed"
lane_received=$(socket_bytes "$lane_port" "$receives" "$workdir"/trace-get.*)
grpc_received=$(socket_bytes "$grpc_port" "$receives" "$workdir"/trace-get.*)
say "get received $lane_received bytes on the data lane," \
  "$grpc_received on gRPC"
((lane_received >= size)) || fail "the fetch did not come over the data" \
  "lane ($lane_received bytes from port $lane_port for a $size-byte image)"
((grpc_received < size)) || fail "the fetch's bytes came over gRPC"

cmp "$sample" "$fetched" || fail "the fetched file differs from the pushed one"
say "fetched file is byte-identical to the pushed one ($size bytes)"
/usr/bin/python3 - "$fetched" <<'EOF'
import sys

import h5py

with h5py.File(sys.argv[1], "r") as f:
    assert f["run/samples"].shape == (1024, 1024)
    assert int(f["run/counts"][-1]) == 99_999
EOF
say "fetched file opens with h5py and holds the datasets"
say "stat: $("$cli" stat "$id" | tr '\n' ' ')"
listing=$("$cli" ls "$test_prefix")
[[ $listing == *"$id"* ]] || fail "ls does not list $id: $listing"

# Refusals. CLI exit status 9: no token the server knows; 5: unreachable
# (here: TLS required).
expect_status() {  # STATUS WHAT COMMAND...
  local want=$1 what=$2 status=0
  shift 2
  "$@" >"$workdir/refused.out" 2>&1 || status=$?
  ((status == want)) || fail "$what: exit status $status, expected $want:" \
    "$(cat "$workdir/refused.out")"
  say "refused as expected ($what): status $status:" \
    "$(head -c 200 "$workdir/refused.out" | tr '\n' ' ')"
}
expect_status 9 "ls without a token" \
  env -u H5DEPOT_TOKEN_FILE "$cli" ls
expect_status 9 "get without a token" \
  env -u H5DEPOT_TOKEN_FILE "$cli" get "$id" -o "$workdir/refused.h5"
expect_status 9 "put without a token" \
  env -u H5DEPOT_TOKEN_FILE "$cli" put "$sample" --id "${test_prefix}x.h5"
expect_status 9 "ls with a token the server does not know" \
  env H5DEPOT_TOKEN_FILE="$workdir/unknown-token" "$cli" ls
expect_status 5 "ls without TLS" \
  env -u H5DEPOT_TLS_CA_FILE -u H5DEPOT_TOKEN_FILE "$cli" ls
[[ ! -e $workdir/refused.h5 ]] || fail "a refused get wrote its output file"

state=$(podman inspect --format '{{.State.Status}}' "$container")
[[ $state == running ]] || fail "the container is $state after the checks"
phase_end run
