"""Asynchronous save, side by side: how long each save blocks its caller and how long until the
checkpoint is durable, for shardload's `save` and `save_async`, PyTorch's distributed checkpoint
(DCP) `save` and `async_save`, and the limit of a snapshot, all on the same training state in one
run.

    python3 bench/async_save.py [--ranks 2] [--mib 1024] [--repeat 5] [--dir /tmp/x]
                                [--bin build/shardload] [--json-out FILE]

The state (FSDP-like, each rank holds its part): an nn.Sequential of nn.Linear(1024, 1024) layers
and its AdamW state (exp_avg, exp_avg_sq, step), sized so that model + moments are about --mib MiB
over all ranks. Every rank builds the full model with the same seed and runs one AdamW step,
then keeps only its dim-0 slab of every parameter and of its two moments (torch.tensor_split by
rank), so each rank holds 1/P of the bytes. Runs one `mpirun -np P` job (this file with --worker)
that, after one unmeasured warm-up round of every method, per repetition (methods interleaved,
their order rotated each repetition, a barrier before each, each save to a fresh directory):

  1. shardload save: `shardload.save({"model": m, "optim": opt, "step": n}, path,
     split={r"\\.weight$": 0, r"\\.bias$": 0})` (the moments follow their parameter's rule);
     blocked = durable = its wall time.
  2. shardload save_async: the same state and rules; blocked = until save_async returns,
     durable = until `handle.wait()` returns, called at once (measured from the call).
  3. DCP save: `dcp.save(flat, checkpoint_id=path)`, flat = the same local tensors as one flat
     dict keyed f"{key}/shard{rank}" (every rank writes its own tensors; the same bytes per rank).
  4. DCP async_save: `dcp.async_save(flat, checkpoint_id=path)` with its defaults (thread
     executor, a DefaultStager made per call: fresh CPU memory each save); blocked = until it
     returns, durable = until `future.result()` returns.
  5. shardload save of another state, one large tensor per rank (half the rank's state, at most
     256 MiB) as a transposed view (not contiguous; one key per rank, so every rank writes its
     own): a synchronous save copies it to host memory through `staging_bytes` (64 MiB) at a
     time; its peak RSS growth is the bound of issue 18's item 4.
  6. limit: the tightest snapshot program, a copy of this rank's state bytes into one
     preallocated, already-touched host buffer (pinned where CUDA is available), per tensor on
     flattened byte views. Both `dst.copy_(src)` and `ctypes.memmove` are timed (interleaved);
     the limit row is the faster median (on the 2-core CPU machine this was written on, the two are
     within noise of each other; the row's note names the one that won the run).

Seconds are per repetition the maximum over ranks (mpi4py allreduce MAX). Memory, per rank (the
maximum over ranks is shown): peak RSS growth = VmHWM after the save (for an asynchronous one,
after its wait) minus VmRSS just before it, the high-water mark reset before each save by writing
5 to /proc/self/clear_refs (if that is refused: VmRSS after minus before); held = VmRSS right after
the call returns minus before (what the caller carries while the save runs on). The first call's
figure (the warm-up, where pools are made) is shown apart from the median of the later ones.
Prints Markdown tables of medians, the goal lines and the commands.
"""
import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

METHODS = ["shardload save", "shardload save_async", "dcp save", "dcp async_save",
           "shardload save, not contiguous", "limit copy_", "limit memmove"]
SAVES = METHODS[:5]


def _status_kib(*fields):
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            name = line.split(":", 1)[0]
            if name in fields:
                out[name] = int(line.split()[1])
    return out


def _rss_mib():
    return _status_kib("VmRSS")["VmRSS"] / 1024


