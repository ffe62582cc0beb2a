#!/usr/bin/env bash
# The test command: set up, build, run every test (unit, 1/2/4-rank MPI, TCP, Python oracle),
# and each fuzz target briefly (SHARDLOAD_FUZZ_SECONDS each, default 15; 0 skips them).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
bash scripts/setup.sh
bash scripts/build.sh
bash scripts/check_format.sh
if [ "${SHARDLOAD_FUZZ_SECONDS:-15}" != 0 ]; then
  bash scripts/fuzz.sh "${SHARDLOAD_FUZZ_SECONDS:-15}"
fi
cd "${BUILD_DIR:-build}"
ctest --output-on-failure -j 2 --timeout 900 "$@"
