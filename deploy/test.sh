#!/usr/bin/env bash
# Sets up this machine, then builds and runs the whole test suite twice:
#   1. the dev preset (warnings are errors), under ctest;
#   2. the asan preset (AddressSanitizer + UndefinedBehaviorSanitizer, with
#      LeakSanitizer), under ctest, in its own build directory.
# Exits non-zero if any step or any test fails.
#
# Environment:
#   H5DEPOT_SKIP_SANITIZERS=1  skip pass 2 (it runs by default)
#   JOBS                       parallel compile jobs (default 2)
#   TEST_JOBS                  tests run in parallel (default 2)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

timings=()
phase() {  # phase NAME COMMAND...: runs COMMAND and records how long it took
  local name=$1 start=$SECONDS
  shift
  echo "==> $name"
  "$@"
  timings+=("$(printf '%-28s %4ds' "$name" $((SECONDS - start)))")
}

run_tests() {  # run_tests BUILD_DIR
  ctest --test-dir "$1" --output-on-failure --timeout 600 \
    --parallel "${TEST_JOBS:-2}"
}

# Sanitizer reports must fail the run, and the binaries the tests start as
# child processes (h5depotd, h5depot) inherit these settings too.
sanitized_tests() {
  local lsan=print_suppressions=0
  if [[ -f deploy/lsan.supp ]]; then
    lsan+=:suppressions=$PWD/deploy/lsan.supp
  fi
  ASAN_OPTIONS=detect_leaks=1:check_initialization_order=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    LSAN_OPTIONS=$lsan \
    run_tests build-asan
}

phase "setup" deploy/setup.sh
phase "build (dev, -Werror)" deploy/build.sh dev
phase "test (dev)" run_tests build
if [[ ${H5DEPOT_SKIP_SANITIZERS:-0} == 1 ]]; then
  echo "==> skipping the ASan+UBSan pass (H5DEPOT_SKIP_SANITIZERS=1)"
else
  phase "build (asan+ubsan)" deploy/build.sh asan
  phase "test (asan+ubsan)" sanitized_tests
fi

echo "==> all tests passed; time per phase:"
printf '    %s\n' "${timings[@]}"
