"""Several "hosts" on one machine for multi-host tests: each host is a network namespace with a
UTS namespace of its own (its own host name and loopback), joined by a veth pair to a bridge
that lives in a switch namespace of its own. Nothing is routed off the machine: the root
namespace gets no address and no route; the hosts reach only each other.

Open MPI launches ranks into the hosts through its remote-shell agent (agent.sh: `ip netns exec`
+ a UTS namespace named after the host, instead of ssh); mpirun itself runs on the first host,
as on a cluster's first node. MPI goes over TCP only (`btl tcp,self`), on the bridge's subnet.
The checkpoint directory is shared, as a cluster file system would be (one mount namespace).

Everything is torn down by `close()`, on exit and on SIGTERM/SIGINT/SIGHUP; what a killed run
(SIGKILL) left behind is removed by the next run before it starts (namespaces named after a
process id that no longer exists).

Requires root and `ip netns`; `HostNet.available()` says why not when they are missing (the
tests then report a skip, which is not a pass).
"""
import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
AGENT = os.path.join(HERE, "agent.sh")
SUBNET = "10.19.0"  # 10.19.0.0/24, only inside the test's own namespaces
PREFIX_RE = re.compile(r"^slh(\d+)-")
ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _kill_netns_processes(ns):
    """SIGKILLs every process in namespace `ns` (all of them started by a test), bounded."""
    for _ in range(20):
        out = _ip("netns", "pids", ns, check=False).stdout.split()
        pids = [int(p) for p in out if p.isdigit() and int(p) != os.getpid()]
        if not pids:
            return
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _remove_netns(ns):
    _kill_netns_processes(ns)
    _ip("netns", "del", ns, check=False)
    shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)


def remove_leftovers():
    """Removes the namespaces of earlier runs whose process is gone (a run killed by SIGKILL)."""
    out = _ip("netns", "list", check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = PREFIX_RE.match(name)
        if m and not _pid_alive(int(m.group(1))):
            _remove_netns(name)


class HostNet:
    """N hosts h1..hN (addresses 10.19.0.1..N) on one bridge. Use as a context manager."""

    @staticmethod
    def available():
        """None when namespaces can be made here, else the reason they cannot."""
        if os.geteuid() != 0:
            return "not root: network namespaces need CAP_SYS_ADMIN"
        if not shutil.which("ip") or not shutil.which("unshare"):
            return "`ip` (iproute2) or `unshare` (util-linux) is not installed"
        probe = f"slh{os.getpid()}-probe"
        r = _ip("netns", "add", probe, check=False)
        if r.returncode != 0:
            return f"`ip netns add` is not permitted here: {r.stderr.strip()}"
        r = subprocess.run(["ip", "netns", "exec", probe, "unshare", "--uts", "true"],
                           capture_output=True, text=True, timeout=20)
        _ip("netns", "del", probe, check=False)
        if r.returncode != 0:
            return f"UTS namespaces are not permitted here: {r.stderr.strip()}"
        return None

    def __init__(self, n):
        self.n = n
        self.prefix = f"slh{os.getpid()}"
        self.hosts = [f"h{i}" for i in range(1, n + 1)]
        self.switch = f"{self.prefix}-sw"
        self._made = []
        self._closed = False
        self._old_handlers = {}

    def ns(self, host):
        return f"{self.prefix}-{host}"

    def addr(self, host):
        return f"{SUBNET}.{self.hosts.index(host) + 1}"

    def __enter__(self):
        remove_leftovers()
        atexit.register(self.close)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _on_signal(self, signum, frame):
        self.close()
        sys.exit(128 + signum)

    def _create(self):
        _ip("netns", "add", self.switch)
        self._made.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        hosts_file = "127.0.0.1 localhost\n" + "".join(
            f"{self.addr(h)} {h}\n" for h in self.hosts)
        for h in self.hosts:
            ns = self.ns(h)
            _ip("netns", "add", ns)
            self._made.append(ns)
            # /etc/hosts of the namespace: `ip netns exec` bind-mounts /etc/netns/NS/* over /etc.
            os.makedirs(f"/etc/netns/{ns}", exist_ok=True)
            with open(f"/etc/netns/{ns}/hosts", "w") as f:
                f.write(hosts_file)
            _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p-{h}",
                "netns", self.switch)
            _ip("-n", self.switch, "link", "set", f"p-{h}", "master", "br0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{self.addr(h)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def close(self):
        if self._closed:
            return
        self._closed = True
        for ns in reversed(self._made):
            _remove_netns(ns)
        self._made = []
        try:
            os.rmdir("/etc/netns")  # made by _create when it was missing; kept when not empty
        except OSError:
            pass
        for sig, old in self._old_handlers.items():
            try:
                signal.signal(sig, old)
            except (ValueError, TypeError):
                pass

    # --- faults -------------------------------------------------------------------------

    def link(self, host, up):
        """Cuts (up=False) or restores host's cable: its switch port goes down, so the host's
        packets are dropped silently (no error at the sender, as with a dead switch port)."""
        _ip("-n", self.switch, "link", "set", f"p-{host}", "up" if up else "down")

    def pids_on(self, host):
        out = _ip("netns", "pids", self.ns(host), check=False).stdout.split()
        return [int(p) for p in out if p.isdigit()]

    # --- running ------------------------------------------------------------------------

    def hostfile(self, path, ranks_per_host):
        with open(path, "w") as f:
            for h in self.hosts:
                f.write(f"{h} slots={ranks_per_host}\n")
        return path

    def mpirun_argv(self, hostfile, np, argv, mca=(), env=None):
        """mpirun on h1 across the hosts of `hostfile`, TCP only on the bridge's subnet; the
        variables of `env` (or os.environ) named SHARDLOAD_* or HOSTS_* reach every rank."""
        subnet = f"{SUBNET}.0/24"
        args = ["mpirun", "-np", str(np), "--hostfile", hostfile, "--oversubscribe",
                "--mca", "plm_rsh_agent", AGENT, "--mca", "plm_rsh_no_tree_spawn", "1",
                "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", subnet,
                "--mca", "oob_tcp_if_include", subnet, "--mca", "pml", "ob1",
                "-x", "PYTHONPATH", "-x", "PATH"]
        for k in sorted(env or os.environ):
            if k.startswith(("SHARDLOAD_", "HOSTS_")):
                args += ["-x", k]
        for k, v in mca:
            args += ["--mca", k, str(v)]
        return self.on("h1", args + list(argv))

    def on(self, host, argv):
        """argv run on `host` (its network namespace and host name)."""
        return ["ip", "netns", "exec", self.ns(host), "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', host, *argv]

    def env(self, **extra):
        env = dict(os.environ, **ROOT_ENV, SHARDLOAD_HOSTS_PREFIX=self.prefix)
        env.setdefault("PYTHONPATH", "")
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def popen(self, argv, env=None):
        return subprocess.Popen(argv, env=env or self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc, limit):
    """(returncode or None when it outlived `limit` s and was killed, stdout, stderr, seconds)."""
    t0 = time.monotonic()
    try:
        out, err = proc.communicate(timeout=limit)
        return proc.returncode, out, err, time.monotonic() - t0
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        return None, out, err, time.monotonic() - t0
