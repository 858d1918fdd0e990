"""Shared fixtures: real reference-server processes on free loopback ports, stopped after use."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from refserver.launcher import RefServer
from refserver.tls import generate_certs

# Property tests explore fresh examples on a developer's machine; CI (CI=true) replays a fixed set, so a
# landing never hangs on chance. `HYPOTHESIS_PROFILE=deep` searches longer.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("deep", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default"))


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


def wait_until(predicate, timeout: float, what: str):
    """``predicate()``'s first true value, polled every 0.2 s; AssertionError naming ``what`` after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


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
KSERVE_SERVE = Path(__file__).resolve().parent / "kserve_model" / "serve.py"


def _free_ports(n: int) -> list[int]:
    ports = []
    for _ in range(n):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return ports


def _wait_http(url: str, proc, log_path: Path, what: str, timeout: float = 60) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited: {log_path.read_text()[-2000:]}")
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready in {timeout:.0f} s: {log_path.read_text()[-2000:]}")
        time.sleep(0.2)


def _third_party(venv: str, binary: str, env_var: str) -> Path:
    import os

    path = Path(os.environ.get(env_var, Path(__file__).resolve().parent.parent / venv / "bin" / binary))
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make test`, which installs the third-party servers into {venv}")
    return path


@pytest.fixture(scope="session")
def kserve_v1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """KServe (third-party) serving `addone` (y = x + 1) on its v1 REST API; yields its base URL."""
    import subprocess

    python = _third_party(".venv-kserve", "python", "KSERVE_PYTHON")
    (port,) = _free_ports(1)
    log_path = tmp_path_factory.mktemp("kserve") / "kserve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(python), str(KSERVE_SERVE), str(port)], stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_http(f"http://127.0.0.1:{port}/v1/models/addone", proc, log_path, "KServe")
            yield f"http://127.0.0.1:{port}"
        finally:
            terminate(proc)


@pytest.fixture(scope="session")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """MLServer (a third-party KServe v2 server, from its own venv) serving `addone` (y = x + 1, FP32 [-1, 4]);
    yields its gRPC address and its REST base URL."""
    import json
    import shutil
    import subprocess

    binary = _third_party(".venv-mlserver", "mlserver", "MLSERVER_BIN")
    folder = tmp_path_factory.mktemp("mlserver")
    for name in ("model.py", "model-settings.json"):
        shutil.copy(MLSERVER_MODEL / name, folder / name)
    ports = _free_ports(3)
    (folder / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": ports[0], "grpc_port": ports[1], "metrics_port": ports[2],
        "parallel_workers": 0, "metrics_endpoint": None}))
    log = open(folder / "mlserver.log", "wb")
    proc = subprocess.Popen([str(binary), "start", str(folder)], cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://127.0.0.1:{ports[0]}/v2/models/addone/ready", proc, folder / "mlserver.log", "MLServer")
        yield f"127.0.0.1:{ports[1]}", f"http://127.0.0.1:{ports[0]}"
    finally:
        terminate(proc)
        log.close()


@pytest.fixture(scope="session", autouse=True)
def _no_locust_in_the_test_process():
    """Locust runs in child processes only: importing it here would gevent-patch pytest's own sockets and ssl."""
    yield
    import sys

    assert "locust" not in sys.modules, "a test imported locust into the pytest process; run Locust as a subprocess"


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SecantusDB (a third-party MongoDB-wire server, from its own venv .venv-mongo) on a free loopback port with
    in-memory storage; yields its ``host:port``. Outside CI a missing .venv-mongo skips (`make test` builds it)."""
    import subprocess
    import time

    import pymongo
    from pymongo.errors import PyMongoError

    binary = Path(os.environ.get("SECANTUSD_BIN", Path(__file__).resolve().parent.parent / ".venv-mongo" / "bin"
                                 / "secantusd-py"))
    if not binary.exists():
        if not os.environ.get("CI"):
            pytest.skip(f"{binary} is missing: `make .venv-mongo/.installed` installs the MongoDB-wire server")
        pytest.fail(f"{binary} is missing: run `make test`, which installs the MongoDB-wire server into .venv-mongo")
    (port,) = _free_ports(1)
    log_path = tmp_path_factory.mktemp("mongo") / "secantusd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(binary), "--host", "127.0.0.1", "--port", str(port), "--storage-path", ":memory:"],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"secantusd exited: {log_path.read_text()[-2000:]}")
            client = pymongo.MongoClient(f"mongodb://127.0.0.1:{port}", serverSelectionTimeoutMS=500,
                                         connectTimeoutMS=500)
            try:
                client.admin.command("ping")
                break
            except PyMongoError:
                if time.monotonic() > deadline:
                    pytest.fail(f"secantusd not ready in 60 s: {log_path.read_text()[-2000:]}")
                time.sleep(0.1)
            finally:
                client.close()
        yield f"127.0.0.1:{port}"
    finally:
        terminate(proc)
