"""Run real Locust processes (local, --processes, master + workers) against a server, and read their results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "locustfiles" / "ovms.py"
CAPTURE_LOCUSTFILE = ROOT / "tests" / "locustfiles" / "capture.py"
LOCUST = [sys.executable, "-m", "locust"]


@dataclass
class LocustResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def stats(self) -> list[dict]:
        """Locust's --json statistics (one entry per request type and name); with --processes the worker
        children print their own (empty) documents first, so the master's is the last one."""
        decoder, docs, i, text = json.JSONDecoder(), [], 0, self.stdout
        while (i := text.find("[", i)) >= 0:
            doc, i = decoder.raw_decode(text, i)
            docs.append(doc)
        if not docs:
            raise AssertionError(f"no --json output; stderr:\n{self.stderr[-3000:]}")
        return docs[-1]

    @property
    def requests(self) -> int:
        return sum(e["num_requests"] for e in self.stats)

    @property
    def failures(self) -> int:
        return sum(e["num_failures"] for e in self.stats)

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if "ovms: error:" in line]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_master(args: list[str] | tuple[str, ...]) -> list[str]:
    """With --processes, bind the master to 127.0.0.1 on a free port (Locust's default is *:5557)."""
    if "--processes" not in args:
        return []
    port = str(free_port())
    return ["--master-bind-host", "127.0.0.1", "--master-bind-port", port, "--master-host", "127.0.0.1",
            "--master-port", port]


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def run_locust(host: str, *args: str, users: int = 2, run_time: str = "2s", timeout: float = 90,
               cwd: Path | None = None, locustfile: Path = LOCUSTFILE, env: dict | None = None) -> LocustResult:
    """A headless run with --json statistics on stdout."""
    cmd = LOCUST + ["-f", str(locustfile), "--host", host, "--headless", "-u", str(users), "-r", str(max(users, 1)),
                    "-t", run_time, "--json", "--skip-log-setup"] + list(args) + loopback_master(args)
    # a scratch folder of its own: the default result file (ovms-result.json) lands there, not in the checkout
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**_env(), **(env or {})},
                          cwd=cwd or tempfile.mkdtemp(prefix="locust-run-"))
    return LocustResult(proc.returncode, proc.stdout, proc.stderr)


def run_captured(host: str, *args: str, folder: Path, **kw) -> tuple[LocustResult, list[dict]]:
    """A headless run of the suite's locustfile that also records every request event's payload."""
    capture = folder / "events.json"
    result = run_locust(host, *args, locustfile=CAPTURE_LOCUSTFILE, env={"CAPTURE_FILE": str(capture)}, **kw)
    return result, json.loads(capture.read_text())


def start_distributed(master_args: list[str], workers: int = 2, cwd: Path | None = None
                      ) -> tuple[subprocess.Popen, list[subprocess.Popen]]:
    """A master (``--master`` on 127.0.0.1 and a free port, plus ``master_args``; stdout and stderr piped, as
    text) and ``workers`` worker processes (output discarded), started; the caller stops them."""
    port = free_port()
    env, cwd = _env(), cwd or ROOT
    master = subprocess.Popen(LOCUST + ["-f", str(LOCUSTFILE), "--master", "--master-bind-host", "127.0.0.1",
                                        "--master-bind-port", str(port), "--skip-log-setup", *master_args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    procs = [subprocess.Popen(LOCUST + ["-f", str(LOCUSTFILE), "--worker", "--master-host", "127.0.0.1",
                                        "--master-port", str(port), "--skip-log-setup"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd)
             for _ in range(workers)]
    return master, procs


def run_distributed(host: str, *args: str, workers: int = 2, users: int = 4, run_time: str = "3s",
                    timeout: float = 120) -> tuple[LocustResult, list[LocustResult]]:
    """A master process and ``workers`` worker processes on loopback; all are stopped before returning."""
    port = free_port()
    master_cmd = LOCUST + ["-f", str(LOCUSTFILE), "--master", "--master-bind-host", "127.0.0.1",
                           "--master-bind-port", str(port), "--expect-workers", str(workers), "--headless",
                           "-u", str(users), "-r", str(users), "-t", run_time, "--json", "--skip-log-setup",
                           "--host", host] + list(args)
    worker_cmd = LOCUST + ["-f", str(LOCUSTFILE), "--worker", "--master-host", "127.0.0.1", "--master-port",
                           str(port), "--skip-log-setup"]
    master = subprocess.Popen(master_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                              cwd=tempfile.mkdtemp(prefix="locust-master-"))
    time.sleep(0.5)
    procs = [subprocess.Popen(worker_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                              cwd=ROOT) for _ in range(workers)]
    try:
        out, err = master.communicate(timeout=timeout)
        results = []
        for p in procs:
            o, e = p.communicate(timeout=30)
            results.append(LocustResult(p.returncode, o, e))
        return LocustResult(master.returncode, out, err), results
    finally:
        for p in [master, *procs]:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
