"""Side-by-side load benchmark: shardload vs PyTorch DCP vs Megatron-LM's classic loader vs plain
torch.load, on the same state dict, the same ranks, in one run, against the machine's own limit
measured in the same run. Prints a markdown table (medians of --repeat runs; ratios to shardload)
and, with --json-out, writes every figure to a JSON file.

    python3 bench/compare.py --bin build/shardload --ranks 2 --mib 512 --repeat 5 [--cold]

Scenarios: `replicated` (every rank needs every tensor: a data-parallel restart) and `split`
(tensors named big.* split along dim 0 across the ranks: tensor parallel). Timings are each
loader's own collective load (max over ranks), excluding process start-up.

The limit is honest for P ranks (build/bench/read_floor, plain C++ and MPI): the ranks read
disjoint parts of shardload's files in parallel with pread and, for `replicated`, exchange them
with plain MPI broadcasts so that every rank holds every byte; for `split` each rank reads its
share, no exchange. No loader that reads each byte once can beat it.

Warm (default): the files were just written, so they are in the page cache and the limit is
memory bandwidth. --cold: before every load (every loader, and the limit) the files are flushed
and evicted from the page cache (posix_fadvise DONTNEED), so reads come from the disk.

Also measured: shardload with `--direct-io` (cold runs only: reads around the page cache),
shardload with its checksum checks off (`--no-verify`), the cost of verifying every byte, and
shardload with `--read-in-place` (the reading rank's bytes straight into its tensors, no staging
copy; a corrupt chunk then leaves that tensor holding unverified bytes).
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

import torch

ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
HERE = os.path.dirname(os.path.abspath(__file__))


def make_state(mib, path, small_share=16, big_count=8, small_count=256):
    """A transformer-like state dict: a few large matrices and many small vectors."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    big_bytes = mib * 2**20 * (small_share - 1) // small_share
    rows = max(1, big_bytes // big_count // (1024 * 4))
    for i in range(big_count):
        sd[f"big.{i}.weight"] = torch.randn(rows, 1024, generator=g)
    for i in range(small_count):
        sd[f"small.{i}.bias"] = torch.randn(max(1, mib * 2**20 // small_share // small_count // 4),
                                            generator=g)
    torch.save(sd, path)
    return sum(t.nbytes for t in sd.values())


def mpirun(ranks, *cmd):
    env = dict(ENV, MASTER_PORT=str(random.randint(20000, 40000)))  # torch.distributed peers
    r = subprocess.run(["mpirun", "-np", str(ranks), "--oversubscribe", *cmd], env=env,
                       capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout


def last_json(out):
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON in output:\n{out}")


def files_under(path):
    out = []
    for root, _, names in os.walk(path):
        out += [os.path.join(root, n) for n in names]
    return sorted(out)


def evict(paths):
    """Flushes and drops the files from the page cache (the next read comes from the disk)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def shardload_load(args, ours, ref, split, *flags):
    cmd = [args.bin, "load", ours, "--into", ref, "--json", "--quiet", *split, *flags]
    j = last_json(mpirun(args.ranks, *cmd))
    assert j["ok"], j
    return j


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="build/shardload")
    ap.add_argument("--floor", default=None, help="read_floor binary (default: beside --bin)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--peers", default="dcp,megatron,torchload")
    ap.add_argument("--cold", action="store_true", help="evict the files before every load")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--workdir", default=None, help="where to write the checkpoints")
    args = ap.parse_args()
    floor_bin = args.floor or os.path.join(os.path.dirname(os.path.abspath(args.bin)), "bench",
                                           "read_floor")
    tmp = tempfile.mkdtemp(prefix="shardload-bench-", dir=args.workdir)
    try:
        ref = os.path.join(tmp, "ref.pt")
        nbytes = make_state(args.mib, ref)
        ours = os.path.join(tmp, "shardload")
        subprocess.run([args.bin, "convert", ref, ours, "--shards", str(args.ranks), "--quiet"],
                       check=True, env=ENV, capture_output=True)
        peers = [p for p in args.peers.split(",") if p]
        peer_dirs = {}
        for p in peers:
            peer_dirs[p] = os.path.join(tmp, p)
            if p == "torchload":
                continue
            try:
                mpirun(args.ranks, sys.executable, os.path.join(HERE, "peers.py"), p, "save",
                       "--ref", ref, "--dir", peer_dirs[p])
            except Exception as e:  # a peer that cannot run here is reported, not hidden
                print(f"note: {p} could not save: {str(e).splitlines()[0]}", file=sys.stderr)
                peer_dirs.pop(p)
        shard_files = [f for f in files_under(ours) if f.endswith(".h5")]

        def before():
            if args.cold:
                evict(files_under(tmp))

        rows, record = [], {"mib": args.mib, "bytes": nbytes, "ranks": args.ranks,
                            "repeat": args.repeat, "cold": args.cold,
                            "torch": torch.__version__, "scenarios": {}}
        for scenario in ("replicated", "split"):
            split = ["--split", r"^big\.=0"] if scenario == "split" else []
            results = {}
            t, phases, rss, staging = [], [], [], []
            for _ in range(args.repeat):
                before()
                j = shardload_load(args, ours, ref, split)
                t.append(j["seconds"])
                phases.append(j.get("phase_seconds", {}))
                read = j["bytes_read"]
                rss.append(j.get("load_rss_added_bytes", -1))
                staging.append(j.get("staging_peak_bytes", -1))
            results["shardload"] = (statistics.median(t), read, 0)
            median_phases = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
            t = []
            for _ in range(args.repeat):
                before()
                t.append(shardload_load(args, ours, ref, split, "--no-verify")["seconds"])
            results["shardload, checksums off"] = (statistics.median(t), read, 0)
            t = []
            for _ in range(args.repeat):
                before()
                j = shardload_load(args, ours, ref, split, "--read-in-place")
                t.append(j["seconds"])
                rss_in_place = j.get("load_rss_added_bytes", -1)
            results["shardload, --read-in-place"] = (statistics.median(t), read, 0)
            if args.cold:  # direct I/O is for the disk-bound case
                t = []
                for _ in range(args.repeat):
                    before()
                    t.append(shardload_load(args, ours, ref, split, "--direct-io")["seconds"])
                results["shardload, --direct-io"] = (statistics.median(t), read, 0)
            for p in peer_dirs:
                t, wrong = [], 0
                for _ in range(args.repeat):
                    before()
                    j = last_json(mpirun(args.ranks, sys.executable, os.path.join(HERE, "peers.py"),
                                         p, "load", "--ref", ref, "--dir", peer_dirs[p],
                                         "--scenario", scenario))
                    t.append(j["seconds"])
                    wrong += j["wrong_tensors"]
                results[p] = (statistics.median(t), None, wrong)
            if "dcp" in peer_dirs:  # shardload reading DCP's own files in place
                t = []
                for _ in range(args.repeat):
                    before()
                    t.append(shardload_load(args, peer_dirs["dcp"], ref, split)["seconds"])
                results["shardload, reading the DCP checkpoint"] = (statistics.median(t), None, 0)
            t = []
            # Cold: read_floor evicts the files before each of its programs too (the ones after
            # its first would read a warm cache otherwise).
            cold_floor = ["--cold"] if args.cold else []
            floor_args = (["--repeat", "1"] + cold_floor +
                          (["--exchange"] if scenario == "replicated" else []))
            for _ in range(args.repeat):
                before()
                t.append(last_json(mpirun(args.ranks, floor_bin, *floor_args,
                                          *shard_files))["seconds"])
            limit_name = ("limit: read disjoint parts + MPI exchange" if scenario == "replicated"
                          else "limit: read disjoint parts")
            results[limit_name] = (statistics.median(t), None, 0)
            copy_name = None
            if scenario == "split":
                # A loader that verifies bytes before they reach a tensor reads them somewhere
                # first: reads through a staging block plus one copy is the fair limit here.
                copy_name = "limit: read disjoint parts + copy"
                t = []
                for _ in range(args.repeat):
                    before()
                    t.append(last_json(mpirun(args.ranks, floor_bin, "--repeat", "1", "--copy",
                                              *cold_floor, *shard_files))["seconds"])
                results[copy_name] = (statistics.median(t), None, 0)
            base = results["shardload"][0]
            record["scenarios"][scenario] = {
                "seconds": {k: v[0] for k, v in results.items()},
                "shardload_phase_seconds": median_phases,
                "fraction_of_limit": results[limit_name][0] / base,
                "fraction_of_copy_limit": results[copy_name][0] / base if copy_name else None,
                "checksum_cost": base / results["shardload, checksums off"][0] - 1,
                # The most resident memory a load added on any rank (its tensors already
                # resident), and the most staging it held, over the repeats.
                "load_rss_added_bytes": max(rss),
                "staging_peak_bytes": max(staging),
                "read_in_place_rss_added_bytes": rss_in_place,
                "read_in_place_fraction_of_limit":
                    results[limit_name][0] / results["shardload, --read-in-place"][0],
            }
            for name, (secs, read, wrong) in results.items():
                rows.append((scenario, name, secs, nbytes / secs / 2**30, secs / base,
                             "-" if read is None else f"{read / nbytes:.2f}", wrong))
        mode = "cold (evicted before each load)" if args.cold else "warm page cache"
        print(f"{args.mib} MiB state dict ({nbytes} bytes: 8 large + 256 small tensors), "
              f"{args.ranks} ranks, {mode}, median of {args.repeat}, torch {torch.__version__}\n")
        print("| scenario | loader | seconds | GiB/s | time vs shardload | bytes read / needed "
              "| wrong tensors |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for s, name, secs, gbs, ratio, read, wrong in rows:
            print(f"| {s} | {name} | {secs:.3f} | {gbs:.2f} | {ratio:.2f}x | {read} | {wrong} |")
        for s, r in record["scenarios"].items():
            secs = r["seconds"]
            if "dcp" in secs and "shardload, reading the DCP checkpoint" in secs:
                print(f"\n{s}: on DCP's own files, shardload is "
                      f"{secs['dcp'] / secs['shardload, reading the DCP checkpoint']:.2f}x faster "
                      "than dcp.load")
            if r["fraction_of_copy_limit"] is not None:
                print(f"\n{s}: shardload at {r['fraction_of_copy_limit']:.2f}x the speed of the "
                      "read-and-copy limit")
            print(f"\n{s}: shardload at {r['fraction_of_limit']:.2f}x the limit's speed; "
                  f"checksums cost {100 * r['checksum_cost']:.1f}% of the load; phases "
                  + ", ".join(f"{k} {v:.3f} s" for k, v in r["shardload_phase_seconds"].items())
                  + f"; the load added at most {r['load_rss_added_bytes'] / 2**20:.0f} MiB of "
                  f"resident memory on a rank (staging peak {r['staging_peak_bytes'] / 2**20:.0f} "
                  f"MiB; read in place {r['read_in_place_rss_added_bytes'] / 2**20:.0f} MiB)")
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump(record, f, indent=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
