#!/usr/bin/env python3
"""Every step of `shardload.save`/`load` under the caller's timeout, from the first message on
(the binding's own "prepare" agreement included), and stall reports that name the culprit:

- a rank that arrives late, past the timeout, while the others go on (an application that caught
  the error): the others raise an error naming it and its host, and the late rank raises one too
  at once (it finds rank 0's verdict waiting), never a hang; at exit the job ends (MPI_Abort);
- the same when shardload starts MPI itself: MPI_Init waits for every rank, so the rank that got
  there exits (status 3) naming itself and its host after the timeout, and the job ends;
- a rank that never calls and never exits: rank 0 raises naming it, and its exit ends the job
  with MPI_Abort (MPI_Finalize would wait forever);
- a rank stopped in the middle of a load (SIGSTOP at phase 'plan') and resumed before the
  timeout: the load completes, and meanwhile the waiting rank's on_stall callback and stderr
  name the stopped rank and the phase.

Each scenario is one `mpirun -np 2 python3 <this file> --worker MODE` job.
Environment: PYTHONPATH with the built `shardload` package. Prints "N passed, M failed" last.
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
TIMEOUT = 4
RESULTS = {"passed": 0, "failed": 0}


def check(cond, what):
    RESULTS["passed" if cond else "failed"] += 1
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr, flush=True)
    return cond


# --- worker (one rank) -----------------------------------------------------------------------

def worker(mode, work):
    import torch
    import shardload

    rank = int(os.environ["OMPI_COMM_WORLD_RANK"])
    if mode != "late-init":
        from mpi4py import MPI  # noqa: F401  (MPI started by the application, as usual)
    state = {"w": torch.arange(64, dtype=torch.float32).reshape(8, 8), "b": torch.ones(3)}
    ckpt = os.path.join(work, "ckpt")
    t0 = time.monotonic()

    def report(what, detail=""):
        print(f"RANK {rank} {what} {time.monotonic() - t0:.1f} {detail}".rstrip(), flush=True)

    if mode == "late":
        # One save together; at the next one rank 1 arrives TIMEOUT + 3 s after rank 0, which
        # goes on for a while after its error (an application that caught it).
        shardload.save(state, ckpt, timeout=TIMEOUT, overwrite=True)
        t0 = time.monotonic()
        if rank == 1:
            time.sleep(TIMEOUT + 3)
        try:
            shardload.save(state, ckpt, timeout=TIMEOUT, overwrite=True)
            report("OK")
        except shardload.CommError as e:
            report("ERROR", str(e).replace("\n", " | "))
        if rank == 0:
            time.sleep(TIMEOUT + 6)
    elif mode == "late-init":
        # shardload starts MPI itself, and rank 1 calls TIMEOUT + 3 s late: MPI_Init waits.
        if rank == 1:
            time.sleep(TIMEOUT + 3)
        shardload.save(state, ckpt, timeout=TIMEOUT, overwrite=True)
        report("OK")
    elif mode == "never":
        # Rank 1 never calls and never exits.
        if rank == 1:
            time.sleep(600)
        try:
            shardload.load(state, ckpt, timeout=TIMEOUT)
            report("OK")
        except shardload.CommError as e:
            report("ERROR", str(e).replace("\n", " | "))
    elif mode == "stall":
        # Rank 1 of 3 stops itself at the phase 'plan' (SHARDLOAD_STOP_AT); the driver resumes it.
        stalls = []
        target = {k: torch.zeros_like(v) for k, v in state.items()}
        try:
            shardload.load(target, ckpt, timeout=30, stall_report_seconds=1,
                           on_stall=stalls.append)
            ok = all(torch.equal(target[k], state[k]) for k in state)
            report("OK" if ok else "WRONG")
        except shardload.Error as e:
            report("ERROR", str(e).replace("\n", " | "))
        for s in stalls:
            report("STALL", f"phase={s.phase} waiting_for={list(s.waiting_for)} "
                            f"hosts={list(s.hosts)} rank={s.rank}")
    elif mode == "save":
        shardload.save(state, ckpt, overwrite=True)
        report("OK")


# --- driver ----------------------------------------------------------------------------------

def mpirun(mode, work, extra_env=None, during=None, limit=120, ranks=2):
    env = dict(ENV, **(extra_env or {}))
    cmd = ["mpirun", "-np", str(ranks), sys.executable, os.path.abspath(__file__), "--worker", mode, work]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    if during:
        during(proc)
    try:
        out, err = proc.communicate(timeout=limit)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        rc = None
    return rc, out, err, time.monotonic() - t0


def lines(out, rank, what):
    # mpirun may forward two ranks' lines on one line ("RANK 1 OK 3.0RANK 0 OK 3.0"): split them.
    split = [part for l in out.splitlines() for part in re.split(r"(?=RANK \d+ )", l)]
    return [l for l in split if l.startswith(f"RANK {rank} {what}")]


def stopped_child(pid, limit=60):
    """A descendant of `pid` in state T (stopped), waited for up to `limit` s."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        ps = subprocess.run(["ps", "-o", "pid=,ppid=,stat=", "-A"], capture_output=True, text=True)
        rows = [l.split() for l in ps.stdout.splitlines() if len(l.split()) == 3]
        family, frontier = set(), {str(pid)}
        while frontier:
            p = frontier.pop()
            for c, pp, _ in rows:
                if pp == p and c not in family:
                    family.add(c)
                    frontier.add(c)
        for c, _, stat in rows:
            if c in family and stat.startswith("T"):
                return int(c)
        time.sleep(0.1)
    return None


