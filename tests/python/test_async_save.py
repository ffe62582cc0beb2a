#!/usr/bin/env python3
"""Asynchronous save (`shardload.save_async`), against its own promise and the synchronous save:

  * `--role roundtrip` at 2 ranks (with --full also at 1 and 4): a training state (a model split across the ranks,
    AdamW's state, a step) and a non-contiguous tensor saved with save_async; every tensor
    changed in place right after save_async returns; the loaded checkpoint equals the state at
    the call bit for bit. Two async saves in a row (the second waits for the first), a sync save
    after an async one, an error of the background part (the target exists) raised by wait() on
    every rank with the same message, the snapshot limit refused on every rank or saved
    synchronously with sync_fallback. At 2 ranks also 100 consecutive async saves: the snapshot
    pool stays one slab and the RSS flat; and a synchronous save of a non-contiguous tensor
    writes it in pieces of at most staging_bytes and loads back equal.
  * `--role exit` at 2 ranks: first, into a 1 MiB tmpfs (root only; skipped, and said so,
    elsewhere), a save whose write fails with ENOSPC on the background thread: wait() raises on
    every rank, `latest` still names the first save and the failed step left nothing. Then
    save_async and MPI_Finalize (rank 0) or the interpreter's exit (rank 1) without wait(): the
    save is finished there (latest names it, it loads). And a process whose synchronous saves
    fail as HDF5 flushes a file at close (12 KiB left) exits cleanly.
  * `--role crash` at 2 ranks, SHARDLOAD_CRASH_AT=shard-written:1: rank 1 is killed while the
    background writes step 2; step 1 (saved by the driver) stays `latest` and loads, nothing is left
    beside it but the dead save's staging directory, which the next save removes.

Run without arguments (it launches the roles with mpirun). Prints "N passed, M failed".
"""
import os
import shutil
import subprocess
import sys
import tempfile

ROLE = sys.argv[sys.argv.index("--role") + 1] if "--role" in sys.argv else None
# 2 ranks in the test command (C++'s AsyncSave and TrainingState tests cover 1 to 4 ranks, in
# mpi_np1 ... mpi_np4); --full: 1, 2 and 4.
RANKS = (1, 2, 4) if "--full" in sys.argv else (2,)
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
PASSED, FAILED = [0], [0]


def latest(root):
    try:
        with open(os.path.join(root, "latest")) as f:
            return f.read().strip()
    except OSError:
        return None


def check(cond, what):
    if cond:
        PASSED[0] += 1
    else:
        FAILED[0] += 1
        print(f"FAIL: {what}", flush=True)


def launch(role, ranks, tmp, env=None, expect_ok=True):
    cmd = ["mpirun", "-np", str(ranks), "--oversubscribe", sys.executable, __file__, "--role",
           role, "--dir", tmp]
    run = subprocess.run(cmd, env=dict(ENV, **(env or {})), timeout=300, capture_output=True,
                         text=True)
    sys.stdout.write(run.stdout)
    if (run.returncode == 0) != expect_ok:
        sys.stderr.write(run.stderr[-4000:])
    check((run.returncode == 0) == expect_ok, f"{role} at {ranks} ranks exited {run.returncode}")
    return run


