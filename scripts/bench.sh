#!/usr/bin/env bash
# Benchmark: set up, build, install the peers (megatron-core), run bench/compare.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
PY=${SHARDLOAD_PYTHON:-python3}
bash scripts/setup.sh
bash scripts/build.sh --target shardload_cli
"$PY" -c 'import megatron.core' 2>/dev/null || "$PY" -m pip install -q megatron-core==0.16.1
exec "$PY" bench/compare.py --bin "${BUILD_DIR:-build}/shardload" "$@"
