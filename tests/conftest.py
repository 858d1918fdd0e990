"""Shared fixtures: real reference-server processes on free loopback ports, stopped after use."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from refserver.launcher import RefServer
from refserver.tls import generate_certs


@pytest.fixture(scope="session")
def refserver() -> Iterator[RefServer]:
    """The reference server with its built-in models (plain gRPC and HTTP)."""
    with RefServer() as srv:
        yield srv


@pytest.fixture(scope="session")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA with server and client certificates (ca.pem, server.pem/key, client.pem/key)."""
    return generate_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def tls_refserver(certs_dir: Path) -> Iterator[RefServer]:
    """The reference server with mutual TLS on both ports."""
    with RefServer(certs_dir=certs_dir) as srv:
        yield srv


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def terminate(proc, timeout: float = 15) -> int:
    """SIGTERM a child process, SIGKILL it if it does not exit in time; its exit code."""
    import signal
    import subprocess

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def scrape_counter(text: str, metric: str, **labels: str) -> float:
    """The value of one Prometheus sample in /metrics text, 0 if absent."""
    for line in text.splitlines():
        if not line.startswith(metric + "{"):
            continue
        label_text, value = line[len(metric) + 1:].rsplit("} ", 1)
        found = dict(part.split("=", 1) for part in label_text.split(","))
        if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(value)
    return 0.0


MLSERVER_MODEL = Path(__file__).resolve().parent / "mlserver_model"


@pytest.fixture(scope="session")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """MLServer (a third-party KServe v2 server, from its own venv) serving `addone` (y = x + 1, FP32 [-1, 4]);
    yields its gRPC address."""
    import json
    import os
    import shutil
    import subprocess
    import time
    import urllib.request

    default = Path(__file__).resolve().parent.parent / ".venv-mlserver" / "bin" / "mlserver"
    binary = Path(os.environ.get("MLSERVER_BIN", default))
    if not binary.exists():
        pytest.fail(f"MLServer is not installed at {binary}: run `make test` (it installs requirements-mlserver.txt "
                    "into .venv-mlserver)")
    folder = tmp_path_factory.mktemp("mlserver")
    for name in ("model.py", "model-settings.json"):
        shutil.copy(MLSERVER_MODEL / name, folder / name)
    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    (folder / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": ports[0], "grpc_port": ports[1], "metrics_port": ports[2],
        "parallel_workers": 0, "metrics_endpoint": None}))
    log = open(folder / "mlserver.log", "wb")
    proc = subprocess.Popen([str(binary), "start", str(folder)], cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"MLServer exited: {(folder / 'mlserver.log').read_text()[-2000:]}")
            try:
                ready = f"http://127.0.0.1:{ports[0]}/v2/models/addone/ready"
                if urllib.request.urlopen(ready, timeout=1).status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"MLServer not ready in 60 s: {(folder / 'mlserver.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{ports[1]}"
    finally:
        terminate(proc)
        log.close()
