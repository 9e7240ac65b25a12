#!/usr/bin/env bash
# Sets up this machine, then builds and runs the test suite three times:
#   1. the dev preset (warnings are errors), under ctest, then compiles
#      everything once more with clang-14's lock analysis (the
#      thread-safety preset: -Wthread-safety, warnings are errors; built,
#      not run), then builds the libFuzzer targets (the fuzz preset) and
#      runs each for H5DEPOT_FUZZ_SECONDS on its seeds (deploy/fuzz.sh);
#      a crash or a broken FUZZ_CHECK fails the run (docs/FUZZING.md);
#      then builds the web console (deploy/build-console.sh) and runs its
#      browser test in headless Chromium (console/tests/);
#   2. the asan preset (AddressSanitizer + UndefinedBehaviorSanitizer, with
#      LeakSanitizer), under ctest, in its own build directory;
#   3. the tsan preset (ThreadSanitizer): only the components and tests
#      that need no gRPC, whose Debian build TSan cannot see into (the
#      store, the wire code, file images, the buffer recycler, the page
#      cache; docs/ARCHITECTURE.md, "Testing: sanitizers").
# Exits non-zero if any step or any test fails.
#
# Environment:
#   H5DEPOT_SKIP_SANITIZERS=1  skip passes 2 and 3 (they run by default)
#   H5DEPOT_SKIP_TSAN=1        skip pass 3
#   H5DEPOT_SKIP_THREAD_SAFETY=1  skip the lock analysis build
#   H5DEPOT_SKIP_FUZZ=1        skip building and running the fuzz targets
#   H5DEPOT_SKIP_CONSOLE=1     skip building the web console and its
#                              browser test
#   H5DEPOT_FUZZ_SECONDS=N     how long each fuzz target runs (default 20)
#   H5DEPOT_LOAD_REPEAT=N      the suite under load: every test pass runs
#                              beside stress-ng keeping each CPU busy, and
#                              each test runs N times unless it fails first
#                              (ctest --repeat until-fail:N); off by default
#   JOBS                       parallel compile jobs (default 2)
#   TEST_JOBS                  tests run in parallel (default 2)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

timings=()
report() {  # on exit, pass or fail: how long each phase took
  local status=$?
  if ((${#timings[@]} > 0)); then
    echo "==> time per phase:"
    printf '    %s\n' "${timings[@]}"
  fi
  echo "tests: $passed passed, $failed failed"
  if ((status == 0)); then
    echo "==> all tests passed"
  else
    echo "==> FAILED (exit status $status)"
  fi
}
trap report EXIT

phase() {  # phase NAME COMMAND...: runs COMMAND, records how long it took
  local name=$1 start=$SECONDS status=0
  shift
  echo "==> $name"
  "$@" || status=$?
  timings+=("$(printf '%-24s %4ds%s' "$name" $((SECONDS - start)) \
    "$( ((status == 0)) || echo '  FAILED')")")
  return "$status"
}

passed=0
failed=0
# run_tests BUILD_DIR [LAUNCHER...]: ctest (started through LAUNCHER, if
# given), counting what passed and failed
run_tests() {
  local dir=$1 log=$1/ctest-summary.log status=0 summary total bad
  local repeat=() load_pid=
  shift
  if ((${H5DEPOT_LOAD_REPEAT:-0} > 0)); then
    # Bounded, and ended below: a load that outlived the run would skew
    # whatever the machine does next.
    stress-ng --cpu "$(nproc)" --timeout 3h --quiet &
    load_pid=$!
    repeat=(--repeat "until-fail:$H5DEPOT_LOAD_REPEAT")
  fi
  "$@" ctest --test-dir "$dir" --output-on-failure --timeout 600 \
    --parallel "${TEST_JOBS:-2}" "${repeat[@]}" | tee "$log" || status=$?
  if [[ -n $load_pid ]]; then
    kill "$load_pid" 2>/dev/null || true
    wait "$load_pid" 2>/dev/null || true
  fi
  # "100% tests passed, 0 tests failed out of 104"
  summary=$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" |
    tail -n1)
  if [[ $summary =~ ([0-9]+)\ tests?\ failed\ out\ of\ ([0-9]+) ]]; then
    bad=${BASH_REMATCH[1]} total=${BASH_REMATCH[2]}
    passed=$((passed + total - bad))
    failed=$((failed + bad))
  fi
  return "$status"
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

# Any race report fails its test (exit code 66). Only third-party false
# positives are suppressed, in deploy/tsan.supp.
tsan_tests() {
  local launcher=()
  # TSan of GCC 12 needs the address layout it was built for: with more
  # ASLR entropy (vm.mmap_rnd_bits above 28, as on recent kernels) it dies
  # at start with "FATAL: ThreadSanitizer: unexpected memory mapping".
  # setarch -R turns ASLR off for ctest and the tests it starts, and for
  # nothing else on the machine.
  if (($(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo 0) > 28)); then
    launcher=(setarch "$(uname -m)" -R)
  fi
  local tsan=halt_on_error=1:second_deadlock_stack=1:exitcode=66
  tsan+=:suppressions=$PWD/deploy/tsan.supp
  TSAN_OPTIONS=$tsan run_tests build-tsan "${launcher[@]}"
}

# The web console in a real browser (console/tests/), against the dev
# build's h5depotd and h5depot; its screenshot goes to build/console.png.
console_test() {
  if H5DEPOTD=build/server/h5depotd H5DEPOT=build/client/h5depot \
    CONSOLE_DIR=console/dist SCREENSHOT=build/console.png \
    node console/tests/console_browser_test.mjs; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    return 1
  fi
}

phase "setup" deploy/setup.sh
phase "build (dev, -Werror)" deploy/build.sh dev
phase "test (dev)" run_tests build
if [[ ${H5DEPOT_SKIP_CONSOLE:-0} == 1 ]]; then
  echo "==> skipping the web console (H5DEPOT_SKIP_CONSOLE=1)"
else
  phase "build (web console)" deploy/build-console.sh
  phase "test (web console, headless Chromium)" console_test
fi
if [[ ${H5DEPOT_SKIP_THREAD_SAFETY:-0} == 1 ]]; then
  echo "==> skipping the lock analysis (H5DEPOT_SKIP_THREAD_SAFETY=1)"
else
  phase "build (thread-safety)" deploy/build.sh thread-safety
fi
if [[ ${H5DEPOT_SKIP_FUZZ:-0} == 1 ]]; then
  echo "==> skipping the fuzz targets (H5DEPOT_SKIP_FUZZ=1)"
else
  phase "build (fuzz)" deploy/build.sh fuzz
  phase "fuzz" deploy/fuzz.sh "${H5DEPOT_FUZZ_SECONDS:-20}"
fi
if [[ ${H5DEPOT_SKIP_SANITIZERS:-0} == 1 ]]; then
  echo "==> skipping the ASan+UBSan pass (H5DEPOT_SKIP_SANITIZERS=1)"
else
  phase "build (asan+ubsan)" deploy/build.sh asan
  phase "test (asan+ubsan)" sanitized_tests
  if [[ ${H5DEPOT_SKIP_TSAN:-0} == 1 ]]; then
    echo "==> skipping the TSan pass (H5DEPOT_SKIP_TSAN=1)"
  else
    phase "build (tsan)" deploy/build.sh tsan
    phase "test (tsan)" tsan_tests
  fi
fi
