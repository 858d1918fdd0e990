"""Bad input, the whole list of issue 9 in one place: every case is one line naming what to change, exit code 2,
no traceback, and no load sent.

Real processes (``locust -f locustfiles/ovms.py --headless``, ``ovms-bench``, ``python -m refserver``) against the
session's reference server and against real HTTP servers on loopback that are not model servers; in-process checks
of every numeric option of both front ends; property tests (hypothesis) of the option parsers and of the data
generator. Single cases tested elsewhere (tests/test_users_grpc.py, test_users_rest.py, test_workload_data.py,
test_ovms_bench_client.py, test_refserver_config.py, test_mongo_export.py, test_open_loop.py) are not repeated
here unless this list needs them as its one real-process example.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.server
import io
import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ovms_bench.client import _check, build_parser, locust_command
from ovms_users.data import random_tensor
from ovms_users.dataset import build_dataset
from ovms_users.errors import OptionError
from ovms_users.options import _ARGS, BenchOptions
from ovms_wire.dtypes import NUMERIC_PRECISIONS, by_name
from ovms_wire.spec import ModelSpec, TensorSpec
from tests.locust_run import ROOT, LocustResult, run_locust

BENCH = str(ROOT / ".venv" / "bin" / "ovms-bench")
FAST_S = 15   # a failure before load takes about a second; the metadata retry would take --metadata_timeout (45 s)


# ------------------------------------------------------------------------------------------------ helpers

def the_error_line(returncode: int, stdout: str, stderr: str, says: str | tuple[str, ...]) -> str:
    """Exit code 2, no traceback anywhere, exactly one ``error:`` line on stderr holding every word of ``says``."""
    assert "Traceback" not in stdout + stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, stderr[-3000:]
    for word in (says,) if isinstance(says, str) else says:
        assert word in errors[0], errors[0]
    assert returncode == 2, (returncode, stderr[-3000:])
    return errors[0]


def inferences(refserver) -> float:
    """Every inference the reference server has answered (or refused), over every API and model."""
    with urllib.request.urlopen(f"{refserver.rest_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if not line.startswith("#") and ('method="Predict"' in line or 'method="ModelInfer"' in line))


def locust_fails(host: str, *args: str, says: str | tuple[str, ...], cwd: Path | None = None) -> str:
    t0 = time.monotonic()
    result: LocustResult = run_locust(host, *args, users=2, run_time="5s", timeout=120, cwd=cwd)
    line = the_error_line(result.returncode, result.stdout, result.stderr, says)
    assert line.startswith("ovms: error: ") or line.startswith("__main__.py: error: "), line
    assert time.monotonic() - t0 < FAST_S, f"took {time.monotonic() - t0:.1f} s: {line}"
    return line


def in_parallel(call: Callable, items: list) -> list:
    """``call`` on every item, two at a time (one per core): the cases are independent processes."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(call, items))