def main():
    work = tempfile.mkdtemp(prefix="shardload-py-deadlines-")
    rc, out, err, _ = mpirun("save", work)
    if not check(rc == 0, f"setup save: rc {rc}\n{out}\n{err[-2000:]}"):
        print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
        return 1

    # A late rank: named on both sides, and the job ends.
    rc, out, err, secs = mpirun("late", work)
    print(f"late rank: job ended in {secs:.1f} s, rc {rc}")
    r0, r1 = lines(out, 0, "ERROR"), lines(out, 1, "ERROR")
    check(rc is not None and rc != 0, f"late rank: rc {rc}")
    check(len(r0) == 1 and "rank 1 (host " in r0[0] and f"within {TIMEOUT} s" in r0[0]
          and "shardload.save(" in r0[0], f"late rank: rank 0's error: {out}\n{err[-2000:]}")
    check(len(r1) == 1 and "rank 1 (host " in r1[0]
          and "got there after the others had given up" in r1[0]
          and float(r1[0].split()[3]) < TIMEOUT + 3 + 2,
          f"late rank: rank 1's error (at once on arrival): {out}\n{err[-2000:]}")
    if r0:
        check(float(r0[0].split()[3]) < TIMEOUT + 10, f"late rank: rank 0 took {r0[0]}")

    # Late into MPI_Init (shardload starts MPI): the job ends, the waiting rank says so.
    rc, out, err, secs = mpirun("late-init", work)
    print(f"late rank, MPI started by shardload: job ended in {secs:.1f} s, rc {rc}")
    check(rc is not None and rc != 0, f"late-init: rc {rc}")
    # The launcher (PMIx) has no word from rank 1 yet: rank 0 names it and its host.
    check(re.search(r"rank 0 of 2 \(host [^)]+\) did not get past MPI_Init within 4 s: no word "
                    r"from rank 1 \(host [^)]+\)", err)
          is not None, f"late-init: stderr: {err[-2000:]}")
    check(secs < TIMEOUT + 30, f"late-init: the job took {secs:.1f} s")

    # A rank that never calls (and never exits): named, and the exit watchdog ends the job.
    rc, out, err, secs = mpirun("never", work)
    print(f"rank never calling: job ended in {secs:.1f} s, rc {rc}")
    r0 = lines(out, 0, "ERROR")
    check(rc is not None and rc != 0, f"never: rc {rc} (the job must end, non-zero)")
    # It never reached shardload: its host comes from the launcher (PMIx).
    check(len(r0) == 1 and re.search(r"rank 1 \(host [^)]+\) did not reach phase 'start' within 4 s",
                                     r0[0]) is not None,
          f"never: rank 0's error: {out}\n{err[-2000:]}")
    check("the job ends with MPI_Abort" in err, f"never: no exit message: {err[-2000:]}")
    check(secs < TIMEOUT + 30, f"never: the job took {secs:.1f} s")

    # A stall that resolves: reported, then the load completes.
    def resume_later(proc):
        pid = stopped_child(proc.pid)
        if pid:
            time.sleep(3)
            os.kill(pid, signal.SIGCONT)

    rc, out, err, secs = mpirun("stall", work, {"SHARDLOAD_STOP_AT": "plan:1"}, resume_later,
                                ranks=3)
    print(f"stall resolved: job ended in {secs:.1f} s, rc {rc}")
    check(rc == 0 and all(len(lines(out, r, "OK")) == 1 for r in range(3)),
          f"stall: the load did not complete: rc {rc}\n{out}\n{err[-2000:]}")
    # Rank 0 sees who is missing; rank 2 learns it from rank 0's notice.
    for r in (0, 2):
        sr = lines(out, r, "STALL")
        check(len(sr) >= 1 and "phase=plan" in sr[0] and "waiting_for=[1]" in sr[0]
              and "hosts=['" in sr[0] and f"rank={r}" in sr[0], f"stall: rank {r}'s on_stall: {out}")
    check(not lines(out, 1, "STALL"), f"stall: the stopped rank reported a stall: {out}")
    check(re.search(r"shardload: stall: rank 0 \(host [^)]+\): shardload::load\([^)]*\): phase "
                    r"'plan' has waited [0-9.]+ s for rank 1 \(host ", err) is not None,
          f"stall: stderr lacks rank 0's stall line: {err[-2000:]}")

    subprocess.run(["rm", "-rf", work])
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
