"""Shared pieces of the client benchmarks (bench/clients.py, bench/refserver_h2load.py).

- ``run_pinned``: run one client as a child pinned to a core (taskset), with a bounded time; its CPU
  seconds (user+system, from wait4, so exact, children included), the peak RSS of every process in
  its tree (VmHWM, read every 50 ms), and a per-process breakdown (Locust's master and workers).
- ``marginal``: client CPU per request and rate from a long and a 1 s run of the same client, so
  start-up and one-time preparation (imports, the dataset, connecting) do not count.
- ``cell``: a measurement repeated, with its medians.
- ``ensure_tools``: Debian's packages for the peers (h2load, wrk, hey, nginx), installed if missing.
- ``machine``: the CPU model and core count, for the report.

Not part of `make test`.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU, CLIENT_CPU = 0, 1
TICK = os.sysconf("SC_CLK_TCK")
POLL_S = 0.05

# tool -> Debian package
PACKAGES = {"h2load": "nghttp2-client", "nghttp": "nghttp2-client", "wrk": "wrk", "hey": "hey", "nginx": "nginx",
            "taskset": "util-linux", "lscpu": "util-linux"}


class BenchError(SystemExit):
    """One line on stderr and exit code 2: a missing tool, a client that failed, a run that timed out."""

    def __init__(self, message: str):
        super().__init__(f"bench: error: {message}")


def ensure_tools(*tools: str) -> None:
    """Install the Debian packages of the tools that are missing (apt-get, as root); fail in one line otherwise."""
    missing = [t for t in tools if not shutil.which(t)]
    if not missing:
        return
    packages = sorted({PACKAGES.get(t, t) for t in missing})
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BenchError(f"{', '.join(missing)} not found: install Debian's {' '.join(packages)}")
    print(f"installing {' '.join(packages)} with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=300, env=env,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, timeout=600, env=env,
                       stdout=subprocess.DEVNULL)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"apt-get install {' '.join(packages)} failed: {exc}") from None
    still = [t for t in missing if not shutil.which(t)]
    if still:
        raise BenchError(f"{', '.join(still)} still not found after installing {' '.join(packages)}")


def machine() -> dict:
    """The CPU model (lscpu's "Model name") and the number of online cores."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        text = ""
    model = re.search(r"Model name:\s*(.+)", text)
    return {"model": model.group(1).strip() if model else "unknown CPU", "cores": os.cpu_count() or 0}


def become_subreaper() -> None:
    """Orphans of our children (a Locust worker its master did not reap) come to us, so wait4 still counts them."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)   # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def pin_self(cpu: int = SERVER_CPU) -> None:
    """Keep the harness (its polling) off the client's core."""
    try:
        os.sched_setaffinity(0, {cpu})
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{proc.args[0]} exited with code {proc.returncode} before listening on port {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


# ---- processes: CPU and peak RSS from /proc ----

def proc_cpu(pid: int) -> float | None:
    """User+system CPU seconds of one process (not its children), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return None


def proc_hwm_mb(pid: int) -> float | None:
    """Peak RSS so far (VmHWM). Not ru_maxrss: that one keeps the forked Python parent's size from before
    the exec (about 67 MB here), whatever the client is."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def proc_children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


@dataclass
class ProcStat:
    pid: int
    cpu: float = 0.0       # last seen user+system seconds (polled: misses at most the last 50 ms)
    rss_mb: float = 0.0    # peak VmHWM seen
    parent: int = 0


@dataclass
class Run:
    output: str
    returncode: int
    cpu: float                       # user+system seconds of the whole tree, exact (wait4 of it and of any orphan)
    wall: float
    procs: dict[int, ProcStat] = field(default_factory=dict)

    @property
    def rss_mb(self) -> float:
        """The highest peak RSS of any one process of the tree."""
        return max((p.rss_mb for p in self.procs.values()), default=0.0)

    def root(self) -> ProcStat:
        return next(iter(self.procs.values()))

    def children(self) -> list[ProcStat]:
        return list(self.procs.values())[1:]


def run_pinned(cmd: list[str], cpus: str = str(CLIENT_CPU), env: dict | None = None, timeout: float = 120,
               cwd: str | Path | None = None, ok_codes: tuple[int, ...] = (0, 1),
               cgroup: CpuQuota | None = None) -> Run:
    """Run ``cmd`` on ``cpus`` (taskset) and wait at most ``timeout`` s; its output, exact CPU and peak RSS.

    The tree's CPU is wait4's for the child (which includes the children it reaped) plus wait4's for any
    orphan that was reparented to us (see become_subreaper); peak RSS and a per-process CPU breakdown come
    from /proc, polled every 50 ms. A child that fails (exit code not in ok_codes) or times out is an error.
    With ``cgroup``, the child (and all it forks) runs under that CPU quota.
    """
    with tempfile.TemporaryFile("w+") as out:
        started = time.monotonic()
        proc = subprocess.Popen(["taskset", "-c", cpus, *cmd], stdout=out, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
                                preexec_fn=cgroup.enter if cgroup else None)
        procs: dict[int, ProcStat] = {proc.pid: ProcStat(proc.pid)}
        deadline = started + timeout
        timed_out = False
        while True:
            _poll_tree(procs, proc.pid)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                timed_out = True
                _kill_group(proc.pid)
                _pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(POLL_S)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        cpu = usage.ru_utime + usage.ru_stime + _reap_orphans(procs, proc.pid)
        out.seek(0)
        text = out.read()
    if timed_out:
        raise BenchError(f"{_short(cmd)} did not finish in {timeout:.0f} s; its last output: {_tail(text)}")
    if proc.returncode not in ok_codes:
        raise BenchError(f"{_short(cmd)} failed (exit code {proc.returncode}): {_tail(text)}")
    return Run(text, proc.returncode, cpu, wall, procs)


def _poll_tree(procs: dict[int, ProcStat], root: int) -> None:
    stack = [root]
    while stack:
        pid = stack.pop()
        stat = procs.setdefault(pid, ProcStat(pid))
        cpu, hwm = proc_cpu(pid), proc_hwm_mb(pid)
        if cpu is not None:
            stat.cpu = max(stat.cpu, cpu)
        if hwm is not None:
            stat.rss_mb = max(stat.rss_mb, hwm)
        for child in proc_children(pid):
            procs.setdefault(child, ProcStat(child, parent=pid))
            stack.append(child)


def _reap_orphans(procs: dict[int, ProcStat], root: int, grace: float = 10.0) -> float:
    """CPU of descendants that outlived the root or were not reaped by it (they are now our children)."""
    total = 0.0
    for pid in list(procs)[1:]:
        deadline = time.monotonic() + grace
        while True:
            try:
                got, _status, usage = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:
                break            # reaped by its parent: already in the root's wait4
            if got:
                total += usage.ru_utime + usage.ru_stime
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5
            time.sleep(0.02)
    return total


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _short(cmd: list[str]) -> str:
    return " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd[:6]))


def _tail(text: str, n: int = 600) -> str:
    text = " ".join(text.split())
    return text[-n:] or "(none)"


class CpuQuota:
    """A cgroup with a CPU quota (cgroup v1 ``cpu`` or v2 ``cpu.max``), for a client that must be limited to a
    fraction of a core. ``available()`` says whether this machine lets us make one (root, a writable cgroup fs)."""

    V1, V2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")

    def __init__(self, cores: float, period_us: int = 10_000):
        self.cores, self.period_us = cores, period_us
        name = f"bench-clients-{os.getpid()}-{int(cores * 1000)}"
        self.v2 = not (self.V1 / "cpu.cfs_quota_us").exists()
        self.path = (self.V2 if self.v2 else self.V1) / name

    @classmethod
    def available(cls) -> bool:
        if (cls.V1 / "cpu.cfs_quota_us").exists():
            return os.access(cls.V1, os.W_OK)
        try:
            return "cpu" in (cls.V2 / "cgroup.subtree_control").read_text().split() and os.access(cls.V2, os.W_OK)
        except OSError:
            return False

    def __enter__(self) -> CpuQuota:
        self.path.mkdir()
        quota = int(self.cores * self.period_us)
        if self.v2:
            (self.path / "cpu.max").write_text(f"{quota} {self.period_us}")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(self.period_us))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        return self

    def enter(self) -> None:
        """In the forked child, before exec: move this process into the group."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def __exit__(self, *exc: object) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:          # still has a process (exiting): try again shortly
                time.sleep(0.1)


# ---- measurements ----

@dataclass
class Sample:
    """One run of a client: completed requests in ``seconds`` of load, its CPU and peak RSS."""
    requests: int
    seconds: float
    cpu: float
    rss_mb: float
    mean_s: float | None = None
    extra: dict = field(default_factory=dict)


def marginal(long: Sample, short: Sample) -> tuple[float, float]:
    """(rate in req/s, client CPU per request in s) from a long and a short run of the same client:
    (CPU_long - CPU_short) / (requests_long - requests_short), so start-up and preparation cancel out."""
    dn = long.requests - short.requests
    if dn <= 0:
        raise BenchError(f"the long run completed {long.requests} requests, the short one {short.requests}: "
                         "nothing to measure (is the server answering?)")
    return dn / max(long.seconds - short.seconds, 1e-9), (long.cpu - short.cpu) / dn


def cell(run: Callable[[float], Sample], seconds: float, repeats: int, short: float = 1.0) -> dict:
    """``repeats`` pairs of a long and a short run; medians of rate and CPU per request, the highest peak RSS,
    the median mean latency of the long runs, and every value (for the spread)."""
    rates, cpus, rss, means, samples = [], [], [], [], []
    for _ in range(repeats):
        long_run = run(seconds)
        short_run = run(short)
        rate, cpu = marginal(long_run, short_run)
        rates.append(rate)
        cpus.append(cpu)
        rss.append(long_run.rss_mb)
        if long_run.mean_s is not None:
            means.append(long_run.mean_s)
        samples.append((long_run, short_run))
        time.sleep(0.3)
    return {"rate": statistics.median(rates), "cpu_us": statistics.median(cpus) * 1e6, "rss_mb": max(rss),
            "mean_s": statistics.median(means) if means else None, "rates": rates,
            "cpus_us": [c * 1e6 for c in cpus], "samples": samples}


def median(values: list[float]) -> float:
    return statistics.median(values)


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: no compression flag, 4-byte big-endian length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


# ---- long runs (bench/soak.py): a process's current state, a process group's stop, a fitted slope ----

@dataclass
class ProcState:
    """One process at one moment, from /proc: resident memory (VmRSS, and its anonymous part RssAnon), open file
    descriptors, threads and user+system CPU seconds."""
    rss_mb: float
    rss_anon_mb: float
    fds: int
    threads: int
    cpu: float


def proc_state(pid: int) -> ProcState | None:
    """The current state of ``pid``, or None if it is gone (or not ours to read)."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "Threads"):
                    fields[key] = int(value.split()[0])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError, IndexError):
        return None
    cpu = proc_cpu(pid)
    if cpu is None or "VmRSS" not in fields:   # a zombie has no VmRSS
        return None
    return ProcState(fields["VmRSS"] / 1024, fields.get("RssAnon", 0) / 1024, fds, fields.get("Threads", 0), cpu)


