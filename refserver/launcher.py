"""Start the reference server as a real child process on free loopback ports, and stop it.

Used by the demo, the tests and the benchmarks::

    with RefServer() as srv:
        srv.grpc_address   # "127.0.0.1:PORT"
        srv.rest_url       # "http://127.0.0.1:PORT"
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["RefServer", "RefServerError"]


class RefServerError(RuntimeError):
    """The reference server did not come up; the message carries its own error output."""


class RefServer:
    def __init__(self, config: str | Path | dict | None = None, certs_dir: str | Path | None = None,
                 host: str = "127.0.0.1", grpc_port: int = 0, rest_port: int = 0, start_timeout: float = 30.0,
                 extra_args: list[str] | None = None, cpu: int | None = None):
        self._tmp = tempfile.TemporaryDirectory(prefix="refserver-")
        if isinstance(config, dict):
            path = Path(self._tmp.name) / "config.json"
            path.write_text(json.dumps(config))
            config = path
        self.config = config
        self.certs_dir = certs_dir
        self.host = host
        self.grpc_port, self.rest_port = grpc_port, rest_port
        self.start_timeout = start_timeout
        self.extra_args = extra_args or []
        self.cpu = cpu
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(self._tmp.name) / "server.log"

    def command(self, ready_file: Path) -> list[str]:
        cmd = [sys.executable, "-m", "refserver", "--host", self.host, "--grpc-port", str(self.grpc_port),
               "--rest-port", str(self.rest_port), "--ready-file", str(ready_file), "--quiet"]
        if self.config:
            cmd += ["--config", str(self.config)]
        if self.certs_dir:
            cmd += ["--certs-dir", str(self.certs_dir)]
        if self.cpu is not None:
            cmd = ["taskset", "-c", str(self.cpu)] + cmd
        return cmd + self.extra_args

    def start(self) -> RefServer:
        ready = Path(self._tmp.name) / "ready.json"
        ready.unlink(missing_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command(ready), stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + self.start_timeout
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RefServerError(f"reference server exited with code {self.proc.returncode}: {self.output()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RefServerError(f"reference server not ready after {self.start_timeout:.0f} s: {self.output()}")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        self.grpc_port, self.rest_port, self.tls = info["grpc_port"], info["rest_port"], info["tls"]
        return self

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip()
        except OSError:
            return ""

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def rest_address(self) -> str:
        return f"{self.host}:{self.rest_port}"

    @property
    def rest_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.rest_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> RefServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
