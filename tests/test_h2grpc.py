"""The users' HTTP/2 gRPC transport (ovms_wire.h2grpc) against real gRPC servers on loopback.

Replies are compared byte for byte with grpcio's, statuses and messages with grpcio's view of the
same failure; large messages cross the flow-control windows; deadlines cancel the stream and keep
the connection; TLS is mutual; the gevent path runs in a monkey-patched child process.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
from hpack import Encoder
from tritonclient.grpc import service_pb2 as kfs

from ovms_wire.h2grpc import DEADLINE_EXCEEDED, UNAVAILABLE, H2Channel, header_block, timeout_header
from ovms_wire.protos.tfs import serving_apis_pb2 as tfs
from ovms_wire.tensors import to_tensor_proto
from refserver.launcher import RefServer
from refserver.tls import generate_certs
from tests.locust_run import ROOT

KFS_INFER = "/inference.GRPCInferenceService/ModelInfer"
TFS_PREDICT = "/tensorflow.serving.PredictionService/Predict"
SLOW = {"models": [{"name": "slow", "kind": "add", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
                    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}], "latency": {"ms": 400}}]}


def kfs_request(model: str, name: str, shape: list[int], seed: int = 1) -> bytes:
    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    req = kfs.ModelInferRequest(model_name=model)
    req.inputs.add(name=name, datatype="FP32", shape=shape)
    req.raw_input_contents.append(x.tobytes())
    return req.SerializeToString()


def tfs_request(model: str, name: str, shape: list[int]) -> bytes:
    req = tfs.PredictRequest()
    req.model_spec.name = model
    req.inputs[name].CopyFrom(to_tensor_proto(np.random.default_rng(2).random(shape, dtype=np.float32)))
    return req.SerializeToString()


def grpcio_call(target: str, path: str, body: bytes, timeout: float = 30) -> tuple[grpc.StatusCode, str, bytes]:
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 1 << 30),
                                                ("grpc.max_receive_message_length", 1 << 30)]) as ch:
        try:
            return grpc.StatusCode.OK, "", ch.unary_unary(path)(body, timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code(), exc.details(), b""


def channel(server: RefServer, **kw) -> H2Channel:
    host, _, port = server.grpc_address.rpartition(":")
    return H2Channel(host, int(port), **kw)


@pytest.mark.parametrize(("path", "body"), [
    (KFS_INFER, kfs_request("dummy", "b", [1, 10])),
    (TFS_PREDICT, tfs_request("dummy", "b", [1, 10])),
    (KFS_INFER, kfs_request("dynamic", "x", [1, 4])),
])
def test_reply_is_grpcio_s_reply(refserver, path, body):
    ch = channel(refserver)
    try:
        for _ in range(3):   # the second and third replies come from HPACK's table (and our cache)
            status, length, reply = ch.unary(path, body, timeout=10, want_reply=True)
            assert status.code == 0, status
            code, _, expected = grpcio_call(refserver.grpc_address, path, body)
            assert code == grpc.StatusCode.OK and reply == expected and length == len(expected)
        assert ch.connections == 1
    finally:
        ch.close()


def test_statuses_and_messages_match_grpcio(refserver):
    ch = channel(refserver)
    cases = [(KFS_INFER, kfs_request("no_such_model", "b", [1, 10])),
             (KFS_INFER, kfs_request("dummy", "wrong_input", [1, 10])),
             (TFS_PREDICT, tfs_request("dummy", "b", [1, 11])),
             ("/inference.GRPCInferenceService/NoSuchMethod", b"")]
    try:
        for path, body in cases:
            status, _, _ = ch.unary(path, body, timeout=10)
            code, details, _ = grpcio_call(refserver.grpc_address, path, body)
            assert code != grpc.StatusCode.OK
            assert (status.code, status.message) == (code.value[0], details), path
            assert status.name == code.name
        status, _, _ = ch.unary(KFS_INFER, kfs_request("dummy", "b", [1, 10]), timeout=10)
        assert status.code == 0 and ch.connections == 1   # errors are per call: the connection stays
    finally:
        ch.close()


def test_large_messages_cross_the_flow_control_windows(refserver):
    ch = channel(refserver)
    try:
        for batch in (1, 16):   # 602 KB and 9.6 MB requests, far beyond the 64 KB initial windows
            body = kfs_request("resnet_dyn", "0", [batch, 3, 224, 224], seed=batch)
            status, length, reply = ch.unary(KFS_INFER, body, timeout=30, want_reply=True)
            assert status.code == 0, status
            _, _, expected = grpcio_call(refserver.grpc_address, KFS_INFER, body)
            assert reply == expected and length == len(expected)
        for _ in range(20):   # and again and again on the same connection, as a load user does
            assert ch.unary(KFS_INFER, kfs_request("resnet", "0", [1, 3, 224, 224]), timeout=30)[0].code == 0
        assert ch.connections == 1
    finally:
        ch.close()


@pytest.fixture(scope="module")
def slow_server():
    with RefServer(config=SLOW) as srv:
        yield srv


def test_deadline_cancels_the_stream_and_keeps_the_connection(slow_server):
    ch = channel(slow_server)
    body = kfs_request("slow", "x", [1, 2])
    try:
        t0 = time.monotonic()
        status, _, _ = ch.unary(KFS_INFER, body, timeout=0.1)
        took = time.monotonic() - t0
        assert status.code == DEADLINE_EXCEEDED and status.name == "DEADLINE_EXCEEDED", status
        assert 0.09 < took < 0.35
        status, _, _ = ch.unary(KFS_INFER, body, timeout=5)   # the late reply to the cancelled call is skipped
        assert status.code == 0, status
        assert ch.connections == 1
    finally:
        ch.close()


def test_connection_refused_and_server_gone_are_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]   # nothing listens here once closed
    ch = H2Channel("127.0.0.1", port, connect_timeout=2)
    status, _, _ = ch.unary(KFS_INFER, b"", timeout=2)
    assert status.code == UNAVAILABLE and status.message.startswith(f"failed to connect to 127.0.0.1:{port}")
    with RefServer() as srv:
        ch = channel(srv)
        assert ch.unary(KFS_INFER, kfs_request("dummy", "b", [1, 10]), timeout=5)[0].code == 0
    status, _, _ = ch.unary(KFS_INFER, kfs_request("dummy", "b", [1, 10]), timeout=5)   # the server has stopped
    assert status.code == UNAVAILABLE, status
    ch.close()


def test_mutual_tls(tls_refserver, certs_dir, tmp_path):
    def ctx(ca, cert=None, key=None):
        c = ssl.create_default_context(cafile=str(ca))
        if cert:
            c.load_cert_chain(str(cert), str(key))
        c.set_alpn_protocols(["h2"])
        return c

    good = channel(tls_refserver, ssl_context=ctx(certs_dir / "ca.pem", certs_dir / "client.pem",
                                                  certs_dir / "client.key"))
    body = kfs_request("dummy", "b", [1, 10])
    status, _, reply = good.unary(KFS_INFER, body, timeout=10, want_reply=True)
    good.close()
    assert status.code == 0 and reply
    other = generate_certs(tmp_path / "other")
    for bad in (channel(tls_refserver, ssl_context=ctx(other / "ca.pem", other / "client.pem", other / "client.key")),
                channel(tls_refserver, ssl_context=ctx(certs_dir / "ca.pem"))):   # untrusted; no client certificate
        status, _, _ = bad.unary(KFS_INFER, body, timeout=10)
        bad.close()
        assert status.code == UNAVAILABLE, status


def test_header_block_and_timeout_encoding():
    from hpack import Decoder

    block = header_block("/a.B/C", "127.0.0.1:9000", False, 0.05, "ua", extra=(("X-Id", "7"),))
    assert Decoder().decode(block) == [(":method", "POST"), (":scheme", "http"), (":path", "/a.B/C"),
                                       (":authority", "127.0.0.1:9000"), ("content-type", "application/grpc"),
                                       ("te", "trailers"), ("user-agent", "ua"), ("grpc-timeout", "50000u"),
                                       ("x-id", "7")]
    assert [timeout_header(s) for s in (30, 0.0001, 99, 1e6, 1e9)] == ["30000000u", "100u", "99000000u",
                                                                        "1000000S", "16666667M"]


def test_decoder_cache_follows_the_table():
    """A header block served from the cache decodes as a fresh decoder would, whatever the table did."""
    enc, ch, fresh = Encoder(), H2Channel("127.0.0.1", 1), H2Channel("127.0.0.1", 1)
    rng = np.random.default_rng(3)
    seen_hits = 0
    for i in range(400):
        value = str(int(rng.integers(0, 4)))   # few values: blocks repeat; new ones change the table
        headers = [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", value)]
        if rng.random() < 0.2:
            headers.append(("x-note", f"n{i % 7}"))
        block = enc.encode(headers)
        hit = block in ch._cache
        seen_hits += hit
        got = ch._decode(block)
        expected = fresh.decoder.decode(block, raw=True)
        assert got == expected == [(k.encode(), v.encode()) for k, v in headers]
    assert seen_hits > 100


GEVENT_CHILD = r"""
from gevent import monkey; monkey.patch_all()
import gevent, json, sys, time
sys.path.insert(0, sys.argv[1])
from tests.test_h2grpc import kfs_request, KFS_INFER
from ovms_wire.h2grpc import H2Channel
host, port, slow_port = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
body = kfs_request("dummy", "b", [1, 10])
out = {"ok": 0, "bad": [], "io": [], "connections": 0}
def user():
    ch = H2Channel(host, port)
    for _ in range(50):
        st, n, _ = ch.unary(KFS_INFER, body, timeout=10)
        if st.code == 0 and n > 0:
            out["ok"] += 1
        else:
            out["bad"].append(str(st))
    out["io"].append(type(ch._io).__name__)
    out["connections"] += ch.connections
    ch.close()
