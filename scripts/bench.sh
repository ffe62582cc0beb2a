#!/usr/bin/env bash
# The benchmarks of docs/PERFORMANCE.md, in one run: set up, build, install the peers
# (megatron-core, matplotlib), then
#   1. bench/compare.py: shardload vs DCP vs Megatron's loader vs torch.load vs the limit, at
#      --ranks (default 2) and at 4 ranks (oversubscribed), warm, and cold (page cache evicted);
#   2. bench/sweep.py: GiB/s against checkpoint size (256 MiB to 4 GiB) and tensor size, the
#      many-small-tensor goals, and the plots (docs/perf_*.png);
#   3. build/bench/plan_scale: the planner at 64 to 16,384 simulated ranks;
#   4. bench/async_save.py: how long save and save_async block and take (shardload vs DCP's save
#      and async_save vs a copy into preallocated memory), a 1 GiB training state over 2 ranks.
# Everything goes to stdout and to bench/results/ (JSON). Usage: scripts/bench.sh [--quick]
# (--quick: fewer repeats and sizes, for trying it out). Not part of the test command.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
PY=${SHARDLOAD_PYTHON:-python3}
BIN=${BUILD_DIR:-build}/shardload
bash scripts/setup.sh
bash scripts/build.sh --target shardload_cli read_floor plan_scale
"$PY" -c 'import megatron.core' 2>/dev/null || "$PY" -m pip install -q megatron-core==0.16.1
"$PY" -c 'import matplotlib' 2>/dev/null || "$PY" -m pip install -q matplotlib
mkdir -p bench/results
REPEAT=5 SIZES=256,512,1024,2048,4096 MIB=512 ASYNC_MIB=1024
if [ "${1:-}" = "--quick" ]; then REPEAT=2 SIZES=256,512 MIB=256 ASYNC_MIB=256; fi
echo "# shardload benchmarks, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores"
for ranks in 2 4; do
  echo; echo "## compare, $ranks ranks, warm"; echo
  "$PY" bench/compare.py --bin "$BIN" --ranks $ranks --mib $MIB --repeat $REPEAT \
    --json-out bench/results/compare_np${ranks}_warm.json
done
echo; echo "## compare, 2 ranks, cold"; echo
"$PY" bench/compare.py --bin "$BIN" --ranks 2 --mib $MIB --repeat $REPEAT --cold \
  --peers dcp,megatron --json-out bench/results/compare_np2_cold.json
echo
"$PY" bench/sweep.py --bin "$BIN" --ranks 2 --repeat $((REPEAT > 3 ? 3 : REPEAT)) --sizes $SIZES \
  --plots docs --json-out bench/results/sweep_np2.json
echo; echo "## planner scale"; echo
"${BUILD_DIR:-build}/bench/plan_scale" --repeat 3
echo; echo "## asynchronous save, 2 ranks"; echo
"$PY" bench/async_save.py --bin "$BIN" --ranks 2 --mib $ASYNC_MIB --repeat $REPEAT \
  --json-out bench/results/async_save_np2.json
