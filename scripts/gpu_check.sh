#!/usr/bin/env bash
# The GPU check (issue 14): one prepared script for one short window (about 15 minutes, of which
# this takes under 9) on a machine with an NVIDIA GPU, the CUDA toolkit, g++, CMake, Ninja and a
# python3 with torch (whatever version: we build against its LibTorch), but no package registry
# and no MPI, HDF5 or other development packages.
#
#   here, with the package registry:  bash scripts/gpu_check.sh --fetch
#       Debian's packages for MPI, HDF5, xxHash, CLI11, nlohmann_json, GoogleTest and Ninja, and
#       every library they need beyond glibc and the GCC runtime, into .gpu-deps/ (ignored by
#       git, about 25 MB: name it in the device run's `carry`).
#   anywhere:                         bash scripts/gpu_check.sh --preflight
#       the preflight alone: what is missing, in seconds; exit 3 when anything is.
#   here, no GPU needed:              bash scripts/gpu_check.sh --build-only [OUTDIR]
#       the preflight without the GPU, then the same unpack, configure and Ninja build as on the
#       GPU machine. SHARDLOAD_TORCH_CMAKE=<site-packages>/torch/share/cmake builds against an
#       unpacked torch wheel instead of python3's (the proof against the GPU machine's torch).
#   there, on the GPU machine:        bash scripts/gpu_check.sh OUTDIR
#       preflight, build, then the GPU steps, each under its own limit (table below; they add up
#       to 530 s and a deadline 530 s after the start cuts any step short), and leaves exactly
#       three files: OUTDIR/report.txt, OUTDIR/report.json, OUTDIR/logs.tar.gz.
#
# Library paths reach only the commands that need them: mpirun (and through it every rank) runs
# via a generated wrapper that sets LD_LIBRARY_PATH and OPAL_PREFIX for itself; the linker gets
# -rpath-link; nothing is exported to the compilers, cmake or python3.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEPS=$ROOT/.gpu-deps
ARCH=x86_64-linux-gnu
PKGS=(openmpi-bin openmpi-common libopenmpi3 libopenmpi-dev libpmix2 libhwloc15 libevent-core-2.1-7
      libevent-pthreads-2.1-7 libevent-2.1-7 libfabric1 libucx0 libibverbs1 librdmacm1 libnl-3-200
      libnl-route-3-200 libpsm2-2 libpsm-infinipath1 libnuma1 libmunge2 libltdl7 libpciaccess0
      libudev1 libhdf5-dev libhdf5-103-1 libhdf5-hl-100 libhdf5-cpp-103-1 libhdf5-hl-cpp-100 libsz2
      libaec0 libaec-dev zlib1g zlib1g-dev libxxhash-dev libxxhash0 libcli11-dev nlohmann-json3-dev
      libgtest-dev googletest ninja-build)
# What every Linux with a C++ toolchain has: never carried.
BASE_SONAMES='^(libc|libm|libdl|libpthread|librt|libresolv|libutil|ld-linux-x86-64|libstdc\+\+|libgcc_s)\.so'

# Step limits in seconds, in the order the steps run (the sum is the whole check's limit).
declare -A LIMIT=([preflight]=20 [unpack]=15 [configure]=45 [build]=170 [gpu_np1]=40 [gpu_np2]=45
                  [gpu_np4]=50 [gpu_load]=90 [nccl_bcast]=25 [demo_cuda]=15 [cli_cuda]=15)
ORDER=(preflight unpack configure build gpu_np1 gpu_np2 gpu_np4 gpu_load nccl_bcast demo_cuda
       cli_cuda)
BUDGET=530      # seconds: the deadline for the last step; the report takes a few more
EXTRA_LIMIT=40  # gpu_load at 2 ranks (the NCCL route, 2 GiB), only when the steps left time

# ---------------------------------------------------------------------------------------------
# Shared helpers

# Prints the sonames that the ELF files under $1 need and that neither $1 nor the base provides.
sonames_missing_from() {
  local dir=$1 f
  local -a files
  mapfile -t files < <(find "$dir" -type f \( -name '*.so*' -o -perm -u+x \))
  {
    for f in "${files[@]}"; do
      readelf -d "$f" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'
    done
  } | sort -u >"$dir/.needed"
  find "$dir" \( -type f -o -type l \) -name '*.so*' -printf '%f\n' | sort -u >"$dir/.provided"
  comm -23 "$dir/.needed" "$dir/.provided" | grep -Ev "$BASE_SONAMES" || true
  rm -f "$dir/.needed" "$dir/.provided"
}

