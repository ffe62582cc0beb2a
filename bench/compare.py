"""Side-by-side load benchmark: shardload vs PyTorch DCP vs Megatron-LM's classic loader, on
the same state dict, the same ranks, in one run, against the machine's own limit measured in the
same run. Prints a markdown table (medians of --repeat runs; ratios to shardload).

    python3 bench/compare.py --bin build/shardload --ranks 2 --mib 512 --repeat 5

Scenarios: `replicated` (every rank needs every tensor: a data-parallel restart) and `split`
(tensors named big.* split along dim 0 across the ranks: tensor parallel). Timings are each
loader's own collective load (max over ranks), excluding process start-up; the page cache is warm
for everyone (the files were just written), so the limit is memory, not disk.
"""
import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
HERE = os.path.dirname(os.path.abspath(__file__))


def make_state(mib, path):
    """A transformer-like state dict: a few large matrices and many small vectors."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    big_bytes = mib * 2**20 * 15 // 16
    n_big = 8
    rows = big_bytes // n_big // (1024 * 4)
    for i in range(n_big):
        sd[f"big.{i}.weight"] = torch.randn(rows, 1024, generator=g)
    for i in range(256):
        sd[f"small.{i}.bias"] = torch.randn(mib * 2**20 // 16 // 256 // 4, generator=g)
    torch.save(sd, path)
    return sum(t.nbytes for t in sd.values())


def mpirun(ranks, *cmd):
    env = dict(ENV, MASTER_PORT=str(random.randint(20000, 40000)))  # torch.distributed peers
    r = subprocess.run(["mpirun", "-np", str(ranks), "--oversubscribe", *cmd], env=env,
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout


def last_json(out):
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON in output:\n{out}")


def machine_limit(files, repeat):
    """Reading the checkpoint's bytes once from the (warm) page cache into memory, one process:
    the floor for any loader that reads each byte once."""
    total = sum(os.path.getsize(f) for f in files)
    buf = bytearray(max(os.path.getsize(f) for f in files))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for f in files:
            with open(f, "rb", buffering=0) as fh:
                fh.readinto(buf)
        times.append(time.perf_counter() - t0)
    return total, statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="build/shardload")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--peers", default="dcp,megatron")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="shardload-bench-")
    try:
        ref = os.path.join(tmp, "ref.pt")
        nbytes = make_state(args.mib, ref)
        ours = os.path.join(tmp, "shardload")
        subprocess.run([args.bin, "convert", ref, ours, "--shards", str(args.ranks)], check=True,
                       env=ENV, capture_output=True)
        peers = [p for p in args.peers.split(",") if p]
        peer_dirs = {}
        for p in peers:
            peer_dirs[p] = os.path.join(tmp, p)
            try:
                mpirun(args.ranks, sys.executable, os.path.join(HERE, "peers.py"), p, "save",
                       "--ref", ref, "--dir", peer_dirs[p])
            except Exception as e:  # a peer that cannot run here is reported, not hidden
                print(f"note: {p} could not save: {str(e).splitlines()[0]}", file=sys.stderr)
                peer_dirs.pop(p)
        files = [os.path.join(ours, f) for f in sorted(os.listdir(ours)) if f.endswith(".h5")]
        limit_bytes, limit_s = machine_limit(files, args.repeat)

        rows = []
        for scenario in ("replicated", "split"):
            split = ["--split", r"^big\.=0"] if scenario == "split" else []
            needed = nbytes  # every stored byte is needed by some rank in both scenarios
            results = {}
            t = []
            for _ in range(args.repeat):
                j = last_json(mpirun(args.ranks, args.bin, "load", ours, "--into", ref, "--json",
                                     *split))
                assert j["ok"], j
                t.append(j["seconds"])
                read = j["bytes_read"]
            results["shardload"] = (statistics.median(t), read, 0)
            for p in peer_dirs:
                t, wrong = [], 0
                for _ in range(args.repeat):
                    j = last_json(mpirun(args.ranks, sys.executable, os.path.join(HERE, "peers.py"),
                                         p, "load", "--ref", ref, "--dir", peer_dirs[p],
                                         "--scenario", scenario))
                    t.append(j["seconds"])
                    wrong += j["wrong_tensors"]
                results[p] = (statistics.median(t), None, wrong)
            base = results["shardload"][0]
            for name, (secs, read, wrong) in results.items():
                rows.append((scenario, name, secs, needed / secs / 2**30,
                             secs / base, "-" if read is None else f"{read / needed:.2f}", wrong))
            rows.append((scenario, "machine limit (read once, 1 process)", limit_s,
                         limit_bytes / limit_s / 2**30, limit_s / base, "1.00", 0))
        print(f"{args.mib} MiB state dict ({nbytes} bytes: 8 large + 256 small tensors), "
              f"{args.ranks} ranks, median of {args.repeat}, torch {torch.__version__}\n")
        print("| scenario | loader | seconds | GiB/s | time vs shardload | bytes read / needed | wrong tensors |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for s, name, secs, gbs, ratio, read, wrong in rows:
            print(f"| {s} | {name} | {secs:.3f} | {gbs:.2f} | {ratio:.2f}x | {read} | {wrong} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
