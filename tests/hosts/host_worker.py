#!/usr/bin/env python3
"""One rank of a multi-host job of tests/hosts (run by mpirun across namespace hosts).

Usage: host_worker.py MODE DIR [ARGS...]. Prints "RANK r HOST h <what>" lines on stdout that the
driver checks; exits non-zero on an exception other than the ones a mode expects.

Modes:
  save DIR CKPT            save the reference state, split over the job's ranks (Python API)
  load DIR CKPT            load CKPT into this rank's split of the reference, compare bit for bit
  locality DIR             this rank's host, node-local rank and size (launcher and MPI's shared-
                           memory split), for the per-host node-local checks (save prints it too)
  long-save DIR CKPT SECS  save a state large enough to take about SECS s to write (for faults)
  long-load DIR CKPT       load that large state back (for faults)
"""
import os
import socket
import sys
import time

import torch

SPLIT = {r"^(emb|fc\.weight|big\.\d+)$": 0}


def reference():
    """The state every test saves: split and replicated tensors, odd sizes, several dtypes."""
    g = torch.Generator().manual_seed(19)
    return {
        "emb": torch.randn(41, 16, generator=g),
        "fc.weight": torch.randn(23, 16, generator=g).to(torch.bfloat16),
        "fc.bias": torch.randn(23, generator=g).to(torch.float64),
        "step": torch.tensor(7, dtype=torch.int64),
        "mask": torch.rand(5, 3, generator=g) > 0.5,
    }


def large(mib, seed=23):
    """About `mib` MiB of float32 in 4 MiB tensors; the save of the fault tests uses seed 29, so
    that the checkpoint it replaces (seed 23) can be told from the new one."""
    g = torch.Generator().manual_seed(seed)
    n = max(1, mib // 4)
    return {f"big.{i}": torch.randn(1024, 1024, generator=g) for i in range(n)}


def slab(t, key, rank, size):
    for pattern, dim in SPLIT.items():
        import re
        if re.search(pattern, key):
            return torch.tensor_split(t, size, dim)[rank].clone()
    return t.clone()


def local_state(full, rank, size):
    return {k: slab(v, k, rank, size) for k, v in full.items()}


def main():
    mode, work = sys.argv[1], sys.argv[2]
    rank = int(os.environ["OMPI_COMM_WORLD_RANK"])
    size = int(os.environ["OMPI_COMM_WORLD_SIZE"])
    host = socket.gethostname()
    timeout = float(os.environ.get("HOSTS_TIMEOUT", "60"))

    def say(what):
        print(f"RANK {rank} HOST {host} {what}", flush=True)
        if what.startswith("ERROR"):  # also where a cut host's stdout cannot reach mpirun
            print(f"RANK {rank} HOST {host} {what}", file=sys.stderr, flush=True)

    if mode in ("locality", "save"):
        from mpi4py import MPI
        node = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED)
        hosts = MPI.COMM_WORLD.allgather(host)
        say(f"LOCAL {os.environ.get('OMPI_COMM_WORLD_LOCAL_RANK')} "
            f"{os.environ.get('OMPI_COMM_WORLD_LOCAL_SIZE')} SHARED {node.Get_rank()} "
            f"{node.Get_size()} SAMEHOST {hosts.count(host)}")
        node.Free()
        if mode == "locality":
            return

    import shardload
    t0 = time.monotonic()
    if mode == "save":
        r = shardload.save(local_state(reference(), rank, size), sys.argv[3], split=SPLIT,
                           overwrite=True, timeout=timeout)
        say(f"SAVED {r.bytes_written_total}")
    elif mode == "load":
        want = local_state(reference(), rank, size)
        got = {k: torch.zeros_like(v) for k, v in want.items()}
        shardload.load(got, sys.argv[3], split=SPLIT, timeout=timeout)
        bad = [k for k in want if not torch.equal(got[k], want[k])]
        say("EXACT" if not bad else f"DIFFERENT {bad}")
    elif mode == "long-save":
        state = local_state(large(int(sys.argv[4]), seed=29), rank, size)
        try:
            shardload.save(state, sys.argv[3], split=SPLIT, overwrite=True, timeout=timeout)
            say(f"SAVED {time.monotonic() - t0:.1f}")
        except shardload.Error as e:
            say(f"ERROR {time.monotonic() - t0:.1f} {str(e).splitlines()[0]}")
            sys.exit(3)
    elif mode == "long-load":
        want = local_state(large(int(sys.argv[4])), rank, size)
        got = {k: torch.zeros_like(v) for k, v in want.items()}
        try:
            shardload.load(got, sys.argv[3], split=SPLIT, timeout=timeout)
            bad = [k for k in want if not torch.equal(got[k], want[k])]
            say(f"{'EXACT' if not bad else 'DIFFERENT'} {time.monotonic() - t0:.1f}")
        except shardload.Error as e:
            say(f"ERROR {time.monotonic() - t0:.1f} {str(e).splitlines()[0]}")
            sys.exit(3)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
