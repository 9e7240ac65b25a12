#!/usr/bin/env bash
# Installs the build into a temporary prefix, builds a plain C client
# against it with nothing but pkg-config (as an application would), starts
# the installed h5depotd on a Unix socket, and runs the client against it.
# Usage: install_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build_dir=$1
source_dir=$(cd "$2" && pwd)
work=$(mktemp -d)
server_pid=
cleanup() {
  if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cmake --install "$build_dir" --prefix "$work/prefix" > "$work/install.log"
pc_file=$(find "$work/prefix" -name h5depot.pc)
[[ -n "$pc_file" ]] || { echo "h5depot.pc was not installed"; exit 1; }
export PKG_CONFIG_PATH=$(dirname "$pc_file")
libdir=$(pkg-config --variable=libdir h5depot)

cc -std=c11 -Wall -Wextra -Werror -o "$work/c_api_client" \
  "$source_dir/tests/c/c_api_client.c" \
  $(pkg-config --cflags --libs h5depot) -Wl,-rpath,"$libdir"

cc -std=c11 -Wall -Wextra -Werror -o "$work/remote_driver_client" \
  "$source_dir/tests/c/remote_driver_client.c" \
  $(pkg-config --cflags --libs h5depot) -Wl,-rpath,"$libdir"

# The installed daemon; it says where it listens once it is ready.
mkfifo "$work/server.out"
"$work/prefix/bin/h5depotd" --listen= --unix="$work/h5depot.sock" \
  > "$work/server.out" 2> "$work/server.err" &
server_pid=$!
exec 3< "$work/server.out"
read -r -t 30 ready_line <&3 || { echo "h5depotd did not start:"; cat "$work/server.err"; exit 1; }
[[ "$ready_line" == "h5depotd listening on unix:$work/h5depot.sock" ]] || {
  echo "unexpected first line from h5depotd: $ready_line"; exit 1; }

"$work/c_api_client" "unix:$work/h5depot.sock"
"$work/remote_driver_client" "unix:$work/h5depot.sock"

# And a CMake project finds the package.
mkdir -p "$work/cmake-app"
cat > "$work/cmake-app/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.25)
project(app C)
find_package(h5depot REQUIRED)
add_executable(app "$source_dir/tests/c/c_api_client.c")
target_link_libraries(app PRIVATE h5depot::h5depot)
CMAKE
cmake -S "$work/cmake-app" -B "$work/cmake-app/build" \
  -DCMAKE_PREFIX_PATH="$work/prefix" > "$work/cmake-app.log" 2>&1 ||
  { cat "$work/cmake-app.log"; exit 1; }
cmake --build "$work/cmake-app/build" > "$work/cmake-build.log" 2>&1 ||
  { cat "$work/cmake-build.log"; exit 1; }
"$work/cmake-app/build/app" "unix:$work/h5depot.sock"

# A Fortran client, built with nothing but pkg-config (when the build has
# the Fortran module): A pushes, B opens and checks every value.
fortran_pc=$(find "$work/prefix" -name h5depot-fortran.pc)
if [[ -n "$fortran_pc" ]]; then
  mkdir -p "$work/fortran-modules"
  for program in packet_producer packet_consumer; do
    # With the module of checks the test programs share, built first.
    gfortran -Wall -Werror -J "$work/fortran-modules" \
      -o "$work/fortran_$program" \
      "$source_dir/fortran/tests/test_checks.f90" \
      "$source_dir/fortran/tests/$program.f90" \
      $(pkg-config --cflags --libs h5depot-fortran) -Wl,-rpath,"$libdir"
  done
  H5DEPOT_SERVER="unix:$work/h5depot.sock" "$work/fortran_packet_producer" install/fortran
  H5DEPOT_SERVER="unix:$work/h5depot.sock" "$work/fortran_packet_consumer" install/fortran
fi

# The Python package, where Debian's python3 would find it under the
# prefix (when the build has it).
python_dir=$(find "$work/prefix" -type d -path "*/dist-packages/h5depot" -printf '%h\n' | head -n 1)
if [[ -n "$python_dir" ]]; then
  PYTHONPATH=$python_dir /usr/bin/python3 -c '
import sys, h5depot
with h5depot.Client(sys.argv[1]) as depot:
    with depot.open("install/fortran") as f:
        assert f["values"].shape == (100, 10)
' "unix:$work/h5depot.sock"
fi
echo "install test passed"
