"""How shardload's load speed grows with checkpoint size and with tensor size, against the limit
measured in the same run (bench/read_floor: the ranks read disjoint parts of the files and
exchange them with plain MPI), plus the many-small-tensor goals of issue 9. Writes a markdown
report on stdout, every figure to --json-out, and two plots (PNG, matplotlib) to --plots.

    python3 bench/sweep.py --bin build/shardload --ranks 2 --repeat 3 --plots docs

- checkpoint size: 256 MiB to 4 GiB (8 large matrices and 256 small vectors), replicated
  and split (large matrices split along dim 0), GiB/s;
- tensor size: 128 MiB of float32 tensors of 1 KiB to 64 MiB each, replicated, GiB/s;
- small tensors: 100,000 tensors of 1 KiB and 20,000 of 16 KiB, replicated: seconds against the
  goals (0.5 s and 0.4 s at 2 ranks, warm cache).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile

import torch

from compare import ENV, files_under, last_json, make_state, mpirun


def load_seconds(args, ckpt, ref, split, repeat):
    t, phases = [], []
    for _ in range(repeat):
        j = last_json(mpirun(args.ranks, args.bin, "load", ckpt, "--into", ref, "--json",
                             "--quiet", *split))
        assert j["ok"], j
        t.append(j["seconds"])
        phases.append(j.get("phase_seconds", {}))
    med = {k: statistics.median(p[k] for p in phases) for k in phases[0]} if phases[0] else {}
    return statistics.median(t), med


def floor_seconds(args, ckpt, exchange, repeat):
    floor = os.path.join(os.path.dirname(os.path.abspath(args.bin)), "bench", "read_floor")
    files = [f for f in files_under(ckpt) if f.endswith(".h5")]
    j = last_json(mpirun(args.ranks, floor, "--repeat", str(repeat),
                         *(["--exchange"] if exchange else []), *files))
    return j["seconds"]


def convert(args, ref, ckpt):
    subprocess.run([args.bin, "convert", ref, ckpt, "--shards", str(args.ranks), "--quiet",
                    "--overwrite"], check=True, env=ENV, capture_output=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="build/shardload")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sizes", default="256,512,1024,2048,4096", help="checkpoint sizes, MiB")
    ap.add_argument("--tensor-kib", default="1,16,256,4096,65536", help="tensor sizes, KiB")
    ap.add_argument("--plots", default=None, help="folder for the PNG plots")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="shardload-sweep-", dir=args.workdir)
    report = {"ranks": args.ranks, "repeat": args.repeat, "torch": torch.__version__}
    try:
        # Checkpoint size.
        rows = []
        for mib in [int(x) for x in args.sizes.split(",") if x]:
            ref, ckpt = os.path.join(tmp, "ref.pt"), os.path.join(tmp, "ckpt")
            nbytes = make_state(mib, ref)
            convert(args, ref, ckpt)
            for scenario, split in (("replicated", []), ("split", ["--split", r"^big\.=0"])):
                secs, phases = load_seconds(args, ckpt, ref, split, args.repeat)
                lim = floor_seconds(args, ckpt, scenario == "replicated", args.repeat)
                rows.append({"mib": mib, "bytes": nbytes, "scenario": scenario, "seconds": secs,
                             "gibs": nbytes / secs / 2**30, "limit_seconds": lim,
                             "limit_gibs": nbytes / lim / 2**30, "phases": phases})
            os.remove(ref)
            shutil.rmtree(ckpt)
        report["checkpoint_size"] = rows

        # Tensor size, at 128 MiB in all.
        trows = []
        total = 128 << 20
        for kib in [int(x) for x in args.tensor_kib.split(",") if x]:
            n = max(1, total // (kib << 10))
            g = torch.Generator().manual_seed(kib)
            ref, ckpt = os.path.join(tmp, "ref.pt"), os.path.join(tmp, "ckpt")
            torch.save({f"t.{i}": torch.randn(kib * 256, generator=g) for i in range(n)}, ref)
            convert(args, ref, ckpt)
            secs, phases = load_seconds(args, ckpt, ref, [], args.repeat)
            lim = floor_seconds(args, ckpt, True, args.repeat)
            nbytes = n * kib * 1024
            trows.append({"tensor_kib": kib, "tensors": n, "seconds": secs,
                          "gibs": nbytes / secs / 2**30, "limit_seconds": lim,
                          "limit_gibs": nbytes / lim / 2**30, "phases": phases})
            os.remove(ref)
            shutil.rmtree(ckpt)
        report["tensor_size"] = trows

        # The small-tensor goals.
        goals = []
        for n, kib, goal in ((100_000, 1, 0.3), (20_000, 16, 0.4)):
            g = torch.Generator().manual_seed(n)
            ref, ckpt = os.path.join(tmp, "ref.pt"), os.path.join(tmp, "ckpt")
            torch.save({f"t.{i}": torch.randn(kib * 256, generator=g) for i in range(n)}, ref)
            convert(args, ref, ckpt)
            secs, phases = load_seconds(args, ckpt, ref, [], max(args.repeat, 5))
            goals.append({"tensors": n, "tensor_kib": kib, "seconds": secs, "goal_seconds": goal,
                          "us_per_tensor": 1e6 * secs / n, "phases": phases})
            os.remove(ref)
            shutil.rmtree(ckpt)
        report["small_tensors"] = goals
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"## Load speed against checkpoint size ({args.ranks} ranks, warm cache, median of "
          f"{args.repeat})\n")
    print("| checkpoint | scenario | shardload s | GiB/s | limit s | limit GiB/s | vs limit |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in report["checkpoint_size"]:
        print(f"| {r['mib']} MiB | {r['scenario']} | {r['seconds']:.3f} | {r['gibs']:.2f} | "
              f"{r['limit_seconds']:.3f} | {r['limit_gibs']:.2f} | "
              f"{r['limit_seconds'] / r['seconds']:.2f}x |")
    print(f"\n## Load speed against tensor size (128 MiB replicated, {args.ranks} ranks)\n")
    print("| tensor size | tensors | shardload s | GiB/s | limit GiB/s | µs per tensor |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in report["tensor_size"]:
        print(f"| {r['tensor_kib']} KiB | {r['tensors']} | {r['seconds']:.3f} | {r['gibs']:.2f} | "
              f"{r['limit_gibs']:.2f} | {1e6 * r['seconds'] / r['tensors']:.1f} |")
    print(f"\n## Many small tensors (replicated, {args.ranks} ranks, warm cache)\n")
    print("| tensors | seconds | goal | µs per tensor | phases (s) |")
    print("| ---: | ---: | ---: | ---: | --- |")
    for r in report["small_tensors"]:
        ph = ", ".join(f"{k} {v:.3f}" for k, v in r["phases"].items())
        print(f"| {r['tensors']} x {r['tensor_kib']} KiB | {r['seconds']:.3f} | "
              f"{r['goal_seconds']:.1f} | {r['us_per_tensor']:.1f} | {ph} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=1)
    if args.plots:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        os.makedirs(args.plots, exist_ok=True)
        fig, ax = plt.subplots(figsize=(6, 4))
        for scenario, style in (("replicated", "o-"), ("split", "s-")):
            rs = [r for r in report["checkpoint_size"] if r["scenario"] == scenario]
            ax.plot([r["mib"] for r in rs], [r["gibs"] for r in rs], style,
                    label=f"shardload, {scenario}")
            ax.plot([r["mib"] for r in rs], [r["limit_gibs"] for r in rs], style[0] + "--",
                    alpha=0.6, label=f"limit, {scenario}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("checkpoint size (MiB)")
        ax.set_ylabel("GiB/s")
        ax.set_title(f"Load speed vs checkpoint size, {args.ranks} ranks, warm cache")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(args.plots, "perf_checkpoint_size.png"), dpi=120)
        fig, ax = plt.subplots(figsize=(6, 4))
        rs = report["tensor_size"]
        ax.plot([r["tensor_kib"] for r in rs], [r["gibs"] for r in rs], "o-", label="shardload")
        ax.plot([r["tensor_kib"] for r in rs], [r["limit_gibs"] for r in rs], "o--", alpha=0.6,
                label="limit (read + exchange)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tensor size (KiB), 128 MiB in all")
        ax.set_ylabel("GiB/s")
        ax.set_title(f"Load speed vs tensor size, {args.ranks} ranks, replicated")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(args.plots, "perf_tensor_size.png"), dpi=120)


if __name__ == "__main__":
    main()
