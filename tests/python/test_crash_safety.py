"""Crash safety, by killing saves (docs/GUARANTEES.md).

- Every crash point (SHARDLOAD_CRASH_AT) of a save on both rename paths (renameat2 exchange, and
  the journalled fallback forced with SHARDLOAD_RENAME=fallback), for `convert --overwrite`
  (1 process) and `mpirun -np 2 shardload load ... --out DIR --overwrite` (rank 0 and rank 1
  killed; on the exchange path, and with --full on the fallback path too: the directory protocol
  is rank 0's, the same code the 1-process save runs on both paths): after each kill the path verifies and holds exactly the old or the new checkpoint
  (the one each point implies), possibly after an automatic restore that says so; the next save
  removes the killed save's leftovers; a killed rank ends the 2-rank job, non-zero, before a
  timeout.
- Kills at random moments (SIGKILL from outside; seed printed).
- --overwrite refusals, checked again at commit time; a live save's lock and staging directory
  are never touched; a reader waits for a live save between its renames.
- Run directories: --step/--keep-last, `latest` resolution by load/inspect/verify, rotation, a
  kill before `latest` is updated, and torn `latest` files.
Run by CTest with SHARDLOAD_BIN set; python3 with torch and h5py.
"""
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_format_h5py import read_with_h5py  # noqa: E402  (one h5py reader of FORMAT.md)

BIN = os.environ.get("SHARDLOAD_BIN", "build/shardload")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
for var in ("SHARDLOAD_CRASH_AT", "SHARDLOAD_STOP_AT", "SHARDLOAD_RENAME"):
    ENV.pop(var, None)
RESULTS = {"passed": 0, "failed": 0}
JOB_TIMEOUT = 120  # a killed rank must end the job long before this

# Crash points in the order a save reaches them, and which checkpoint the path holds after a
# kill there ("old", "new", or "restored": new, put back by the next reader, which says so).
POINTS = [("staged", "old"), ("shard-written:0", "old"), ("shard-written:1", "old"),
          ("manifest-written", "old"), ("before-commit", "old"), ("journal-written", "old"),
          ("between-renames", "restored"), ("renamed", "new"), ("old-removed", "new"),
          ("committed", "new")]
FALLBACK_ONLY = {"journal-written", "between-renames"}


def check(cond, what):
    RESULTS["passed" if cond else "failed"] += 1
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
    return cond


def command(args, ranks=None):
    return [BIN, *args] if ranks is None else ["mpirun", "-np", str(ranks), "--oversubscribe",
                                               BIN, *args]


def run(*args, ranks=None, env=None, timeout=JOB_TIMEOUT):
    return subprocess.run(command(args, ranks), capture_output=True, text=True, timeout=timeout,
                          env=dict(ENV, **(env or {})))


def model(value, big=False):
    g = torch.Generator().manual_seed(int(value))
    n = 3072 if big else 64
    return {"big.weight": torch.full((n, n), float(value)) + torch.randn(n, n, generator=g),
            "norm.weight": torch.full((n,), float(value)),
            "step": torch.tensor(int(value))}


def read_ckpt(path):
    """Every tensor of a checkpoint, assembled with h5py alone following docs/FORMAT.md (versions
    1 and 2: packed small chunks too), every chunk and block checksum checked."""
    tensors, bad_sums, _ = read_with_h5py(path)
    if bad_sums:
        raise ValueError(f"{bad_sums} checksums do not match")
    return tensors


def same_model(got, want):
    return set(got) == set(want) and all(
        got[k].dtype == want[k].dtype and got[k].shape == want[k].shape and torch.equal(got[k], want[k])
        for k in want)


def which(path, models):
    """The name of the model the checkpoint at `path` holds, or a description of what is wrong."""
    try:
        got = read_ckpt(path)
    except Exception as e:  # noqa: BLE001 - reported as the outcome
        return f"unreadable ({e})"
    for name, m in models.items():
        if same_model(got, m):
            return name
    return "neither old nor new"


def leftovers(parent, name):
    """Hidden entries a save of PARENT/NAME may leave: staging, aside, journal, lock."""
    return sorted(e for e in os.listdir(parent) if e.startswith(f".{name}."))


def staging_names(entries):
    return {e for e in entries if ".tmp-" in e}


