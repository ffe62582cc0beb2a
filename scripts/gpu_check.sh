#!/usr/bin/env bash
# The GPU check (issue 10), one prepared script for a machine with an NVIDIA GPU, CUDA, CMake and
# PyTorch but no package registry and no MPI or HDF5 development packages.
#
#   here, with the package registry:   bash scripts/gpu_check.sh --fetch
#       downloads the Debian packages the build needs into .gpu-deps/ (ignored by git; about
#       20 MB), to be carried to the GPU machine with the working tree;
#   there, on the GPU machine:          bash scripts/gpu_check.sh OUTDIR
#       unpacks them into a private prefix (dpkg -x, nothing installed), builds against that
#       machine's PyTorch with NCCL required, runs the `gpu` tests at 1 rank and at 2 ranks on
#       the one GPU (the MPI fallback; every GPU load bit-exact against a CPU load), the demo and
#       the CLI with --device cuda, and measures an 8 GiB load into GPU tensors against the
#       page-cache read and pinned host-to-device bandwidth of the same run. Writes
#       OUTDIR/report.txt and OUTDIR/report.json. Meant to finish in well under 10 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEPS=$ROOT/.gpu-deps
PKGS=(openmpi-bin openmpi-common libopenmpi3 libopenmpi-dev libpmix2 libhwloc15
      libevent-core-2.1-7 libevent-pthreads-2.1-7 libevent-2.1-7 libfabric1 libucx0 libibverbs1
      librdmacm1 libnl-3-200 libnl-route-3-200 libpsm2-2 libpsm-infinipath1 libnuma1 libmunge2
      libltdl7 libpciaccess0 libudev1
      libhdf5-dev libhdf5-103-1 libhdf5-hl-100 libhdf5-cpp-103-1 libhdf5-hl-cpp-100 libsz2 libaec0
      libaec-dev libcurl4 libnghttp2-14 librtmp1 libssh2-1 libpsl5 libbrotli1 libgssapi-krb5-2
      libkrb5-3 libk5crypto3 libkrb5support0 libldap-2.5-0 libsasl2-2 libkeyutils1 libcom-err2
      libidn2-0 libunistring2 libgnutls30 libhogweed6 libnettle8 libgmp10 libtasn1-6 libp11-kit0
      libffi8 libssl3 zlib1g-dev
      libxxhash-dev libxxhash0 libcli11-dev nlohmann-json3-dev libgtest-dev googletest)

if [ "${1:-}" = "--fetch" ]; then
  rm -rf "$DEPS" && mkdir -p "$DEPS"
  (cd "$DEPS" && apt-get download "${PKGS[@]}")
  grep -qx '/.gpu-deps/' .git/info/exclude 2>/dev/null || echo '/.gpu-deps/' >>.git/info/exclude
  echo "gpu_check: $(ls "$DEPS" | wc -l) packages, $(du -sh "$DEPS" | cut -f1) in $DEPS"
  exit 0
fi