def ticker():   # the hub keeps serving other greenlets while users wait for replies
    n = 0
    for _ in range(20):
        gevent.sleep(0.001); n += 1
    out["ticks"] = n
def steady_user():   # calls far shorter than their timeout, for several timeouts' time: none may fail
    ch = H2Channel(host, port)
    bad, n, end = [], 0, time.monotonic() + 1.0
    while time.monotonic() < end:
        st, _, _ = ch.unary(KFS_INFER, body, timeout=0.2)
        n += 1
        if st.code:
            bad.append(st.name)
    out["steady"] = [n, bad]
    ch.close()
slow = H2Channel(host, slow_port)
def slow_user():   # deadline after deadline on one connection: each one waits its whole timeout
    out["slow"] = []
    for _ in range(3):
        t0 = time.monotonic()
        st, _, _ = slow.unary(KFS_INFER, kfs_request("slow", "x", [1, 2]), timeout=0.1)
        out["slow"].append([st.name, time.monotonic() - t0])
    st, _, _ = slow.unary(KFS_INFER, kfs_request("slow", "x", [1, 2]), timeout=5)
    out["slow_after"] = st.name
gevent.joinall([gevent.spawn(user) for _ in range(8)] + [gevent.spawn(ticker), gevent.spawn(slow_user),
                                                        gevent.spawn(steady_user)], timeout=60)
