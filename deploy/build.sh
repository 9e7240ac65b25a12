#!/usr/bin/env bash
# Configures and builds h5depot with one of the presets in CMakePresets.json.
#
#   deploy/build.sh [PRESET] [CMAKE_ARGS...]
#
#   PRESET      dev (default; warnings are errors), release, asan
#               (AddressSanitizer + UndefinedBehaviorSanitizer), or tsan
#               (ThreadSanitizer, the components without gRPC only; fetches
#               Debian's Abseil source into BUILD_DIR/_deps first, see
#               deploy/abseil-source.sh), or thread-safety (clang-14
#               with -Wthread-safety: compiles everything to check the lock
#               annotations; nothing of it is run), or fuzz (clang-14
#               libFuzzer targets with ASan + UBSan: builds only fuzz/ and
#               the libraries it needs; deploy/fuzz.sh runs them)
#   CMAKE_ARGS  passed to the configure step, e.g. -DH5DEPOT_BUILD_TESTS=OFF
#
# Environment: JOBS parallel compile jobs (default 2: building gRPC code is
# memory-hungry and machines are shared); BUILD_DIR overrides the preset's
# build directory. Run deploy/setup.sh first on a fresh machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

preset=${1:-dev}
(($# > 0)) && shift
case $preset in
  dev) dir=build ;;
  release | asan | tsan | thread-safety | fuzz) dir=build-$preset ;;
  *)
    echo "build: unknown preset '$preset'" \
      "(dev, release, asan, tsan, thread-safety, fuzz)" >&2
    exit 2
    ;;
esac
dir=${BUILD_DIR:-$dir}

configure=()
targets=()
if [[ $preset == fuzz ]]; then
  targets=(--target h5depot_fuzzers)
fi
if [[ $preset == tsan ]]; then
  abseil=$(realpath -m "$dir/_deps/abseil-src")
  deploy/abseil-source.sh "$abseil"
  configure+=("-DH5DEPOT_ABSL_SOURCE_DIR=$abseil")
fi

cmake --preset "$preset" -B "$dir" "${configure[@]}" "$@"
cmake --build "$dir" --parallel "${JOBS:-2}" "${targets[@]}"
