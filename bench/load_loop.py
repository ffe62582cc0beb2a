"""Loads one checkpoint N times in one process through the Python API and prints the median:
the quick side-by-side of two builds (run it alternately with each build's PYTHONPATH), without
a process start per load. Not part of scripts/bench.sh.

    python3 bench/compare.py ...            # or: shardload convert ref.pt ckpt --shards 2
    PYTHONPATH=build/python mpirun -np 2 python3 bench/load_loop.py \\
        --ref ref.pt --ckpt ckpt --scenario split --repeat 11

--ref is a torch.save'd state dict (bench/compare.py's make_state); `split` loads the `big.*`
tensors as dim-0 slabs, `replicated` every tensor whole. Extra --option NAME=VALUE pairs go to
shardload.load (verify_checksums=0, read_in_place=1, staging_bytes=...).
"""
import argparse
import os
import statistics
import time

import torch

import shardload


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--scenario", choices=("replicated", "split"), default="replicated")
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--option", action="append", default=[])
    args = ap.parse_args()
    options = {}
    for o in args.option:
        k, v = o.split("=", 1)
        options[k] = bool(int(v)) if k in ("verify_checksums", "read_in_place") else int(v)
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
    ranks = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
    sd = torch.load(args.ref)
    split = None
    if args.scenario == "split":
        split = {r"^big\.": 0}
        for k in list(sd):
            if k.startswith("big."):
                rows = sd[k].shape[0] // ranks
                sd[k] = sd[k].narrow(0, rank * rows, rows).clone()
    seconds, cpu = [], []
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        shardload.load(sd, args.ckpt, split=split, **options)
        seconds.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    if rank == 0:
        # CPU: this process's threads together; near 1x the wall time on a rank bound to one
        # core means the rank computed all along, well below it that it waited.
        print(f"{args.scenario}: median {statistics.median(seconds):.4f} s, "
              f"min {min(seconds):.4f} s over {args.repeat} loads, "
              f"CPU median {statistics.median(cpu):.4f} s")


if __name__ == "__main__":
    main()