print(json.dumps(out))
"""


def test_under_gevent_users_share_the_hub(refserver, slow_server, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(GEVENT_CHILD)
    host, _, port = refserver.grpc_address.rpartition(":")
    slow_port = slow_server.grpc_address.rpartition(":")[2]
    proc = subprocess.run([sys.executable, str(script), str(ROOT), host, port, slow_port], capture_output=True,
                          text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"] == 400 and out["bad"] == []
    assert out["io"] == ["_GeventIO"] * 8 and out["connections"] == 8
    assert out["ticks"] == 20
    # a gevent Timeout restarted call after call went off one timeout after its first start (libev resumes a
    # stopped timer with what was left of it): calls failed once per timeout, and every call after a deadline
    # at once (found by the frozen-server test of test_faults.py)
    assert out["steady"][0] > 20 and out["steady"][1] == [], out["steady"]
    assert [name for name, _ in out["slow"]] == ["DEADLINE_EXCEEDED"] * 3
    assert all(0.09 < took < 0.35 for _, took in out["slow"]), out["slow"]
    assert out["slow_after"] == "OK"


def _h2_server(listener: socket.socket, served: list, calls: int = 3, per_connection: int = 3, reset: bool = True,
               goaway: bool = False) -> None:
    """A minimal HTTP/2 server for what the real servers here do not do. It answers each stream as soon as its
    HEADERS arrive, whole, then (``reset``) resets it with NO_ERROR without reading the body, as RFC 9113 8.1
    allows and nginx does; after ``per_connection`` calls it closes the connection while the client is idle
    (after a GOAWAY if ``goaway``), as an idle timeout does."""
    from hpack import Encoder as Enc

    def frame(kind, flags, sid, payload=b""):
        return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + payload

    while len(served) < calls:
        conn, _ = listener.accept()
        conn.settimeout(10)
        enc, buf, here = Enc(), b"", 0
        conn.sendall(frame(4, 0, 0))   # SETTINGS (defaults: 64 KB windows)
        try:
            while here < per_connection and len(served) < calls:
                data = conn.recv(65536)
                if not data:
                    break
                buf += data
                if buf.startswith(b"PRI * HTTP/2.0"):
                    buf = buf[24:]
                while len(buf) >= 9:
                    length = int.from_bytes(buf[:3], "big")
                    if len(buf) < 9 + length:
                        break
                    kind, flags, sid = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                    buf = buf[9 + length:]
                    if kind == 4 and not flags & 1:
                        conn.sendall(frame(4, 1, 0))
                    elif kind == 1 and here < per_connection:   # a request's HEADERS: the whole reply at once
                        served.append(sid)
                        here += 1
                        head = enc.encode([(":status", "200"), ("content-type", "application/grpc")])
                        conn.sendall(frame(1, 4, sid, head)
                                     + frame(0, 0, sid, b"\x00\x00\x00\x00\x02hi")
                                     + frame(1, 5, sid, enc.encode([("grpc-status", "0")]))
                                     + (frame(3, 0, sid, b"\x00\x00\x00\x00") if reset else b""))
            time.sleep(0.2)
            if goaway:
                conn.sendall(frame(7, 0, 0, (max(served) if served else 0).to_bytes(4, "big") + b"\x00\x00\x00\x00"))
        finally:
            conn.close()


def _serve(**kw) -> tuple[socket.socket, list, object]:
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(2)
    served: list = []
    thread = threading.Thread(target=_h2_server, args=(listener, served), kwargs=kw, daemon=True)
    thread.start()
    return listener, served, thread


@pytest.mark.parametrize("size", [10, 300_000])   # within the first frame; far beyond the 64 KB window
def test_a_whole_reply_then_a_no_error_reset_is_a_success(size):
    listener, served, thread = _serve()
    ch = H2Channel("127.0.0.1", listener.getsockname()[1])
    try:
        for _ in range(3):
            status, length, reply = ch.unary(KFS_INFER, b"x" * size, timeout=5, want_reply=True)
            assert (status.code, length, reply) == (0, 2, b"hi"), status
        assert served == [1, 3, 5] and ch.connections == 1
    finally:
        ch.close()
        thread.join(5)
        listener.close()


@pytest.mark.parametrize("goaway", [False, True])
def test_a_connection_closed_while_idle_is_tried_once_more(goaway):
    """The next call finds the kept connection closed before any of its reply: it goes again on a new one
    (a GOAWAY says so outright: the call's stream is above its last one)."""
    listener, served, thread = _serve(calls=2, per_connection=1, reset=False, goaway=goaway)
    ch = H2Channel("127.0.0.1", listener.getsockname()[1])
    try:
        assert ch.unary(KFS_INFER, b"x", timeout=5)[0].code == 0
        time.sleep(0.6)   # the server closes the connection meanwhile
        status, length, _ = ch.unary(KFS_INFER, b"x", timeout=5)
        assert (status.code, length) == (0, 2), status
        assert served == [1, 1] and ch.connections == 2
    finally:
        ch.close()
        thread.join(5)
        listener.close()
