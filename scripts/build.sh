#!/usr/bin/env bash
# Configures and builds shardload into ${BUILD_DIR:-build} (after scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${SHARDLOAD_PYTHON:-python3}
BUILD_DIR=${BUILD_DIR:-build}
TORCH_PREFIX=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo} \
    -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DSHARDLOAD_PYTHON="$(command -v "$PY")" >/dev/null
fi
cmake --build "$BUILD_DIR" -j "$(nproc)" "$@"
