#!/usr/bin/env bash
# Runs COMMAND with a fresh h5depotd on a Unix socket in a temporary
# directory, named in H5DEPOT_SERVER; stops the server and exits with
# COMMAND's status.
#
#   with_server.sh H5DEPOTD COMMAND [ARGS...]
set -euo pipefail
h5depotd=$1
shift
dir=$(mktemp -d /tmp/h5depot-fortran-test.XXXXXX)
coproc SERVER { exec "$h5depotd" --listen= --unix="$dir/h5depotd.sock" 2>&1; }
server_pid=$SERVER_PID
trap 'kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; rm -rf "$dir"' EXIT
# Ready once it says how much it holds, after its listeners are up.
while IFS= read -r line <&"${SERVER[0]}"; do
  [[ $line == "h5depotd holds"* ]] && break
done
export H5DEPOT_SERVER=unix:$dir/h5depotd.sock
status=0
"$@" || status=$?
exit "$status"
