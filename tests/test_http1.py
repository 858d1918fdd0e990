"""The REST users' HTTP/1.1 transport (ovms_wire.http1): against the reference server, against a
real Python HTTP server for the reply framings a model server may use (Content-Length, chunked with
trailers, body to end of connection, Connection: close, 100 Continue, idle close), and for replies
that are not HTTP."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest
import requests

from ovms_users.options import BenchOptions
from ovms_users.workload import Workload
from ovms_wire.http1 import Http1Connection


def conn_to(url: str, **kw) -> Http1Connection:
    host, _, port = url.split("//", 1)[1].rpartition(":")
    return Http1Connection(host, int(port), **kw)


@pytest.mark.parametrize("api", ["kfs-rest", "tfs-rest"])
def test_replies_are_what_requests_gets(refserver, api):
    w = Workload.build(BenchOptions.parse({"api": api, "model_name": "dummy"}), refserver.rest_url)
    conn = conn_to(refserver.rest_url)
    try:
        for i in range(5):
            body, headers = w.requests[i % len(w.requests)]
            status, length, data, error = conn.post(w.path, headers, body, timeout=5, want_body=True)
            expected = requests.post(refserver.rest_url + w.path, data=body, headers=headers, timeout=5)
            assert (status, error) == (200, None) and data == expected.content and length == len(data)
        status, length, data, error = conn.post(w.path, headers, body, timeout=5)
        assert status == 200 and data is None and length > 0   # the body is read, not kept
        assert conn.connections == 1
    finally:
        conn.close()


def test_failed_status_keeps_the_body_and_the_connection(refserver):
    conn = conn_to(refserver.rest_url)
    try:
        status, _, data, error = conn.post("/v2/models/no_such_model/infer", {"Content-Type": "application/json"},
                                           b'{"inputs": []}', timeout=5)
        assert status == 404 and error is None and b"no_such_model" in data
        status, _, data, error = conn.post("/v2/models/dummy/infer", {}, b"{not json", timeout=5)
        assert status == 400 and data
        assert conn.connections == 1
    finally:
        conn.close()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[str] = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Handler.seen.append(self.path)
        mode = self.path.strip("/")
        if mode == "length":
            self._reply(200, [("Content-Length", str(len(body)))], body)
        elif mode == "chunked":
            chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in (body[:3], body[3:]) if c)
            self._reply(200, [("Transfer-Encoding", "chunked")], chunks + b"0\r\nX-Trailer: t\r\n\r\n")
        elif mode == "to_close":
            self._reply(200, [("Connection", "close")], body, close=True)
        elif mode == "close_after":
            self._reply(200, [("Content-Length", str(len(body))), ("Connection", "close")], body, close=True)
        elif mode == "continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._reply(200, [("Content-Length", str(len(body)))], body)
        elif mode == "no_content":
            self._reply(204, [], b"")
        elif mode == "garbage":
            self.wfile.write(b"SSH-2.0-OpenSSH\r\n\r\n")
            self.close_connection = True
        elif mode == "error":
            self._reply(503, [("Content-Length", "13")], b"overloaded!!!")

    def _reply(self, status, headers, body, close=False):
        head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        self.wfile.write(head.encode() + body)
        self.wfile.flush()
        if close:
            self.close_connection = True


@pytest.fixture(scope="module")
def plain_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize(("mode", "status", "reconnects"), [
    ("length", 200, False), ("chunked", 200, False), ("to_close", 200, True), ("close_after", 200, True),
    ("continue", 200, False), ("no_content", 204, False)])
def test_reply_framings(plain_server, mode, status, reconnects):
    conn = conn_to(plain_server[0])
    try:
        for _ in range(3):
            got = conn.post(f"/{mode}", {"Content-Type": "application/octet-stream"}, b"abcdefgh", timeout=5,
                            want_body=True)
            assert got == (status, 0 if status == 204 else 8, b"" if status == 204 else b"abcdefgh", None)
        assert conn.connections == (3 if reconnects else 1)
    finally:
        conn.close()


def test_error_status_and_not_http(plain_server):
    conn = conn_to(plain_server[0])
    try:
        assert conn.post("/error", {}, b"x", timeout=5) == (503, 13, b"overloaded!!!", None)
        status, _, _, error = conn.post("/garbage", {}, b"x", timeout=5)
        assert status == 0 and error.startswith("not an HTTP/1.1 reply")
        assert conn.post("/length", {}, b"x", timeout=5, want_body=True) == (200, 1, b"x", None)
    finally:
        conn.close()


def test_idle_close_is_retried_once_and_refused_is_an_error():
    # a server that closes each connection right after its reply but says keep-alive
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    served = []

    def serve():
        for _ in range(2):
            c, _ = listener.accept()
            data = b""
            while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 3:
                data += c.recv(4096)
            served.append(data.split(b" ", 2)[1])
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            time.sleep(0.2)
            c.close()   # the idle timeout, after the client thinks it may reuse the connection

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    conn = Http1Connection("127.0.0.1", port)
    try:
        assert conn.post("/a", {}, b"abc", timeout=5) == (200, 2, None, None)
        time.sleep(0.5)
        assert conn.post("/b", {}, b"abc", timeout=5) == (200, 2, None, None)   # retried on a new connection
        assert served == [b"/a", b"/b"] and conn.connections == 2
    finally:
        conn.close()
        thread.join(5)
        listener.close()
    status, _, _, error = Http1Connection("127.0.0.1", port, connect_timeout=2).post("/x", {}, b"", timeout=2)
    assert status == 0 and error.startswith("ConnectionRefusedError")


def test_timeout_closes_the_connection():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)   # accepts (the kernel does) and never answers
    conn = Http1Connection("127.0.0.1", listener.getsockname()[1])
    try:
        t0 = time.monotonic()
        status, _, _, error = conn.post("/x", {}, b"abc", timeout=0.1)
        assert status == 0 and error == "timed out after 0.1 s" and 0.09 < time.monotonic() - t0 < 1.0
        assert conn._io is None
    finally:
        conn.close()
        listener.close()
