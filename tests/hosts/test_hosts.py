#!/usr/bin/env python3
"""shardload across several hosts on one machine (tests/hosts/hostnet.py: network and UTS
namespaces on a bridge of the test's own, MPI over TCP only, the checkpoint directory shared):

- node-local rank and size per host (the launcher's and MPI's shared-memory split agree with
  the host names);
- `shardload demo` (save, restore, bit-for-bit check) across 2 hosts x 2 ranks;
- the Python API: a save split over 2 hosts x 2 ranks, loaded bit-exact on 3 hosts x 1 rank
  (resharding 4 -> 3) and on one rank of one host (the single-host result);
- the CLI: `shardload load --split --out` of that checkpoint across 4 hosts x 1 rank, equal to the
  reference;
- the save lock's cross-host rules: a lock from another host is alive until it is stale by age
  (refreshed: alive again), whatever its pid; on its own host a dead pid frees it.

Where namespaces cannot be made (not root, no `ip netns`) it prints why and exits 77, which
CTest reports as a skip (not a pass). Prints "N passed, M failed" last.
Environment: SHARDLOAD_BIN (the CLI), PYTHONPATH with the built `shardload` package.
"""
import os
import random
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from hostnet import HostNet, finish  # noqa: E402
import host_worker  # noqa: E402

BIN = os.path.abspath(os.environ.get("SHARDLOAD_BIN", os.path.join(HERE, "../../build/shardload")))
WORKER = os.path.join(HERE, "host_worker.py")
RESULTS = {"passed": 0, "failed": 0}


def check(cond, what):
    RESULTS["passed" if cond else "failed"] += 1
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr, flush=True)
    return cond


def job(net, work, hosts, per_host, argv, limit=180, env=None):
    """Runs argv as one mpirun job over the first `hosts` hosts, `per_host` ranks each."""
    hf = os.path.join(work, f"hostfile-{hosts}x{per_host}")
    with open(hf, "w") as f:
        for h in net.hosts[:hosts]:
            f.write(f"{h} slots={per_host}\n")
    t0 = time.monotonic()
    env = env or net.env()
    proc = net.popen(net.mpirun_argv(hf, hosts * per_host, argv, env=env), env=env)
    rc, out, err, _ = finish(proc, limit)
    return rc, out, err, time.monotonic() - t0


def rank_lines(out, what):
    # mpirun forwards the ranks' lines as they come: two may share one line of our stdout.
    lines = out.replace("RANK ", "\nRANK ").splitlines()
    return [l.split() for l in lines if l.startswith("RANK ") and f" {what}" in l]


def show(rc, out, err):
    return f"rc {rc}\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}"


def lock_record(pid, host, start_ticks=0):
    boot = open("/proc/sys/kernel/random/boot_id").read().strip()
    return (f"shardload-save-lock 1\npid={pid}\nhost={host}\nboot_id={boot}\n"
            f"start_ticks={start_ticks}\nstarted=2026-01-01T00:00:00Z\n"
            f"id={random.getrandbits(64):016x}\n")


def check_locality(rc, out, err):
    """The LOCAL lines of a 2 hosts x 2 ranks job."""
    rows = rank_lines(out, "LOCAL")
    if not check(rc == 0 and len(rows) == 4, f"locality: {show(rc, out, err)}"):
        return
    by_host = {}
    for r in rows:  # RANK r HOST h LOCAL lr ls SHARED sr ss SAMEHOST n
        by_host.setdefault(r[3], []).append(r)
    check(sorted(by_host) == ["h1", "h2"], f"locality: hosts {sorted(by_host)}")
    for host, rs in by_host.items():
        check(sorted(int(r[5]) for r in rs) == [0, 1], f"locality: local ranks on {host}: {rs}")
        check(all(r[6] == "2" for r in rs), f"locality: local size on {host}: {rs}")
        check(sorted(int(r[8]) for r in rs) == [0, 1] and all(r[9] == "2" for r in rs),
              f"locality: MPI's shared-memory split on {host}: {rs}")


def test_demo(net, work):
    rc, out, err, secs = job(net, work, 2, 2, [BIN, "demo", "--dir", os.path.join(work, "demo")])
    print(f"demo, 2 hosts x 2 ranks: {secs:.1f} s, rc {rc}")
    check(rc == 0, f"demo across hosts: {show(rc, out, err)}")


