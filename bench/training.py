"""A training checkpoint, side by side: shardload vs PyTorch's distributed checkpoint (DCP) saving
and loading the same state (a model and its AdamW state: the moments are twice the model's bytes,
so about 3x the model in all), replicated over P ranks as data-parallel training holds it, and the
machine's read limit on the same bytes.

    python3 bench/training.py [--ranks 2] [--mib 256] [--repeat 5] [--dir /tmp/x]

Runs one `mpirun -np P` job (this file with --worker) that, per repetition, saves with shardload
(`shardload.save({"model": m, "optim": opt, "step": n}, ...)`) and with DCP
(`get_state_dict` + `dcp.save`), then loads each into a fresh model and a fresh optimizer
(`shardload.load(state, ...)`; DCP: `get_state_dict` + `dcp.load` + `set_state_dict`, as its
documentation does it), checking every tensor against the trained state bit for bit; and the
same for the model's weights alone (`shardload.save(model)` against `get_model_state_dict` +
`dcp.save`), the ratio the training state is held to; and the limit of a save (each rank writes
its share of the bytes from memory into a file and fsyncs it). Then
build/bench/read_floor reads shardload's files once, split between the ranks, and exchanges them
with MPI: the floor of a load that reads each byte once. Prints a Markdown table of medians.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def worker(args):
    from mpi4py import MPI

    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch import nn
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict,
                                                         set_model_state_dict, set_state_dict)

    import shardload

    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    dist.init_process_group("gloo", rank=comm.rank, world_size=comm.size)
    width = 1024
    layers = max(1, (args.mib << 20) // (4 * (width * width + width)))

    def make(seed):
        torch.manual_seed(seed)
        model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3)

    model, opt = make(0)
    model(torch.randn(4, width)).square().mean().backward()
    opt.step()  # AdamW's state: exp_avg, exp_avg_sq, step for every parameter
    want = {f"model.{k}": v for k, v in model.state_dict().items()}
    for k, p in model.named_parameters():
        for f, v in opt.state[p].items():
            want[f"optim.{k}.{f}"] = v

    def wrong(m, o):
        got = {f"model.{k}": v for k, v in m.state_dict().items()}
        for k, p in m.named_parameters() if o is not None else ():
            for f, v in o.state.get(p, {}).items():
                got[f"optim.{k}.{f}"] = v

        def same(a, b):
            return torch.equal(a.view(-1).view(torch.uint8) if a.dim() else a,
                               b.view(-1).view(torch.uint8) if b.dim() else b)
        return sum(1 for k, v in want.items() if (o is not None or k.startswith("model."))
                   and (k not in got or not same(got[k], v)))

    def timed(fn):
        comm.Barrier()
        t0 = time.perf_counter()
        fn()
        comm.Barrier()
        return comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)

    ours, theirs = os.path.join(args.dir, "shardload"), os.path.join(args.dir, "dcp")
    ours_w, theirs_w = ours + "-weights", theirs + "-weights"
    rows = {f"{who} {op}{what}": [] for op in ("save", "load") for what in ("", " weights")
            for who in ("shardload", "dcp")}
    bad = {k: 0 for k in rows if " load" in k}
    rows["limit save"] = []
    nbytes = sum(v.numel() * v.element_size() for v in want.values())
    share = bytearray(os.urandom(1 << 20)) * max(1, nbytes // comm.size >> 20)
    for rep in range(args.repeat):
        if comm.rank == 0:
            shutil.rmtree(theirs, ignore_errors=True)
            shutil.rmtree(theirs_w, ignore_errors=True)
        comm.Barrier()
        rows["shardload save"].append(timed(lambda: shardload.save(
            {"model": model, "optim": opt, "step": 1}, ours, overwrite=True)))

        def dcp_save():
            msd, osd = get_state_dict(model, opt)
            dcp.save({"model": msd, "optim": osd}, checkpoint_id=theirs)
        rows["dcp save"].append(timed(dcp_save))
        # The limit of a save: each rank writes its share of the state's bytes from memory
        # into a file of its own and fsyncs it (what any save must do at least; no format).
        def write_limit():
            with open(os.path.join(args.dir, f"limit-{comm.rank}"), "wb", buffering=0) as f:
                view = memoryview(share)
                for at in range(0, len(view), 8 << 20):
                    f.write(view[at:at + (8 << 20)])
                os.fsync(f.fileno())
        rows["limit save"].append(timed(write_limit))
        # The weights alone, the same way: the ratio a training state is held to.
        rows["shardload save weights"].append(timed(lambda: shardload.save(
            model, ours_w, overwrite=True)))
        rows["dcp save weights"].append(timed(lambda: dcp.save(
            {"model": get_model_state_dict(model)}, checkpoint_id=theirs_w)))

        # Both fresh states are built before either load, and the order alternates: neither
        # load gets memory the other just freed.
        m2, o2 = make(1)
        m3, o3 = make(1)
        state = {"model": m2, "optim": o2, "step": 0}

        def dcp_load():
            msd, osd = get_state_dict(m3, o3)
            sd = {"model": msd, "optim": osd}
            dcp.load(sd, checkpoint_id=theirs)
            set_state_dict(m3, o3, model_state_dict=sd["model"], optim_state_dict=sd["optim"])

        loads = [("shardload load", lambda: shardload.load(state, ours)), ("dcp load", dcp_load)]
        for name, fn in loads if rep % 2 == 0 else loads[::-1]:
            rows[name].append(timed(fn))
        bad["shardload load"] += wrong(m2, o2)
        bad["dcp load"] += wrong(m3, o3)
        del m2, o2, m3, o3, state
        m4, _ = make(1)
        m5, _ = make(1)

        def dcp_load_weights():
            msd = get_model_state_dict(m5)
            dcp.load({"model": msd}, checkpoint_id=theirs_w)
            set_model_state_dict(m5, msd)

        loads = [("shardload load weights", lambda: shardload.load(m4, ours_w)),
                 ("dcp load weights", dcp_load_weights)]
        for name, fn in loads if rep % 2 == 0 else loads[::-1]:
            rows[name].append(timed(fn))
        bad["shardload load weights"] += wrong(m4, None)
        bad["dcp load weights"] += wrong(m5, None)
        del m4, m5
    bad = {k: comm.allreduce(v) for k, v in bad.items()}
    if comm.rank == 0:
        print(json.dumps({"rows": rows, "wrong": bad, "bytes": nbytes,
                          "files": sorted(os.path.join(ours, f) for f in os.listdir(ours)
                                          if f.startswith("shard-"))}), flush=True)
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--mib", type=int, default=256, help="the model's bytes (MiB); the "
                    "checkpoint is about 3x")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--floor", default="build/bench/read_floor")
    ap.add_argument("--worker", action="store_true")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    tmp = args.dir or tempfile.mkdtemp(prefix="shardload_bench_training_")
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    package = os.path.join(os.path.dirname(os.path.abspath(args.floor)), "..", "python")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package, env.get("PYTHONPATH")]))
    try:
        out = subprocess.run(["mpirun", "-np", str(args.ranks), "--oversubscribe", sys.executable,
                              __file__, "--worker", "--mib", str(args.mib), "--repeat",
                              str(args.repeat), "--dir", tmp], env=env, check=True,
                             capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        floor = json.loads(subprocess.run(
            ["mpirun", "-np", str(args.ranks), "--oversubscribe", args.floor, "--exchange",
             "--repeat", str(args.repeat), *r["files"]], env=env, check=True,
            capture_output=True, text=True).stdout.strip().splitlines()[-1])
    finally:
        if not args.dir:
            shutil.rmtree(tmp, ignore_errors=True)
    gib = r["bytes"] / (1 << 30)
    print(f"training checkpoint: model + AdamW state, {r['bytes'] / (1 << 20):.0f} MiB, "
          f"replicated over {args.ranks} ranks, warm page cache, median of {args.repeat}\n")
    print("| operation | program | seconds | GiB/s | time vs shardload | wrong tensors |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for op in ("save", "load", "save weights", "load weights"):
        base = statistics.median(r["rows"][f"shardload {op}"])
        size = gib if "weights" not in op else gib / 3  # the model: a third of model + AdamW
        for who in ("shardload", "dcp"):
            s = statistics.median(r["rows"][f"{who} {op}"])
            wrong = r["wrong"].get(f"{who} {op}", "-")
            print(f"| {op} | {who} | {s:.3f} | {size / s:.2f} | {s / base:.2f}x | {wrong} |")
        if op == "save":
            s = statistics.median(r["rows"]["limit save"])
            print(f"| save | limit: write + fsync each rank's share | {s:.3f} | {gib / s:.2f} "
                  f"| {s / base:.2f}x | - |")
        if op == "load":
            s = floor["seconds"]
            print(f"| load | limit: read disjoint parts + MPI exchange | {s:.3f} | {gib / s:.2f} "
                  f"| {s / base:.2f}x | - |")


if __name__ == "__main__":
    main()
