#!/usr/bin/env python3
"""Who starts and ends MPI in `python3 train.py`: shardload when mpi4py is absent (and it then
finalises at exit: mpirun fails a job whose process exits without MPI_Finalize), mpi4py when it
came first, and shardload with mpi4py imported afterwards; also a plain `python3` without mpirun
(a singleton job of one rank).
Environment: PYTHONPATH with the built `shardload` package. Prints "N passed, M failed" last.
"""
import os
import shutil
import subprocess
import sys
import tempfile

ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
RESULTS = {"passed": 0, "failed": 0}

ROUND_TRIP = """
import torch, shardload
torch.manual_seed(1)
src = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4))
split = {r"0\\.weight": 0} if SPLIT else None
shardload.save(src, CKPT, overwrite=True, split=split, **KW)
torch.manual_seed(2)
dst = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4))
keys = shardload.load(dst, CKPT, split=split, **KW)
assert tuple(keys) == ([], []), keys
assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
"""


def check(cond, what):
    RESULTS["passed" if cond else "failed"] += 1
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr, flush=True)


def run(code, ranks, ckpt):
    prog = f"CKPT = {ckpt!r}\n" + code
    cmd = [sys.executable, "-c", prog]
    if ranks:
        cmd = ["mpirun", "-np", str(ranks), "--oversubscribe"] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    r.what = (f"\n  exit {r.returncode}\n  stdout {r.stdout[-1500:]!r}"
              f"\n  stderr {r.stderr[-3000:]!r}")
    return r


def main():
    tmp = tempfile.mkdtemp(prefix="shardload-mpi-init-")
    try:
        # No mpi4py anywhere: shardload starts MPI and finalises it at exit.
        r = run("SPLIT, KW = True, {}\n" + ROUND_TRIP + """
import sys
assert "mpi4py" not in sys.modules
print("ok")
""", 2, os.path.join(tmp, "a"))
        check(r.returncode == 0 and r.stdout.count("ok") == 2, "without mpi4py" + r.what)

        # mpi4py first: it started MPI; shardload uses it as it is, on a sub-communicator too.
        r = run("""
from mpi4py import MPI
SPLIT, KW = True, {"comm": MPI.COMM_WORLD}
""" + ROUND_TRIP + """
sub = MPI.COMM_WORLD.Split(MPI.COMM_WORLD.rank % 2, 0)
CKPT = CKPT + f"-{MPI.COMM_WORLD.rank % 2}"
KW = {"comm": sub}
""" + ROUND_TRIP + """
print("ok")
""", 2, os.path.join(tmp, "b"))
        check(r.returncode == 0 and r.stdout.count("ok") == 2, "mpi4py first" + r.what)

        # shardload first, mpi4py imported afterwards: mpi4py finds MPI running, and the one
        # MPI_Finalize at exit is shardload's.
        r = run("SPLIT, KW = True, {}\n" + ROUND_TRIP + """
from mpi4py import MPI
assert MPI.Is_initialized()
KW = {"comm": MPI.COMM_WORLD}
""" + ROUND_TRIP + """
print("ok")
""", 2, os.path.join(tmp, "c"))
        check(r.returncode == 0 and r.stdout.count("ok") == 2, "mpi4py after shardload" + r.what)

        # No mpirun: one rank.
        r = run("SPLIT, KW = False, {}\n" + ROUND_TRIP + "print('ok')\n", None,
                os.path.join(tmp, "d"))
        check(r.returncode == 0 and r.stdout.count("ok") == 1, "plain python3, no mpirun" + r.what)

        # Importing does not start MPI (a fast `import shardload`).
        r = run("""
import shardload
import mpi4py
mpi4py.rc.initialize = False  # only look
from mpi4py import MPI
assert not MPI.Is_initialized()
print("ok")
""", None, os.path.join(tmp, "e"))
        check(r.returncode == 0 and "ok" in r.stdout, "import starts no MPI" + r.what)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"mpi_init: {RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
