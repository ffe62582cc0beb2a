#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/ with clang (AddressSanitizer + UBSan) into
# ${FUZZ_BUILD_DIR:-build-fuzz}/ and runs each for SECONDS (default 20) on its seed corpus
# tests/fuzz/corpus/<target>/ (new inputs go to build-fuzz/corpus/<target>/, the seeds stay as
# committed). A crash, sanitizer report, timeout or out-of-memory fails the script and leaves
# the input as build-fuzz/crash-<target>-*; add it to the corpus once fixed.
# SHARDLOAD_FUZZ_SEED fixes libFuzzer's seed (the test command uses 1, so that its short runs
# explore the same inputs on every machine); unset or 0: a new random seed each run (long runs).
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-20}
shift || true
BUILD=${FUZZ_BUILD_DIR:-build-fuzz}
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S tests/fuzz -B "$BUILD" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$BUILD" -j 2 >/dev/null
targets=("$@")
((${#targets[@]})) || mapfile -t targets < "$BUILD/fuzz_targets.txt"
JOBS=${SHARDLOAD_FUZZ_JOBS:-$(nproc)}
declare -A pids
for t in "${targets[@]}"; do
  [ -n "$t" ] || continue
  seeds=tests/fuzz/corpus/$t
  found=$BUILD/corpus/$t
  mkdir -p "$seeds" "$found"
  args=(-max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -seed="${SHARDLOAD_FUZZ_SEED:-0}" -artifact_prefix="$BUILD/crash-$t-")
  [ -f "tests/fuzz/$t.dict" ] && args+=(-dict="tests/fuzz/$t.dict")
  # HDF5 makes lazy allocations of sizes it reads from a file before it fails (an object header's
  # 32-bit chunk size: up to 4 GiB; the real binary then exits 3 with a few hundred MB
  # resident). Give the shard-file target room for them; larger requests return null (the
  # target's ASan options), as malloc does in production, and resident memory stays limited.
  [ "$t" = fuzz_shard_file ] && args+=(-rss_limit_mb=4096 -malloc_limit_mb=8192)
  # The foreign readers hold to tighter bounds (docs/GUARANTEES.md): a fuzz input of a few KiB
  # may take a small multiple of the floor of their memory budget (64 MiB, ASan's shadow on top)
  # and well under a second, so 1 GiB resident (also the largest single allocation) and 5 s.
  case $t in
    fuzz_pickle | fuzz_safetensors | fuzz_zip | fuzz_hf_index | fuzz_pt_layout | fuzz_tensor_file | \
      fuzz_dcp_metadata)
      args+=(-rss_limit_mb=1024 -timeout=5) ;;
  esac
  # One target per core at a time (libFuzzer runs one thread): the same seconds each, half
  # the wall time on the 2-core machine.
  while (($(jobs -rp | wc -l) >= JOBS)); do wait -n || true; done
  "$BUILD/$t" "${args[@]}" "$found" "$seeds" >"$BUILD/$t.log" 2>&1 &
  pids[$t]=$!
done
failed=0
for t in "${targets[@]}"; do
  [ -n "$t" ] || continue
  log=$BUILD/$t.log
  if ! wait "${pids[$t]}"; then
    tail -40 "$log" >&2
    echo "fuzz: $t FAILED (log $log)" >&2
    failed=1
    continue
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  corpus=$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$log" | tail -1 | cut -d' ' -f2)
  echo "fuzz: $t ok: ${SECONDS_EACH} s, $execs runs, corpus $corpus (inputs/bytes)"
done
exit "$failed"
