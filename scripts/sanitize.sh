#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer build of the library, the unit tests and the
# multi-rank tests (into ${ASAN_BUILD_DIR:-build-asan}/), then runs them: unit tests, MPI tests
# at 1, 2 and 4 ranks (the transfer, the device route through the CPU double included). UBSan's
# alignment check is on: no typed access at a misaligned address, on any route. Any report stops the run (halt_on_error) and fails the script. Not part of
# the test command: the build alone takes a long while on 2 cores.
#
# LibTorch, OpenMPI and HDF5 are not instrumented. Leak detection is off (detect_leaks=0):
# OpenMPI and LibTorch keep allocations until exit that LeakSanitizer reports by the hundred.
# Usage: scripts/sanitize.sh [extra gtest flags, e.g. --gtest_filter=...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${SHARDLOAD_PYTHON:-python3}
BUILD=${ASAN_BUILD_DIR:-build-asan}
# SHARDLOAD_SANITIZE: the sanitizers (default address,undefined; "undefined" alone builds faster
# and still checks alignment). A build folder keeps the sanitizers it was configured with.
SAN=${SHARDLOAD_SANITIZE:-address,undefined}
FLAGS="-fsanitize=$SAN,alignment -fno-sanitize-recover=all -fno-omit-frame-pointer"
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  TORCH_PREFIX=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
    -DSHARDLOAD_PYTHON="$(command -v "$PY")" -DCMAKE_CXX_FLAGS="$FLAGS" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=$SAN" \
    -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=$SAN" >/dev/null
fi
configured=$(sed -n 's/^CMAKE_CXX_FLAGS:STRING=//p' "$BUILD/CMakeCache.txt")
echo "sanitize: $BUILD built with: $configured"
cmake --build "$BUILD" -j 2 --target unit_tests mpi_tests

export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
n=0
run() {
  n=$((n + 1))
  local log=$BUILD/sanitize-$n.log
  echo "sanitize: $* (log $log)"
  if ! "$@" --gtest_color=no >"$log" 2>&1; then
    grep -E -A30 "ERROR: AddressSanitizer|runtime error:|FAILED" "$log" | head -80 >&2 || true
    echo "sanitize: FAILED: $*" >&2
    exit 1
  fi
  if grep -qE "ERROR: AddressSanitizer|runtime error:" "$log"; then
    echo "sanitize: a sanitizer report in $log" >&2
    exit 1
  fi
  grep -E "^\[  PASSED  \]" "$log" | head -1
}
run "$BUILD/tests/unit_tests" "$@"
for ranks in 1 2 4; do
  run mpirun -np "$ranks" --oversubscribe "$BUILD/tests/mpi_tests" "$@"
done
echo "sanitize: clean ($configured: unit, MPI at 1, 2 and 4 ranks; leak detection off)"
