"""The web UI extension over HTTP (a local runner, no browser): the tab's rows, the routes, the downloads."""

from __future__ import annotations

import json
import subprocess

import requests

from tests.conftest import terminate, wait_until
from tests.locust_run import LOCUST, LOCUSTFILE, _env, free_port

_wait = wait_until


def _get(url: str) -> requests.Response | None:
    try:
        return requests.get(url, timeout=5)
    except requests.RequestException:
        return None


def test_tab_routes_and_downloads_in_a_local_web_ui_run(refserver, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(LOCUST + ["-f", str(LOCUSTFILE), "--web-host", "127.0.0.1", "--web-port", str(port),
                                      "--skip-log-setup", "--host", refserver.grpc_address, "--api", "kfs",
                                      "--model_name", "dummy", "--result_file", str(tmp_path / "r.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path)
    try:
        page = _wait(lambda: _get(base + "/"), 30, "the web UI")
        # the tab, its table and the two download links are in the page's template arguments
        assert '"extended_tabs": [{"key": "ovms", "title": "OVMS metrics"}]' in page.text
        assert "./ovms/report.html" in page.text and "./ovms/result.json" in page.text
        # the suite's options are in the start form's custom parameters
        for option in ("model_name", "warmup", "quantile_list", "db_endpoint", "report_file"):
            assert f'"{option}"' in page.text
        before = requests.get(base + "/stats/requests", timeout=5).json()["extended_stats"]
        assert before == [{"key": "ovms", "data": [{"metric": "no requests yet", "window": "-", "total": "-"}]}]
        assert requests.get(base + "/ovms/result.json", timeout=5).status_code == 404

        started = requests.post(base + "/swarm", data={"user_count": 2, "spawn_rate": 2,
                                                      "host": refserver.grpc_address, "quantile_list": "0.5 0.99"},
                                timeout=10).json()
        assert started["success"], started

        def requests_row() -> int:
            rows = requests.get(base + "/stats/requests", timeout=5).json()["extended_stats"][0]["data"]
            row = next((r for r in rows if r["metric"] == "requests (pass/fail)"), None)
            return 0 if row is None else sum(int(n) for n in row["total"].split("/"))

        first = _wait(requests_row, 15, "requests in the tab")
        _wait(lambda: requests_row() > first, 15, "the tab's count to grow")
        live = requests.get(base + "/ovms/stats", timeout=5).json()
        assert live["total_batches"] > 0 and "qos_latency_1" in live   # the form's quantile list took effect
        live_doc = requests.get(base + "/ovms/result.json", timeout=5).json()
        assert live_doc["live"] is True

        assert requests.post(base + "/stop", timeout=10).ok
        _wait(lambda: (tmp_path / "r.json").exists(), 20, "the result file")
        final = json.loads((tmp_path / "r.json").read_text())
        served = requests.get(base + "/ovms/result.json", timeout=5)
        assert served.headers["Content-Disposition"] == "attachment; filename=ovms-result.json"
        assert served.json()["statistics"] == final["statistics"] and "live" not in served.json()
        rows = requests.get(base + "/stats/requests", timeout=5).json()["extended_stats"][0]["data"]
        total = next(r for r in rows if r["metric"] == "requests (pass/fail)")["total"]
        assert total == f"{final['statistics']['pass_batches']}/{final['statistics']['fail_batches']}"
        report = requests.get(base + "/ovms/report.html", timeout=30)
        assert report.ok and report.headers["Content-Disposition"] == "attachment; filename=ovms-report.html"
        assert f'data-key="pass_batches" data-value="{final["statistics"]["pass_batches"]}"' in report.text
    finally:
        terminate(proc)


def test_headless_run_writes_the_html_report_beside_the_result(refserver, tmp_path):
    from tests.locust_run import run_locust

    out, report = tmp_path / "result.json", tmp_path / "report.html"
    result = run_locust(refserver.grpc_address, "--api", "tfs", "--model_name", "dummy", "--result_file", str(out),
                        "--report_file", str(report), users=2, run_time="2s")
    assert result.returncode == 0, result.stderr[-2000:]
    stats = json.loads(out.read_text())["statistics"]
    text = report.read_text()
    assert "<svg" in text and "http://" not in text.replace("http://www.w3.org/", "")
    for key in ("pass_batches", "window_pass_batches"):
        assert f'data-key="{key}" data-value="{stats[key]}"' in text