def bench(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([BENCH, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def refserver_args(srv) -> list[str]:
    return ["-a", "127.0.0.1", "-p", str(srv.grpc_port), "-r", str(srv.rest_port)]


@contextlib.contextmanager
def http_server(handler: Callable[[http.server.BaseHTTPRequestHandler], tuple[int, str, bytes]]) -> Iterator[int]:
    """A real HTTP/1.1 server on a free loopback port answering every GET and POST with ``handler``; its port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            status, content_type, body = handler(self)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


PAGE_404 = b"<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>"
PAGE_200 = b"<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head><body>It works</body></html>"


@pytest.fixture(scope="module")
def web_404() -> Iterator[int]:
    with http_server(lambda h: (404, "text/html", PAGE_404)) as port:
        yield port


@pytest.fixture(scope="module")
def web_200() -> Iterator[int]:
    with http_server(lambda h: (200, "text/html; charset=utf-8", PAGE_200)) as port:
        yield port


def _bf16_server(h: http.server.BaseHTTPRequestHandler) -> tuple[int, str, bytes]:
    """A model server whose one model, ``bf``, takes a BF16 input: KServe v2 and TF Serving REST metadata."""
    tensor = {"name": "x", "datatype": "BF16", "shape": [1, 4]}
    tf_tensor = {"dtype": "DT_BFLOAT16", "tensor_shape": {"dim": [{"size": "1"}, {"size": "4"}]}, "name": "x:0"}
    docs = {
        "/v2": {"name": "bf16-server", "version": "1", "extensions": []},
        "/v2/models/bf": {"name": "bf", "versions": ["1"], "platform": "x", "inputs": [tensor],
                          "outputs": [{**tensor, "name": "y"}]},
        "/v2/models/bf/versions/1/ready": {},
        "/v1/models/bf": {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                                    "status": {"error_code": "OK", "error_message": ""}}]},
        "/v1/models/bf/versions/1/metadata": {
            "model_spec": {"name": "bf", "version": "1"},
            "metadata": {"signature_def": {"signature_def": {"serving_default": {
                "inputs": {"x": tf_tensor}, "outputs": {"y": {**tf_tensor, "name": "y:0"}}}}}}},
    }
    doc = docs.get(h.path)
    if doc is None:
        return 404, "application/json", json.dumps({"error": f"no {h.path}"}).encode()
    return 200, "application/json", json.dumps(doc).encode()


@pytest.fixture(scope="module")
def bf16_server() -> Iterator[int]:
    with http_server(_bf16_server) as port:
        yield port


# ------------------------------------------------------- malformed, negative and unknown values: real runs

@pytest.mark.parametrize("args, says", [
    (["--bs", "two"], ("--bs", "'two' is not a whole number")),
    (["--bs", "-1"], ("--bs", "negative")),                       # was read as batch size 1
    (["--steps_number", "-5"], ("--steps_number", ">= 0")),
    (["--step_timeout", "soon"], ("--step_timeout", "not a number")),
    (["--warmup", "x"], "--warmup"),                                # the metrics extension's options
    (["--quantile_list", "0.5 2"], "--quantile_list"),
    (["--api", "grpc2"], ("--api", "'grpc2'")),
    (["--data", "foo"], ("--data", "unknown data method 'foo'")),
    (["--shape", "1 0 3"], ("--shape", "dimension 0")),
    (["--shape", "nosuch: 1 10"], ("--shape", "'nosuch' is not an input of model dummy")),
    (["--data", "nosuch:random"], ("--data", "'nosuch' is not an input of model dummy")),
    (["--arrival_rate", "10", "--max_throughput", "5"], ("--arrival_rate", "--max_throughput")),
    (["--min_value", "9", "--max_value", "1"], ("--min_value", "--max_value")),
    (["--db_endpoint", "mongodb://a:b:c:d:e"], ("--db_endpoint", "'a:b:c:d:e' is not HOST or HOST:PORT")),
    (["--db_endpoint", "http://x"], ("--db_endpoint", "mongodb://")),
    (["-Y", "mongodb://u:secret@h:notaport/db"], ("--db_endpoint", "'h:notaport'")),
])
def test_locust_bad_value(refserver, args, says):
    before = inferences(refserver)
    line = locust_fails(refserver.grpc_address, "--model_name", "dummy", *args, says=says)
    assert "secret" not in line
    assert inferences(refserver) == before   # no load began


def test_locust_ssl_cert_without_key(refserver, tmp_path):
    cert = tmp_path / "client.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    locust_fails(refserver.grpc_address, "--model_name", "dummy", "--ssl_cert", str(cert),
                 says="--ssl_cert/--ssl_key")


@pytest.mark.parametrize("api", ["tfs", "kfs", "tfs-rest", "kfs-rest"])
def test_model_not_served_fails_fast_and_says_what_is(refserver, api):
    host = refserver.rest_url if api.endswith("-rest") else refserver.grpc_address
    before = inferences(refserver)
    line = locust_fails(host, "--api", api, "--model_name", "nope", says=("does not serve model nope",
                                                                          "--model_name"))
    if api != "tfs":   # TF Serving's gRPC API cannot list models
        assert "(it serves add_fp16, add_fp32, " in line and "models))" in line, line
    line = locust_fails(host, "--api", api, "--model_name", "versioned", "--model_version", "7",
                        says=("model versioned version 7", "--model_version", "(it serves versioned versions 1, 2)"))
    assert inferences(refserver) == before


# --------------------------------------------------------------------- a server that is not a model server

@pytest.mark.parametrize("api", ["tfs-rest", "kfs-rest"])
def test_rest_api_at_a_web_server(web_404, web_200, api):
    in_parallel(lambda case: locust_fails(f"http://127.0.0.1:{case[0]}", "--api", api, "--model_name", "dummy",
                                          says=case[1]),
                [(web_404, (f"127.0.0.1:{web_404} is not a model server's REST API", "HTTP 404", "--host")),
                 (web_200, ("answered 200 with a body that is not JSON", "Welcome to nginx", "--host"))])


@pytest.mark.parametrize("api", ["tfs", "kfs"])
def test_grpc_api_at_an_http1_server(web_404, web_200, api):
    in_parallel(lambda port: locust_fails(f"127.0.0.1:{port}", "--api", api, "--model_name", "dummy",
                                          says=(f"127.0.0.1:{port} answers HTTP/1, not gRPC", "--host")),
                [web_404, web_200])


def test_rest_api_at_a_grpc_port(refserver):
    """urllib meets HTTP/2 frames: this was a traceback (http.client.BadStatusLine)."""
    before = inferences(refserver)
    for api in ("tfs-rest", "kfs-rest"):
        locust_fails(f"http://{refserver.grpc_address}", "--api", api, "--model_name", "dummy",
                     says=("answered with HTTP/2 frames (is this a gRPC port?)", "--host"))
    assert inferences(refserver) == before


@pytest.mark.parametrize("api, datatype", [("kfs-rest", "BF16"), ("tfs-rest", "DT_BFLOAT16")])
def test_a_datatype_the_suite_cannot_send(bf16_server, api, datatype):
    locust_fails(f"http://127.0.0.1:{bf16_server}", "--api", api, "--model_name", "bf",
                 says=(f"model bf has a tensor of datatype {datatype}, which the suite cannot send", "--model_name"))


# ------------------------------------------------------------- unreadable or malformed files: real runs

def test_unreadable_and_malformed_data_files(refserver, tmp_path):
    garbage_png, garbage_jpg, garbage_npy = tmp_path / "g.png", tmp_path / "g.jpg", tmp_path / "g.npy"
    garbage_png.write_bytes(b"\x89PNG this is not really a png")
    garbage_jpg.write_text("plain text\n")
    garbage_npy.write_bytes(b"xx")
    np.save(tmp_path / "full.npy", np.zeros((4, 10), np.float32))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "full.npy").read_bytes()[:150])
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "dir.npy").mkdir()
    cases = [
        ("image", garbage_png, "is not a readable image"),
        ("image", garbage_jpg, "is not a readable image"),
        ("image", tmp_path / "dir.png", "cannot read"),
        ("image", tmp_path / "missing.jpg", "No such file"),
        ("dummy", garbage_npy, "is not a readable .npy array (no .npy header)"),   # numpy said "pickled data"
        ("dummy", tmp_path / "cut.npy", "is not a readable .npy array"),
        ("dummy", tmp_path / "dir.npy", "cannot read"),
        ("dummy", tmp_path / "missing.npy", "cannot read"),
    ]
    before = inferences(refserver)
    lines = in_parallel(lambda case: locust_fails(refserver.grpc_address, "--model_name", case[0], "--data",
                                                  str(case[1]), says=("--data", case[2])), cases)
    assert not any("<_io.BytesIO" in line for line in lines)   # Pillow's words were "cannot identify image file"
    assert inferences(refserver) == before


def test_locust_config_files(refserver, tmp_path):
    conf = tmp_path / "bench.conf"
    conf.write_text("model_name = dummy\nbs = x\n")
    locust_fails(refserver.grpc_address, "--config", str(conf), says=("--bs", "'x'"))
    (tmp_path / "locust.conf").write_text("model_name = dummy\nstep_timeout = -1\n")   # read from the cwd
    locust_fails(refserver.grpc_address, cwd=tmp_path, says="--step_timeout")
    garbage = tmp_path / "garbage.conf"
    garbage.write_text("= =\n")
    locust_fails(refserver.grpc_address, "--model_name", "dummy", "--config", str(garbage), says="garbage.conf")


@pytest.mark.parametrize("name, text, says", [
    ("broken.json", '{"models": [', "is not valid JSON"),
    ("keys.json", json.dumps({"models": [{"name": "m", "kind": "add", "colour": 1, "inputs": [], "outputs": []}]}),
     "unknown keys ['colour']"),
    ("seed.json", json.dumps({"seed": "x", "models": [{"name": "m", "kind": "add",
                                                       "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}],
                                                       "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}]}]}),
     "seed: needs a whole number"),   # was a traceback
    ("shape.json", json.dumps({"models": [{"name": "m", "kind": "add",
                                           "inputs": [{"name": "x", "datatype": "FP32", "shape": "abc"}],
                                           "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}]}]}),
     "inputs[0].shape: needs a list of whole numbers"),   # said "invalid literal for int()"
    ("faults.json", json.dumps({"models": [{"name": "m", "kind": "add", "faults": "often",
                                            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}],
                                            "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}]}]}),
     "faults: needs an object"),   # was a traceback
    ("dir.json", None, "Is a directory"),
    ("missing.json", "", "No such file"),
])
def test_refserver_bad_config_file(tmp_path, name, text, says):
    path = tmp_path / name
    if text is None:
        path.mkdir()
    elif text:
        path.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "refserver", "--host", "127.0.0.1", "--grpc-port", "0",
                           "--rest-port", "0", "--config", str(path)], capture_output=True, text=True, timeout=30,
                          cwd=tmp_path)
    line = the_error_line(proc.returncode, proc.stdout, proc.stderr, says)
    assert line.startswith("ovms-refserver: error: ")


# ------------------------------------------------------------------------------------ ovms-bench: real runs

@pytest.mark.parametrize("args, says", [
    (["-c", "abc"], ("-c/--concurrency", "'abc' is not an integer")),
    (["-n", "-5"], ("-n/--steps_number", ">= 0")),
    (["-b", "-1"], ("-b/--bs", "positive integers")),
    (["--step_timeout", "0"], ("--step_timeout", "> 0")),
    (["--api", "GRPC2"], ("--api", "GRPC2")),
    (["--arrival_rate", "1", "--max_throughput", "2"], ("--arrival_rate", "--max_throughput")),
    (["-s", "1", "0", "3"], ("--shape", "dimension 0")),                  # checked by the load process
    (["-m", "nope"], ("does not serve model nope", "--model_name")),
    (["-Y", "mongodb://a:b:c:d:e"], ("--db_endpoint", "is not HOST or HOST:PORT")),
])
def test_ovms_bench_bad_input(refserver, tmp_path, args, says):
    before = inferences(refserver)
    full = [*refserver_args(refserver), "-m", "dummy", "-t", "2", *args]
    t0 = time.monotonic()
    out = bench(*full, cwd=tmp_path)
    line = the_error_line(out.returncode, out.stdout, out.stderr, says)
    assert line.startswith(("ovms-bench: error: ", "ovms: error: ")), line
    assert time.monotonic() - t0 < FAST_S
    assert inferences(refserver) == before
    assert not (tmp_path / "ovms-result.json").exists()


def test_ovms_bench_subcommands_bad_input(refserver, tmp_path, web_404):
    dump = tmp_path / "run.mongo.json"
    dump.write_text(json.dumps({"format": "ovms-bench MongoDB dump 1", "endpoint": "mongodb://h:db:c",
                                "database": "db", "collection": "c", "document": {"_id": {"$oid": "0" * 24}}}))
    out = bench("db-load", str(dump), "--db_endpoint", "http://x", cwd=tmp_path)
    the_error_line(out.returncode, out.stdout, out.stderr, ("--db_endpoint", "mongodb://"))
    out = bench("db-load", str(tmp_path / "missing.json"), cwd=tmp_path)
    the_error_line(out.returncode, out.stdout, out.stderr, "cannot read the dump")
    out = bench("list", "--api", "kfs-rest", "--host", f"http://127.0.0.1:{web_404}", cwd=tmp_path)
    the_error_line(out.returncode, out.stdout, out.stderr, ("is not a model server's REST API", "--host"))
    out = bench("list", "--api", "kfs-rest", "--host", f"http://{refserver.grpc_address}", cwd=tmp_path)
    the_error_line(out.returncode, out.stdout, out.stderr, ("HTTP/2", "--host"))


# ----------------------------------------------------------- every numeric option, letters and negatives

#: BenchOptions' numeric options and whether a negative value is an error
LOAD_NUMBERS = {"model_version": True, "bs": True, "dataset_length": True, "min_value": False, "max_value": True,
                "xrand": True, "seed": True, "stateful_length": True, "stateful_id": True, "stateful_hop": True,
                "step_timeout": True, "metadata_timeout": True, "steps_number": True, "error_limit": True,
                "error_exposition": True, "max_throughput": True, "arrival_rate": True, "shape": True}


def test_load_options_letters_and_negatives():
    assert set(LOAD_NUMBERS) <= {name for name, _, _ in _ARGS}
    for name, negative_is_bad in LOAD_NUMBERS.items():
        for value in ("x1", "1.5.2", "-2") if negative_is_bad else ("x1", "1.5.2"):
            text = "1 -2" if name == "shape" and value == "-2" else value   # a leading -1 is a dynamic batch
            with pytest.raises(OptionError) as err:
                BenchOptions.parse({"model_name": "m", name: text})
            message = str(err.value)
            # max_value -2 is below the default min_value 0: the message names both
            assert message.startswith("--min_value" if name == "max_value" and value == "-2" else f"--{name}")
            assert "\n" not in message
    assert BenchOptions.parse({"model_name": "m", "min_value": "-5"}).min_value == -5


_READ_SETTINGS = r"""
import json, sys
from types import SimpleNamespace
from metrics_ext.locust_ext import MetricsError, read_settings
out = {}
for name in sys.argv[1:]:
    for value in ("x1", "-2", "inf"):
        try:
            read_settings(SimpleNamespace(**{name: value}))
            out[f"{name}={value}"] = None
        except MetricsError as exc:
            out[f"{name}={value}"] = str(exc)
print(json.dumps(out))
"""


def test_metrics_options_letters_and_negatives():
    """read_settings imports Locust, which must not enter the pytest process: one child process checks them all."""
    names = ["warmup", "window", "hist_factor", "hist_base", "quantile_list", "check_fail_ratio", "check_p99_ms",
             "check_rps", "db_timeout"]
    proc = subprocess.run([sys.executable, "-c", _READ_SETTINGS, *names], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)
    for key, message in results.items():
        assert message is not None, f"{key} was accepted"
        assert message.startswith("--" + key.split("=")[0]) and "\n" not in message, (key, message)


def run_bench_parser(argv: list[str]) -> tuple[object, str]:
    """(namespace or SystemExit code, stderr) of ovms-bench's parse and checks, in process."""
    parser, err = build_parser(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = parser.parse_args(argv)
            _check(parser, args)
        except SystemExit as exc:
            return exc.code, err.getvalue()
    return args, err.getvalue()


BASE = ["-a", "h", "-p", "9000", "-m", "m", "-t", "1"]
#: ovms-bench's typed flags whose negative values are valid
BENCH_NEGATIVE_OK = {"--min_value", "--max_value", "--processes"}


def test_ovms_bench_every_typed_flag_letters_and_negatives():
    typed = [a for a in build_parser()._actions if a.option_strings and a.type not in (None, str)]
    assert len(typed) >= 25
    for action in typed:
        flag = action.option_strings[-1]
        for value in ("x1", "-2", "inf"):
            if value == "-2" and flag in BENCH_NEGATIVE_OK:
                continue
            code, err = run_bench_parser([*BASE, flag, value])
            assert code == 2, (flag, value, code)
            (line,) = err.strip().splitlines()
            assert line.startswith("ovms-bench: error: ") and flag in line, (flag, value, line)


# ---------------------------------------------------------------------------------- property tests

NUMBERISH = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "-1e400", "0", "-0", "-1", "1-2", "1--2", "-1-2", "1,2",
                     "a: 1 2", "x:", ": 1", "1 -1", "-1 2", "65536", "99999999999999999999999", "0x10", "1_000",
                     " ", "\t3\n", "１２"]),
    st.integers(-10**20, 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([name for name, _, _ in _ARGS]), NUMBERISH, max_size=6))
def test_property_load_option_parser(values):
    try:
        opts = BenchOptions.parse(values)
    except OptionError as exc:
        message = str(exc)
        assert message.startswith("--") and "\n" not in message, message
        return
    assert opts.model_name and (opts.batch_sizes is None or all(b >= 1 for b in opts.batch_sizes))
    assert math.isfinite(opts.min_value) and math.isfinite(opts.max_value) and opts.min_value <= opts.max_value
    assert opts.step_timeout > 0 and opts.metadata_timeout > 0


BENCH_FLAGS = sorted({flag for a in build_parser()._actions for flag in a.option_strings} - {"-h", "--help"})


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.sampled_from(BENCH_FLAGS), NUMBERISH,
                          st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                                  max_size=8)), max_size=10),
       st.booleans())
