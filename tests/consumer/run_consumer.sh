#!/usr/bin/env bash
# Installs the build tree BUILD into a temporary prefix, configures and builds tests/consumer
# against that installed tree (find_package(shardload CONFIG REQUIRED)), and runs it under
# mpirun -np 2. Usage: run_consumer.sh BUILD [PYTHON]
set -euo pipefail
BUILD=$(cd "$1" && pwd)
PY=${2:-${SHARDLOAD_PYTHON:-python3}}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/shardload-consumer.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
TORCH_PREFIX=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
LAUNCHER=()
command -v ccache >/dev/null && LAUNCHER=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)

cmake --install "$BUILD" --prefix "$WORK/prefix" >/dev/null
test -f "$WORK/prefix/include/shardload/loader/shardload.h"
test -f "$WORK/prefix/include/shardload/shardload/config.h"
cmake -S "$HERE" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$WORK/prefix;$TORCH_PREFIX" "${LAUNCHER[@]}" >"$WORK/configure.log" 2>&1 ||
  { cat "$WORK/configure.log"; exit 1; }
cmake --build "$WORK/build" -j 2 >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
# The app must use the installed library, not the build tree's.
if ldd "$WORK/build/app" | grep -F "$BUILD/libshardload"; then
  echo "consumer: app linked against the build tree"; exit 1
fi
mpirun -np 2 --oversubscribe "$WORK/build/app" "$WORK/ckpt"
