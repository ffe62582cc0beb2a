#!/usr/bin/env python3
"""Hostile files against the built `shardload`: every crafted file must be refused with exit 3,
no signal, within the time limit, naming the offending file on stderr, and writing nothing.

Generators are the modules `gen_*.py` beside this file. Each has

    def cases(workdir: str, good: Good) -> list[Case]

and writes its crafted files under `workdir`. A Case says which commands meet the file:

- "inspect", "verify": `shardload inspect|verify PATH` (PATH a checkpoint directory);
- "load": `mpirun -np N shardload load PATH --into good.ref --out OUT` at N = 1 and 2;
- "load_into": `mpirun -np N shardload load good.ckpt --into PATH --out OUT` at N = 1 and 2;
- "convert": `shardload convert PATH OUT`.

`named` is the text stderr must contain (default: the file's base name). OUT must not exist
afterwards. Usage: python3 run_hostile.py [--only SUBSTRING] [--keep] [--list] [--jobs N]
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
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("SHARDLOAD_BIN", os.path.join(HERE, "..", "..", "build", "shardload"))
MPIRUN = os.environ.get("MPIRUN", "mpirun")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
LIMIT_S = 30

Case = collections.namedtuple("Case", "name path ops named", defaults=(None,))
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


def run(cmd):
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, env=ENV, capture_output=True, timeout=LIMIT_S)
    except subprocess.TimeoutExpired as e:
        return None, (e.stderr or b"").decode(errors="replace"), time.monotonic() - t0
    return r.returncode, r.stderr.decode(errors="replace"), time.monotonic() - t0


def commands(case, good, out):
    for op in case.ops:
        if op in ("inspect", "verify"):
            yield op, [BIN, op, case.path]
        elif op == "convert":
            yield op, [BIN, "convert", case.path, out]
        elif op in ("load", "load_into"):
            ckpt, ref = (case.path, good.ref) if op == "load" else (good.ckpt, case.path)
            for n in (1, 2):
                yield f"{op}@np{n}", [MPIRUN, "-np", str(n), "--oversubscribe", BIN, "load", ckpt,
                                      "--into", ref, "--out", out]
        else:
            raise ValueError(f"case {case.name}: unknown op {op}")


def check_case(case, good, outdir):
    """Runs every command of `case`; returns (passed, failed, failure messages)."""
    os.makedirs(outdir, exist_ok=True)
    named = case.named or os.path.basename(os.path.normpath(case.path))
    passed, failed, messages = 0, 0, []
    for op, cmd in commands(case, good, os.path.join(outdir, "out.safetensors")):
        out = cmd[-1] if cmd[-2] in ("--out",) or op == "convert" else None
        if out and os.path.lexists(out):
            os.remove(out) if os.path.isfile(out) else shutil.rmtree(out)
        rc, err, secs = run(cmd)
        problems = []
        if rc is None:
            problems.append(f"no answer within {LIMIT_S} s")
        elif rc < 0 or rc > 128:
            problems.append(f"killed by a signal (rc {rc})")
        elif rc != 3:
            problems.append(f"exit {rc}, expected 3")
        if rc is not None and named not in err:
            problems.append(f"stderr does not name {named!r}")
        if out and os.path.lexists(out):
            problems.append(f"{out} was written")
        if problems:
            failed += 1
            messages.append(f"FAIL {case.name} [{op}]: {'; '.join(problems)}\n  stderr: "
                            f"{err.strip()[-600:]}")
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
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("SHARDLOAD_HOSTILE_JOBS", "2")),
                    help="cases checked at once (default 2: the test's PROCESSORS)")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="shardload-hostile-")
    passed = failed = 0
    try:
        good = make_good(workdir)
        all_cases = []
        for mod in load_generators():
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
                workdir, f"out-{ic[0]}")), enumerate(selected)))
        for ok, bad, messages in results:
            passed += ok
            failed += bad
            for m in messages:
                print(m, file=sys.stderr)
        print(f"{passed} passed, {failed} failed")
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