# Unpacks every .deb of $DEPS into $1 (no installation, no scripts), makes absolute symlinks point
# inside $1, and names Debian's alternatives (dpkg -x does not set them up).
unpack_deps() {
  local prefix=$1 deb member link target
  mkdir -p "$prefix"
  for deb in "$DEPS"/*.deb; do
    if command -v dpkg-deb >/dev/null; then
      dpkg-deb -x "$deb" "$prefix" || return 1
    else
      member=$(ar t "$deb" | grep '^data.tar') || return 1
      case "$member" in
        *.xz) ar p "$deb" "$member" | tar -xJ -C "$prefix" ;;
        *.zst) ar p "$deb" "$member" | zstd -dc | tar -x -C "$prefix" ;;
        *.gz) ar p "$deb" "$member" | tar -xz -C "$prefix" ;;
        *) ar p "$deb" "$member" | tar -x -C "$prefix" ;;
      esac || return 1
    fi
  done
  while IFS= read -r link; do
    target=$(readlink "$link")
    if [ -e "$prefix$target" ]; then ln -sfn "$prefix$target" "$link"; fi
  done < <(find "$prefix" -type l -lname '/*')
  local u=$prefix/usr
  # libpsm-infinipath1 names its library through an alternative too.
  if [ -e "$u/lib/libpsm1/libpsm_infinipath.so.1.16" ]; then
    ln -sfn ../libpsm1/libpsm_infinipath.so.1.16 "$u/lib/$ARCH/libpsm_infinipath.so.1"
  fi
  ln -sfn orterun "$u/bin/mpirun"
  ln -sfn opal_wrapper "$u/bin/mpicxx"
  ln -sfn opal_wrapper "$u/bin/mpicc"
}

# ---------------------------------------------------------------------------------------------
# --fetch: here, where Debian's registry is reachable.
if [ "${1:-}" = "--fetch" ]; then
  command -v apt-get >/dev/null || { echo "gpu_check --fetch: needs apt-get" >&2; exit 2; }
  rm -rf "$DEPS" && mkdir -p "$DEPS"
  (cd "$DEPS" && apt-get download -q "${PKGS[@]}") >/dev/null || exit 1
  # Close over the libraries the unpacked files still need, by the packages that hold them here.
  scratch=$(mktemp -d)
  for round in 1 2 3 4 5 6 7 8; do
    rm -rf "$scratch/p" && unpack_deps "$scratch/p" || exit 1
    mapfile -t missing < <(sonames_missing_from "$scratch/p")
    more=()
    for so in "${missing[@]}"; do
      pkg=$(dpkg -S "*/$so" 2>/dev/null | grep -v -- '-dev' | head -1 | cut -d: -f1)
      [ -n "$pkg" ] && ! compgen -G "$DEPS/${pkg}_*.deb" >/dev/null && more+=("$pkg")
    done
    mapfile -t more < <(printf '%s\n' "${more[@]}" | sort -u | grep .)
    ((${#more[@]})) || break
    echo "gpu_check --fetch: round $round adds ${more[*]}"
    (cd "$DEPS" && apt-get download -q "${more[@]}") >/dev/null || exit 1
  done
  sonames_missing_from "$scratch/p" >"$DEPS/system-sonames.txt"
  rm -rf "$scratch"
  exclude=$(git rev-parse --git-path info/exclude)
  mkdir -p "$(dirname "$exclude")"
  grep -qx '/.gpu-deps/' "$exclude" 2>/dev/null || echo '/.gpu-deps/' >>"$exclude"
  echo "gpu_check --fetch: $(find "$DEPS" -name '*.deb' | wc -l) packages, $(du -sh "$DEPS" | cut -f1) in" \
    "$DEPS; still needed from the GPU machine: $(tr '\n' ' ' <"$DEPS/system-sonames.txt")"
  exit 0
fi

# --fetch-torch DIR [VERSION]: here, a torch wheel (default 2.11.0, the GPU machine's) and the
# nvidia-* wheels its LibTorch links against, unpacked into DIR (outside the repository: several
# GB), for --build-only with SHARDLOAD_TORCH_CMAKE=DIR/site/torch/share/cmake.
if [ "${1:-}" = "--fetch-torch" ]; then
  dir=${2:?usage: bash scripts/gpu_check.sh --fetch-torch DIR [VERSION]}
  mkdir -p "$dir/whl" "$dir/site" && dir=$(cd "$dir" && pwd)
  python3 - "$dir" "${3:-2.11.0}" <<'PYEOF' || exit 1
import glob, re, subprocess, sys, zipfile
d, version = sys.argv[1], sys.argv[2]
pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
       "--python-version", "3.12", "--implementation", "cp", "-d", d + "/whl"] + sum(
    (["--platform", p] for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                                 "manylinux_2_17_x86_64", "manylinux2014_x86_64")), [])
def get(req):  # the pinned wheel, else the newest of the same major version
    if subprocess.run(pip + [req]).returncode == 0:
        return
    name, _, pin = req.partition("==")
    major = pin.split(".")[0]
    print(f"gpu_check --fetch-torch: {req} is not on the index; the newest {name} {major}.x instead")
    if subprocess.run(pip + [f"{name}>={major},<{int(major) + 1}"]).returncode != 0:
        print(f"gpu_check --fetch-torch: no {name} {major}.x either: left out (the build says"
              " whether LibTorch needs it)")
def requires(wheel, extras=None):  # (name, [extras], pin) of a wheel's pinned Linux needs
    z = zipfile.ZipFile(wheel)
    meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    for line in meta.splitlines():
        m = re.match(r"Requires-Dist: ([A-Za-z0-9_.-]+)(\[[^]]*\])?\s*==\s*([0-9.]+)", line)
        extra = re.search(r"extra == '([^']*)'", line)
        if not m or "win32" in line and "linux" not in line:
            continue
        if (extra.group(1) in extras) if (extras and extra) else (not extras and not extra):
            yield m.group(1), (m.group(2) or "[]")[1:-1].split(","), m.group(3).rstrip(".")
get(f"torch=={version}")
torch_whl = glob.glob(f"{d}/whl/torch-{version}*.whl")[0]
for name, extras, pin in requires(torch_whl):
    if name == "cuda-toolkit":
        get(f"cuda-toolkit=={pin}")
        tk = glob.glob(f"{d}/whl/cuda_toolkit-{pin}*.whl")[0]
        for sub, _, subpin in requires(tk, set(extras)):
            get(f"{sub}=={subpin}")
    elif name.startswith("nvidia-"):
        get(f"{name}=={pin}")
for w in [torch_whl] + glob.glob(f"{d}/whl/nvidia_*.whl"):
    zipfile.ZipFile(w).extractall(d + "/site")
print(f"gpu_check --fetch-torch: {d}/site/torch/share/cmake")
PYEOF
  exit 0
fi

MODE=check
case "${1:-}" in
  --preflight) MODE=preflight; shift ;;
  --build-only) MODE=build; shift ;;
  -h | --help | "")
    sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'
    [ -n "${1:-}" ] && exit 0
    exit 2 ;;
