#!/usr/bin/env bash
# Sets up this machine, builds h5depot (release) and its web console, and
# runs h5depotd in the foreground with its embedded in-RAM store, on its
# default address 127.0.0.1:7878 unless told otherwise, with the HTTP
# gateway and the console on 127.0.0.1:7880. Ctrl-C stops it.
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
deploy/build-console.sh

server=$repo/build-release/server/h5depotd
cli=$repo/build-release/client/h5depot

# Where it will listen, to say how to reach it: the same defaults and flag
# forms h5depotd accepts. The HTTP gateway and its web console are on by
# default here, on loopback (flags given override these: the last wins).
listen=127.0.0.1:7878
http_listen=127.0.0.1:7880
defaults=(--http-listen=$http_listen --http-console-dir=$repo/console/dist)
unix_socket=
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[i]} in
    --listen=*) listen=${args[i]#--listen=} ;;
    --listen) listen=${args[i + 1]:-} ;;
    --http-listen=*) http_listen=${args[i]#--http-listen=} ;;
    --http-listen) http_listen=${args[i + 1]:-} ;;
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
if [[ -n $http_listen ]]; then
  echo "In a browser, the web console (and the HTTP API, docs/HTTP.md):"
  echo "  http://$http_listen/"
fi
echo "From Python (Debian's python3, with its h5py):"
echo "  PYTHONPATH=$repo/build-release/python /usr/bin/python3 -c 'import h5depot; print(list(h5depot.Client().ls()))'"
echo
exec "$server" "${defaults[@]}" "$@"
