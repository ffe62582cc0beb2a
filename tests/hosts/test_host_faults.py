#!/usr/bin/env python3
"""Faults across hosts (tests/hosts/hostnet.py): a host's link cut during start-up, in the middle
of a load and in the middle of a save; all ranks of one host SIGKILLed during a save; a link
that comes back within the timeout.

For each cut: every rank process (on either side) must end with an error naming the unreachable
rank(s) and host(s) within the timeout + 30 s, and the whole job (mpirun included) within the
timeout + 60 s; afterwards the previous checkpoint loads. For the SIGKILL: the checkpoint is the
old one or the new one, never torn. For the link that comes back: the operation completes.

Each rank's stderr goes to a file of its own (a cut host's output cannot reach mpirun); the test
watches the rank processes in each host's namespace and records when each one ends. Prints the
measured times (cut -> each rank's end, cut -> mpirun's end) and "N passed, M failed" last;
exits 77 (a skip, not a pass) where namespaces cannot be made.
Environment: SHARDLOAD_BIN (the CLI), PYTHONPATH with the built `shardload` package.
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from hostnet import HostNet  # noqa: E402

BIN = os.path.abspath(os.environ.get("SHARDLOAD_BIN", os.path.join(HERE, "../../build/shardload")))
WORKER = os.path.join(HERE, "host_worker.py")
TIMEOUT = int(os.environ.get("HOSTS_FAULT_TIMEOUT", "15"))
RESULTS = {"passed": 0, "failed": 0}
TIMES = []  # (scenario, what, seconds)


def check(cond, what):
    RESULTS["passed" if cond else "failed"] += 1
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr, flush=True)
    return cond


def rank_pids(net, host, marker):
    """Rank processes on `host`: those whose command line contains `marker`."""
    pids = []
    for p in net.pids_on(host):
        try:
            cmd = open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode()
            comm = open(f"/proc/{p}/comm").read().strip()
            stat = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        # Not mpirun, the `sh -c` wrapper or shardload's launcher watcher (shardload-watch).
        if marker in cmd and (comm == "shardload" or comm.startswith("python")) and stat != "Z":
            pids.append(p)
    return pids


class Job:
    """One mpirun job over the first `hosts` hosts, each rank's stderr in work/rank<r>.err."""

    def __init__(self, net, work, name, hosts, per_host, argv, marker, env=None):
        self.net, self.name, self.marker = net, name, marker
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir, exist_ok=True)
        hf = os.path.join(self.dir, "hostfile")
        with open(hf, "w") as f:
            for h in net.hosts[:hosts]:
                f.write(f"{h} slots={per_host}\n")
        wrapped = ["sh", "-c", f'exec "$0" "$@" 2>"{self.dir}/rank$OMPI_COMM_WORLD_RANK.err"',
                   *argv]
        env = env or net.env()
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(net.mpirun_argv(hf, hosts * per_host, wrapped, env=env),
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.hosts = net.hosts[:hosts]
        self.seen = {}   # pid -> host
        self.ended = {}  # pid -> monotonic time

    def poll_ranks(self):
        for h in self.hosts:
            for p in rank_pids(self.net, h, self.marker):
                self.seen.setdefault(p, h)
        for p in self.seen:
            if p not in self.ended and not os.path.exists(f"/proc/{p}"):
                self.ended[p] = time.monotonic()
            elif p not in self.ended:
                try:
                    if open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                        self.ended[p] = time.monotonic()
                except OSError:
                    self.ended[p] = time.monotonic()

    def wait_for(self, cond, limit):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            self.poll_ranks()
            if cond():
                return True
            if self.proc.poll() is not None:
                return cond()
            time.sleep(0.05)
        return False

    def finish(self, limit):
        """Waits for mpirun (killing it after `limit` s); returns (rc or None, seconds)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and self.proc.poll() is None:
            self.poll_ranks()
            time.sleep(0.1)
        self.poll_ranks()
        end = time.monotonic()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.output = self.proc.stdout.read()
            return None, end
        self.output = self.proc.stdout.read()
        return self.proc.returncode, end

    def stderr_of(self, rank):
        try:
            return open(os.path.join(self.dir, f"rank{rank}.err")).read()
        except OSError:
            return ""

    def rss_bytes(self, host, key):
        """Sum of /proc/PID/io `key` over this job's ranks on `host`."""
        total = 0
        for p, h in self.seen.items():
            if h != host:
                continue
            try:
                for line in open(f"/proc/{p}/io"):
                    k, v = line.split(":")
                    if k == key:
                        total += int(v)
            except OSError:
                pass
        return total


def throttle(net, host, mbit):
    """Limits the host's link both ways, so that a transfer lasts long enough to be cut."""
    for ns, dev in ((net.ns(host), "eth0"), (net.switch, f"p-{host}")):
        subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root",
                        "tbf", "rate", f"{mbit}mbit", "burst", "256kb", "latency", "400ms"],
                       check=True, capture_output=True)