def proc_all_children(pid: int) -> list[int]:
    """The children of every thread of ``pid`` (proc_children reads the main thread's only), in pid order."""
    kids: set[int] = set()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                kids.update(int(x) for x in fh.read().split())
        except (OSError, ValueError):
            pass
    return sorted(kids)


def stop_group(proc: subprocess.Popen, first: int = signal.SIGINT, grace: float = 30.0) -> int | None:
    """Stop a child started with start_new_session=True and everything in its process group: ``first`` to the
    group (SIGINT: as a terminal's Ctrl-C, so Locust writes its result), then SIGKILL after ``grace`` s.
    Also reaps any of the group's processes that were reparented to us (become_subreaper). Its exit code."""
    for sig, wait in ((first, grace), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    try:                        # stragglers of the group (a worker its master left behind)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    while True:                 # reap orphans reparented to us, without blocking
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if not pid:
            break
    return proc.returncode


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float, float | None]:
    """Least squares y = a + b x: (b, a, standard error of b; None with fewer than 3 points)."""
    n = len(xs)
    if n < 2:
        return 0.0, ys[0] if ys else 0.0, None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, my, None
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    a = my - b * mx
    if n < 3:
        return b, a, None
    residual = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return b, a, (residual / (n - 2) / sxx) ** 0.5


def machine_details() -> dict:
    """The CPU model (/proc/cpuinfo), the usable cores (as nproc counts them), memory and the load average now."""
    model = "unknown CPU"
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = match.group(1).strip() if match else model
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except (OSError, AttributeError):
        nproc = os.cpu_count() or 0
    mem = 0.0
    try:
        match = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M)
        mem = int(match.group(1)) / 1024 / 1024 if match else 0.0
    except OSError:
        pass
    return {"model": model, "nproc": nproc, "online": os.cpu_count() or 0, "mem_gib": mem,
            "loadavg": os.getloadavg()}
