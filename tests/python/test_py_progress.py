#!/usr/bin/env python3
"""Progress on stderr: `shardload convert`, `load` and `demo` (rank 0 only), with and without
--quiet, plain lines when stderr is a pipe and a live line (carriage returns) on a terminal; and
Python's `progress=True` / `progress=callable`.

SHARDLOAD_PROGRESS_AFTER=0 lowers the "longer than about a second" threshold so that these small
runs show their summary; without it a quick run shows nothing.
Environment: SHARDLOAD_BIN (the CLI), PYTHONPATH with the built `shardload` package.
Prints "N passed, M failed" last; exits 1 on a failure.
"""
import json
import os
import pty
import re
import shutil
import subprocess
import sys
import tempfile

import torch

BIN = os.environ.get("SHARDLOAD_BIN", "build/shardload")
BASE_ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                OMPI_MCA_rmaps_base_oversubscribe="1")
BASE_ENV.pop("SHARDLOAD_PROGRESS_AFTER", None)
NOW = dict(BASE_ENV, SHARDLOAD_PROGRESS_AFTER="0")
SUMMARY = {op: re.compile(rf"^{op}: [0-9.]+ (B|KiB|MiB|GiB) in [0-9.]+ s \((-|[0-9.]+) GiB/s\)$",
                          re.M) for op in ("convert", "load", "save")}
RESULTS = {"passed": 0, "failed": 0}


def check(cond, what):
    RESULTS["passed" if cond else "failed"] += 1
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr, flush=True)
    return cond


def run(args, env, ranks=None, timeout=300):
    cmd = [BIN, *args] if ranks is None else ["mpirun", "-np", str(ranks), "--oversubscribe", BIN,
                                              *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def summaries(stderr, op):
    return SUMMARY[op].findall(stderr)


def show(r):
    return f"\n  exit {r.returncode}\n  stdout {r.stdout[-2000:]!r}\n  stderr {r.stderr[-2000:]!r}"


def run_on_terminal(args, env):
    """Runs the CLI with stderr on a pseudo-terminal; returns (exit code, what it wrote there)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([BIN, *args], stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    out = b""
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        out += data
    os.close(master)
    return proc.wait(timeout=120), out.decode("utf-8", "replace")


def main():
    tmp = tempfile.mkdtemp(prefix="shardload-progress-")
    try:
        g = torch.Generator().manual_seed(3)
        src = os.path.join(tmp, "model.pt")
        torch.save({"w": torch.randn(256, 256, generator=g), "b": torch.randn(256, generator=g)},
                   src)
        ckpt = os.path.join(tmp, "ckpt")

        # convert: a summary line on stderr, nothing with --quiet, nothing for a quick run.
        r = run(["convert", src, ckpt], NOW)
        check(r.returncode == 0 and len(summaries(r.stderr, "convert")) == 1,
              "convert shows one summary line" + show(r))
        check("converted 2 tensors" in r.stdout and "convert:" not in r.stdout,
              "progress stays off stdout" + show(r))
        r = run(["convert", src, ckpt, "--overwrite", "--quiet"], NOW)
        check(r.returncode == 0 and r.stderr == "", "convert --quiet writes nothing" + show(r))
        r = run(["convert", src, ckpt, "--overwrite"], BASE_ENV)
        check(r.returncode == 0 and r.stderr == "",
              "a quick convert shows nothing by default" + show(r))

        # A terminal gets one live line rewritten with '\r' and ended by the summary.
        code, text = run_on_terminal(["convert", src, ckpt, "--overwrite"], NOW)
        last = text.replace("\r\n", "\n").split("\r")[-1].strip()
        check(code == 0 and text.startswith("\rconvert") and text.count("\n") == 1
              and text.endswith("\n") and SUMMARY["convert"].match(last),
              f"live line on a terminal, ended by the summary: exit {code}, {text!r}")

        # load under mpirun: rank 0 alone shows it; --json's stdout stays one JSON object.
        for quiet in (False, True):
            args = ["load", ckpt, "--into", src, "--json", "--split", "w=0"]
            r = run(args + (["--quiet"] if quiet else []), NOW, ranks=2)
            try:
                ok = json.loads(r.stdout)["ok"]
            except ValueError:
                ok = False
            check(r.returncode == 0 and ok, f"load --json (quiet={quiet})" + show(r))
            want = 0 if quiet else 1
            check(len(summaries(r.stderr, "load")) == want,
                  f"load (quiet={quiet}) shows {want} summary line(s)" + show(r))

        # demo: its save and load, not with --quiet.
        for quiet in (False, True):
            r = run(["demo", "--dir", os.path.join(tmp, "demo")] + (["--quiet"] if quiet else []),
                    NOW, ranks=2)
            want = 0 if quiet else 1
            check(r.returncode == 0 and "all checks passed" in r.stdout,
                  f"demo (quiet={quiet})" + show(r))
            check(len(summaries(r.stderr, "save")) == want and
                  len(summaries(r.stderr, "load")) == want,
                  f"demo (quiet={quiet}) shows {want} save and load summary" + show(r))

        # Python: progress=True shows rank 0's summary; a callable gets Progress objects.
        script = f"""
import torch, shardload
m = torch.nn.Linear(64, 64)
shardload.save(m, {os.path.join(tmp, 'py')!r}, progress=True, overwrite=True)
seen = []
keys = shardload.load(m, {os.path.join(tmp, 'py')!r}, progress=True)
shardload.load(m, {os.path.join(tmp, 'py')!r}, progress=seen.append)
assert all(isinstance(p, shardload.Progress) for p in seen), seen
print(repr(keys), flush=True)
"""
        r = subprocess.run(["mpirun", "-np", "2", "--oversubscribe", sys.executable, "-c", script],
                           capture_output=True, text=True, timeout=300, env=NOW)
        check(r.returncode == 0 and r.stdout.count("<All keys matched successfully>") == 2,
              "python progress=True" + show(r))
        check(len(summaries(r.stderr, "save")) == 1 and len(summaries(r.stderr, "load")) == 1,
              "python progress=True: one save and one load summary (rank 0)" + show(r))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"progress: {RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