def judge_cut(job, scenario, cut_at, names):
    """The checks of a cut: each rank ends with an error naming the far side, in time; the job
    ends in time. `names`: rank -> regex its stderr must match."""
    rc, end = job.finish(TIMEOUT + 120)
    job_secs = end - cut_at
    TIMES.append((scenario, "cut -> mpirun ended", job_secs if rc is not None else None))
    check(rc is not None and rc != 0, f"{scenario}: mpirun rc {rc}")
    check(rc is not None and job_secs <= TIMEOUT + 60,
          f"{scenario}: the job ended {job_secs:.1f} s after the cut (limit {TIMEOUT + 60})")
    check(len(job.seen) == len(names), f"{scenario}: saw {len(job.seen)} rank processes")
    for p, host in sorted(job.seen.items()):
        ended = job.ended.get(p)
        secs = ended - cut_at if ended else None
        TIMES.append((scenario, f"cut -> rank process {p} on {host} ended", secs))
        check(secs is not None and secs <= TIMEOUT + 30,
              f"{scenario}: the rank process on {host} ended {secs} s after the cut")
    for rank, pattern in names.items():
        err = job.stderr_of(rank)
        check(re.search(pattern, err) is not None,
              f"{scenario}: rank {rank}'s stderr does not match {pattern!r}:\n{err[-1500:]}")
        first = next((l for l in err.splitlines() if "error" in l.lower()), err.strip()[-300:])
        print(f"  {scenario}: rank {rank}: {first[:300]}")
    print(f"{scenario}: mpirun rc {rc}, ended {job_secs:.1f} s after the cut", flush=True)


def cut_during_startup(net, work, ckpt, ref):
    job = Job(net, work, "cut-startup", 2, 1,
              [BIN, "load", ckpt, "--into", ref, "--timeout", str(TIMEOUT)], BIN)
    ok = job.wait_for(lambda: any(h == "h2" for h in job.seen.values()), 60)
    cut_at = time.monotonic()
    net.link("h2", False)
    check(ok, "start-up: no rank process appeared on h2")
    try:
        # Inside MPI_Init no rank can ask another anything over MPI; the launcher (PMIx) can:
        # each side has no word from the other across the cut link, and names it.
        judge_cut(job, "cut during start-up", cut_at, {
            0: r"rank 0 of 2 \(host h1\) did not get past MPI_Init within \d+ s: no word from "
               r"rank 1 \(host h2\)",
            1: r"rank 1 of 2 \(host h2\) did not get past MPI_Init within \d+ s: no word from "
               r"rank 0 \(host h1\)"})
    finally:
        net.link("h2", True)


def cut_mid_load(net, work, ckpt, ref, ref_bytes):
    throttle(net, "h2", 400)
    job = Job(net, work, "cut-load", 2, 1,
              [BIN, "load", ckpt, "--into", ref, "--timeout", str(TIMEOUT)], BIN)
    # Rank 1 has read REF and part of its share: the transfer is under way.
    ok = job.wait_for(lambda: job.rss_bytes("h2", "rchar") > ref_bytes + (24 << 20), 120)
    check(ok, "mid-load: rank 1 never got into the transfer")
    cut_at = time.monotonic()
    net.link("h2", False)
    try:
        judge_cut(job, "cut mid-load", cut_at, {
            0: r"rank 1 \(host h2\) (made no progress|did not reach)",
            1: r"rank 0 \(host h1\)"})
    finally:
        net.link("h2", True)


def cut_mid_save(net, work, prev):
    env = net.env(HOSTS_TIMEOUT=TIMEOUT)
    job = Job(net, work, "cut-save", 2, 1,
              [sys.executable, WORKER, "long-save", work, prev, "256"], "host_worker.py", env)
    ok = job.wait_for(lambda: job.rss_bytes("h2", "wchar") > (16 << 20), 120)
    check(ok, "mid-save: rank 1 never started writing")
    cut_at = time.monotonic()
    net.link("h2", False)
    try:
        judge_cut(job, "cut mid-save", cut_at, {
            0: r"rank 1 \(host h2\) did not reach",
            1: r"rank 0 \(host h1\)"})
    finally:
        net.link("h2", True)


def killed_host_mid_save(net, work, prev):
    env = net.env(HOSTS_TIMEOUT=TIMEOUT)
    job = Job(net, work, "kill-save", 2, 2,
              [sys.executable, WORKER, "long-save", work, prev, "256"], "host_worker.py", env)
    ok = job.wait_for(lambda: job.rss_bytes("h2", "wchar") > (16 << 20), 120)
    check(ok, "SIGKILL mid-save: the ranks on h2 never started writing")
    t = time.monotonic()
    victims = [p for p, h in job.seen.items() if h == "h2"]
    for p in victims:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    rc, end = job.finish(TIMEOUT + 120)
    TIMES.append(("all ranks of h2 SIGKILLed mid-save", "kill -> mpirun ended",
                  end - t if rc is not None else None))
    check(rc is not None and rc != 0 and end - t <= TIMEOUT + 60,
          f"SIGKILL mid-save: mpirun rc {rc} after {end - t:.1f} s")
    print(f"all ranks of h2 SIGKILLed mid-save ({len(victims)} processes): mpirun rc {rc}, "
          f"ended {end - t:.1f} s after the kill", flush=True)


