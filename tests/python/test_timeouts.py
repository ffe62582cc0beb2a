#!/usr/bin/env python3
"""No hang, ever: a rank that stops (SIGSTOP: a node stuck on a dead filesystem) or dies
(SIGKILL, a segfault) during a 2-rank `shardload load` ends the job, non-zero, within the
timeout plus a margin, and the error names the phase and the rank.

Stops are injected at every phase boundary with SHARDLOAD_STOP_AT=<phase>:<rank> (the process
stops itself there) and from outside with `kill -STOP` in the middle of a large transfer; deaths
with `kill -KILL`. Prints one line per failed check and "N passed, M failed" last.
Environment: SHARDLOAD_BIN (default build/shardload), MPIRUN (default mpirun).
"""
import concurrent.futures
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("SHARDLOAD_BIN", os.path.join(HERE, "..", "..", "build", "shardload"))
MPIRUN = os.environ.get("MPIRUN", "mpirun")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
TIMEOUT = 4
MARGIN = 30

passed = failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {what}", file=sys.stderr)


def children_of(pid):
    out = subprocess.run(["ps", "-o", "pid=,ppid=,comm=", "-A"], capture_output=True, text=True)
    procs = [line.split(None, 2) for line in out.stdout.splitlines()]
    found, frontier = [], [str(pid)]
    while frontier:
        p = frontier.pop()
        for cpid, ppid, comm in procs:
            if ppid == p:
                found.append((int(cpid), comm.strip()))
                frontier.append(cpid)
    return found


