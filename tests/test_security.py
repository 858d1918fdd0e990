"""README "Security": TLS verification and --tls_no_verify, --header, secrets kept out of every output, web login.

Real processes only: reference servers with certificates made here, Locust and ovms-bench as child
processes, recording proxies (a grpcio server and an HTTP server) that show what the client sent.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import uuid
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
import requests

from metrics_ext.mongo import mask_argv, mask_options
from refserver.launcher import RefServer
from refserver.tls import generate_certs
from tests.conftest import terminate, wait_until
from tests.locust_run import LOCUST, LOCUSTFILE, _env, free_port, run_locust

HEADER_SECRET = "hdr-Secret-7f3a9c"
DB_SECRET = "dbpw-Secret-52e1b0"
WEB_SECRET = "webpw-Secret-c4d806"
SECRETS = (HEADER_SECRET, DB_SECRET, WEB_SECRET)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


# -- TLS -------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wrong_name_server(tmp_path_factory):
    """The reference server (mutual TLS) whose certificate names other.example only, not 127.0.0.1."""
    certs = generate_certs(tmp_path_factory.mktemp("wrong-name"), hosts=("other.example",))
    with RefServer(certs_dir=certs) as srv:
        yield srv, certs


@pytest.mark.parametrize("api", ["kfs", "tfs-rest"])
def test_tls_verification_refuses_an_untrusted_or_wrong_name_certificate(wrong_name_server, api, tmp_path):
    srv, certs = wrong_name_server
    host = srv.grpc_address if api == "kfs" else srv.rest_url.replace("http://", "https://")
    client = ["--ssl_cert", str(certs / "client.pem"), "--ssl_key", str(certs / "client.key")]
    base = ["--api", api, "--model_name", "dummy", "--metadata_timeout", "5"]

    # trusted CA, but the certificate is not valid for 127.0.0.1
    run = run_locust(host, *base, "--certs_dir", str(certs), run_time="1s", cwd=tmp_path)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    (line,) = _error_lines(run.stderr)
    assert line.startswith(f"ovms: error: TLS: the certificate of {srv.host}:") and "does not match the name " \
        "'127.0.0.1' (it is valid for other.example)" in line and "--tls_no_verify" in line, line

    # no CA given: the system roots do not trust the test CA
    run = run_locust(host, *base, *client, run_time="1s", cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    (line,) = _error_lines(run.stderr)
    assert "is not trusted (self-signed certificate in certificate chain); give its CA with --ssl_ca" in line, line

    # --tls_no_verify: the same server works, warned once, recorded in the result
    run = run_locust(host, *base, *client, "--tls_no_verify", "--result_file", str(tmp_path / "r.json"),
                     run_time="2s", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    warnings = [line for line in run.stderr.splitlines() if "warning: --tls_no_verify" in line]
    assert warnings == ["ovms: warning: --tls_no_verify: the server's certificate is not checked; anyone on the "
                        "path can read and change the traffic (use --ssl_ca/--certs_dir to trust a private CA "
                        "instead)"]
    assert run.requests > 0 and run.failures == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["parameters"]["options"]["tls_no_verify"] is True


def test_ovms_bench_list_checks_the_certificate_unless_told_not_to(wrong_name_server, tmp_path):
    srv, certs = wrong_name_server
    cmd = [sys.executable, "-m", "ovms_bench.cli", "-a", srv.host, "-r", str(srv.rest_port), "-l",
           "--certs_dir", str(certs), "--metadata_timeout", "5"]
    refused = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=60, cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().startswith("ovms-bench: error: TLS: the certificate of 127.0.0.1:")
    assert "does not match the name '127.0.0.1'" in refused.stderr
    listed = subprocess.run(cmd + ["--tls_no_verify"], capture_output=True, text=True, env=_env(), timeout=60,
                            cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "dummy" in listed.stdout and "warning: --tls_no_verify" in listed.stderr


# -- headers ---------------------------------------------------------------------------------------------------------

class _GrpcRecorder(grpc.GenericRpcHandler):
    """Forwards every unary call to ``upstream`` as bytes, recording (method, metadata)."""

    def __init__(self, upstream: str):
        self.channel = grpc.insecure_channel(upstream)
        self.seen: list[tuple[str, dict]] = []

    def service(self, details):
        method = details.method
        self.seen.append((method, dict(details.invocation_metadata)))
        forward = self.channel.unary_unary(method)

        def handle(request: bytes, context):
            try:
                return forward(request, timeout=10)
            except grpc.RpcError as exc:
                context.abort(exc.code(), exc.details())
        return grpc.unary_unary_rpc_method_handler(handle)


class _HttpRecorder(BaseHTTPRequestHandler):
    """Forwards every request to the upstream REST port, recording (method, path, headers)."""
    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int]
    seen: list

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        conn = http.client.HTTPConnection(*self.upstream, timeout=10)
        keep = {k: v for k, v in self.headers.items() if k.lower() in ("content-type",
                                                                         "inference-header-content-length")}
        conn.request(self.command, self.path, body=body or None, headers=keep)
        reply = conn.getresponse()
        data = reply.read()
        self.send_response(reply.status)
        for name in ("Content-Type", "Inference-Header-Content-Length"):
            if reply.getheader(name):
                self.send_header(name, reply.getheader(name))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()

    do_GET = do_POST = _forward

    def log_message(self, *_args) -> None:
        pass


@pytest.fixture
def recorders(refserver):
    grpc_rec = _GrpcRecorder(refserver.grpc_address)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[grpc_rec])
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    handler = type("Recorder", (_HttpRecorder,), {"upstream": ("127.0.0.1", refserver.rest_port), "seen": []})
    http_server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=http_server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{grpc_port}", grpc_rec.seen, f"http://127.0.0.1:{http_server.server_port}", handler.seen
    finally:
        http_server.shutdown()
        http_server.server_close()
        server.stop(0)
        grpc_rec.channel.close()


def test_headers_arrive_on_every_grpc_and_rest_call(recorders, tmp_path):
    grpc_addr, grpc_seen, rest_url, rest_seen = recorders
    # gRPC: two --header flags; metadata calls over grpcio, inference over the users' own HTTP/2
    run = run_locust(grpc_addr, "--api", "kfs", "--model_name", "dummy", "--header", f"Authorization: Bearer "
                     f"{HEADER_SECRET}", "--header", "X-Tenant: team-a", run_time="2s", cwd=tmp_path)
    assert run.returncode == 0 and run.requests > 0, run.stderr[-2000:]
    methods = {m for m, _ in grpc_seen}
    assert {"/inference.GRPCInferenceService/ModelMetadata", "/inference.GRPCInferenceService/ModelInfer"} <= methods
    for method, metadata in grpc_seen:
        assert metadata.get("authorization") == f"Bearer {HEADER_SECRET}", (method, metadata)
        assert metadata.get("x-tenant") == "team-a", (method, metadata)
    assert sum(m.endswith("ModelInfer") for m, _ in grpc_seen) == run.requests

    # REST: the same two headers from LOCUST_HEADER, ';'-separated
    run = run_locust(rest_url, "--api", "kfs-rest", "--model_name", "dummy", run_time="2s", cwd=tmp_path,
                     env={"LOCUST_HEADER": f"Authorization: Bearer {HEADER_SECRET}; X-Tenant: team-a"})
    assert run.returncode == 0 and run.requests > 0, run.stderr[-2000:]
    assert any(m == "GET" and "/v2/models/dummy" in p for m, p, _ in rest_seen)
    assert sum(m == "POST" and p.endswith("/infer") for m, p, _ in rest_seen) == run.requests
    for method, path, headers in rest_seen:
        assert headers.get("authorization") == f"Bearer {HEADER_SECRET}", (method, path)
        assert headers.get("x-tenant") == "team-a", (method, path)
    for out in (run.stdout, run.stderr):
        assert HEADER_SECRET not in out


@pytest.mark.parametrize("value, message", [
    ("Content-Length: 5", "--header: Content-Length may not be set: the body's length is set per request"),
    ("te: trailers", "--header: te may not be set: gRPC sets 'te: trailers' itself"),
    (":authority: evil", "--header: pseudo-headers (:authority, :path, ...) may not be set"),
    (f"X-Token: {HEADER_SECRET}\r\nX-Injected: 1", "--header: the value of X-Token holds a line break or NUL"),
    (f"Bad Name: {HEADER_SECRET}", "--header: 'Bad Name' is not a header name"),
])
def test_a_bad_header_is_one_line_without_its_value(value, message, tmp_path):
    run = run_locust("127.0.0.1:1", "--api", "kfs", "--model_name", "dummy", "--header", value, run_time="1s",
                     cwd=tmp_path, timeout=60)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    (line,) = _error_lines(run.stderr)
    assert line.startswith(f"ovms: error: {message}"), line
    assert HEADER_SECRET not in run.stderr + run.stdout


def test_masking_functions_keep_names_and_hide_values():
    argv = ["--header", f"Authorization: Bearer {HEADER_SECRET}; X-A: 1", f"--header=X-K: {HEADER_SECRET}",
            "--web_credentials", f"admin:{WEB_SECRET}", "-Y", f"mongodb://u:{DB_SECRET}@h:1/db"]
    assert mask_argv(argv) == ["--header", "Authorization: ***; X-A: ***", "--header=X-K: ***",
                               "--web_credentials", "***", "-Y", "mongodb://u:***@h:1/db"]
    assert mask_options({"header": [f"A: {HEADER_SECRET}"], "web_credentials": f"a:{WEB_SECRET}",
                         "db_endpoint": f"mongodb://u:{DB_SECRET}@h/db"}) == {
        "header": ["A: ***"], "web_credentials": "***", "db_endpoint": "mongodb://u:***@h/db"}


# -- web UI login and secrets -------------------------------------------------------------------------------------

_wait = wait_until


def _up(url: str) -> bool:
    try:
        requests.get(url, timeout=2, allow_redirects=False)
        return True
    except requests.RequestException:
        return False


def _web_ui(args: list[str], cwd: Path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(LOCUST + ["-f", str(LOCUSTFILE), "--web-host", "127.0.0.1", "--web-port", str(port),
                                      "--skip-log-setup", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**_env(), **(env or {})},
                            cwd=cwd)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _up(base + "/login") or proc.poll() is not None, 30, "the web UI")
    except AssertionError:
        terminate(proc)
        raise
    return proc, base


PROTECTED = ["/", "/stats/requests", "/ovms/stats", "/ovms/result.json", "/ovms/report.html", "/logs"]


def test_web_login_guards_every_page_and_takes_only_the_right_password(refserver, tmp_path):
    proc, base = _web_ui(["--host", refserver.grpc_address, "--api", "kfs", "--model_name", "dummy", "--web-login",
                          "--result_file", str(tmp_path / "r.json")], tmp_path,
                         env={"LOCUST_WEB_CREDENTIALS": f"admin:{WEB_SECRET}"})
    try:
        anon = requests.Session()
        for path in PROTECTED:
            r = anon.get(base + path, allow_redirects=False, timeout=5)
            assert r.status_code == 302 and "/login" in r.headers["Location"], (path, r.status_code)
        r = anon.post(base + "/swarm", data={"user_count": 1, "spawn_rate": 1}, allow_redirects=False, timeout=5)
        assert r.status_code == 302 and "/login" in r.headers["Location"]
        login_page = anon.get(base + "/login", timeout=5)
        assert login_page.ok and "/ovms_login" in login_page.text

        wrong = anon.post(base + "/ovms_login", data={"username": "admin", "password": WEB_SECRET + "x"}, timeout=5)
        assert wrong.url.endswith("/login") and "Invalid username or password" in wrong.text
        assert anon.get(base + "/stats/requests", allow_redirects=False, timeout=5).status_code == 302
        other_user = anon.post(base + "/ovms_login", data={"username": "root", "password": WEB_SECRET}, timeout=5)
        assert other_user.url.endswith("/login")
        assert anon.get(base + "/", allow_redirects=False, timeout=5).status_code == 302

        user = requests.Session()
        ok = user.post(base + "/ovms_login", data={"username": "admin", "password": WEB_SECRET}, timeout=5)
        assert ok.ok and ok.url.rstrip("/") == base and '"extended_tabs"' in ok.text
        started = user.post(base + "/swarm", data={"user_count": 1, "spawn_rate": 1,
                                                   "host": refserver.grpc_address}, timeout=10).json()
        assert started["success"], started
        _wait(lambda: user.get(base + "/ovms/stats", timeout=5).json().get("total_batches", 0) > 0, 20,
              "requests through the logged-in UI")
        assert user.post(base + "/stop", timeout=10).ok
        _wait(lambda: (tmp_path / "r.json").exists(), 20, "the result file")
        assert anon.get(base + "/ovms/result.json", allow_redirects=False, timeout=5).status_code == 302
        assert user.get(base + "/ovms_logout", timeout=5).url.endswith("/login")
        assert user.get(base + "/stats/requests", allow_redirects=False, timeout=5).status_code == 302
    finally:
        terminate(proc)
    assert WEB_SECRET not in proc.stdout.read() + proc.stderr.read()


def test_web_login_without_credentials_is_one_line(tmp_path):
    proc = subprocess.run(LOCUST + ["-f", str(LOCUSTFILE), "--web-host", "127.0.0.1", "--web-port", str(free_port()),
                                    "--skip-log-setup", "--web-login", "--host", "127.0.0.1:1", "--model_name", "m"],
                          capture_output=True, text=True, env={**_env(), "LOCUST_WEB_CREDENTIALS": ""}, timeout=60,
                          cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert _error_lines(proc.stderr) == ["ovms: error: --web-login: give the web UI's user and password with "
                                         "--web_credentials USER:PASSWORD (or LOCUST_WEB_CREDENTIALS=USER:PASSWORD)"]


def _mongo_user(mongo: str) -> tuple[str, str]:
    import pymongo

    name = f"bench{uuid.uuid4().hex[:8]}"
    client = pymongo.MongoClient(f"mongodb://{mongo}", serverSelectionTimeoutMS=5000)
    try:
        client.admin.command("createUser", name, pwd=DB_SECRET, roles=["root"])
    finally:
        client.close()
    return name, f"sec{uuid.uuid4().hex[:8]}"


def test_no_secret_in_any_output_page_file_or_document(refserver, mongo_server, tmp_path):
    """A header, a MongoDB password and the web credentials, all given on the command line, appear nowhere."""
    user, collection = _mongo_user(mongo_server)
    endpoint = f"mongodb://{user}:{DB_SECRET}@{mongo_server}/secdb?authSource=admin&collection={collection}"
    result, report = tmp_path / "r.json", tmp_path / "r.html"
    proc, base = _web_ui(["--host", refserver.grpc_address, "--api", "kfs", "--model_name", "dummy",
                          "--header", f"Authorization: Bearer {HEADER_SECRET}", "--db_endpoint", endpoint,
                          "--web-login", "--web_credentials", f"admin:{WEB_SECRET}", "--result_file", str(result),
                          "--report_file", str(report), "--error_exposition", "0"], tmp_path)
    pages: dict[str, str] = {}
    try:
        s = requests.Session()
        pages["/login"] = s.get(base + "/login", timeout=5).text
        pages["login"] = s.post(base + "/ovms_login", data={"username": "admin", "password": WEB_SECRET},
                                timeout=5).text
        assert '"extended_tabs"' in pages["login"] and '"model_name"' in pages["login"]
        assert s.post(base + "/swarm", data={"user_count": 1, "spawn_rate": 1, "host": refserver.grpc_address},
                      timeout=10).json()["success"]
        _wait(lambda: s.get(base + "/ovms/stats", timeout=5).json().get("total_batches", 0) > 0, 20, "requests")
        for path in PROTECTED + ["/stats/requests/csv", "/stats/failures/csv", "/exceptions", "/worker-count"]:
            pages[path] = s.get(base + path, timeout=30).text
        assert s.post(base + "/stop", timeout=10).ok
        _wait(lambda: result.exists() and report.exists(), 30, "the result and the report")
        for path in ("/", "/ovms/result.json", "/ovms/report.html", "/stats/requests", "/logs"):
            pages[f"after {path}"] = s.get(base + path, timeout=30).text
        # the document is in MongoDB once the export ran (the log says so)
        _wait(lambda: _stored(mongo_server, user, collection), 20, "the MongoDB document")
    finally:
        terminate(proc)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    doc = _stored(mongo_server, user, collection)
    outputs = {"stdout": stdout, "stderr": stderr, "result": result.read_text(), "report": report.read_text(),
               "mongo document": json.dumps(doc, default=str), **{f"page {k}": v for k, v in pages.items()}}
    outputs.update({f"file {p.name}": p.read_text(errors="replace") for p in tmp_path.iterdir() if p.is_file()})
    for where, text in outputs.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret} in {where}"
    # ... while the run used them, and says so without the values
    stored = json.loads(outputs["result"])
    assert stored["parameters"]["options"]["header"] == ["Authorization: ***"]
    assert stored["parameters"]["options"]["db_endpoint"].startswith(f"mongodb://{user}:***@")
    assert "--web_credentials" in stored["parameters"]["client"]["argv"]
    assert doc["result"]["parameters"]["options"]["header"] == ["Authorization: ***"]
    assert stored["statistics"]["pass_batches"] > 0 and "Authorization: ***" in outputs["report"]


def _stored(mongo: str, user: str, collection: str) -> dict | None:
    import pymongo

    client = pymongo.MongoClient(f"mongodb://{user}:{DB_SECRET}@{mongo}/secdb?authSource=admin",
                                 serverSelectionTimeoutMS=5000)
    try:
        return client.secdb[collection].find_one()
    finally:
        client.close()


def test_ovms_bench_sends_headers_and_credentials_through_the_environment(recorders, tmp_path):
    """ovms-bench: --header reaches the server, never its own child's command line, result or output."""
    _, _, rest_url, rest_seen = recorders
    port = rest_url.rsplit(":", 1)[1]
    cmd = [sys.executable, "-m", "ovms_bench.cli", "-a", "127.0.0.1", "-r", port, "--api", "KFS-REST", "-m", "dummy",
           "-t", "2", "-c", "1", "--header", f"Authorization: Bearer {HEADER_SECRET}", "--header", "X-Tenant: b",
           "--result_file", str(tmp_path / "r.json")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=90, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    infers = [h for m, p, h in rest_seen if m == "POST" and p.endswith("/infer")]
    assert infers and all(h.get("authorization") == f"Bearer {HEADER_SECRET}" and h.get("x-tenant") == "b"
                          for h in infers)
    text = (tmp_path / "r.json").read_text()
    result = json.loads(text)
    assert result["parameters"]["options"]["header"] == ["Authorization: ***", "X-Tenant: ***"]
    assert not any(HEADER_SECRET in arg for arg in result["parameters"]["client"]["argv"])
    for where in (done.stdout, done.stderr, text):
        assert HEADER_SECRET not in where
    bad = subprocess.run(cmd[:-2] + ["--header", f"Host: {HEADER_SECRET}"], capture_output=True, text=True,
                         env=_env(), timeout=60, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == \
        "ovms-bench: error: --header: Host may not be set: it comes from --host"
    assert HEADER_SECRET not in bad.stderr


def test_ovms_bench_web_credentials_turn_the_login_on():
    from ovms_bench.client import build_parser, locust_command, secret_env

    a = build_parser().parse_args(["-a", "h", "-p", "9000", "-m", "m", "--web", "--web_credentials",
                                   f"admin:{WEB_SECRET}", "--header", f"A: {HEADER_SECRET}"])
    cmd = locust_command(a)
    assert "--web-login" in cmd and not any(WEB_SECRET in c or HEADER_SECRET in c for c in cmd)
    assert secret_env(a) == {"LOCUST_WEB_CREDENTIALS": f"admin:{WEB_SECRET}",
                             "LOCUST_HEADER": json.dumps([f"A: {HEADER_SECRET}"])}


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists() and not os.environ.get("CI"),
                    reason="Debian's chromium is not installed (make test installs it)")
def test_login_page_in_a_browser_reaches_the_dashboard(refserver, tmp_path):
    from playwright.sync_api import sync_playwright

    from tests.test_webui_browser import CHROMIUM, CHROMIUM_FLAGS

    proc, base = _web_ui(["--host", refserver.grpc_address, "--api", "kfs", "--model_name", "dummy", "--web-login"],
                         tmp_path, env={"LOCUST_WEB_CREDENTIALS": f"admin:{WEB_SECRET}"})
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page()
                page.goto(base + "/")
                assert page.url.startswith(base + "/login")
                page.locator("input[name=username]").fill("admin")
                page.locator("input[name=password]").fill("wrong")
                page.get_by_role("button", name="Login").click()
                page.get_by_text("Invalid username or password").wait_for(timeout=10_000)
                page.locator("input[name=username]").fill("admin")
                page.locator("input[name=password]").fill(WEB_SECRET)
                page.get_by_role("button", name="Login").click()
                page.get_by_role("button", name="Start").wait_for(timeout=15_000)
                assert page.url.rstrip("/") == base
                assert WEB_SECRET not in page.content()
            finally:
                browser.close()
    finally:
        terminate(proc)
