#!/usr/bin/env bash
# Installs what shardload's build and tests need, idempotently (fast when all is there):
# Debian packages, and the pinned `torch` wheel from PyPI whose bundled LibTorch we build against
# (plus h5py, safetensors, xxhash for the Python tests, mpi4py for `import shardload` under
# mpirun). Python: the first `python3` on PATH (the machine's pyenv Python with pip), or
# $SHARDLOAD_PYTHON.
set -euo pipefail

TORCH_VERSION=2.15.0
PY=${SHARDLOAD_PYTHON:-python3}
DEBS=(build-essential cmake ccache pkg-config libopenmpi-dev libpmix-dev openmpi-bin libhdf5-dev libxxhash-dev
      libcli11-dev nlohmann-json3-dev zlib1g-dev libgtest-dev clang-format
      clang libclang-rt-14-dev)

missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

have_py_pkgs() {
  "$PY" - "$TORCH_VERSION" <<'PYEOF' 2>/dev/null
import sys
import importlib.metadata as md
want = {"torch": sys.argv[1]}
for name in ("torch", "h5py", "safetensors", "xxhash", "numpy", "mpi4py"):
    v = md.version(name)
    if name in want and v.split("+")[0] != want[name]:
        sys.exit(1)
PYEOF
}
if ! have_py_pkgs; then
  echo "setup: installing torch==$TORCH_VERSION h5py safetensors xxhash numpy mpi4py with $PY" \
    "(large, once)"
  "$PY" -m pip install -q --disable-pip-version-check "torch==$TORCH_VERSION" h5py safetensors \
    xxhash numpy mpi4py
fi
echo "setup: ok (torch $("$PY" -c 'import torch; print(torch.__version__)'), $("$PY" --version))"