esac
NEED_GPU=1
if [ "$MODE" = build ]; then  # no window to fit: the build may take what a small machine needs
  NEED_GPU=0
  BUDGET=${SHARDLOAD_BUILD_SECONDS:-7200}
  LIMIT[configure]=600 LIMIT[build]=$BUDGET
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/shardload-gpu-check.XXXXXX")
LOGS=$WORK/logs
mkdir -p "$LOGS"
if [ "$MODE" = preflight ]; then
  OUT=$WORK/out  # the preflight leaves nothing behind
else
  OUT=${1:-$ROOT/build-gpu-check}
fi
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
rm -f "$OUT/report.txt" "$OUT/report.json" "$OUT/logs.tar.gz"
REPORT=$OUT/report.txt
: >"$REPORT"
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET))
declare -A STATUS SECONDS_OF RC
say() { echo "$*" | tee -a "$REPORT"; }
now() { date +%s; }

# ---------------------------------------------------------------------------------------------
# The report: report.txt as it goes, report.json and logs.tar.gz at the end (also on a failure).
finish() {
  local code=$1
  local steps_tsv=$WORK/steps.tsv
  : >"$steps_tsv"
  for s in "${ORDER[@]}" gpu_load_np2; do
    [ -n "${STATUS[$s]:-}" ] || continue
    printf '%s\t%s\t%s\t%s\t%s\n' "$s" "${STATUS[$s]}" "${RC[$s]:-}" "${SECONDS_OF[$s]:-}" \
      "${LIMIT[$s]:-$EXTRA_LIMIT}" >>"$steps_tsv"
  done
  say "gpu_check: $([ "$code" = 0 ] && echo ok || echo FAILED) in $(($(now) - T0)) s" \
    "(budget $BUDGET s)$([ "$MODE" = preflight ] || echo "; report in $OUT")"
  python3 - "$WORK" "$OUT/report.json" "$code" "$(($(now) - T0))" "$MODE" <<'PYEOF' ||
import json, sys, pathlib
work, out, code, secs, mode = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
def jline(name):  # the last JSON line a bench printed
    p = work / "logs" / f"{name}.log"
    if not p.exists():
        return None
    for line in reversed(p.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None
steps = {}
for line in (work / "steps.tsv").read_text().splitlines():
    name, status, rc, seconds, limit = line.split("\t")
    steps[name] = {"status": status, "rc": int(rc) if rc else None,
                   "seconds": int(seconds) if seconds else None, "limit": int(limit)}
facts = {}
fp = work / "facts.tsv"
if fp.exists():
    for line in fp.read_text().splitlines():
        k, _, v = line.partition("\t")
        facts[k] = v
json.dump({"ok": code == 0, "mode": mode, "seconds": secs, "facts": facts, "steps": steps,
           "gpu_load": jline("gpu_load"), "gpu_load_np2": jline("gpu_load_np2"),
           "nccl_bcast": jline("nccl_bcast")}, open(out, "w"), indent=1)
PYEOF
    printf '{"ok": false, "error": "python3 could not write the report"}\n' >"$OUT/report.json"
  tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs 2>/dev/null
  rm -rf "$WORK"
  exit "$code"
}
fact() {  # fact KEY WORDS...: one line of the report, and a field of report.json
  local key=$1
  shift
  printf '%s\t%s\n' "$key" "$*" >>"$WORK/facts.tsv"
  say "  $key: $*"
}

# step NAME CMD...: runs CMD under NAME's limit (cut to the deadline), its output in NAME.log.
step() {
  local name=$1 limit=${LIMIT[$1]:-$EXTRA_LIMIT}
  shift
  local left=$((DEADLINE - $(now)))
  ((limit > left)) && limit=$left
  if ((limit < 5)); then
    STATUS[$name]=skipped SECONDS_OF[$name]=0
    say "  $(printf '%-13s' "$name") skipped: out of time"
    return 1
  fi
  local t
  t=$(now)
  timeout -k 5 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  RC[$name]=$rc SECONDS_OF[$name]=$(($(now) - t))
  case $rc in
    0) STATUS[$name]=pass ;;
    124 | 137) STATUS[$name]=timeout ;;
    *) STATUS[$name]=fail ;;
  esac
  say "  $(printf '%-13s %-8s %4s s (limit %s s)' "$name" "${STATUS[$name]}" \
    "${SECONDS_OF[$name]}" "$limit")$([ "$rc" = 0 ] || echo ", exit $rc")"
  return "$rc"
}
# The lines of a step's log that say what happened, indented into the report.
excerpt() {
  grep -E "$2" "$LOGS/$1.log" 2>/dev/null | tail -"${3:-12}" | sed 's/^/      /' | tee -a "$REPORT"
}

