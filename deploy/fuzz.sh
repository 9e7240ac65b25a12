#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ (the fuzz preset, clang-14 with
# ASan + UBSan) if they are not up to date, runs each for SECONDS on a copy
# of its seed corpus, and prints one line per target: executions, executions
# a second, corpus size before and after, and the result.
#
#   deploy/fuzz.sh [SECONDS [TARGET...]]
#
#   SECONDS  how long each target runs (default 60)
#   TARGET   which targets, by name (lane_protocol, superblock, ...; the
#            fuzz/<name>_fuzzer.cc files); all of them by default
#
# Exits non-zero if any target crashed, leaked, hung or broke a FUZZ_CHECK.
# Its line then names the input that did it; that input and the target's
# log stay in the run's directory under BUILD_DIR/runs/. A run in which
# nothing failed deletes its directory. The corpora in fuzz/corpus/ are
# only read. docs/FUZZING.md says what each target checks, and how to keep a
# failing input as a regression seed.
#
# Environment: JOBS parallel compile jobs (default 2); BUILD_DIR overrides
# the preset's build directory (build-fuzz). Run deploy/setup.sh first on a
# fresh machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-60}
(($# > 0)) && shift
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
  echo "fuzz: SECONDS must be a positive whole number, not '$seconds'" >&2
  exit 2
fi
targets=("$@")
if ((${#targets[@]} == 0)); then
  for source in fuzz/*_fuzzer.cc; do
    name=${source##*/}
    targets+=("${name%_fuzzer.cc}")
  done
fi
for target in "${targets[@]}"; do
  if [[ ! -f fuzz/${target}_fuzzer.cc ]]; then
    echo "fuzz: no target '$target' (no fuzz/${target}_fuzzer.cc)" >&2
    exit 2
  fi
done

dir=${BUILD_DIR:-build-fuzz}
if [[ ! -f $dir/CMakeCache.txt ]]; then
  cmake --preset fuzz -B "$dir"
fi
cmake --build "$dir" --parallel "${JOBS:-2}" --target "${targets[@]/%/_fuzzer}"

mkdir -p "$dir/runs"
run_dir=$(mktemp -d "$dir/runs/$(date +%Y%m%d-%H%M%S).XXXXXX")
# stat_of LOG NAME: one of libFuzzer's final stats (-print_final_stats)
stat_of() {
  sed -n "s/^stat::$2: *//p" "$1" | tail -n1
}

echo "==> fuzzing ${#targets[@]} target(s), ${seconds}s each"
rows=()
failed=()
for target in "${targets[@]}"; do
  work=$run_dir/$target
  mkdir -p "$work/corpus"
  cp -R "fuzz/corpus/$target/." "$work/corpus/"
  seeds=$(find "$work/corpus" -type f | wc -l)
  status=0
  UBSAN_OPTIONS=print_stacktrace=1 "$dir/fuzz/${target}_fuzzer" \
    -max_total_time="$seconds" -timeout=20 -print_final_stats=1 \
    -artifact_prefix="$work/" "$work/corpus" >"$work/log" 2>&1 ||
    status=$?
  corpus=$(find "$work/corpus" -type f | wc -l)
  if ((status == 0)); then
    result=ok
  else
    # "artifact_prefix='...'; Test unit written to <path>"
    artifact=$(sed -n 's/.*Test unit written to //p' "$work/log" | tail -n1)
    result="FAILED (exit $status): ${artifact:-no input saved, see $work/log}"
    failed+=("$target")
  fi
  rows+=("$(printf '%-16s %12s %8s %13s  %s' "$target" \
    "$(stat_of "$work/log" number_of_executed_units)" \
    "$(stat_of "$work/log" average_exec_per_sec)" \
    "$seeds -> $corpus" "$result")")
  echo "    $target: $result"
done

echo
printf '%-16s %12s %8s %13s  %s\n' target executions exec/s corpus result
printf '%s\n' "${rows[@]}"

if ((${#failed[@]} == 0)); then
  rm -rf "$run_dir"
  exit 0
fi
for target in "${failed[@]}"; do
  log=$run_dir/$target/log
  echo
  echo "==> $target: the report in $log"
  # The first report: a broken FUZZ_CHECK, a sanitizer's, or libFuzzer's
  # own (a leak, a timeout, running out of memory).
  grep -m1 -E -A 12 'FUZZ_CHECK failed|ERROR: |runtime error:' "$log" ||
    tail -n 20 "$log"
  echo "    reproduce: $dir/fuzz/${target}_fuzzer INPUT (the input named above)"
done
echo
echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]}; inputs and logs" \
  "in $run_dir"
exit 1
