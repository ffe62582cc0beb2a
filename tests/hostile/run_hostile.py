#!/usr/bin/env python3
"""Hostile files against the built `shardload`: every crafted file must be refused with exit 3,
no signal, within the time limit, naming the offending file on stderr, and writing nothing.

Generators are the modules `gen_*.py` beside this file. Each has

    def cases(workdir: str, good: Good) -> list[Case]

and writes its crafted files under `workdir`. A Case says which commands meet the file:

- "inspect", "verify": `shardload inspect|verify PATH` (PATH a checkpoint directory);
- "load": `shardload load PATH --into good.ref --out OUT` in one process (a singleton) and under
  `mpirun -np 2` (under mpirun for every eighth such case unless --full);
- "load_into": `shardload load good.ckpt --into PATH --out OUT`, the same two ways (under mpirun
  only for every twelfth such case unless --full: every rank reads the model file with the same
  code as the singleton, and the mpirun runs were a third of this test's time);
- "convert": `shardload convert PATH OUT`;
- "diff": `shardload diff PATH PATH` (the file against itself: every tensor is compared).

`named` is the text stderr must contain (default: the file's base name). OUT must not exist
afterwards. Every command's wall time and resident memory are measured (wait4 of the child: its
largest resident set and CPU time, its reaped descendants' included); a case may bound them with
`max_s` (CPU seconds per process beyond what starting the program takes, measured here:
`shardload inspect` of a missing file, under mpirun for mpirun commands) and `max_rss_mb` (of
every process). Usage: python3 run_hostile.py [--only SUBSTRING] [--gen NAME] [--keep] [--list] [--jobs N]
[--measure] [--full]
Environment: SHARDLOAD_BIN (default build/shardload), MPIRUN (default mpirun).
Prints one line per failed check and "N passed, M failed" last; exits 1 on a failure.
"""
import argparse
import collections
import concurrent.futures
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("SHARDLOAD_BIN", os.path.join(HERE, "..", "..", "build", "shardload"))
MPIRUN = os.environ.get("MPIRUN", "mpirun")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
LIMIT_S = 30
# Wall seconds a bounded case may take, however loaded the machine (its CPU time is bounded
# tighter): a command that waits on something (a FIFO, HDF5's 15 s deadline) goes past them.
WAIT_S, WAIT_MPI_S = 12, 24
MEASURE = False
FULL = False

Case = collections.namedtuple("Case", "name path ops named max_s max_rss_mb",
                              defaults=(None, None, None))
Good = collections.namedtuple("Good", "ckpt ref state_dict bin")


def make_good(workdir):
    """A small valid checkpoint and the matching model file, made with Python's torch and
    `shardload convert`."""
    import torch
    g = torch.Generator().manual_seed(1)
    sd = {"layer.weight": torch.randn(8, 4, generator=g), "layer.bias": torch.randn(8, generator=g),
          "step": torch.tensor(3)}
    ref = os.path.join(workdir, "good_ref.pt")
    torch.save(sd, ref)
    ckpt = os.path.join(workdir, "good_ckpt")
    subprocess.run([BIN, "convert", ref, ckpt], check=True, env=ENV, capture_output=True)
    return Good(ckpt, ref, sd, BIN)


# Runs the command given after the report path in a child of its own and writes "status
# maxrss_kb seconds cpu_seconds" to the report: the resident set of a child forked from this process would
# count this process's pages (torch is imported here) until its exec; one forked from this small
# interpreter counts only its own and its reaped descendants'.
MEASURER = """
import os, sys, time
t0 = time.monotonic()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{status} {usage.ru_maxrss} {time.monotonic() - t0} "
            f"{usage.ru_utime + usage.ru_stime}")
"""