# ---------------------------------------------------------------------------------------------
# 1. Preflight: seconds, every missing piece named, then stop.
PROBLEMS=()
problem() { PROBLEMS+=("$*"); }
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }

preflight() {
  say "gpu_check ($MODE) $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), $(nproc) cores"
  if ((NEED_GPU)); then
    local nvsmi
    nvsmi=$(command -v nvidia-smi || ls /usr/local/nvidia/bin/nvidia-smi 2>/dev/null || true)
    if [ -z "$nvsmi" ]; then
      problem "no GPU: nvidia-smi not found on PATH (this check needs a machine with an NVIDIA GPU;" \
        "bash scripts/gpu_check.sh --build-only builds without one)"
    elif ! gpus=$(timeout 10 "$nvsmi" --query-gpu=name,memory.total,driver_version,pci.bus_id \
      --format=csv,noheader 2>&1) || [ -z "$gpus" ]; then
      problem "no GPU: nvidia-smi found no usable device: $(echo "$gpus" | head -2 | tr '\n' ' ')"
    else
      fact gpu "$(echo "$gpus" | head -1) ($(echo "$gpus" | wc -l) device(s))"
    fi
  fi
  NVCC=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
  if [ -z "$NVCC" ]; then
    problem "no nvcc (the CUDA toolkit): LibTorch's CMake config needs it; not on PATH nor in" \
      "/usr/local/cuda/bin"
  else
    fact nvcc "$("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p') ($NVCC)"
  fi
  CXX_BIN=${CXX:-$(command -v g++ || command -v c++ || true)}
  if [ -z "$CXX_BIN" ]; then
    problem "no g++: a C++20 compiler is needed"
  elif ! version_ge "$("$CXX_BIN" -dumpfullversion 2>/dev/null || echo 0)" 10; then
    problem "g++ $("$CXX_BIN" -dumpfullversion) is too old: C++20 needs 10 or newer"
  else
    fact g++ "$("$CXX_BIN" -dumpfullversion) ($CXX_BIN)"
  fi
  CMAKE_BIN=$(command -v cmake || true)
  CTEST_BIN=$(command -v ctest || true)
  if [ -z "$CMAKE_BIN" ] || [ -z "$CTEST_BIN" ]; then
    problem "no cmake/ctest on PATH"
  else
    local v
    v=$("$CMAKE_BIN" --version | sed -n '1s/cmake version //p')
    version_ge "$v" 3.25 || problem "cmake $v is too old: 3.25 or newer is needed"
    fact cmake "$v ($CMAKE_BIN)"
  fi
  NINJA_BIN=$(command -v ninja || true)
  if [ -z "$NINJA_BIN" ] && ! ls "$DEPS"/ninja-build_*.deb >/dev/null 2>&1; then
    problem "no ninja on PATH and no ninja-build package in .gpu-deps/"
  fi
  fact ninja "${NINJA_BIN:-from .gpu-deps (ninja-build)}"
  local t
  if [ -n "${SHARDLOAD_TORCH_CMAKE:-}" ]; then
    TORCH_CMAKE=$SHARDLOAD_TORCH_CMAKE
    t=$(sed -n 's/.*PACKAGE_VERSION "\([^"]*\)".*/\1/p' "$TORCH_CMAKE/Torch/TorchConfigVersion.cmake" \
      2>/dev/null | head -1)
    [ -d "$TORCH_CMAKE/Torch" ] || problem "SHARDLOAD_TORCH_CMAKE=$TORCH_CMAKE has no Torch/ config"
    fact torch "${t:-?} from SHARDLOAD_TORCH_CMAKE=$TORCH_CMAKE"
  elif ! command -v python3 >/dev/null; then
    problem "no python3: the build uses the LibTorch of python3's torch"
  elif ! t=$(timeout 15 python3 -c '
import os, torch
site = os.path.dirname(os.path.dirname(torch.__file__))
cuda = torch.version.cuda or ""
gpus = torch.cuda.device_count() if cuda else 0
try:
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if cuda else ""
except Exception:
    nccl = ""
print(torch.__version__, cuda or "none", gpus, nccl or "none", torch.utils.cmake_prefix_path,
      os.path.isfile(os.path.join(site, "nvidia", "nccl", "include", "nccl.h")), sep="\t")
' 2>"$LOGS/preflight_python.log"); then
    problem "python3 has no usable torch: $(tail -1 "$LOGS/preflight_python.log")"
  else
    IFS=$'\t' read -r TORCH_VERSION TORCH_CUDA TORCH_GPUS TORCH_NCCL TORCH_CMAKE HAS_NCCL_H <<<"$t"
    fact torch "$TORCH_VERSION, CUDA $TORCH_CUDA, NCCL $TORCH_NCCL, sees $TORCH_GPUS GPU(s)," \
      "LibTorch at $TORCH_CMAKE"
    [ "$TORCH_CUDA" = none ] && problem "python3's torch $TORCH_VERSION is a CPU-only build: the" \
      "NCCL transport and the gpu tests need a CUDA build"
    ((NEED_GPU)) && [ "$TORCH_GPUS" = 0 ] && [ "$TORCH_CUDA" != none ] && [ -n "${gpus:-}" ] &&
      problem "no GPU: python3's torch $TORCH_VERSION sees no CUDA device"
    [ "$HAS_NCCL_H" = True ] || problem "no nccl.h beside python3's torch (nvidia/nccl/include):" \
      "the NCCL transport is built against the NCCL that torch ships"
  fi
  local debs
  debs=$(find "$DEPS" -name '*.deb' 2>/dev/null | wc -l)
  if [ "$debs" -lt 20 ]; then
    problem "no packages in .gpu-deps/ ($debs): run 'bash scripts/gpu_check.sh --fetch' where" \
      "Debian's registry is reachable, and carry .gpu-deps"
  else
    fact deps "$debs packages, $(du -sh "$DEPS" | cut -f1) in .gpu-deps"
    command -v dpkg-deb >/dev/null || command -v ar >/dev/null ||
      problem "neither dpkg-deb nor ar to unpack .gpu-deps"
    local so
    while read -r so; do
      [ -z "$so" ] || ldconfig -p 2>/dev/null | grep -q "^[[:space:]]*$so " ||
        problem "the system lacks $so, which the unpacked packages need"
    done <"$DEPS/system-sonames.txt"
  fi
  local need_gib=6
  ((NEED_GPU)) && need_gib=24
  local free_gib
  free_gib=$(($(df -Pk "${TMPDIR:-/tmp}" | awk 'NR==2 {print $4}') / 1048576))
  ((free_gib >= need_gib)) || problem "only $free_gib GiB free in ${TMPDIR:-/tmp}: $need_gib needed"
  if ((${#PROBLEMS[@]})); then
    local p
    for p in "${PROBLEMS[@]}"; do say "gpu_check: $p"; done
    return 3
  fi
  return 0
}

STATUS[preflight]=running
t=$(now)
preflight
rc=$?
RC[preflight]=$rc SECONDS_OF[preflight]=$(($(now) - t))
if [ "$rc" != 0 ]; then
  STATUS[preflight]=fail
  say "gpu_check: preflight refused (exit 3): nothing was built or run"
  finish 3
fi
STATUS[preflight]=pass
say "  preflight     pass     ${SECONDS_OF[preflight]} s (limit ${LIMIT[preflight]} s)"
[ "$MODE" = preflight ] && finish 0

# ---------------------------------------------------------------------------------------------
# 2. The private prefix: Debian's packages unpacked, not installed; wrappers that carry the
#    library paths to mpirun (and its ranks) and to the MPI compiler wrapper alone.
# On the GPU machine both live in the work folder; --build-only keeps them beside each other
# (the build records the prefix's paths), so that a second run rebuilds only what changed.
if [ "$MODE" = build ]; then
  BUILD=$(realpath -m "${BUILD_DIR:-$ROOT/build-gpu}")
  PREFIX=$BUILD-deps
else
  BUILD=${BUILD_DIR:-$WORK/build}
  PREFIX=$WORK/deps
fi
U=$PREFIX/usr
LIB=$U/lib/$ARCH
LIBPATH=$LIB:$PREFIX/lib/$ARCH:$LIB/openmpi/lib:$LIB/hdf5/serial:$LIB/pmix2/lib
RPATH_LINK=$LIBPATH
make_wrappers() {
  mkdir -p "$PREFIX/wrap" "$PREFIX/no-hwloc-plugins" || return 1
  local tool
  for tool in mpirun mpicxx mpicc; do
    cat >"$PREFIX/wrap/$tool" <<EOF
#!/bin/sh
# $tool from .gpu-deps: its library paths, for it and what it starts, and nothing else.
export LD_LIBRARY_PATH="$LIBPATH\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export OPAL_PREFIX="$U" PMIX_INSTALL_PREFIX="$LIB/pmix2"
export OMPI_MCA_mca_base_component_path="$LIB/openmpi/lib/openmpi3"
export PMIX_MCA_mca_base_component_path="$LIB/pmix2/lib/pmix"
export HWLOC_PLUGINS_PATH="$PREFIX/no-hwloc-plugins"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader,tcp
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_btl_tcp_if_include=lo
export OMPI_MCA_oob_tcp_if_include=lo
exec "$U/bin/$tool" "\$@"
EOF
    chmod +x "$PREFIX/wrap/$tool" || return 1
  done
  if [ -z "$NINJA_BIN" ]; then NINJA_BIN=$U/bin/ninja; fi
}
export -f unpack_deps
export DEPS
if ! step unpack bash -c "unpack_deps '$PREFIX'" || ! make_wrappers; then
  STATUS[unpack]=fail
  finish 1
fi
MPIRUN=$PREFIX/wrap/mpirun
# 3. Configure and build with Ninja against that LibTorch, NCCL required.
step configure "$CMAKE_BIN" -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_MAKE_PROGRAM="$NINJA_BIN" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER="$CXX_BIN" \
  -DCUDAToolkit_ROOT="$(dirname "$(dirname "$NVCC")")" \
  -DCMAKE_PREFIX_PATH="$TORCH_CMAKE;$U;$LIB/cmake" \
  -DSHARDLOAD_WITH_NCCL=ON -DSHARDLOAD_BUILD_PYTHON=OFF -DSHARDLOAD_PCH=OFF \
  -DMPI_CXX_COMPILER="$PREFIX/wrap/mpicxx" -DMPI_C_COMPILER="$PREFIX/wrap/mpicc" \
  -DMPIEXEC_EXECUTABLE="$MPIRUN" "-DMPIEXEC_PREFLAGS=--bind-to;none" \
  -DHDF5_C_COMPILER_EXECUTABLE="$U/bin/no-h5cc" \
  -DHDF5_C_INCLUDE_DIR="$U/include/hdf5/serial" \
  -DHDF5_C_LIBRARY_hdf5="$LIB/hdf5/serial/libhdf5.so" \
  -DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath-link,$RPATH_LINK" \
  -DCMAKE_SHARED_LINKER_FLAGS="-Wl,-rpath-link,$RPATH_LINK" \
  -DSHARDLOAD_PYTHON="$(command -v python3 || echo python3)" || {
  excerpt configure 'Error|error|not found|NOTFOUND' 20
  finish 1
}
excerpt configure 'NCCL transport|Found Torch|Found MPI:|Found HDF5' 6
TARGETS=(shardload shardload_cli gpu_tests gpu_load gpu_nccl_bcast)
step build "$CMAKE_BIN" --build "$BUILD" -j "$(nproc)" --target "${TARGETS[@]}" || {
  excerpt build 'error|Error|FAILED|undefined reference' 25
  finish 1
}
fact built "${TARGETS[*]} against torch ${TORCH_VERSION:-$TORCH_CMAKE}"
if [ "$MODE" = build ]; then
  # No GPU here: the gpu tests at 2 ranks must start through the wrapped mpirun, find their
  # libraries, and report themselves skipped (ctest: "Skipped", never "Passed").
  ORDER+=(smoke_np2) LIMIT[smoke_np2]=120
  step smoke_np2 "$CTEST_BIN" --test-dir "$BUILD" -L gpu -R '^gpu_np2$' -V
  if ! grep -q "no CUDA device is visible" "$LOGS/smoke_np2.log"; then STATUS[smoke_np2]=fail; fi
  excerpt smoke_np2 'SKIPPED|Skipped|tests passed|no CUDA|rror' 6
  [ "${STATUS[smoke_np2]}" = pass ] && finish 0
  finish 1
fi

# ---------------------------------------------------------------------------------------------
# 4. The GPU steps. Several ranks share the one GPU: each gets an NCCL_HOSTID of its own, so NCCL
#    takes them for distinct hosts (socket transport over the loopback) and shardload for
#    distinct GPUs: a real NCCL communicator, as between the GPUs of several nodes.
NCCL_ENV=(env NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1 NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1)
# shellcheck disable=SC2016  # expanded by each rank's sh, not here
PER_RANK=(sh -c 'NCCL_HOSTID=gpucheck-$OMPI_COMM_WORLD_RANK exec "$@"' sh)
MPI_FLAGS=(--bind-to none --oversubscribe)
SCRATCH=$WORK/scratch
mkdir -p "$SCRATCH"

gpu_tests() {  # the ctest entry of the gpu label at $1 ranks
  step "gpu_np$1" "$CTEST_BIN" --test-dir "$BUILD" -L gpu -R "^gpu_np$1\$" -V
  # ctest passes a run whose tests all skipped: that is a failure here.
  if grep -q "no CUDA device is visible" "$LOGS/gpu_np$1.log"; then STATUS[gpu_np$1]=skipped; fi
  excerpt "gpu_np$1" '\[  PASSED  \]|\[  FAILED  \]|\[  SKIPPED \]|tests passed|Failure|transport' 8
}
gpu_tests 1
gpu_tests 2
gpu_tests 4

# The measurement: 8 GiB into CUDA tensors at 1 rank against min(page-cache read, pinned H2D).
step gpu_load "${NCCL_ENV[@]}" "$MPIRUN" -np 1 "${MPI_FLAGS[@]}" "$BUILD/bench/gpu_load" \
  --gib "${SHARDLOAD_GPU_GIB:-8}" --dir "$SCRATCH/gpu-load" --repeat 3
excerpt gpu_load 'gpu_load:|GiB/s|save from|wrong' 8
rm -rf "$SCRATCH/gpu-load"

# NCCL's own broadcast bandwidth at 2 ranks: the limit of shardload's NCCL route here.
step nccl_bcast "${NCCL_ENV[@]}" NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET "$MPIRUN" -np 2 \
  "${MPI_FLAGS[@]}" "${PER_RANK[@]}" "$BUILD/bench/gpu_nccl_bcast" --max-mib 1024 --iters 5
excerpt nccl_bcast '^gpu_nccl_bcast|^ +[0-9]+ |via NET|Using network' 10

# The demo and the command line on the GPU, at 2 ranks.
step demo_cuda "${NCCL_ENV[@]}" "$MPIRUN" -np 2 "${MPI_FLAGS[@]}" "${PER_RANK[@]}" \
  "$BUILD/shardload" demo --device cuda --quiet --dir "$SCRATCH/demo"
excerpt demo_cuda 'transport|bit|moved|ok|FAIL|rror' 6
# shellcheck disable=SC2016,SC2317  # run through `bash -c` under the step's limit
cli_cuda() {  # a torch.save file, converted, loaded at 2 ranks into CUDA tensors, compared
  set -e
  local flags=(--bind-to none --oversubscribe)
  python3 - "$GC_SCRATCH" <<'PYEOF'
import sys, torch
g = torch.Generator().manual_seed(3)
sd = {"w": torch.randn(2048, 1024, generator=g), "b": torch.randn(1024, generator=g).half(),
      "i": torch.arange(10), "step": torch.tensor(7)}
torch.save(sd, sys.argv[1] + "/ref.pt")
PYEOF
  "$GC_MPIRUN" -np 1 "${flags[@]}" "$GC_BUILD/shardload" convert "$GC_SCRATCH/ref.pt" \
    "$GC_SCRATCH/cli_ckpt" --shards 2 --overwrite --quiet
  "$GC_MPIRUN" -np 2 "${flags[@]}" sh -c 'NCCL_HOSTID=gpucheck-$OMPI_COMM_WORLD_RANK exec "$@"' sh \
    "$GC_BUILD/shardload" load "$GC_SCRATCH/cli_ckpt" --into "$GC_SCRATCH/ref.pt" --device cuda \
    --json --quiet --timeout 60 --split '^w$=1' --out "$GC_SCRATCH/cli_out.pt" --overwrite
  python3 - "$GC_SCRATCH" <<'PYEOF'
import sys, torch
a = torch.load(sys.argv[1] + "/ref.pt"); b = torch.load(sys.argv[1] + "/cli_out.pt")
same = a.keys() == b.keys() and all(
    a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and
    a[k].reshape(-1).view(torch.uint8).equal(b[k].reshape(-1).view(torch.uint8)) for k in a)
print(f"cli load --device cuda --out: {'bit-exact' if same else 'DIFFERENT'}")
sys.exit(0 if same else 1)
PYEOF
}
export -f cli_cuda
export GC_MPIRUN=$MPIRUN GC_BUILD=$BUILD GC_SCRATCH=$SCRATCH
step cli_cuda "${NCCL_ENV[@]}" bash -c cli_cuda
excerpt cli_cuda 'bit-exact|DIFFERENT|"ok"|rror' 4

# With time left: the same load at 2 ranks (2 GiB, every tensor to both), over NCCL.
if (($(now) + EXTRA_LIMIT + 5 < DEADLINE)); then
  step gpu_load_np2 "${NCCL_ENV[@]}" "$MPIRUN" -np 2 "${MPI_FLAGS[@]}" "${PER_RANK[@]}" \
    "$BUILD/bench/gpu_load" --gib 2 --dir "$SCRATCH/gpu-load" --repeat 3
  excerpt gpu_load_np2 'gpu_load:|shardload load|wrong' 4
fi
rm -rf "$SCRATCH"

code=0
for s in "${ORDER[@]}"; do [ "${STATUS[$s]:-}" = pass ] || code=1; done
finish "$code"