def driver():
    import torch

    import shardload

    tmp = tempfile.mkdtemp(prefix="shardload_async_")
    mounted = None
    try:
        for ranks in RANKS:
            launch("roundtrip", ranks, os.path.join(tmp, f"rt{ranks}"))


        # A rank killed while the background writes.
        d = os.path.join(tmp, "crash")
        os.makedirs(d)
        shardload.save({"w": torch.full((12, 4), 1.0)}, os.path.join(d, "run"), step=1)
        launch("crash", 2, d, env={"SHARDLOAD_CRASH_AT": "shard-written:1"}, expect_ok=False)
        run = os.path.join(d, "run")
        check(latest(run) == "step-1",
              "crash: latest still names step-1")
        check(not os.path.exists(os.path.join(run, "step-2")), "crash: no step-2")
        got = {"w": torch.zeros(12, 4)}
        shardload.load(got, run)
        check(torch.equal(got["w"], torch.full((12, 4), 1.0)), "crash: step-1 loads")
        shardload.save({"w": torch.full((12, 4), 3.0)}, run, step=3)
        litter = [e for e in os.listdir(run) if e.startswith(".")]
        check(litter == [], f"crash: the next save removed the dead save's leftovers: {litter}")

        # A full disk (a 1 MiB tmpfs), then a save left in flight at exit.
        d = os.path.join(tmp, "full")
        os.makedirs(d)
        full_disk = os.geteuid() == 0 and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", d]).returncode == 0
        if full_disk:
            mounted = d
        else:
            print("SKIPPED: full disk (needs root to mount a tmpfs)", flush=True)
        launch("exit", 2, d, env={"FULL_DISK": "1" if full_disk else "0"})
        if full_disk:
            run = os.path.join(d, "run")
            check(latest(run) == "step-1", "full: latest still names step-1")
            check(sorted(os.listdir(run)) == ["latest", "step-1"],
                  f"full: the failed save left nothing: {sorted(os.listdir(run))}")
        if full_disk:
            # A synchronous save whose file HDF5 fails to flush at close (12 KiB left): the
            # error is raised, and the process still exits cleanly (HDF5's own exit handler
            # crashed on such a half-closed file).
            filler = os.path.join(d, "filler")
            free = os.statvfs(d).f_bavail * os.statvfs(d).f_frsize
            with open(filler, "wb") as f:
                f.write(bytes(max(0, free - (12 << 10))))
            p = subprocess.run([sys.executable, "-c", (
                "import torch, shardload\n"
                "for n in (256, 2048, 8192, 30000):\n"
                "    try:\n"
                f"        shardload.save({{'w': torch.randn(n)}}, {d!r} + '/small%d' % n)\n"
                "    except shardload.Error:\n"
                "        print('raised')\n")], env=ENV, capture_output=True, text=True,
                timeout=120)
            check(p.returncode == 0 and "raised" in p.stdout,
                  f"full: saves into a full disk raise and the process exits cleanly: "
                  f"exit {p.returncode} {p.stdout} {p.stderr[-2000:]}")
            os.remove(filler)
        run = os.path.join(d, "exit")
        check(latest(run) == "step-7", "exit: latest names the save left in flight")
        got = {"w": torch.zeros(12, 4)}
        shardload.load(got, run)
        check(torch.equal(got["w"], torch.arange(24.0).reshape(6, 4).repeat(2, 1)),
              "exit: the save loads")
    finally:
        if mounted:
            subprocess.run(["umount", mounted])
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{PASSED[0]} passed, {FAILED[0]} failed", flush=True)
    sys.exit(1 if FAILED[0] else 0)


if ROLE is None:
    driver()

from mpi4py import MPI  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

import shardload  # noqa: E402

torch.set_num_threads(1)
DIR = sys.argv[sys.argv.index("--dir") + 1]
WORLD = MPI.COMM_WORLD
RANK, SIZE = WORLD.rank, WORLD.size
if RANK == 0:
    os.makedirs(DIR, exist_ok=True)
WORLD.Barrier()


def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    return 0


def same_everywhere(text):
    return all(t == text for t in WORLD.allgather(text))


def raises(fn):
    try:
        fn()
    except shardload.Error as e:
        return str(e)
    return None


def make_state(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 6 * SIZE), nn.ReLU(), nn.Linear(6 * SIZE, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 8)).square().mean().backward()
    opt.step()
    extra = torch.arange(RANK * 100.0, RANK * 100.0 + 35).reshape(5, 7).t()  # not contiguous
    return {"model": model, "optim": opt, "step": 11 + seed, "extra": {"t": extra}}


def flat(state):
    out = {f"model.{k}": v.clone() for k, v in state["model"].state_dict().items()}
    for name, p in state["model"].named_parameters():
        for f, v in state["optim"].state[p].items():
            out[f"optim.{name}.{f}"] = v.clone()
    out["extra.t"] = state["extra"]["t"].clone()
    return out


SPLIT = {r"model\.0\.(weight|bias)$": 0, r"model\.2\.weight$": 1, r"extra\.t$": 0}


