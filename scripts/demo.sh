#!/usr/bin/env bash
# The main job: set up, build, then `mpirun -np 2 shardload demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
bash scripts/setup.sh
bash scripts/build.sh --target shardload_cli
exec mpirun -np 2 "${BUILD_DIR:-build}/shardload" demo "$@"