def link_back(net, work, ckpt, ref, ref_bytes):
    throttle(net, "h2", 400)
    job = Job(net, work, "link-back", 2, 1,
              [BIN, "load", ckpt, "--into", ref, "--timeout", "40"], BIN)
    ok = job.wait_for(lambda: job.rss_bytes("h2", "rchar") > ref_bytes + (24 << 20), 120)
    check(ok, "link back: rank 1 never got into the transfer")
    net.link("h2", False)
    time.sleep(5)
    net.link("h2", True)
    rc, end = job.finish(160)
    check(rc == 0, f"link back after 5 s: the load did not complete: rc {rc}\n"
                   f"{job.output[-1500:]}\n{job.stderr_of(0)[-1500:]}\n{job.stderr_of(1)[-1500:]}")
    print(f"link down 5 s mid-load (timeout 40 s): rc {rc}", flush=True)


def loads_whole(work, ckpt, mib):
    """(the checkpoint loads on one process and equals, tensor for tensor, either the state it
    replaced (seed 23: "old") or the new one (seed 29: "new"); what it was)."""
    r = subprocess.run([sys.executable, "-c",
                        "import sys, torch, shardload; sys.path.insert(0, sys.argv[1]);"
                        "import host_worker as w; n = int(sys.argv[3]);"
                        "old, new = w.large(n, 23), w.large(n, 29);"
                        "got = {k: torch.zeros_like(v) for k, v in old.items()};"
                        "shardload.load(got, sys.argv[2]);"
                        "same = lambda s: all(torch.equal(got[k], s[k]) for k in s);"
                        "print('OLD' if same(old) else 'NEW' if same(new) else 'TORN')",
                        HERE, ckpt, str(mib)],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1",
                                OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1"))
    out = r.stdout.strip().splitlines()
    what = out[-1] if out else "ERROR"
    return what in ("OLD", "NEW"), what + " " + r.stderr[-1500:]


def main():
    why = HostNet.available()
    if why:
        print(f"SKIPPED: multi-host fault tests need network namespaces: {why}")
        return 77
    only = set(sys.argv[1:])
    work = tempfile.mkdtemp(prefix="shardload-host-faults-")
    t0 = time.monotonic()
    try:
        sys.path.insert(0, HERE)
        import host_worker
        big = host_worker.large(128)
        ref = os.path.join(work, "big.pt")
        torch.save(big, ref)
        ref_bytes = os.path.getsize(ref)
        ckpt = os.path.join(work, "big-ckpt")
        subprocess.run([BIN, "convert", ref, ckpt], check=True, capture_output=True)
        del big
        # The previous checkpoint that the cut and killed saves try to replace: saved whole by
        # one process (the same 256 MiB state a 2-rank save writes, split the same way).
        prev = os.path.join(work, "prev")
        r = subprocess.run(["true"], capture_output=True, text=True) if only and not only & {"save", "kill"} else subprocess.run([sys.executable, "-c",
                            "import sys, shardload; sys.path.insert(0, sys.argv[1]);"
                            "import host_worker as w; shardload.save(w.large(256), sys.argv[2])",
                            HERE, prev], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1",
                                    OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1"))
        check(r.returncode == 0, f"previous checkpoint: {r.stderr[-1500:]}")
        with HostNet(2) as net:
            if not only or "startup" in only:
                cut_during_startup(net, work, ckpt, ref)
            if not only or "load" in only:
                cut_mid_load(net, work, ckpt, ref, ref_bytes)
            if not only or "save" in only:
                cut_mid_save(net, work, prev)
                ok, text = loads_whole(work, prev, 256)
                print(f"after the cut save, the checkpoint loads as: {text.split()[0]}")
                check(ok and text.startswith("OLD"),
                      f"after the cut save, the previous checkpoint does not load: {text}")
            if not only or "kill" in only:
                killed_host_mid_save(net, work, prev)
                ok, text = loads_whole(work, prev, 256)
                print(f"after the killed save, the checkpoint loads as: {text.split()[0]}")
                check(ok, f"after the killed save, the checkpoint is torn: {text}")
            if not only or "back" in only:
                link_back(net, work, ckpt, ref, ref_bytes)
    finally:
        subprocess.run(["rm", "-rf", work])
    print("\nmeasured (seconds):")
    for scenario, what, secs in TIMES:
        print(f"  {scenario}: {what}: {'did not end' if secs is None else f'{secs:.1f}'}")
    print(f"multi-host fault tests: {time.monotonic() - t0:.1f} s")
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