def run(cmd):
    """Runs `cmd`: (exit code or None on a timeout, stderr, wall seconds, largest resident set in
    MiB and CPU seconds of the command and the descendants it reaped)."""
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as report:
        p = subprocess.Popen([sys.executable, "-S", "-c", MEASURER, report.name] + cmd, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            p.wait(timeout=LIMIT_S + 5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.wait()
        err.seek(0)
        text = err.read().decode(errors="replace")
        fields = report.read().split()
        if len(fields) != 4:
            return None, text, LIMIT_S, 0, 0
        status, rss_kb, secs, cpu = int(fields[0]), int(fields[1]), float(fields[2]), float(
            fields[3])
        rc = os.waitstatus_to_exitcode(status)
        return (None if secs > LIMIT_S else rc), text, secs, rss_kb / 1024, cpu


_BASELINE = {}
_BASELINE_LOCK = threading.Lock()


def baseline(cmd):
    """CPU seconds that starting the command's program takes here (shardload refusing a missing
    file; under mpirun with as many ranks for mpirun commands): a case's time bound counts from
    there."""
    key = cmd[0] == MPIRUN and cmd[2]
    with _BASELINE_LOCK:
        if key not in _BASELINE:
            missing = os.path.join(tempfile.gettempdir(), "shardload-hostile-missing.pt")
            probe = ([MPIRUN, "-np", cmd[2], "--oversubscribe", BIN, "inspect", missing]
                     if key else [BIN, "inspect", missing])
            _BASELINE[key] = min(run(probe)[4] for _ in range(2))
        return _BASELINE[key]


def commands(case, good, out, index=0):
    for op in case.ops:
        if op in ("inspect", "verify"):
            yield op, [BIN, op, case.path]
        elif op == "convert":
            yield op, [BIN, "convert", case.path, out]
        elif op == "diff":
            yield op, [BIN, "diff", case.path, case.path]
        elif op in ("load", "load_into"):
            ckpt, ref = (case.path, good.ref) if op == "load" else (good.ckpt, case.path)
            # One process as a singleton (no launcher: the one-process path is the same, and
            # mpirun's start and teardown cost more than the load), two under mpirun.
            yield f"{op}@np1", [BIN, "load", ckpt, "--into", ref, "--out", out]
            # Under mpirun too: every twelfth load_into case and every eighth load case (the
            # rank that meets the bad file and the error reaching the other rank are the same
            # code for every case); --full: all of them.
            if not FULL and index % (12 if op == "load_into" else 8):
                continue
            yield f"{op}@np2", [MPIRUN, "-np", "2", "--oversubscribe", BIN, "load", ckpt,
                                "--into", ref, "--out", out]
        else:
            raise ValueError(f"case {case.name}: unknown op {op}")


def check_case(case, good, outdir, index=0):
    """Runs every command of `case` (the `index`-th case); returns (passed, failed, failure
    messages)."""
    os.makedirs(outdir, exist_ok=True)
    named = case.named or os.path.basename(os.path.normpath(case.path))
    passed, failed, messages = 0, 0, []
    for op, cmd in commands(case, good, os.path.join(outdir, "out.safetensors"), index):
        out = cmd[-1] if cmd[-2] in ("--out",) or op == "convert" else None
        if out and os.path.lexists(out):
            os.remove(out) if os.path.isfile(out) else shutil.rmtree(out)
        rc, err, secs, rss_mb, cpu = run(cmd)
        problems = []
        # The bound is on CPU time (every process of the command together: per rank under
        # mpirun), which the other work on a shared machine does not stretch as it does the wall
        # time; a command that blocks is caught by LIMIT_S.
        ranks = int(cmd[2]) if cmd[0] == MPIRUN else 1
        max_cpu = case.max_s and round(case.max_s * ranks + baseline(cmd), 1)
        max_wall = case.max_s and (WAIT_MPI_S if cmd[0] == MPIRUN else WAIT_S)
        if rc is None:
            problems.append(f"no answer within {LIMIT_S} s")
        elif max_cpu and cpu > max_cpu:
            problems.append(f"took {cpu:.1f} s of CPU, more than {max_cpu} s")
        elif max_wall and secs > max_wall:
            problems.append(f"took {secs:.1f} s, more than {max_wall} s (waiting on something?)")
        if case.max_rss_mb and rss_mb > case.max_rss_mb:
            problems.append(f"{rss_mb:.0f} MiB resident, more than {case.max_rss_mb} MiB")
        if rc is None:
            pass
        elif rc < 0 or rc > 128:
            problems.append(f"killed by a signal (rc {rc})")
        elif rc != 3:
            problems.append(f"exit {rc}, expected 3")
        if rc is not None and named not in err:
            problems.append(f"stderr does not name {named!r}")
        if out and os.path.lexists(out):
            problems.append(f"{out} was written")
        if MEASURE:
            messages.append(f"MEASURE {case.name} [{op}]: exit {rc}, {secs:.2f} s, "
                            f"{cpu:.2f} s CPU, {rss_mb:.0f} MiB")
        if problems:
            failed += 1
            messages.append(f"FAIL {case.name} [{op}]: {'; '.join(problems)} ({secs:.1f} s, "
                            f"{cpu:.1f} s CPU, {rss_mb:.0f} MiB)\n  stderr: {err.strip()[-600:]}")
        else:
            passed += 1
    return passed, failed, messages


def load_generators():
    mods = []
    for path in sorted(glob.glob(os.path.join(HERE, "gen_*.py"))):
        name = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.path.insert(0, HERE)
        spec.loader.exec_module(mod)
        mods.append(mod)
    return mods


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    ap.add_argument("--gen", default="", help="only the generators gen_GEN*.py")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--measure", action="store_true",
                    help="print each command's exit code, seconds and resident MiB")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("SHARDLOAD_HOSTILE_JOBS", "2")),
                    help="cases checked at once (default 2: the test's PROCESSORS)")
    ap.add_argument("--full", action="store_true",
                    help="every load and load_into case under mpirun -np 2 as well, not every "
                         "fourth and sixth")
    args = ap.parse_args()
    global MEASURE, FULL
    MEASURE, FULL = args.measure, args.full
    workdir = tempfile.mkdtemp(prefix="shardload-hostile-")
    passed = failed = 0
    try:
        good = make_good(workdir)
        all_cases = []
        for mod in load_generators():
            if not mod.__name__.startswith("gen_" + args.gen):
                continue
            sub = os.path.join(workdir, mod.__name__)
            os.makedirs(sub)
            all_cases += mod.cases(sub, good)
        names = [c.name for c in all_cases]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise SystemExit(f"duplicate case names: {sorted(dup)}")
        if args.list:
            for c in all_cases:
                print(c.name, ",".join(c.ops))
            print(f"{len(all_cases)} cases")
            return 0
        selected = [c for c in all_cases if args.only in c.name]
        # Cases run on --jobs workers (each case's commands in order, with an output path of its
        # own); the verdicts are printed in case order.
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(lambda ic: check_case(ic[1], good, os.path.join(
                workdir, f"out-{ic[0]}"), ic[0]), enumerate(selected)))
        for ok, bad, messages in results:
            passed += ok
            failed += bad
            for m in messages:
                print(m, file=sys.stdout if m.startswith("MEASURE") else sys.stderr)
        print(f"{passed} passed, {failed} failed")
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