def run_load(ckpt, ref, extra_env=None, during=None):
    """Runs a 2-rank load; `during(proc)` may act on it while it runs. Returns (rc, stderr,
    seconds)."""
    env = dict(ENV, **(extra_env or {}))
    cmd = [MPIRUN, "-np", "2", BIN, "load", ckpt, "--into", ref, "--timeout", str(TIMEOUT)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    if during:
        during(proc)
    try:
        out, err = proc.communicate(timeout=TIMEOUT + MARGIN)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, err, time.monotonic() - t0
    return proc.returncode, err, time.monotonic() - t0


def shardload_ranks(proc, timeout=20):
    """The two `shardload` processes of an mpirun, ordered by rank (by their environment)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = [p for p, comm in children_of(proc.pid) if comm.startswith("shardload")]
        if len(procs) == 2:
            ranked = {}
            for p in procs:
                try:
                    env = open(f"/proc/{p}/environ", "rb").read().split(b"\0")
                except OSError:
                    continue
                for kv in env:
                    if kv.startswith(b"OMPI_COMM_WORLD_RANK="):
                        ranked[int(kv.split(b"=")[1])] = p
            if len(ranked) == 2:
                return ranked
        time.sleep(0.05)
    return {}


def main():
    work = tempfile.mkdtemp(prefix="shardload-timeouts-")
    try:
        g = torch.Generator().manual_seed(0)
        small = {"a": torch.randn(64, 64, generator=g), "b": torch.randn(7, generator=g)}
        ref = os.path.join(work, "ref.pt")
        torch.save(small, ref)
        ckpt = os.path.join(work, "ckpt")
        subprocess.run([BIN, "convert", ref, ckpt], check=True, env=ENV, capture_output=True)

        # Stopped ranks at every phase boundary and inside the transfer, on rank 1 and rank 0.
        # Two jobs at a time: each has one stopped rank and one waiting for it, so two jobs keep
        # the 2 cores no busier than one undisturbed load (the test runs alone), and the eight
        # waits for the deadline overlap in pairs.
        stops = [("open", 1, "rank 1 did not reach phase 'open'"),
                 ("open", 0, "rank 0 did not reach phase 'open'"),
                 ("index", 1, "rank 1 did not reach phase 'index'"),
                 ("plan", 1, "rank 1 did not reach phase 'plan'"),
                 ("plan", 0, "rank 0 did not reach phase 'plan'"),
                 ("transfer", 1, "rank 1 did not reach phase 'transfer'"),
                 ("read", 1, "rank 1 made no progress in phase 'transfer'"),
                 ("read", 0, "rank 0 made no progress in phase 'transfer'")]
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            runs = list(pool.map(
                lambda s: run_load(ckpt, ref, {"SHARDLOAD_STOP_AT": f"{s[0]}:{s[1]}"}), stops))
        for (phase, rank, expect), (rc, err, secs) in zip(stops, runs):
            what = f"stop at {phase}:{rank}"
            check(rc is not None, f"{what}: the job did not end within {TIMEOUT + MARGIN} s")
            if rc is None:
                continue
            check(rc != 0, f"{what}: exit 0")
            # Every rank is named with its host: "rank 1 (host node7) did not reach ...".
            head, tail = expect.split(" ", 2)[1], expect.split(" ", 2)[2]
            pattern = rf"rank {head} \(host [^)]+\) {re.escape(tail)}"
            check(re.search(pattern, err) is not None,
                  f"{what}: stderr lacks {pattern!r}:\n{err[-800:]}")
            check(f"within {TIMEOUT} s" in err, f"{what}: stderr does not give the timeout")
            print(f"stop at {phase}:{rank}: ended in {secs:.1f} s, rc {rc}")

        # A rank stopped from outside in the middle of a large transfer.
        big = {f"w{i}": torch.randn(1024, 1024, generator=g) for i in range(24)}  # 96 MiB
        bigref = os.path.join(work, "big.pt")
        torch.save(big, bigref)
        bigckpt = os.path.join(work, "bigckpt")
        subprocess.run([BIN, "convert", bigref, bigckpt], check=True, env=ENV, capture_output=True)

        # Early (in MPI_Init, before shardload's own deadlines: its watchdog ends the job) and
        # late (once rank 1 has read REF and part of the checkpoint: in the transfer).
        ref_bytes = os.path.getsize(bigref)
        for when in ("0.05 s", "0.3 s", "mid-transfer"):
            def stop_rank1(proc, when=when):
                ranks = shardload_ranks(proc)
                if 1 not in ranks:
                    return
                pid = ranks[1]
                try:
                    if when.endswith(" s"):
                        time.sleep(float(when[:-2]))
                    else:
                        deadline = time.monotonic() + 30
                        while time.monotonic() < deadline:
                            io = dict(l.split(": ") for l in open(f"/proc/{pid}/io").read().split("\n") if l)
                            if int(io["rchar"]) > ref_bytes + (16 << 20):
                                break
                            time.sleep(0.002)
                    os.kill(pid, signal.SIGSTOP)
                except (OSError, ProcessLookupError):
                    pass

            rc, err, secs = run_load(bigckpt, bigref, during=stop_rank1)
            what = f"external SIGSTOP of rank 1 at {when}"
            check(rc is not None and rc != 0, f"{what}: rc {rc}")
            check(re.search(r"rank 1 \(host [^)]+\) (did not reach|made no progress)|"
                            r"rank 0 of 2 \(host [^)]+\) did not get past", err) is not None,
                  f"{what}: stderr does not name rank 1:\n{err[-800:]}")
            print(f"{what}: ended in {secs:.1f} s, rc {rc}")

        # A rank killed (a segfault, an OOM kill): mpirun ends the job promptly, non-zero.
        for victim in (1, 0):
            def kill_rank(proc, victim=victim):
                ranks = shardload_ranks(proc)
                if victim in ranks:
                    time.sleep(0.3)
                    os.kill(ranks[victim], signal.SIGKILL)

            rc, err, secs = run_load(bigckpt, bigref, during=kill_rank)
            check(rc is not None and rc != 0, f"SIGKILL of rank {victim}: rc {rc}")
            check(secs < TIMEOUT + MARGIN, f"SIGKILL of rank {victim}: took {secs:.1f} s")
            print(f"SIGKILL of rank {victim}: ended in {secs:.1f} s, rc {rc}")

        # And without trouble the same loads still succeed.
        rc, err, _ = run_load(bigckpt, bigref)
        check(rc == 0, f"undisturbed load: rc {rc}\n{err[-800:]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
