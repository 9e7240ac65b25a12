#!/usr/bin/env bash
# Sets up this machine, builds h5depot (release) and runs h5depotd in the
# foreground with its embedded in-RAM store, on its default address
# 127.0.0.1:7878 unless told otherwise. Ctrl-C stops it.
#
#   deploy/run-server.sh [H5DEPOTD_FLAGS...]
#   deploy/run-server.sh --unix=/tmp/h5depot.sock --max-memory=8G
#
# Flags go to h5depotd as given (see `h5depotd --help`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

deploy/setup.sh
deploy/build.sh release -DH5DEPOT_BUILD_TESTS=OFF

server=$repo/build-release/server/h5depotd
cli=$repo/build-release/client/h5depot

# Where it will listen, to say how to reach it: the same defaults and flag
# forms h5depotd accepts.
listen=127.0.0.1:7878
unix_socket=
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[i]} in
    --listen=*) listen=${args[i]#--listen=} ;;
    --listen) listen=${args[i + 1]:-} ;;
    --unix=*) unix_socket=${args[i]#--unix=} ;;
    --unix) unix_socket=${args[i + 1]:-} ;;
  esac
done

echo
echo "Starting h5depotd in the foreground (Ctrl-C stops it). Reach it with:"
if [[ -n $listen ]]; then
  if [[ $listen == *:0 ]]; then
    echo "  $cli --server HOST:PORT ls    (PORT as printed below)"
  else
    echo "  $cli --server $listen ls"
  fi
fi
if [[ -n $unix_socket ]]; then
  echo "  $cli --server unix:$unix_socket ls"
fi
echo "  (or export H5DEPOT_SERVER=... once and drop --server)"
echo "From Python (Debian's python3, with its h5py):"
echo "  PYTHONPATH=$repo/build-release/python /usr/bin/python3 -c 'import h5depot; print(list(h5depot.Client().ls()))'"
echo
exec "$server" "$@"