class Fixture:
    def __init__(self, tmp):
        self.tmp = tmp
        self.pt = {}
        self.src = {}
        for v in (1, 2):
            self.pt[v] = os.path.join(tmp, f"m{v}.pt")
            torch.save(model(v), self.pt[v])
            self.src[v] = os.path.join(tmp, f"src{v}")
            r = run("convert", self.pt[v], self.src[v])
            check(r.returncode == 0, f"convert m{v}.pt: {r.stderr}")

    def save(self, tool, version, path, env=None, extra=()):
        if tool == "convert":
            return run("convert", self.pt[version], path, "--shards", "2", "--overwrite", *extra,
                       env=env)
        return run("load", self.src[version], "--into", self.pt[version], "--split",
                   r"big\.weight=0", "--out", path, "--overwrite", *extra, ranks=2, env=env)


def first_reader(fx, tool, path, point):
    """The first command that reads the path after a kill; it restores what needs restoring and
    must say so. Where a restore is expected: inspect (convert) or a 2-rank load (mpirun)."""
    if point.startswith("between-renames"):
        if tool == "mpirun":
            return run("load", path, "--into", fx.pt[1], "--out",
                       os.path.join(fx.tmp, "read.pt"), "--overwrite", ranks=2)
        return run("inspect", path)
    return run("verify", path)


def crash_matrix(fx, tool, rename, matrix):
    parent = os.path.join(fx.tmp, f"{tool}-{rename}")
    os.makedirs(parent)
    path = os.path.join(parent, "ckpt")
    env = {"SHARDLOAD_RENAME": "fallback"} if rename == "fallback" else {}
    r = fx.save(tool, 1, path, env=env)
    check(r.returncode == 0, f"{tool}/{rename}: first save: {r.stderr}")
    current = 1
    previous_left = set()
    for point, expect in POINTS:
        if point in FALLBACK_ONLY and rename != "fallback":
            continue
        if tool == "mpirun" and not point.startswith("shard-written"):
            point += ":0"  # the directory work is rank 0's
        new = 3 - current
        what = f"{tool}/{rename}/{point}"
        t0 = time.monotonic()
        try:
            r = fx.save(tool, new, path, env=dict(env, SHARDLOAD_CRASH_AT=point))
        except subprocess.TimeoutExpired:
            check(False, f"{what}: the killed save did not end within {JOB_TIMEOUT} s")
            continue
        took = time.monotonic() - t0
        killed = r.returncode == -signal.SIGKILL if tool == "convert" else r.returncode != 0
        check(killed, f"{what}: the save was not killed (rc {r.returncode}): {r.stderr[-500:]}")
        if tool == "mpirun":
            check("exited on signal 9" in r.stderr or "Killed" in r.stderr,
                  f"{what}: mpirun names the killed rank: {r.stderr[-800:]}")
        # The killed save's staging directories are gone after the next save started.
        left = set(leftovers(parent, "ckpt"))
        check(not (staging_names(previous_left) & left),
              f"{what}: leftovers of the previous killed save remain: {previous_left & left}")
        previous_left = left

        reader = first_reader(fx, tool, path, point)
        restored = "restored the new checkpoint" in reader.stderr
        check(reader.returncode == 0, f"{what}: first reader failed: {reader.stderr}")
        check(restored == (expect == "restored"),
              f"{what}: restore note {'missing' if not restored else 'unexpected'}: {reader.stderr}")
        if reader.args[1] != "verify":
            v = run("verify", path)
            check(v.returncode == 0, f"{what}: verify: {v.stdout} {v.stderr}")
        outcome = which(path, {"old": model(current), "new": model(new)})
        want = "new" if expect == "restored" else expect
        check(outcome == want, f"{what}: the path holds {outcome}, expected {want}")
        matrix.append((tool, rename, point, outcome + (" (restored)" if restored else ""),
                       round(took, 1)))
        if outcome == "new":
            current = new
    # A clean save: the checkpoint alone remains, nothing hidden beside it.
    r = fx.save(tool, 3 - current, path, env=env)
    check(r.returncode == 0, f"{tool}/{rename}: clean save after the kills: {r.stderr}")
    check(leftovers(parent, "ckpt") == [], f"{tool}/{rename}: left {leftovers(parent, 'ckpt')}")
    check(which(path, {"new": model(3 - current)}) == "new", f"{tool}/{rename}: final contents")


def rank_pids(tag):
    """{rank: pid} of the shardload processes started with SHARDLOAD_TEST_TAG=tag."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if env.get(b"SHARDLOAD_TEST_TAG") == tag.encode() and comm == "shardload":
            found[int(env.get(b"OMPI_COMM_WORLD_RANK", b"0"))] = int(pid)
    return found


def wait_for_staging(parent, name, proc, timeout=JOB_TIMEOUT):
    """Waits until a save of PARENT/NAME has created its staging directory; its time, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if staging_names(leftovers(parent, name)):
            return time.monotonic()
        time.sleep(0.005)
    return None