def test_property_ovms_bench_parser(tokens, with_base):
    argv = (BASE if with_base else []) + tokens
    outcome, err = run_bench_parser(argv)
    if not isinstance(outcome, int):   # parsed and checked: the Locust command line builds
        cmd = locust_command(outcome)   # type: ignore[arg-type]
        assert cmd[:3] == [sys.executable, "-m", "locust"] and all(isinstance(c, str) for c in cmd)
        return
    assert outcome == 2, (argv, outcome, err)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("ovms-bench: error: "), (argv, err)


FLOAT_TEXT = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(-1e6, 1e6).map(lambda f: f"{f:g}"),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "1e400", "-1e400", "1e308", "-1e308", "1.7976931348623157e308",
                     "65504", "65520", "-65505", "3.5e38", "2e-45", "1e-10", "4294967296", "18446744073709551616",
                     "-9223372036854775809", "abc", "", " "]),
    st.integers(-2**70, 2**70).map(str),
)


def _check_values(arr: np.ndarray, dtype_name: str, lo: float, hi: float) -> None:
    dt = by_name(dtype_name)
    if dt.numpy.kind == "f":
        values = arr.astype(np.float64)
        assert np.isfinite(values).all(), values
        limit = float(np.finfo(dt.numpy).max)
        a, b = max(lo, -limit), min(hi, limit)
        inside = (values >= a) & (values <= b)
        # a range narrower than the precision's spacing (e.g. 0.1 to 0.1 in FP16) holds the nearest value instead
        nearest = values == float(dt.numpy.type(a / 2 + b / 2))
        assert (inside | nearest).all(), (dtype_name, lo, hi, values)
    else:
        info = np.iinfo(dt.numpy)
        a, b = max(math.ceil(lo), int(info.min)), min(math.floor(hi), int(info.max))
        assert a <= int(arr.min()) and int(arr.max()) <= b, (dtype_name, lo, hi, arr)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(NUMERIC_PRECISIONS), st.lists(st.integers(1, 4), max_size=3), st.integers(1, 4),
       FLOAT_TEXT, FLOAT_TEXT, st.integers(0, 2**32))
