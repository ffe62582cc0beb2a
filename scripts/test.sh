#!/usr/bin/env bash
# The test command: set up, build, run every test (unit, 1/2/4-rank MPI, TCP, Python oracle,
# `import shardload`, the CMake consumer of an installed tree), and each fuzz target briefly
# (SHARDLOAD_FUZZ_SECONDS each, default 3; 0 skips them; scripts/fuzz.sh SECONDS for long runs). Afterwards `import shardload` works
# in this Python: a .pth file in its site-packages names the build's package folder.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
bash scripts/setup.sh
bash scripts/build.sh
bash scripts/check_format.sh
bash scripts/check_layers.sh
PY=${SHARDLOAD_PYTHON:-python3}
if [ -d "${BUILD_DIR:-build}/python/shardload" ]; then
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  (cd "${BUILD_DIR:-build}/python" && pwd) >"$site/shardload.pth"
  echo "test: import shardload -> $(cat "$site/shardload.pth") (via $site/shardload.pth)"
fi
if [ "${SHARDLOAD_FUZZ_SECONDS:-3}" != 0 ]; then
  SHARDLOAD_FUZZ_SEED=${SHARDLOAD_FUZZ_SEED:-1} bash scripts/fuzz.sh "${SHARDLOAD_FUZZ_SECONDS:-3}"
fi
cd "${BUILD_DIR:-build}"
# -j 4 on 2 cores: most tests wait on process start-up and MPI, not on the CPU (PROCESSORS
# still keeps the 4-rank tests from piling up); the deadline tests run alone (RUN_SERIAL).
ctest --output-on-failure -j 4 --timeout 900 "$@"