def random_kills(tmp, count_each):
    """SIGKILL from outside at a random moment of the save (after its staging directory appeared,
    uniformly within the time an uninterrupted save takes from there), of the process or of a
    random rank."""
    seed = int(os.environ.get("SHARDLOAD_CRASH_SEED", time.time_ns() % 100000))
    print(f"random kills: seed {seed} (SHARDLOAD_CRASH_SEED={seed} repeats them)")
    rng = random.Random(seed)
    pts, srcs = {}, {}
    for v in (1, 2):
        pts[v] = os.path.join(tmp, f"big{v}.pt")
        torch.save(model(v, big=True), pts[v])
        srcs[v] = os.path.join(tmp, f"bigsrc{v}")
        run("convert", pts[v], srcs[v])
    outcomes = []
    for tool in ("convert", "mpirun"):
        parent = os.path.join(tmp, f"random-{tool}")
        os.makedirs(parent)
        path = os.path.join(parent, "ckpt")
        current, span = 1, 0.5
        for i in range(count_each + 1):
            new = 3 - current if i else 1
            rename = "fallback" if i % 2 else "exchange"
            tag = uuid.uuid4().hex
            env = dict(ENV, SHARDLOAD_TEST_TAG=tag)
            if rename == "fallback":
                env["SHARDLOAD_RENAME"] = "fallback"
            args = (["convert", pts[new], path, "--shards", "2", "--overwrite"]
                    if tool == "convert" else
                    ["load", srcs[new], "--into", pts[new], "--split", r"big\.weight=0", "--out",
                     path, "--overwrite"])
            p = subprocess.Popen(command(args, None if tool == "convert" else 2),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            staged = wait_for_staging(parent, "ckpt", p)
            if i == 0:  # the first save, uninterrupted, measures how long its staging lives
                while p.poll() is None and staging_names(leftovers(parent, "ckpt")):
                    time.sleep(0.005)
                span = max(0.05, 1.2 * (time.monotonic() - (staged or time.monotonic())))
                p.communicate(timeout=JOB_TIMEOUT)
                continue
            delay = rng.uniform(0, span)
            victim = rng.choice([0, 1]) if tool == "mpirun" else 0
            pids = rank_pids(tag)  # before the wait: scanning /proc takes a while
            time.sleep(delay)
            if victim in pids:
                os.kill(pids[victim], signal.SIGKILL)
            try:
                p.communicate(timeout=JOB_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                check(False, f"random {tool}: the job did not end after rank {victim} was killed")
                continue
            r = run("verify", path)
            check(r.returncode == 0, f"random {tool} #{i}: verify: {r.stderr}")
            outcome = which(path, {"old": model(current, True), "new": model(new, True)})
            check(outcome in ("old", "new"), f"random {tool} #{i}: the path holds {outcome}")
            outcomes.append((tool, rename, f"rank {victim} at +{delay:.2f}s of {span:.2f}s",
                             "finished first" if p.returncode == 0 else "killed", outcome,
                             "(restored)" if "restored" in r.stderr else ""))
            if outcome == "new":
                current = new
        r = run("convert", pts[3 - current], path, "--overwrite")
        check(r.returncode == 0 and leftovers(parent, "ckpt") == [],
              f"random {tool}: the next save leaves nothing: {leftovers(parent, 'ckpt')}")
        # The checkpoint loads through shardload too (torch.load of a converted copy).
        out = os.path.join(tmp, f"random-{tool}.pt")
        r = run("convert", path, out)
        check(r.returncode == 0 and same_model(torch.load(out), model(3 - current, True)),
              f"random {tool}: loads through shardload: {r.stderr}")
    return outcomes


def overwrite_and_live_saves(fx):
    tmp = os.path.join(fx.tmp, "overwrite")
    os.makedirs(tmp)
    # Refusals: a file, a non-empty directory without manifest, a symbolic link.
    file_, full, link = (os.path.join(tmp, n) for n in ("file", "full", "link"))
    open(file_, "w").write("precious")
    os.makedirs(full)
    open(os.path.join(full, "notes.txt"), "w").write("precious")
    os.symlink(fx.src[1], link)
    for target, says in ((file_, "exists and is a file"),
                         (full, "exists and is a directory without manifest.h5"),
                         (link, "is a symbolic link")):
        for tool in ("convert", "mpirun"):
            r = fx.save(tool, 2, target)
            check(r.returncode == 2 and f"{target}: {says}" in r.stderr and
                  "refusing to replace it" in r.stderr, f"{tool} --overwrite {target}: {r.stderr}")
    check(open(file_).read() == "precious" and os.listdir(full) == ["notes.txt"] and
          os.path.islink(link) and which(fx.src[1], {"m1": model(1)}) == "m1",
          "refused targets are untouched")
    check(sorted(os.listdir(tmp)) == ["file", "full", "link"], f"no leftovers: {os.listdir(tmp)}")

    # Checked again at commit: a checkpoint replaced by other data while the save ran.
    path = os.path.join(tmp, "ckpt")
    check(fx.save("convert", 1, path).returncode == 0, "first save")
    p = subprocess.Popen(command(["convert", fx.pt[2], path, "--overwrite"]),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(ENV, SHARDLOAD_STOP_AT="manifest-written"))
    wait_stopped(p.pid)
    shutil.rmtree(path)
    os.makedirs(path)
    open(os.path.join(path, "data.txt"), "w").write("user data")
    os.kill(p.pid, signal.SIGCONT)
    _, err = p.communicate(timeout=JOB_TIMEOUT)
    check(p.returncode == 2 and f"{path}: exists and is a directory without manifest.h5" in err,
          f"refused at commit time: rc {p.returncode}: {err}")
    check(os.listdir(path) == ["data.txt"] and leftovers(tmp, "ckpt") == [],
          f"the user's data stays, the staging is removed: {leftovers(tmp, 'ckpt')}")
    shutil.rmtree(path)

    # A live save (stopped after it took the lock) is never touched: a second save is refused,
    # its staging directory stays, readers still read the previous checkpoint; it then commits.
    check(fx.save("convert", 1, path).returncode == 0, "save before the live one")
    p = subprocess.Popen(command(["convert", fx.pt[2], path, "--overwrite"]),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(ENV, SHARDLOAD_STOP_AT="staged"))
    wait_stopped(p.pid)
    staging = staging_names(leftovers(tmp, "ckpt"))
    for tool in ("convert", "mpirun"):
        r = fx.save(tool, 1, path)
        check(r.returncode == 2 and f"{path}: another save of this checkpoint is in progress "
              f"(pid {p.pid} on host" in r.stderr, f"{tool}: live save refused: {r.stderr}")
    check(staging and staging <= set(leftovers(tmp, "ckpt")), "the live save's staging stays")
    check(run("verify", path).returncode == 0 and which(path, {"old": model(1)}) == "old",
          "readers read the previous checkpoint meanwhile")
    os.kill(p.pid, signal.SIGCONT)
    _, err = p.communicate(timeout=JOB_TIMEOUT)
    check(p.returncode == 0 and which(path, {"new": model(2)}) == "new" and
          leftovers(tmp, "ckpt") == [], f"the live save completes: {err}")

    # A reader that finds a live save between its two renames waits for it, restores nothing.
    p = subprocess.Popen(command(["convert", fx.pt[1], path, "--overwrite"]),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(ENV, SHARDLOAD_STOP_AT="between-renames",
                                  SHARDLOAD_RENAME="fallback"))
    wait_stopped(p.pid)
    check(not os.path.exists(path), "between the renames there is no checkpoint at the path")
    reader = subprocess.Popen(command(["verify", path]), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=ENV)
    time.sleep(2)
    os.kill(p.pid, signal.SIGCONT)
    out, err = reader.communicate(timeout=JOB_TIMEOUT)
    p.communicate(timeout=JOB_TIMEOUT)
    check(reader.returncode == 0 and "restored" not in err and p.returncode == 0,
          f"the reader waited for the live save: rc {reader.returncode}: {out} {err}")
    check(which(path, {"new": model(1)}) == "new", "the live save's checkpoint is in place")


def wait_stopped(pid, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.05)
    raise RuntimeError(f"process {pid} never stopped")


def run_directories(fx):
    root = os.path.join(fx.tmp, "run")
    for step in (1, 2, 3):
        r = run("convert", fx.pt[1 + step % 2], root, "--step", str(step), "--keep-last", "2")
        check(r.returncode == 0, f"convert --step {step}: {r.stderr}")
    check(sorted(os.listdir(root)) == ["latest", "step-2", "step-3"],
          f"latest and the last 2 steps: {os.listdir(root)}")
    check(open(os.path.join(root, "latest")).read() == "step-3\n", "latest names step-3")
    r = run("inspect", root, "--json")
    check(r.returncode == 0 and f'"checkpoint":"{root}/step-3"' in r.stdout.replace(" ", ""),
          f"inspect ROOT reads latest: {r.stdout[:300]} {r.stderr}")
    r = run("verify", root)
    check(r.returncode == 0 and f"{root}/step-3: OK" in r.stdout, f"verify ROOT: {r.stdout}")
    out = os.path.join(fx.tmp, "run-load.pt")
    r = run("load", root, "--into", fx.pt[1], "--out", out, ranks=2)
    check(r.returncode == 0 and same_model(torch.load(out), model(2)),
          f"load ROOT (2 ranks) reads step-3: {r.stderr}")

    # A collective save into a run directory; killed after its commit but before `latest`.
    run2 = os.path.join(fx.tmp, "run2")
    for step in (10, 20):
        r = fx.save("mpirun", step // 10, run2, extra=("--step", str(step), "--keep-last", "1"))
        check(r.returncode == 0, f"load --out --step {step}: {r.stderr}")
    check(sorted(os.listdir(run2)) == ["latest", "step-20"], f"keep-last 1: {os.listdir(run2)}")
    r = run("convert", fx.pt[1], run2, "--step", "30", "--keep-last", "1",
            env={"SHARDLOAD_CRASH_AT": "committed"})
    check(r.returncode == -signal.SIGKILL, "killed before latest was written")
    check(open(os.path.join(run2, "latest")).read() == "step-20\n" and
          which(os.path.join(run2, "step-20"), {"m2": model(2)}) == "m2",
          "latest still names the previous complete checkpoint")
    r = run("convert", fx.pt[2], run2, "--step", "40", "--keep-last", "1",
            env={"SHARDLOAD_CRASH_AT": "latest-written"})
    check(r.returncode == -signal.SIGKILL and
          open(os.path.join(run2, "latest")).read() == "step-40\n",
          "killed after latest: latest names the new step")
    r = run("load", run2, "--into", fx.pt[1], "--out", out, "--overwrite", ranks=2)
    check(r.returncode == 0 and same_model(torch.load(out), model(2)), f"load ROOT: {r.stderr}")
    r = run("convert", fx.pt[1], run2, "--step", "50", "--keep-last", "1")
    check(r.returncode == 0 and sorted(os.listdir(run2)) == ["latest", "step-50"],
          f"the next save rotates and cleans: {sorted(os.listdir(run2))} {r.stderr}")

    # Torn latest: a clear error naming ROOT/latest and what it says, from every reader.
    latest = os.path.join(root, "latest")
    os.makedirs(os.path.join(root, "step-4"))  # incomplete: no manifest
    for text, says in (("", "is empty"), ("garb\x01age", "says 'garb\\x01age'"),
                       ("step-99", f"says 'step-99', but {root}/step-99 does not exist"),
                       ("step-4", f"says 'step-4', but {root}/step-4 is not a complete"),
                       ("../run2/step-50", "says '../run2/step-50', which names something "
                        "outside")):
        with open(latest, "w") as f:
            f.write(text)
        readers = [("verify", lambda: run("verify", root))]
        if "step-" in text:  # the others on some of them (the MPI tests cover every rank)
            readers += [("inspect", lambda: run("inspect", root)),
                        ("load", lambda: run("load", root, "--into", fx.pt[1], ranks=2))]
        for name, reader in readers:
            r = reader()
            check(r.returncode == 3 and f"{latest}: {says}" in r.stderr and
                  "never falls back" in r.stderr, f"{name} with latest '{text}': {r.stderr}")


def main():
    tmp = tempfile.mkdtemp(prefix="shardload-crash-")
    try:
        fx = Fixture(tmp)
        matrix = []
        t = time.monotonic()
        full = "--full" in sys.argv
        for tool in ("convert", "mpirun"):
            for rename in ("exchange", "fallback"):
                if tool == "convert" or rename == "exchange" or full:
                    crash_matrix(fx, tool, rename, matrix)
        print("crash point matrix (tool, rename path, point, outcome, seconds to end):")
        for row in matrix:
            print("  " + "  ".join(str(x) for x in row))
        counts = {}
        for _, _, _, outcome, _ in matrix:
            counts[outcome] = counts.get(outcome, 0) + 1
        print(f"  {len(matrix)} kills: {counts}")
        print(f"  ({time.monotonic() - t:.0f} s)")
        t = time.monotonic()
        for row in random_kills(tmp, 3):
            print("  random: " + "  ".join(row))
        print(f"  ({time.monotonic() - t:.0f} s)")
        t = time.monotonic()
        overwrite_and_live_saves(fx)
        print(f"overwrite refusals and live saves: {time.monotonic() - t:.0f} s")
        t = time.monotonic()
        run_directories(fx)
        print(f"run directories: {time.monotonic() - t:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