@example("FP64", [4], 2, "-1e308", "1e308", 0)       # was OverflowError: high - low range exceeds valid bounds
@example("FP16", [3], 1, "-1e10", "1e10", 1)
@example("FP32", [2], 1, "0.1", "0.1", 2)
@example("UINT64", [2], 1, "-1e30", "1e30", 3)
@example("FP16", [], 1, "0.0", "-0.0", 0)            # was ValueError: high - low < 0
def test_property_data_generator(precision, dims, batch, lo_text, hi_text, seed):
    spec = ModelSpec("m", 1, (TensorSpec("x", by_name(precision), (-1, *dims)),), ())
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # an overflow or invalid-value warning is a failure
        try:
            opts = BenchOptions.parse({"model_name": "m", "min_value": lo_text, "max_value": hi_text,
                                       "bs": str(batch), "seed": str(seed)})
            (entry,) = build_dataset(spec, opts)
        except OptionError as exc:
            assert str(exc).startswith("--") and "\n" not in str(exc)
            return
    dtype, arr = entry.inputs["x"]
    assert dtype.name == precision and arr.dtype == by_name(precision).numpy and arr.shape == (batch, *dims)
    _check_values(arr, precision, opts.min_value, opts.max_value)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(NUMERIC_PRECISIONS), st.floats(), st.floats(), st.integers(0, 3))
def test_property_random_tensor_any_float(precision, lo, hi, n):
    """The generator itself, fed NaN, infinities and reversed ranges directly: values or the suite's error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            arr = random_tensor(np.random.default_rng(n), by_name(precision), (n, 2), lo, hi)
        except OptionError as exc:
            assert str(exc).startswith("--min_value/--max_value") or str(exc).startswith("--data")
            return
    assert math.isfinite(lo) and math.isfinite(hi) and lo <= hi
    assert arr.dtype == by_name(precision).numpy and arr.shape == (n, 2)
    if n:
        _check_values(arr, precision, lo, hi)