def _reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(args):
    from mpi4py import MPI  # before shardload: MPI started by mpi4py (THREAD_MULTIPLE)

    import ctypes
    import gc

    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch import nn

    import shardload

    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    rank, size = comm.rank, comm.size
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29541")
    dist.init_process_group("gloo", rank=rank, world_size=size)
    width = 1024
    # model + exp_avg + exp_avg_sq: 3 float32 copies of every parameter, over all ranks
    layers = max(1, (args.mib << 20) // (3 * 4 * (width * width + width)))

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, width)).square().mean().backward()
    opt.step()  # AdamW's state: exp_avg, exp_avg_sq, step for every parameter
    opt.zero_grad(set_to_none=True)
    # FSDP-like: this rank keeps its dim-0 slab of every parameter and of its moments.
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.tensor_split(size, 0)[rank].clone()
            st = opt.state[p]
            for f in ("exp_avg", "exp_avg_sq"):
                st[f] = st[f].tensor_split(size, 0)[rank].clone()
    gc.collect()
    split = {r"\.weight$": 0, r"\.bias$": 0}

    local = {f"model.{k}": v for k, v in model.state_dict().items()}
    for k, p in model.named_parameters():
        for f, v in opt.state[p].items():
            local[f"optim.{k}.{f}"] = v
    flat = {f"{k}/shard{rank}": v for k, v in local.items()}  # DCP: distinct keys per rank
    nbytes = sum(v.numel() * v.element_size() for v in local.values())
    total_bytes = comm.allreduce(nbytes)

    # The limit: one preallocated, touched destination; flattened byte views of the state.
    dst = torch.empty(nbytes, dtype=torch.uint8, pin_memory=torch.cuda.is_available())
    dst.fill_(1)
    srcs = [v.detach().reshape(-1).view(torch.uint8) for v in local.values()]
    assert all(v.is_contiguous() for v in local.values())
    ptrs = [(s.data_ptr(), s.numel()) for s in srcs]
    base = dst.data_ptr()

    def limit_copy():
        at = 0
        for s in srcs:
            n = s.numel()
            dst[at:at + n].copy_(s)
            at += n

    def limit_memmove():
        at = base
        for p, n in ptrs:
            ctypes.memmove(at, p, n)
            at += n

    step = [0]

    def state():
        step[0] += 1
        return {"model": model, "optim": opt, "step": step[0]}

    notes = {m: {} for m in METHODS}

    # Each returns (blocked s, durable s, RSS MiB right after the call returned), from the call.
    def run_sync(path):
        t0 = time.perf_counter()
        shardload.save(state(), path, split=split)
        t = time.perf_counter() - t0
        return t, t, _rss_mib()

    def run_async(path):
        t0 = time.perf_counter()
        h = shardload.save_async(state(), path, split=split)
        b = time.perf_counter() - t0
        held = _rss_mib()
        r = h.wait()
        t = time.perf_counter() - t0
        notes["shardload save_async"].setdefault("handle_blocked", []).append(h.blocked_seconds)
        notes["shardload save_async"].setdefault("result_seconds", []).append(r.seconds)
        return b, t, held

    def run_dcp(path):
        t0 = time.perf_counter()
        dcp.save(flat, checkpoint_id=path)
        t = time.perf_counter() - t0
        return t, t, _rss_mib()

    def run_dcp_async(path):
        t0 = time.perf_counter()
        f = dcp.async_save(flat, checkpoint_id=path)
        b = time.perf_counter() - t0
        held = _rss_mib()
        # A Future, or (with async staging) an AsyncSaveResponse holding the upload's future.
        (getattr(f, "upload_completion", None) or f).result()
        t = time.perf_counter() - t0
        return b, t, held

    # One large tensor as a transposed view (not contiguous; half this rank's state, at most
    # 256 MiB; its own key per rank): a synchronous save copies it through staging_bytes (64 MiB)
    # at a time; its peak RSS growth shows the bound (a whole-tensor copy would show its size).
    big_rows = max(1, min(nbytes // 2, 256 << 20) // (4 * 4096))
    transposed = {f"embedding/shard{rank}": torch.randn(big_rows, 4096).t()}
    big_mib = big_rows * 4096 * 4 / (1 << 20)

    def run_sync_transposed(path):
        t0 = time.perf_counter()
        shardload.save(transposed, path)
        t = time.perf_counter() - t0
        return t, t, _rss_mib()

    def run_limit(fn):
        def run(_path):
            t0 = time.perf_counter()
            fn()
            t = time.perf_counter() - t0
            return t, t, _rss_mib()
        return run

    runs = dict(zip(METHODS, [run_sync, run_async, run_dcp, run_dcp_async, run_sync_transposed,
                              run_limit(limit_copy), run_limit(limit_memmove)]))
    available = {m: True for m in METHODS}
    errors = {}
    rows = {m: {"blocked": [], "total": []} for m in METHODS}
    mem = {m: {"peak": [], "held": []} for m in METHODS}
    first_mem = {}
    hwm_ok = all(comm.allgather(_reset_hwm()))

    def measure(name, path, keep):
        comm.Barrier()
        before = _rss_mib()
        _reset_hwm()
        ok, err = True, None
        try:
            blocked, total, held = runs[name](path)
        except Exception as e:  # noqa: BLE001  (reported in the table, not a crash)
            ok, err, blocked, total, held = False, f"{type(e).__name__}: {e}", 0.0, 0.0, before
        after = _status_kib("VmRSS", "VmHWM")
        peak = (after["VmHWM"] if hwm_ok else after["VmRSS"]) / 1024 - before
        ok = comm.allreduce(ok, op=MPI.LAND)
        if not ok:
            available[name] = False
            errors.setdefault(name, err or "failed on another rank")
            return
        blocked = comm.allreduce(blocked, op=MPI.MAX)
        total = comm.allreduce(total, op=MPI.MAX)
        peak = comm.allreduce(peak, op=MPI.MAX)
        held = comm.allreduce(held - before, op=MPI.MAX)
        if not keep:
            first_mem[name] = {"peak": peak, "held": held}
            return
        rows[name]["blocked"].append(blocked)
        rows[name]["total"].append(total)
        mem[name]["peak"].append(peak)
        mem[name]["held"].append(held)

    def clean(paths):
        comm.Barrier()
        if rank == 0:
            for p in paths:
                shutil.rmtree(p, ignore_errors=True)
        comm.Barrier()

    for rep in range(-1, args.repeat):  # -1: the warm-up round, unmeasured
        order = [m for m in METHODS if available[m]]
        if rep >= 0:
            k = rep % len(order)
            order = order[k:] + order[:k]
        paths = []
        for name in order:
            path = os.path.join(args.dir, f"{name.replace(' ', '-')}-{rep + 1}")
            paths.append(path)
            measure(name, path, keep=rep >= 0)
        clean(paths)
    released = shardload.release_snapshot_memory()
    if rank == 0:
        print(json.dumps({"rows": rows, "mem": mem, "first_mem": first_mem,
                          "available": available, "errors": errors, "notes": notes,
                          "bytes": total_bytes, "layers": layers, "big_mib": big_mib, "ranks": size,
                          "hwm_reset": hwm_ok, "snapshot_released": released,
                          "pinned": torch.cuda.is_available(), "torch": torch.__version__}),
              flush=True)
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--mib", type=int, default=1024, help="model + AdamW moments over all ranks")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--bin", default="build/shardload", help="the build's CLI; its Python package "
                    "is taken from beside it (BIN/../python)")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--worker", action="store_true")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    tmp = args.dir or tempfile.mkdtemp(prefix="shardload_bench_async_")
    os.makedirs(tmp, exist_ok=True)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    package = os.path.join(os.path.dirname(os.path.abspath(args.bin)), "python")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package, env.get("PYTHONPATH")]))
    cmd = ["mpirun", "-np", str(args.ranks), "--oversubscribe", sys.executable, __file__,
           "--worker", "--mib", str(args.mib), "--repeat", str(args.repeat), "--dir", tmp]
    t0 = time.perf_counter()
    try:
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            sys.stderr.write(run.stdout[-4000:] + run.stderr[-8000:])
            raise SystemExit(f"worker job failed ({run.returncode}): {shlex.join(cmd)}")
        r = json.loads(run.stdout.strip().splitlines()[-1])
    finally:
        if not args.dir:
            shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - t0
    med = statistics.median

    def m(name, what):
        v = r["rows"][name][what]
        return med(v) if v else float("nan")

    copy_, memmove = m("limit copy_", "blocked"), m("limit memmove", "blocked")
    limit_name = "limit copy_" if copy_ <= memmove else "limit memmove"
    limit = min(copy_, memmove)
    mib = r["bytes"] / (1 << 20)
    print(f"asynchronous save: a training state (model + AdamW moments, {r['layers']} x "
          f"nn.Linear(1024, 1024)), {mib:.0f} MiB in all, each of {r['ranks']} ranks holding its "
          f"dim-0 slab ({mib / r['ranks']:.0f} MiB), a fresh directory per save, warm page cache, "
          f"torch {r['torch']}, median of {args.repeat} (seconds: max over ranks)\n")
    print("| method | blocked (s) | until durable (s) | blocked / limit | notes |")
    print("| --- | ---: | ---: | ---: | --- |")
    a_notes = r["notes"]["shardload save_async"]
    sync = m("shardload save", "total")
    notes = {
        "shardload save": "blocked for the whole save",
        "shardload save_async": "",
        "dcp save": "flat dict of the same local tensors, keys f\"{key}/shard{rank}\"",
        "dcp async_save": "defaults: thread executor, a new DefaultStager per call (fresh CPU "
                          "staging memory each save)",
        "shardload save, not contiguous": f"another state: one {r['big_mib']:.0f} MiB tensor per "
                                          "rank as a transposed view, copied through 64 MiB of "
                                          "staging at a time (its ratio is not comparable)",
    }
    if a_notes.get("handle_blocked"):
        bg = med([t - b for t, b in zip(r["rows"]["shardload save_async"]["total"],
                                        r["rows"]["shardload save_async"]["blocked"])])
        notes["shardload save_async"] = (
            f"handle.blocked_seconds {med(a_notes['handle_blocked']):.3f} (rank 0); background "
            f"after return {bg:.3f} s; SaveResult.seconds {med(a_notes['result_seconds']):.3f}; "
            f"durable vs sync save {m('shardload save_async', 'total') / sync:.2f}x")
    other = "memmove" if limit_name == "limit copy_" else "copy_"
    for name in SAVES + [limit_name]:
        if not r["available"][name]:
            print(f"| {name} | - | - | - | unavailable: {r['errors'].get(name, '?')[:200]} |")
            continue
        b, t = m(name, "blocked"), m(name, "total")
        note = notes.get(name, "")
        if name == limit_name:
            name = (f"limit: copy into a preallocated buffer "
                    f"({'dst.copy_(src)' if limit_name == 'limit copy_' else 'ctypes.memmove'})")
            note = (f"{other}: {max(copy_, memmove):.3f} s; "
                    f"{mib / r['ranks'] / 1024 / limit:.2f} GiB/s per rank; "
                    f"{'pinned' if r['pinned'] else 'pageable (no CUDA)'}")
        print(f"| {name} | {b:.3f} | {t:.3f} | {b / limit:.2f}x | {note} |")

    print(f"\nmemory per rank (MiB, max over ranks): peak RSS growth = "
          f"{'VmHWM (reset before each save via /proc/self/clear_refs)' if r['hwm_reset'] else 'VmRSS'}"
          f" after the save completes minus VmRSS before; held at return = VmRSS when the call "
          f"returns minus before\n")
    print("| method | peak growth, first call | peak growth, later (median) | "
          "held at return, first call | held at return, later (median) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in SAVES:
        if not r["available"][name] or name not in r["first_mem"]:
            continue
        f, k = r["first_mem"][name], r["mem"][name]
        print(f"| {name} | {f['peak']:.0f} | {med(k['peak']):.0f} | {f['held']:.0f} | "
              f"{med(k['held']):.0f} |")
    print(f"\n(release_snapshot_memory() freed {r['snapshot_released'] / (1 << 20):.0f} MiB on "
          f"rank 0 at the end: the snapshot pool kept between async saves)\n")

    def verdict(ok):
        return "met" if ok else "not met"

    if r["available"]["shardload save_async"]:
        ab = m("shardload save_async", "blocked")
        x = ab / limit
        print(f"shardload async blocking ≤ 1.3× copy limit: {x:.2f}× ({verdict(x <= 1.3)})")
        if r["available"]["dcp async_save"]:
            y = ab / m("dcp async_save", "blocked")
            print(f"≤ 0.5× DCP async_save blocking: {y:.2f}× ({verdict(y <= 0.5)})")
        else:
            print("≤ 0.5× DCP async_save blocking: n/a (DCP async_save unavailable)")
        rows = r["rows"]["shardload save_async"]
        z = (m("shardload save_async", "total") / sync - 1) * 100
        w = (med([t - b for t, b in zip(rows["total"], rows["blocked"])]) / sync - 1) * 100
        print(f"background save vs sync save: {z:+.1f} % (goal ≤ 20 %: {verdict(z <= 20)}; "
              f"save_async's call to durable against save's time; the part after the call "
              f"returned alone: {w:+.1f} %)")
    print(f"\ncommand: {shlex.join([sys.executable, *sys.argv])}")
    print(f"worker job: {shlex.join(cmd)}")
    print(f"wall time: {wall:.0f} s")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(dict(r, command=[sys.executable, *sys.argv], wall_seconds=wall,
                           limit=limit_name), f, indent=1)


if __name__ == "__main__":
    main()
