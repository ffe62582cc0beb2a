#!/usr/bin/env bash
# Configures and builds shardload into ${BUILD_DIR:-build} (after scripts/setup.sh). The NCCL
# transport is required (SHARDLOAD_WITH_NCCL=ON): a machine without CUDA and NCCL fails here
# rather than building a CPU-only library silently; SHARDLOAD_WITH_NCCL=AUTO or OFF overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${SHARDLOAD_PYTHON:-python3}
BUILD_DIR=${BUILD_DIR:-build}
TORCH_PREFIX=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo} \
    -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DSHARDLOAD_PYTHON="$(command -v "$PY")" \
    -DSHARDLOAD_WITH_NCCL="${SHARDLOAD_WITH_NCCL:-ON}" >/dev/null
fi
cmake --build "$BUILD_DIR" -j "$(nproc)" "$@"