def roundtrip():
    root = os.path.join(DIR, "run")
    state = make_state(0)
    want = [v for _, v in sorted(flat(state).items())]
    h = shardload.save_async(state, root, step=1, split=SPLIT)
    with torch.no_grad():  # training goes on: every tensor changes at once
        for p in state["model"].parameters():
            p.add_(1000)
        for s in state["optim"].state.values():
            for v in s.values():
                v.add_(1000)
        state["extra"]["t"].add_(1000)
    check(isinstance(h, shardload.SaveHandle), "save_async returns a SaveHandle")
    check(h.blocked_seconds > 0, "blocked_seconds is measured")
    r = h.wait()
    check(h.done() and r.asynchronous and r.path.endswith("step-1"), f"wait() gives {r}")
    check(r.bytes_written_total > 0 and same_everywhere(r.path), "the result on every rank")
    check(latest(root) == "step-1", "latest: step-1")

    fresh = make_state(5)
    shardload.load(fresh, root, split=SPLIT)
    got = [v for _, v in sorted(flat(fresh).items())]
    check(len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want)),
          "the checkpoint is the state at the call, bit for bit")
    check(fresh["step"] == 11, f"plain values: step {fresh['step']}")

    # Two in a row: the second waits for the first; a sync save waits for an async one.
    h2 = shardload.save_async(state, root, step=2, split=SPLIT)
    h3 = shardload.save_async(state, root, step=3, split=SPLIT)
    check(h2.done(), "the second async save waited for the first")
    r4 = shardload.save(state, root, step=4, split=SPLIT)
    check(h3.done() and not r4.asynchronous, "a sync save waited for the async one")
    check(h2.wait().path.endswith("step-2") and h3.wait().path.endswith("step-3"),
          "both async saves committed")
    check(latest(root) == "step-4", "latest: step-4")

    # The background's error, raised by wait() on every rank.
    h = shardload.save_async(state, os.path.join(root, "step-4"), split=SPLIT)
    err = raises(h.wait)
    check(err is not None and "exists" in err and same_everywhere(err),
          f"wait() raises the background's error on every rank: {err}")
    check(raises(h.wait) == err, "a second wait() raises it again")

    # The snapshot limit.
    shardload.release_snapshot_memory()
    check(shardload._C.snapshot_memory_bytes() == 0, "release_snapshot_memory frees the pool")
    err = raises(lambda: shardload.save_async(state, root, step=5, split=SPLIT,
                                              snapshot_limit_bytes=1000))
    check(err is not None and "snapshot_limit_bytes" in err and same_everywhere(err),
          f"a snapshot over the limit is refused on every rank: {err}")
    h = shardload.save_async(state, root, step=5, split=SPLIT, snapshot_limit_bytes=1000,
                             sync_fallback=True)
    check(h.done() and not h.wait().asynchronous, "sync_fallback saves synchronously")
    err = raises(lambda: shardload.save_async(state, root, step=6, progress=True))
    check(err is not None and "progress" in err, f"progress= is refused: {err}")

    if SIZE != 2:
        return
    # 100 async saves: one slab, flat RSS.
    big = {"w": torch.randn(1 << 20), "v": torch.randn(256, 1024)}  # 5 MiB per rank
    many = os.path.join(DIR, "many")
    sizes = []
    for i in range(100):
        h = shardload.save_async(big, many, step=i, keep_last=1, split={"w": 0})
        big["w"].add_(1)
        if i in (9, 99):
            h.wait()
            sizes.append((rss(), shardload._C.snapshot_memory_bytes()))
    grew = sizes[1][0] - sizes[0][0]
    check(grew < (16 << 20), f"100 async saves: RSS grew {grew >> 10} KiB from save 10 to 100")
    check(sizes[0][1] == sizes[1][1] > 0, f"the snapshot pool stays one slab: {sizes}")
    got = {"w": torch.zeros(1 << 20), "v": torch.zeros(256, 1024)}
    shardload.load(got, many, split={"w": 0})
    check(torch.equal(got["w"], big["w"] - 1) and torch.equal(got["v"], big["v"]),
          "the 100th save holds the 100th state")

    # A synchronous save copies a non-contiguous tensor through staging_bytes at a time.
    wide = torch.randn(64, 4096).t()  # 1 MiB, not contiguous
    r = shardload.save({"wide": wide}, os.path.join(DIR, "pieces"), staging_bytes=64 << 10)
    chunks = WORLD.allreduce(r.chunks_written)
    check(chunks == wide.numel() * 4 // (64 << 10),
          f"written in pieces of at most staging_bytes: {chunks} chunks")
    got = {"wide": torch.zeros(4096, 64)}
    shardload.load(got, os.path.join(DIR, "pieces"))
    check(torch.equal(got["wide"], wide), "the pieces load back equal")


def exit_in_flight():
    if os.environ.get("FULL_DISK") == "1":
        full()
    shardload.save_async({"w": torch.arange(24.0).reshape(6, 4)}, os.path.join(DIR, "exit"),
                         step=7, split={"w": 0})
    passed, failed = WORLD.allreduce(PASSED[0]), WORLD.allreduce(FAILED[0])
    if RANK == 0:
        print(f"exit at {SIZE} ranks: {passed} passed, {failed} failed", flush=True)
    # no wait(): MPI_Finalize finishes the save first (on rank 0 called here, before the
    # interpreter's exit; on the others at exit)
    if RANK == 0:
        MPI.Finalize()
    sys.exit(1 if failed else 0)


def crash():
    run = os.path.join(DIR, "run")  # step-1: the driver's
    h = shardload.save_async({"w": torch.full((6, 4), 2.0)}, run, step=2, split={"w": 0})
    h.wait()  # rank 1 dies in the background; rank 0 waits in the commit until mpirun ends it


def full():
    run = os.path.join(DIR, "run")
    shardload.save_async({"w": torch.full((6, 4), 1.0)}, run, step=1, split={"w": 0}).wait()
    h = shardload.save_async({"w": torch.randn(1 << 20)}, run, step=2, split={"w": 0})
    err = raises(h.wait)
    check(err is not None and same_everywhere(err), f"full: wait() raises on every rank: {err}")


{"roundtrip": roundtrip, "exit": exit_in_flight, "crash": crash}[ROLE]()
passed, failed = WORLD.allreduce(PASSED[0]), WORLD.allreduce(FAILED[0])
if RANK == 0:
    print(f"{ROLE} at {SIZE} ranks: {passed} passed, {failed} failed", flush=True)
if failed:
    sys.exit(1)
