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