OUT=${1:?usage: bash scripts/gpu_check.sh OUTDIR   (or --fetch, on a machine with the registry)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu_check.log
REPORT=$OUT/report.txt
: >"$REPORT"
exec > >(tee -a "$LOG") 2>&1
say() { echo "$*" | tee -a "$REPORT"; }
T0=$(date +%s)
elapsed() { echo $(($(date +%s) - T0)); }
declare -A STATUS

# 1. The private prefix: Debian's packages unpacked, not installed.
PREFIX=${SHARDLOAD_DEPS_PREFIX:-/tmp/shardload-deps}
if [ ! -d "$DEPS" ] || [ -z "$(ls "$DEPS"/*.deb 2>/dev/null)" ]; then
  say "gpu_check: no packages in $DEPS: run 'bash scripts/gpu_check.sh --fetch' where the registry is"
  exit 2
fi
mkdir -p "$PREFIX"
for deb in "$DEPS"/*.deb; do
  if command -v dpkg-deb >/dev/null; then
    dpkg-deb -x "$deb" "$PREFIX"
  else
    member=$(ar t "$deb" | grep '^data.tar')
    case "$member" in
      *.xz) ar p "$deb" "$member" | tar -xJ -C "$PREFIX" ;;
      *.zst) ar p "$deb" "$member" | zstd -dc | tar -x -C "$PREFIX" ;;
      *.gz) ar p "$deb" "$member" | tar -xz -C "$PREFIX" ;;
      *) ar p "$deb" "$member" | tar -x -C "$PREFIX" ;;
    esac
  fi
done
ARCH=x86_64-linux-gnu
U=$PREFIX/usr
LIB=$U/lib/$ARCH
# Debian names tools through alternatives, which dpkg -x does not set up.
ln -sf orterun "$U/bin/mpirun"
ln -sf opal_wrapper "$U/bin/mpicxx"
ln -sf opal_wrapper "$U/bin/mpicc"
export PATH=$U/bin:$PATH
export LD_LIBRARY_PATH=$LIB:$LIB/openmpi/lib:$LIB/hdf5/serial:$LIB/pmix2/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export OPAL_PREFIX=$U
export OMPI_MCA_mca_base_component_path=$LIB/openmpi/lib/openmpi3
# PMIx looks for its few plugins only where Debian put them; give it that path when this machine
# has no PMIx of its own there (a link, nothing installed).
if [ ! -e /usr/lib/$ARCH/pmix2 ]; then
  mkdir -p /usr/lib/$ARCH && ln -s "$LIB/pmix2" /usr/lib/$ARCH/pmix2
fi
# hwloc's plugins (GL, OpenCL, XML) are not needed: none are loaded.
mkdir -p "$PREFIX/no-hwloc-plugins"
export HWLOC_PLUGINS_PATH=$PREFIX/no-hwloc-plugins
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
say "gpu_check: prefix $PREFIX ready ($(elapsed) s)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/  gpu: /' | tee -a "$REPORT"

# 2. Build against this machine's PyTorch, NCCL required.
PY=${SHARDLOAD_PYTHON:-python3}
TORCH_PREFIX=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
say "  torch $("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)')"
BUILD=${BUILD_DIR:-build-gpu}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;$U;$LIB/cmake" \
  -DSHARDLOAD_WITH_NCCL=ON -DSHARDLOAD_BUILD_PYTHON=OFF -DSHARDLOAD_PCH=OFF \
  -DMPI_CXX_COMPILER="$U/bin/mpicxx" -DMPI_C_COMPILER="$U/bin/mpicc" \
  -DMPIEXEC_EXECUTABLE="$U/bin/mpirun" \
  -DHDF5_C_COMPILER_EXECUTABLE="$U/bin/no-h5cc" \
  -DHDF5_C_INCLUDE_DIR="$U/include/hdf5/serial" \
  -DHDF5_C_LIBRARY_hdf5="$LIB/hdf5/serial/libhdf5.so" \
  -DSHARDLOAD_PYTHON="$(command -v "$PY")" >"$OUT/configure.log" 2>&1
STATUS[configure]=$?
if [ "${STATUS[configure]}" = 0 ]; then
  cmake --build "$BUILD" -j "$(nproc)" --target shardload_cli gpu_tests mpi_tests gpu_load \
    >"$OUT/build.log" 2>&1
  STATUS[build]=$?
else
  STATUS[build]=skipped
fi
say "  configure ${STATUS[configure]}, build ${STATUS[build]} ($(elapsed) s)"
if [ "${STATUS[build]}" != 0 ]; then
  tail -40 "$OUT/configure.log" "$OUT/build.log" 2>/dev/null | tee -a "$REPORT"
  exit 1
fi

run() {  # run NAME TIMEOUT CMD...: records pass/fail and the tail of the output
  local name=$1 limit=$2
  shift 2
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  STATUS[$name]=$?
  say "  $name: exit ${STATUS[$name]} ($(elapsed) s)"
  grep -E "PASSED|FAILED|SKIPPED|tests ran|transport|moved by|all checks|GiB/s|wrong" "$OUT/$name.log" |
    tail -12 | sed 's/^/    /' | tee -a "$REPORT"
}

# 3. The gpu tests: 1 rank (NCCL not needed), 2 ranks on the one GPU (NCCL refuses a shared GPU:
#    the MPI fallback with host-to-device copies, reported as such).
run gpu_np1 300 mpirun -np 1 "$BUILD/tests/gpu_tests"
run gpu_np2 300 mpirun -np 2 "$BUILD/tests/gpu_tests"
run mpi_np2 300 mpirun -np 2 "$BUILD/tests/mpi_tests"
# 4. The command line and the demo on the GPU.
run demo_cuda_np2 300 mpirun -np 2 "$BUILD/shardload" demo --device cuda --quiet
"$PY" - "$OUT" <<'PYEOF'
import sys, torch
g = torch.Generator().manual_seed(3)
sd = {"w": torch.randn(2048, 1024, generator=g), "b": torch.randn(1024, generator=g).half(),
      "i": torch.arange(10)}
torch.save(sd, sys.argv[1] + "/ref.pt")
PYEOF
"$BUILD/shardload" convert "$OUT/ref.pt" "$OUT/cli_ckpt" --overwrite --quiet >/dev/null
run cli_load_cuda 300 mpirun -np 2 "$BUILD/shardload" load "$OUT/cli_ckpt" --into "$OUT/ref.pt" \
  --device cuda --json --quiet --split '^w$=1' --out "$OUT/cli_out.pt" --overwrite
"$PY" - "$OUT" <<'PYEOF' | tee -a "$OUT/report.txt"
import sys, torch
a = torch.load(sys.argv[1] + "/ref.pt"); b = torch.load(sys.argv[1] + "/cli_out.pt")
same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
print(f"    cli --device cuda --out: {'bit-exact' if same else 'DIFFERENT'}")
sys.exit(0 if same else 1)
PYEOF
STATUS[cli_bitexact]=$?
rm -rf "$OUT/cli_ckpt" "$OUT/cli_out.pt" "$OUT/ref.pt"

# 5. The measurement: 8 GiB into GPU tensors vs the machine's limits, in one run.
run gpu_load 420 mpirun -np 1 "$BUILD/bench/gpu_load" --gib "${SHARDLOAD_GPU_GIB:-8}" \
  --dir "${TMPDIR:-/tmp}/shardload-gpu-load" --repeat 3
grep '^{' "$OUT/gpu_load.log" | tail -1 >"$OUT/gpu_load.json"
rm -rf "${TMPDIR:-/tmp}/shardload-gpu-load"

{
  echo "{"
  first=1
  for k in "${!STATUS[@]}"; do
    [ $first = 1 ] || echo ","
    first=0
    printf '  "%s": "%s"' "$k" "${STATUS[$k]}"
  done
  echo ","
  printf '  "gpu_load": %s,\n' "$(cat "$OUT/gpu_load.json" 2>/dev/null || echo null)"
  printf '  "seconds": %s\n}\n' "$(elapsed)"
} >"$OUT/report.json"
say "gpu_check: done in $(elapsed) s; report in $OUT/report.txt and report.json"
for k in gpu_np1 gpu_np2 mpi_np2 demo_cuda_np2 cli_load_cuda cli_bitexact gpu_load; do
  [ "${STATUS[$k]:-1}" = 0 ] || exit 1
done
exit 0