def test_python_reshard(net, work):
    ckpt = os.path.join(work, "py-ckpt")
    rc, out, err, secs = job(net, work, 2, 2, [sys.executable, WORKER, "save", work, ckpt])
    print(f"Python save, 2 hosts x 2 ranks: {secs:.1f} s")
    check_locality(rc, out, err)
    saved = rank_lines(out, "SAVED")
    check(rc == 0 and len(saved) == 4 and {r[3] for r in saved} == {"h1", "h2"},
          f"Python save across hosts: {show(rc, out, err)}")
    rc, out, err, secs = job(net, work, 3, 1, [sys.executable, WORKER, "load", work, ckpt])
    print(f"Python load 4 -> 3 ranks, 3 hosts x 1: {secs:.1f} s")
    exact = rank_lines(out, "EXACT")
    check(rc == 0 and len(exact) == 3 and {r[3] for r in exact} == {"h1", "h2", "h3"},
          f"Python load across 3 hosts: {show(rc, out, err)}")
    # The single-host result: one process, no namespaces, the whole state.
    import shardload
    got = {k: torch.zeros_like(v) for k, v in host_worker.reference().items()}
    r = subprocess.run([sys.executable, "-c",
                        "import sys, torch, shardload; sys.path.insert(0, sys.argv[1]);"
                        "import host_worker as w; ref = w.reference();"
                        "got = {k: torch.zeros_like(v) for k, v in ref.items()};"
                        "shardload.load(got, sys.argv[2]);"
                        "print('EXACT' if all(torch.equal(got[k], ref[k]) for k in ref) "
                        "else 'DIFFERENT')", HERE, ckpt],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1",
                                OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1"))
    check(r.stdout.strip().endswith("EXACT"),
          f"single-host load of the cross-host checkpoint: {r.stdout}{r.stderr[-2000:]}")
    del got, shardload
    return ckpt


def test_cli_load(net, work, ckpt):
    ref = os.path.join(work, "ref.pt")
    torch.save(host_worker.reference(), ref)
    out_pt = os.path.join(work, "out.pt")
    rc, out, err, secs = job(net, work, 4, 1, [BIN, "load", ckpt, "--into", ref, "--split",
                                               r"^(emb|fc\.weight)$=0", "--out", out_pt,
                                               "--timeout", "60"])
    print(f"CLI load 4 -> 4 ranks, 4 hosts x 1: {secs:.1f} s, rc {rc}")
    if not check(rc == 0 and os.path.exists(out_pt), f"CLI load across 4 hosts: {show(rc, out, err)}"):
        return
    got = torch.load(out_pt)
    want = host_worker.reference()
    check(sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want),
          "CLI load across 4 hosts: the result differs from the reference")


def test_save_lock(net, work):
    ref = os.path.join(work, "lock-ref.pt")
    torch.save({"a": torch.arange(6.0)}, ref)
    ckpt = os.path.join(work, "locked")
    lock = os.path.join(work, ".locked.lock")

    def convert_on(host):
        r = subprocess.run(net.on(host, [BIN, "convert", ref, ckpt]), capture_output=True,
                           text=True, timeout=120, env=net.env())
        return r.returncode, r.stdout + r.stderr

    # A live save on h2: a process there, named in a fresh lock.
    holder = subprocess.Popen(net.on("h2", ["sleep", "300"]))
    try:
        time.sleep(0.3)
        pid = holder.pid  # `ip netns exec ... sh -c exec sleep`: the same process in the end
        ticks = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19])
        with open(lock, "w") as f:
            f.write(lock_record(pid, "h2", ticks))
        rc, text = convert_on("h1")
        check(rc == 2 and "on host h2" in text and "in progress" in text,
              f"lock of a live save on h2, save on h1: rc {rc} {text}")
        rc, text = convert_on("h2")
        check(rc == 2 and "on host h2" in text,
              f"lock of a live save on h2, save on h2: rc {rc} {text}")
    finally:
        holder.kill()
        holder.wait()
    # Its process is gone: on h2 that is known (pid checked); h1 cannot see h2's processes and
    # waits for the lock to go stale by age.
    rc, text = convert_on("h1")
    check(rc == 2 and "on host h2" in text,
          f"lock of a dead save on h2, fresh, save on h1: rc {rc} {text}")
    old = time.time() - 700  # older than kStaleLockSeconds (600)
    os.utime(lock, (old, old))
    os.utime(lock, None)  # refreshed by its owner: alive again
    rc, text = convert_on("h1")
    check(rc == 2, f"lock from h2 refreshed, save on h1: rc {rc} {text}")
    os.utime(lock, (old, old))
    rc, text = convert_on("h1")
    check(rc == 0 and os.path.exists(os.path.join(ckpt, "manifest.h5"))
          and not os.path.exists(lock), f"stale lock from h2, save on h1: rc {rc} {text}")
    # A dead save of h2's own, fresh: h2 breaks it.
    with open(lock, "w") as f:
        f.write(lock_record(pid, "h2", ticks))
    subprocess.run(["rm", "-rf", ckpt])
    rc, text = convert_on("h2")
    check(rc == 0 and not os.path.exists(lock), f"dead save's lock on h2, save on h2: rc {rc} {text}")


def main():
    why = HostNet.available()
    if why:
        print(f"SKIPPED: multi-host tests need network namespaces: {why}")
        return 77
    work = tempfile.mkdtemp(prefix="shardload-hosts-")
    t0 = time.monotonic()
    try:
        with HostNet(4) as net:
            print(f"hosts {', '.join(net.hosts)} up in {time.monotonic() - t0:.1f} s")
            test_demo(net, work)
            ckpt = test_python_reshard(net, work)
            test_cli_load(net, work, ckpt)
            test_save_lock(net, work)
    finally:
        subprocess.run(["rm", "-rf", work])
    print(f"multi-host tests: {time.monotonic() - t0:.1f} s")
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
